import {mkdirSync, readFileSync, writeFileSync} from 'node:fs'
import {join, resolve} from 'node:path'

import * as Args from '@oclif/core/args'
import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import type {ReplayReport} from '../../porter/replay/replay.js'

export default class PorterReplay extends BaseCommand {
  static override summary = 'Replay an invocation trace against real function instances under each policy.'
  static override description = `TRACE is an Azure Functions 2019 per-minute CSV (HashOwner,HashApp,HashFunction,Trigger,1,...,1440), or \`synthetic\`: a seeded trace with that trace's shape (--functions, --minutes, --seed). Each trace function is deployed as fixtures/faas/floatmath.py (--mib MiB of state) on the porter's function code, run in this process, and invoked at the trace's instants, --speedup times faster than real time. Per policy: cold (a new instance per invocation, stopped after it), keepalive (instances kept 10 trace-minutes), mow/moa/hybrid/local (checkpointed after --checkpoint-after invocations, scaled out by restores, kept 1 trace-minute), criu (the same, but dumped by cxlfork's CRIU-format engine into an image set on /dev/shm and scaled out by its \`criu restore\` engine, every page copied: the CRIU baseline as cxlfork implements it, not CRIU's own binary).
Reports, per policy, invocation latency p50/p99/p99.9 (from the scheduled instant to the response), cold/warm/restored starts and local memory (RssAnon of the instances, GB·s and peak), and the ratios of mow against cold and criu (p99) and keepalive (GB·s). The pool holds the checkpoints while a policy runs.`
  static override examples = [
    '<%= config.bin %> porter replay synthetic --functions 50 --minutes 30 --speedup 60 --policies cold,keepalive,mow --out replay-report',
    '<%= config.bin %> porter replay invocations_per_function_md.anon.d01.csv --minutes 10 --speedup 30 --json',
  ]

  static override args = {
    trace: Args.string({required: true, description: 'Trace CSV file, or `synthetic`.'}),
  }

  static override flags = {
    minutes: Flags.integer({min: 1, max: 1440, summary: 'Replay the first N minutes (synthetic: its length, default 30).'}),
    speedup: Flags.integer({min: 1, max: 3600, default: 60, summary: 'Trace time runs this many times faster than real time.'}),
    policies: Flags.string({default: 'cold,keepalive,mow', summary: 'Comma-separated: cold, keepalive, criu, mow, moa, hybrid, local.', helpValue: 'LIST'}),
    functions: Flags.integer({min: 1, max: 10_000, default: 50, summary: 'Synthetic trace: how many functions.'}),
    seed: Flags.integer({default: 1, summary: 'Seed of the synthetic trace and of the instants within each minute.'}),
    mib: Flags.integer({min: 1, max: 1024, default: 2, summary: 'State of each function instance, MiB.'}),
    'checkpoint-after': Flags.integer({min: 1, max: 1000, default: 1, summary: 'Restore policies: checkpoint a cold instance after this many invocations.'}),
    'max-instances': Flags.integer({min: 1, max: 64, default: 2, summary: 'Instances per function at most (invocations beyond wait): bounds the load on this host.'}),
    out: Flags.string({summary: 'Write the report as DIR/index.html (self-contained, with charts) and DIR/replay.json.', helpValue: 'DIR'}),
    'write-trace': Flags.string({summary: 'Also write the trace replayed (as CSV) to this file.', helpValue: 'FILE'}),
  }

  async run(): Promise<ReplayReport> {
    const {args, flags} = await this.parse(PorterReplay)
    const [trace, {REPLAY_POLICIES, replay}, {NotFoundError, UsageError}] = await Promise.all([import('../../porter/replay/trace.js'), import('../../porter/replay/replay.js'), import('../../errors.js')])
    const policies = flags.policies.split(',').map((p) => p.trim()).filter(Boolean)
    for (const policy of policies) {
      if (!(REPLAY_POLICIES as readonly string[]).includes(policy)) throw new UsageError('INVALID_POLICY', `--policies: unknown policy ${JSON.stringify(policy)}`, `Use some of ${REPLAY_POLICIES.join(', ')}.`)
    }
    if (policies.length === 0) throw new UsageError('INVALID_POLICY', '--policies is empty', `Use some of ${REPLAY_POLICIES.join(', ')}.`)
    let replayed
    if (args.trace === 'synthetic') {
      replayed = trace.syntheticTrace({functions: flags.functions, minutes: flags.minutes ?? 30, seed: flags.seed})
    } else {
      let text: string
      try {
        text = readFileSync(resolve(args.trace), 'utf8')
      } catch (error) {
        throw new NotFoundError('FILE_NOT_FOUND', `cannot read trace ${args.trace}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, 'Give the path of a trace CSV, or `synthetic`.')
      }
      replayed = trace.parseAzureTrace(text, flags.minutes)
    }
    if (flags['write-trace']) writeFileSync(flags['write-trace'], trace.toAzureCsv(replayed))
    const pool = await this.openPool(flags.pool)
    try {
      const report = await replay({
        pool, trace: replayed, speedup: flags.speedup, policies: policies as (typeof REPLAY_POLICIES)[number][], mib: flags.mib,
        checkpointAfter: flags['checkpoint-after'], maxInstances: flags['max-instances'], seed: flags.seed,
        command: ['cxlfork', 'porter', 'replay', ...this.argv].join(' '), traceName: args.trace === 'synthetic' ? `synthetic (seed ${flags.seed})` : resolve(args.trace), progress: (line) => this.say(line),
      })
      this.show(`${report.invocations} invocations of ${report.deployed} functions (${report.functions} in the trace), ${report.minutes} minutes at x${report.speedup}`)
      this.show('policy     p50 ms   p99 ms  p99.9 ms   cold   warm  restored  failed   GB·s(trace)  peak GB')
      for (const p of report.policies) {
        for (const error of p.checkpointErrors ?? []) this.show(`${p.policy}: ${error}`)
        if (p.skipped) {
          this.show(`${p.policy.padEnd(9)}  not run: ${p.skipped}`)
          continue
        }
        const ms = (v: number | null): string => (v === null ? '-' : v.toFixed(1)).padStart(8)
        this.show(`${p.policy.padEnd(9)} ${ms(p.latencyMs.p50)} ${ms(p.latencyMs.p99)} ${ms(p.latencyMs.p999)}  ${String(p.starts.cold).padStart(5)}  ${String(p.starts.warm).padStart(5)}  ${String(p.starts.restored).padStart(8)}  ${String(p.failures).padStart(6)}  ${p.memory.traceGbSeconds.toFixed(2).padStart(12)}  ${p.memory.peakGB.toFixed(3).padStart(7)}`)
      }
      for (const c of report.comparisons) {
        this.show(`mow vs ${c.against} on ${c.figure}: ${c.mow} against ${c.other} (${c.ratio}x): mow ${c.mowBetter ? 'better' : 'not better'}`)
      }
      if (flags.out) {
        const {renderReplayReport} = await import('../../porter/replay/html-report.js')
        mkdirSync(flags.out, {recursive: true})
        writeFileSync(join(flags.out, 'replay.json'), JSON.stringify(report, null, 2) + '\n')
        writeFileSync(join(flags.out, 'index.html'), renderReplayReport(report))
        this.say(`report: ${join(resolve(flags.out), 'index.html')}`)
      }
      return report
    } finally {
      pool.close()
    }
  }
}

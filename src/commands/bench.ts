import {accessSync, constants as fsConstants, mkdirSync, writeFileSync} from 'node:fs'
import {join, relative} from 'node:path'

import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../cli/base-command.js'
import {withTerminationDeferred} from '../cli/signals.js'
import type {BenchResult} from '../bench/types.js'
import {UsageError} from '../errors.js'

/** How this process was started, e.g. `node bin/run.js bench --runs 5`, arguments quoted where needed. */
function commandLine(): string {
  const quote = (arg: string): string => (/^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", "'\\''")}'`)
  const entry = relative(process.cwd(), process.argv[1] ?? '') || process.argv[1] || 'cxlfork'
  return ['node', entry, ...process.argv.slice(2)].map(quote).join(' ')
}

/** Distinct counts in the order given, each 1 to `max`; '' or "none" for none. `invalid` builds the error for a bad one. */
function parseCounts(text: string, max: number, invalid: (part: string) => UsageError): number[] {
  const trimmed = text.trim()
  if (trimmed === '' || trimmed.toLowerCase() === 'none') return []
  const counts: number[] = []
  for (const part of trimmed.split(',').map((item) => item.trim()).filter(Boolean)) {
    const count = /^\d+$/.test(part) ? Number(part) : Number.NaN
    if (!Number.isSafeInteger(count) || count < 1 || count > max) throw invalid(part)
    if (!counts.includes(count)) counts.push(count)
  }
  return counts
}

/** --threads: distinct counts in the order given, each 1 to `max`; '' or "none" for no threads section. */
export function parseThreadCounts(text: string, max: number): number[] {
  return parseCounts(text, max, (part) => new UsageError('INVALID_THREADS', `thread count ${part} must be an integer from 1 to ${max}`,
    "Use e.g. --threads 1,8,64, or --threads '' to skip the threads section."))
}

/** --trees: distinct process counts in the order given, each 1 to `max`; '' or "none" for no trees section. */
export function parseTreeCounts(text: string, max: number): number[] {
  return parseCounts(text, max, (part) => new UsageError('INVALID_TREES', `process count ${part} must be an integer from 1 to ${max}`,
    "Use e.g. --trees 1,4, or --trees '' to skip the trees section."))
}

export default class BenchCommand extends BaseCommand {
  static override summary = 'Measure checkpoint, restore (mow/local), RssAnon, local fork(), plain write and cold start side by side.'
  static override description = `For each size, a generated target process touches exactly that much anonymous memory and idles; it is checkpointed --runs times into a dedicated pool, each checkpoint restored per policy in process and by the whole \`cxlfork restore\` command, each clone measured, checked and killed. Plain write of the same bytes to the pool's file system, local fork() of the target, \`node -e 0\` and a cold start are measured in the same repetitions. Reports medians (min, max), ratios and pass/fail of the performance targets; exit status 0 even when a target fails (see "pass" in the JSON).
Then the threads section: at the first of --sizes (or --threads-size), for each of --threads, one target with that many threads is checkpointed --runs times into the same pool and each checkpoint restored in process (mow); the clone's memory and thread count are checked. \`--threads ''\` (or none) skips it.
Then the trees section: at the first of --sizes (or --tree-size), for each of --trees, one target that forked that many processes minus one (its children share its memory copy-on-write, so a checkpoint holds about that many times the size) is checkpointed with --tree --runs times into the same pool and each checkpoint restored in process (mow); the clone tree's members, shape and memory are checked. \`--trees ''\` (or none) skips it.
Then the FaaS section, with --faas: Python functions modeled on FunctionBench (fixtures/faas/: float, linpack, json, html, bfs; state 24 MiB to 512 MiB by default, FUNCTION:MIB to change it), each cold-started, checkpointed and restored --runs times under mow (before and after access bits recorded by a --record clone), moa, hybrid and local, beside a local fork of the function; per clone the first and warm invocation times and the memory after the first invocation, and the memory of --faas-clones clones together. Off by default: \`--faas all\` at the default sizes took 4.5 minutes at --runs 3 on 2 busy cores, and 8 local clones of the 512 MiB function hold 4.2 GiB.
Progress goes to stderr, one line per step (also under --json). Without --pool two temporary pools under /dev/shm are created and removed at the end: a provisioned one (\`pool init --provision\`), the "pool" path, and a sparse one that the "pool-sparse" path only checkpoints into, so both kinds of pool are measured in the same run. Every target and clone is killed.`
  static override examples = [
    '<%= config.bin %> bench',
    '<%= config.bin %> bench --sizes 64M,256M,1G --runs 5 --markdown BENCHMARKS.md',
    '<%= config.bin %> bench --sizes 64M,256M --runs 3 --criu-bin /usr/local/sbin/criu --markdown /tmp/bench.md',
    '<%= config.bin %> bench --sizes 16M --runs 2 --json',
    "<%= config.bin %> bench --sizes 64M --runs 5 --threads 1,8,64 --no-criu --json",
    '<%= config.bin %> bench --sizes 64M --runs 5 --threads none --trees 1,4 --no-criu --json',
    "<%= config.bin %> bench --sizes 256M --threads ''",
    "<%= config.bin %> bench --sizes 16M --runs 3 --threads '' --trees '' --no-criu --faas all --markdown faas.md",
    "<%= config.bin %> bench --sizes 4M --runs 1 --threads '' --trees '' --faas float:8,bfs:32 --faas-clones 2 --json",
  ]
  static override flags = {
    // Overrides the global --pool: a benchmark never touches the default pool unless asked.
    pool: Flags.string({summary: 'Pool file to use (created if missing, kept). Default: a temporary pool under /dev/shm, removed at the end.', helpGroup: 'GLOBAL'}),
    sizes: Flags.string({summary: 'Comma-separated sizes of touched memory.', default: '64M,256M,1G', helpValue: '<size,...>'}),
    runs: Flags.integer({summary: 'Repetitions per size, per thread count and per process count (medians of these).', default: 5, min: 1, max: 1000}),
    policies: Flags.string({summary: 'Comma-separated restore policies: mow, local.', default: 'mow,local', helpValue: '<policy,...>'}),
    markdown: Flags.string({summary: 'Also write the report as Markdown to this file.', helpValue: '<file>'}),
    out: Flags.string({summary: 'Also write a self-contained HTML report with charts (DIR/index.html, viewable offline) and the JSON result (DIR/bench.json) into this directory (created if missing).', helpValue: '<dir>'}),
    criu: Flags.boolean({summary: 'Also measure the CRIU-format baseline (criu dump to images on the pool\'s mount, criu restore by copying).', default: true, allowNo: true}),
    'criu-bin': Flags.string({
      summary: 'Real CRIU (4.x or later) to measure beside the rest: whole `criu dump` and `criu restore -d`, with their stats-dump/stats-restore. Default: a `criu` on PATH if it is 4.x or later and `criu check` passes; else the report says none was measured.',
      helpValue: '<path>',
    }),
    threads: Flags.string({
      summary: "Comma-separated thread counts of the threads section (checkpoint downtime and mow engine restore by thread count); '' or none skips it.",
      default: '1,8,64', helpValue: '<n,...>',
    }),
    'threads-size': Flags.string({summary: 'Size of touched memory of the threads section\'s targets. Default: the first of --sizes.', helpValue: '<size>'}),
    trees: Flags.string({
      summary: "Comma-separated process counts of the trees section (checkpoint --tree downtime and mow engine restore of a tree by process count); '' or none skips it.",
      default: '1,4', helpValue: '<n,...>',
    }),
    'tree-size': Flags.string({
      summary: 'Size of touched memory of the root of each of the trees section\'s targets (each child shares it copy-on-write and is checkpointed with it). Default: the first of --sizes.',
      helpValue: '<size>',
    }),
    faas: Flags.string({
      summary: "FaaS functions to measure: all, or FUNCTION[:MIB],... (float, linpack, json, html, bfs); '' or none skips the section.",
      default: '', helpValue: '<fn[:mib],...>',
    }),
    'faas-clones': Flags.integer({summary: 'Clones per policy alive together in the FaaS section (their memory summed); 0 skips that part.', default: 8, min: 0, max: 64}),
    'faas-warm': Flags.integer({summary: 'Warm invocations per clone in the FaaS section (after the first).', default: 5, min: 1, max: 1000}),
    prime: Flags.boolean({summary: 'Before each timed step that takes new memory, touch and free as much (MAP_POPULATE): every path then starts from pages the host backs (on a VM with free page reporting, memory idle for ~2 s is handed back to the host and is 4x slower to touch again). --no-prime measures the host as it comes.', default: true, allowNo: true}),
    'huge-pages': Flags.boolean({summary: "Ask for transparent huge pages for the target's memory (MADV_HUGEPAGE; default MADV_NOHUGEPAGE, 4 KiB pages).", default: false}),
  }

  async run(): Promise<BenchResult> {
    const {flags} = await this.parse(BenchCommand)
    const [{parseSize}, {runBench}, {renderMarkdown}, {diagnose}, {MAX_TARGET_THREADS, MAX_TARGET_PROCESSES}, {probeRealCriu}] = await Promise.all([
      import('../pool/size.js'), import('../bench/run.js'), import('../bench/markdown.js'), import('../bench/diagnose.js'), import('../bench/target.js'),
      import('../bench/real-criu.js'),
    ])
    const {parseFaasSelection} = await import('../bench/faas-spec.js')
    const faas = parseFaasSelection(flags.faas)
    const benchSize = (label: string): {bytes: number; label: string} => {
      const bytes = parseSize(label)
      if (bytes < 4096n || bytes % 4096n !== 0n || bytes > 1n << 40n) throw new UsageError('INVALID_SIZE', `size ${label} must be a multiple of 4 KiB between 4K and 1T`)
      return {bytes: Number(bytes), label}
    }
    const sizes = flags.sizes.split(',').map((text) => text.trim()).filter(Boolean).map(benchSize)
    if (sizes.length === 0) throw new UsageError('INVALID_SIZE', '--sizes names no size')
    const threads = parseThreadCounts(flags.threads, MAX_TARGET_THREADS)
    const threadsSize = flags['threads-size'] === undefined ? undefined : benchSize(flags['threads-size'].trim())
    const trees = parseTreeCounts(flags.trees, MAX_TARGET_PROCESSES)
    const treeSize = flags['tree-size'] === undefined ? undefined : benchSize(flags['tree-size'].trim())
    const policies = [...new Set(flags.policies.split(',').map((text) => text.trim()).filter(Boolean))]
    for (const policy of policies) {
      if (policy !== 'mow' && policy !== 'local') throw new UsageError('INVALID_POLICY', `unknown policy ${policy}`, 'Use mow, local or mow,local.')
    }
    // Before the run: a long benchmark must not fail at its end for want of a place to write.
    if (flags.out !== undefined) {
      try {
        mkdirSync(flags.out, {recursive: true})
        accessSync(flags.out, fsConstants.W_OK)
      } catch (error) {
        throw new UsageError('INVALID_OUT', `--out ${flags.out} is not a directory cxlfork can write into (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, 'Give a writable directory; it is created if missing.')
      }
    }
    const realCriu = probeRealCriu(flags['criu-bin'])
    // SIGINT, SIGTERM and SIGHUP stop the run after its current step: an interrupted bench leaves no process and no multi-GiB pool behind.
    const result = await withTerminationDeferred(async (stopPoint) => runBench({
      realCriu, stopPoint,
      sizes, runs: flags.runs, policies: policies as ('mow' | 'local')[], hugePages: flags['huge-pages'], criu: flags.criu, primeFreePages: flags.prime,
      threads, ...(threadsSize === undefined ? {} : {threadsSize}),
      trees, ...(treeSize === undefined ? {} : {treeSize}),
      faas, faasClones: flags['faas-clones'], faasWarm: flags['faas-warm'],
      ...(flags.pool === undefined ? {} : {pool: flags.pool}),
      command: commandLine(),
      cliEntry: join(this.config.root, 'bin', 'run.js'),
      log: (line) => process.stderr.write(line + '\n'),
    }), 'the benchmark', 'every process it started was stopped and its temporary pool and images removed')
    const notes = diagnose(result)
    if (flags.markdown) {
      writeFileSync(flags.markdown, renderMarkdown(result, notes))
      this.say(`Wrote ${flags.markdown}`)
    }
    if (flags.out !== undefined) {
      const {renderHtmlReport} = await import('../bench/html-report.js')
      writeFileSync(join(flags.out, 'index.html'), renderHtmlReport(result))
      writeFileSync(join(flags.out, 'bench.json'), JSON.stringify(result, null, 2) + '\n')
      this.say(`Wrote ${join(flags.out, 'index.html')} and bench.json`)
    }
    for (const target of result.targets) this.show(`${target.pass ? 'PASS' : 'FAIL'}  ${target.description}: ${target.measured} ${target.unit} (limit ${target.limit})`)
    return result
  }
}

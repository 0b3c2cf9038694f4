/**
 * `porter replay`: an invocation trace replayed, policy after policy, on
 * real function instances (fixtures/faas/floatmath.py, one deployment per
 * trace function) run by a FunctionManager in this process: the porter's
 * own function code, without the socket. Per policy:
 *
 *   cold       every invocation starts a new instance, stopped after it (keep-alive 0, never checkpointed)
 *   keepalive  instances kept 10 trace-minutes after their last invocation (the common
 *              fixed keep-alive), never checkpointed: every scale-out is a cold start
 *   mow, moa, hybrid, local
 *              checkpointed after --checkpoint-after invocations, scaled out by restoring
 *              clones with that policy, instances kept 1 trace-minute
 *   criu       the same, but dumped with cxlfork's CRIU-format engine (`criu dump`) into an
 *              image set on /dev/shm and scaled out by `criu restore`'s engine (deserialize
 *              and copy every page): the CRIU baseline, run by cxlfork's code, not CRIU's
 *
 * Invocations of minute m are spread at seeded random instants of that
 * minute; trace time runs --speedup times faster than real time. Latency is
 * from an invocation's scheduled instant to its response (so a replayer
 * that falls behind shows it). Local memory is sampled every 250 ms as the
 * instances' RssAnon (their private memory; pool pages a mow clone maps are
 * not local) plus the VmRSS of moa fault servers, and integrated over real
 * time (GB·s) and over trace time (x speedup). The report compares mow with
 * cold and criu on p99 latency and with keepalive on memory, as issue 15's
 * acceptance asks.
 */
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {CxlforkError} from '../../errors.js'
import {projectRoot} from '../../paths.js'
import type {Pool} from '../../pool/index.js'
import {FunctionManager} from '../functions/manager.js'
import type {FunctionPolicy} from '../functions/spec.js'
import type {PeerCredentials} from '../peer.js'
import {type Trace, seededRandom} from './trace.js'

export const REPLAY_POLICIES = ['cold', 'keepalive', 'criu', 'mow', 'moa', 'hybrid', 'local'] as const
export type ReplayPolicy = (typeof REPLAY_POLICIES)[number]

export interface ReplayOptions {
  pool: Pool
  trace: Trace
  speedup: number
  policies: readonly ReplayPolicy[]
  /** State size of each function instance, MiB. */
  mib: number
  checkpointAfter: number
  /** Instances per function at most (bounds the load a replay puts on the host). */
  maxInstances: number
  seed: number
  /** For the report: the command line and what the trace was. */
  command: string
  traceName: string
  progress?: (line: string) => void
}

export interface PolicyReport {
  policy: ReplayPolicy
  /** Why the policy was not run. */
  skipped?: string
  invocations: number
  failures: number
  /** The first failure's message, if any. */
  firstFailure?: string
  latencyMs: {p50: number | null; p99: number | null; p999: number | null; max: number | null}
  starts: {cold: number; warm: number; restored: number}
  /** perMinuteGB: the mean local memory in each trace minute (the replay's memory over time). */
  memory: {gbSeconds: number; traceGbSeconds: number; peakGB: number; samples: number; perMinuteGB: number[]}
  keepAliveMs: number
  wallSeconds: number
  /** Checkpoints taken (one per function at most), and why others failed. */
  checkpoints: number
  checkpointErrors: string[]
}

/** mow against another policy on one figure: `ratio` is the other's value over mow's (above 1: mow is lower, i.e. better). */
export interface Comparison {
  figure: 'p99 ms' | 'GB·s'
  against: ReplayPolicy
  mow: number
  other: number
  ratio: number
  mowBetter: boolean
}

export interface ReplayReport {
  /** When and how it ran. */
  date: string
  command: string
  trace: string
  functions: number
  deployed: number
  minutes: number
  speedup: number
  invocations: number
  mib: number
  policies: PolicyReport[]
  /** mow vs cold and vs criu on p99, vs keepalive on GB·s (those of them that ran). */
  comparisons: Comparison[]
}

/** The acceptance's ratios, for the policies of this run. */
export function compareWithMow(policies: readonly PolicyReport[]): Comparison[] {
  const ran = (policy: ReplayPolicy): PolicyReport | undefined => policies.find((p) => p.policy === policy && p.skipped === undefined && p.invocations > 0)
  const mow = ran('mow')
  if (!mow) return []
  const out: Comparison[] = []
  const add = (figure: Comparison['figure'], against: ReplayPolicy, value: (p: PolicyReport) => number | null): void => {
    const other = ran(against)
    const mine = value(mow)
    const theirs = other ? value(other) : null
    if (mine === null || theirs === null || mine <= 0) return
    out.push({figure, against, mow: mine, other: theirs, ratio: round3(theirs / mine), mowBetter: mine < theirs})
  }
  add('p99 ms', 'cold', (p) => p.latencyMs.p99)
  add('p99 ms', 'criu', (p) => p.latencyMs.p99)
  add('GB·s', 'keepalive', (p) => p.memory.traceGbSeconds)
  return out
}

function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! * 1000) / 1000
}

function statusKb(pid: number, field: string): number {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) : 0
  } catch {
    return 0
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** Invocation instants (real ms from the start) with the trace function's index, sorted. */
export function schedule(trace: Trace, speedup: number, seed: number): {at: number; fn: number}[] {
  const random = seededRandom(seed)
  const events: {at: number; fn: number}[] = []
  trace.functions.forEach((fn, index) => {
    fn.counts.forEach((count, minute) => {
      for (let k = 0; k < count; k++) events.push({at: ((minute + random()) * 60_000) / speedup, fn: index})
    })
  })
  return events.sort((a, b) => a.at - b.at)
}

async function replayPolicy(policy: ReplayPolicy, options: ReplayOptions, events: {at: number; fn: number}[], deployed: number[]): Promise<PolicyReport> {
  const dir = mkdtempSync(join(tmpdir(), 'cxlfork-replay-'))
  const peer: PeerCredentials = {pid: process.pid, uid: process.geteuid?.() ?? 0, gid: process.getegid?.() ?? 0, groups: []}
  const manager = new FunctionManager({pool: () => options.pool, statePath: join(dir, 'functions.json')})
  const restoring = policy !== 'cold' && policy !== 'keepalive'
  const keepAliveMs = policy === 'cold' ? 0 : Math.max(1, Math.round((policy === 'keepalive' ? 600_000 : 60_000) / options.speedup))
  const names = new Map<number, string>()
  const latencies: number[] = []
  const starts = {cold: 0, warm: 0, restored: 0}
  let failures = 0
  let firstFailure: string | undefined
  let memoryKbSeconds = 0
  let peakKb = 0
  let samples = 0
  let sampler: NodeJS.Timeout | undefined
  let checkpoints = 0
  const minuteKb: number[] = []
  const minuteSamples: number[] = []
  const checkpointErrors: string[] = []
  const t0 = performance.now()
  try {
    for (const index of deployed) {
      const name = `replay-${policy}-${index}`
      manager.deploy({
        name, cwd: projectRoot(), policy: restoring ? policy as FunctionPolicy : 'mow', checkpointAfter: restoring ? options.checkpointAfter : 0, keepAliveMs, maxInstances: options.maxInstances,
        argv: ['python3', join(projectRoot(), 'fixtures', 'faas', 'floatmath.py'), join(dir, `${index}.log`), '--mib', String(options.mib), '--seed', String(index + 1), '--stdio', '1'],
      }, peer)
      names.set(index, name)
    }
    let last = performance.now()
    const start = performance.now()
    sampler = setInterval(() => {
      const now = performance.now()
      let kb = 0
      for (const fn of manager.list(peer)) {
        for (const instance of fn.instances) kb += statusKb(instance.pid, 'RssAnon') + (instance.faultServerPid === undefined ? 0 : statusKb(instance.faultServerPid, 'VmRSS'))
      }
      memoryKbSeconds += kb * ((now - last) / 1000)
      const minute = Math.min(options.trace.minutes - 1, Math.floor(((now - start) * options.speedup) / 60_000))
      if (minute >= 0) {
        minuteKb[minute] = (minuteKb[minute] ?? 0) + kb
        minuteSamples[minute] = (minuteSamples[minute] ?? 0) + 1
      }
      last = now
      peakKb = Math.max(peakKb, kb)
      samples++
    }, 250)
    const pending: Promise<void>[] = []
    for (const event of events) {
      const wait = start + event.at - performance.now()
      if (wait > 1) await sleep(wait)
      const scheduled = start + event.at
      pending.push(manager.invoke(names.get(event.fn)!, null, peer).then((result) => {
        latencies.push(performance.now() - scheduled)
        starts[result.start]++
      }, (error: Error) => {
        failures++
        firstFailure ??= error.message
      }))
    }
    await Promise.all(pending)
    // One last sample after the end, then the instances go.
    await sleep(300)
    for (const fn of manager.list(peer)) {
      if (fn.checkpoint !== null) checkpoints++
      if (fn.checkpointError !== undefined) checkpointErrors.push(`${fn.name}: ${fn.checkpointError}`)
    }
  } finally {
    if (sampler) clearInterval(sampler)
    for (const name of names.values()) {
      try {
        manager.remove(name, peer)
      } catch (error) {
        options.progress?.(`replay: removing ${name}: ${(error as Error).message}`)
      }
    }
    manager.close()
    rmSync(dir, {recursive: true, force: true})
  }
  const sorted = latencies.sort((a, b) => a - b)
  const gbSeconds = memoryKbSeconds / 1048576
  return {
    policy, invocations: events.length, failures, ...(firstFailure === undefined ? {} : {firstFailure}),
    latencyMs: {p50: percentile(sorted, 50), p99: percentile(sorted, 99), p999: percentile(sorted, 99.9), max: percentile(sorted, 100)},
    starts, memory: {gbSeconds: round3(gbSeconds), traceGbSeconds: round3(gbSeconds * options.speedup), peakGB: round3(peakKb / 1048576), samples,
      perMinuteGB: Array.from({length: options.trace.minutes}, (_, m) => round3((minuteKb[m] ?? 0) / Math.max(1, minuteSamples[m] ?? 0) / 1048576))},
    keepAliveMs, wallSeconds: round3((performance.now() - t0) / 1000), checkpoints, checkpointErrors,
  }
}

function round3(value: number): number {
  return Math.round(value * 1000) / 1000
}

export async function replay(options: ReplayOptions): Promise<ReplayReport> {
  const events = schedule(options.trace, options.speedup, options.seed)
  const deployed = options.trace.functions.map((fn, index) => (fn.counts.some((n) => n > 0) ? index : -1)).filter((index) => index >= 0)
  const policies: PolicyReport[] = []
  for (const policy of options.policies) {
    options.progress?.(`replay: ${policy}: ${events.length} invocations of ${deployed.length} functions over ${((options.trace.minutes * 60) / options.speedup).toFixed(1)} s`)
    const report = await replayPolicy(policy, options, events, deployed)
    if (report.failures === report.invocations && report.invocations > 0) {
      throw new CxlforkError('FUNCTION_FAILED', `replay under ${policy}: every invocation failed, the first with: ${report.firstFailure}`, 'Check that python3 runs fixtures/faas/floatmath.py here.')
    }
    policies.push(report)
  }
  return {date: new Date().toISOString(), command: options.command, trace: options.traceName, functions: options.trace.functions.length, deployed: deployed.length, minutes: options.trace.minutes, speedup: options.speedup, invocations: events.length, mib: options.mib, policies, comparisons: compareWithMow(policies)}
}

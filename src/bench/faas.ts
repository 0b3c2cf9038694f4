/**
 * The FaaS section of a benchmark run (issue 12): functions modeled on
 * FunctionBench (fixtures/faas/*.py, run by the real Python interpreter), each
 * initialized once per repetition (the cold start), checkpointed into the
 * run's provisioned pool while it keeps running, and restored under every
 * tiering policy. A clone serves one invocation per SIGUSR1 and logs
 * `DONE pid=.. n=.. us=.. crc=..`; every result's crc must equal the one the
 * function computed at init, or the run ends with an error.
 *
 * Per function and repetition, in this order:
 *  1. cold start: spawn the interpreter, wait for READY (init includes one
 *     invocation, gc.freeze, see fixtures/faas/faasfn.py);
 *  2. checkpoint (engine, in process);
 *  3. `mow-unrecorded`: a mow clone before any access bits exist;
 *  4. recording: a mow clone restored with --record serves one invocation
 *     and is told to exit (os._exit, no interpreter teardown); its recorder
 *     writes the accessed and written pages into the checkpoint at its exit;
 *  5. per policy (mow, moa, hybrid, local): an engine restore in process, the
 *     clone's first invocation, its memory (RssAnon, smaps_rollup Pss), then
 *     `warm` more invocations; and a whole `cxlfork restore` command, timed
 *     and killed. mow now copies the recorded dirty pages, hybrid the accessed;
 *  6. local fork: SIGUSR2 makes the function os.fork() a child that serves the
 *     same way; the child is measured as a clone;
 *  7. on the last repetition, the concurrent set: `clones` clones per policy
 *     (and as many forked children), all invoked at once, then their memory
 *     summed; a moa clone's fault server is a process of its own, measured
 *     apart (its RSS and Pss), not hidden in the clones' figures.
 */
import {closeSync, mkdtempSync, openSync, readSync, rmSync} from 'node:fs'
import {execFileSync} from 'node:child_process'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {CxlforkError, UsageError} from '../errors.js'
import {projectRoot} from '../paths.js'
import type {Pool} from '../pool/index.js'
import type {Policy} from '../restore/plan.js'
import {wait4} from '../sys/ptrace.js'
import {posixSpawn} from '../sys/spawn.js'
import {SIG, killQuiet} from '../sys/syscall.js'
import {isAlive, readSmapsRollup, readStatus} from '../sys/proc.js'
import {wholeCommand} from './measure.js'
import {Samples} from './summary.js'
import type {Summary, TargetVerdict} from './types.js'

/** A function of the section: its fixture and what it does with its state. */
export interface FaasFunction {
  name: string
  /** File under fixtures/faas/. */
  file: string
  /** Default state size, MiB. */
  mib: number
  /** Its invocations read the state without writing it (raw arrays, no refcounts): the memory target applies. */
  readMostly: boolean
  /** What an invocation does, for the report. */
  invocation: string
}

export const FAAS_FUNCTIONS: readonly FaasFunction[] = [
  {name: 'float', file: 'floatmath.py', mib: 24, readMostly: true, invocation: 'sin·cos+sqrt over every 16th double of an array(\'d\') (every page of it)'},
  {name: 'linpack', file: 'linpack.py', mib: 32, readMostly: true, invocation: 'LU solve (partial pivoting, pure Python) of 2 of a bank of 96x96 systems in one array(\'d\')'},
  {name: 'json', file: 'jsondoc.py', mib: 64, readMostly: false, invocation: 'json.dumps of 1,500 records spread over a store of dicts, json.loads back (writes the refcounts of what it encodes)'},
  {name: 'html', file: 'htmlrender.py', mib: 128, readMostly: false, invocation: 'str.format + html.escape of 2,000 catalog tuples spread over the catalog into an HTML table (writes refcounts)'},
  {name: 'bfs', file: 'graphbfs.py', mib: 512, readMostly: true, invocation: 'BFS from node 0 until 50,000 nodes are visited, over 8 array(\'i\') of out-edges (a fresh bytearray marks visits)'},
]

export interface FaasSelection {
  name: string
  mib: number
}

/** --faas: `all`, `''`/`none`, or `FN[:MIB],...` with FN one of FAAS_FUNCTIONS. */
export function parseFaasSelection(text: string): FaasSelection[] {
  const trimmed = text.trim()
  if (trimmed === '' || trimmed.toLowerCase() === 'none') return []
  const names = FAAS_FUNCTIONS.map((fn) => fn.name)
  const out: FaasSelection[] = []
  for (const part of trimmed.split(',').map((item) => item.trim()).filter(Boolean)) {
    if (part.toLowerCase() === 'all') {
      for (const fn of FAAS_FUNCTIONS) if (!out.some((have) => have.name === fn.name)) out.push({name: fn.name, mib: fn.mib})
      continue
    }
    const m = /^([a-z]+)(?::(\d+))?$/.exec(part)
    const fn = m ? FAAS_FUNCTIONS.find((item) => item.name === m[1]) : undefined
    const mib = m?.[2] === undefined ? fn?.mib : Number(m[2])
    if (!fn || mib === undefined || !Number.isSafeInteger(mib) || mib < 1 || mib > 65536) {
      throw new UsageError('INVALID_FAAS', `--faas: ${part} is not FUNCTION[:MIB] with FUNCTION one of ${names.join(', ')} and MIB from 1 to 65536`,
        "Use e.g. --faas all, --faas float,bfs:64, or --faas '' to skip the FaaS section.")
    }
    const known = out.findIndex((have) => have.name === fn.name)
    if (known >= 0) out[known] = {name: fn.name, mib}
    else out.push({name: fn.name, mib})
  }
  return out
}

/** Bytes a checkpoint of the selected functions may need at most: the state plus the interpreter and slack. */
export function faasCheckpointBytes(selection: readonly FaasSelection[]): number {
  return selection.length === 0 ? 0 : Math.max(...selection.map((fn) => Math.ceil(fn.mib * 1.2) + 64)) * 1048576
}

/** One measured row of a function: a policy's clones, or the local fork's children. */
export interface FaasRow {
  /** `mow-unrecorded` (before any access bits), `mow`, `moa`, `hybrid`, `local`, or `fork`. */
  id: string
  /** Engine restore (stats.restore_time), ms; for `fork`: os.fork() in the function, parent side. */
  restoreMs: Summary
  /** Whole `cxlfork restore` command, wall clock, ms (n = 0 for `fork` and `mow-unrecorded`). */
  commandMs: Summary
  /** The clone's first invocation, as the function timed it (perf_counter around the call), ms. */
  firstMs: Summary
  /** The same, from SIGUSR1 sent until its DONE line was read (1 ms polling), ms. */
  firstRoundTripMs: Summary
  /** Invocations after the first (`warm` per clone, every repetition pooled), as the function timed them, ms. */
  warmMs: Summary
  /** /proc/CLONE/status RssAnon after the first invocation: the clone's local memory, kB. */
  rssAnonKb: Summary
  /** smaps_rollup Pss (pool pages shared with other mappers counted in part), Pss_Anon, and Pss_Shmem (the pool pages it maps), kB. */
  pssKb: Summary
  pssAnonKb: Summary
  pssShmemKb: Summary
  /** Engine statistics: pages copied at restore, mapped from the pool, left to the fault server. */
  pagesRestored: Summary
  pagesMapped: Summary
  pagesLazy: Summary
  /** `moa`: the clone's fault server (a Node process of its own), VmRSS and Pss after the first invocation, kB. */
  faultServerRssKb?: Summary
  faultServerPssKb?: Summary
}

/** `clones` clones of one policy (or forked children) alive together, each invoked once at the same time. */
export interface FaasConcurrent {
  id: string
  clones: number
  /** Sums over the clones after their invocation, kB. */
  rssAnonKb: number
  pssKb: number
  /** Median first invocation under that contention, ms. */
  firstMs: number
  /** `moa`: the fault servers together (one per clone), VmRSS and Pss, kB. */
  faultServersRssKb?: number
  faultServersPssKb?: number
}

export interface FaasFunctionResult {
  name: string
  file: string
  mib: number
  readMostly: boolean
  invocation: string
  /** Bytes of memory the checkpoint held. */
  bytes: number
  /** Spawn of the interpreter until READY (init, one invocation, gc.freeze), ms. */
  coldStartMs: Summary
  /** Init as the function timed it (READY init_us), ms. */
  initMs: Summary
  /** The function's own process after init: RssAnon, kB. */
  originalRssAnonKb: Summary
  checkpointMs: Summary
  /** What the --record clone's exit recorded: pages accessed and written. */
  recordedAccessed: Summary
  recordedDirty: Summary
  rows: FaasRow[]
  concurrent: FaasConcurrent[]
  /** Invocations whose crc was checked against init's (every one; a mismatch ends the run). */
  invocationsChecked: number
}

export interface FaasResult {
  /** The interpreter (resolved path) and its version. */
  python: string
  /** Clones per policy in the concurrent set. */
  clones: number
  /** Warm invocations per clone. */
  warm: number
  functions: FaasFunctionResult[]
}

export interface FaasContext {
  pool: Pool
  engine: {
    checkpointToPool: typeof import('../checkpoint/checkpoint.js').checkpointToPool
    restoreFromPool: typeof import('../restore/restore.js').restoreFromPool
    loadCheckpoint: typeof import('../restore/restore.js').loadCheckpoint
  }
  /** `node bin/run.js` of this installation. */
  cli: {node: string; entry: string}
  functions: readonly FaasSelection[]
  runs: number
  clones: number
  warm: number
  track: (pid: number) => void
  stop: (pid: number) => void
  log: (line: string) => void
}


/** The clones measured per function: one per policy, and `moa` with 64 KiB first-touch blocks (restore --fault-pages 16) beside strict `moa`. */
interface Variant {
  id: string
  policy: Policy
  faultPages?: number
}
const VARIANTS: readonly Variant[] = [
  {id: 'mow', policy: 'mow'}, {id: 'moa', policy: 'moa'}, {id: 'moa-64k', policy: 'moa', faultPages: 16}, {id: 'hybrid', policy: 'hybrid'}, {id: 'local', policy: 'local'},
]
const READY_TIMEOUT_MS = 600_000
const INVOKE_TIMEOUT_MS = 600_000
const POLL_MS = 1

const sleeper = new Int32Array(new SharedArrayBuffer(4))
const pause = (ms: number): void => void Atomics.wait(sleeper, 0, 0, ms)
const kb = (bytes: number): number => bytes / 1024

interface LogEvent {
  kind: string
  fields: Record<string, string>
  /** performance.now() when the line was read. */
  at: number
}

/** The function's log, read as it grows: one file that the original, its clones and forked children all append to. */
class FunctionLog {
  private fd: number
  private rest = ''
  private readonly events: LogEvent[] = []
  private readonly buffer = Buffer.alloc(65536)

  constructor(readonly path: string) {
    this.fd = openSync(path, 'a+')
  }

  private pump(): void {
    for (;;) {
      const got = readSync(this.fd, this.buffer, 0, this.buffer.length, null)
      if (got <= 0) break
      this.rest += this.buffer.toString('utf8', 0, got)
    }
    const lines = this.rest.split('\n')
    this.rest = lines.pop() ?? ''
    const at = performance.now()
    for (const line of lines) {
      const [kind, ...pairs] = line.trim().split(/\s+/)
      if (!kind) continue
      const fields: Record<string, string> = {}
      for (const pair of pairs) {
        const eq = pair.indexOf('=')
        if (eq > 0) fields[pair.slice(0, eq)] = pair.slice(eq + 1)
      }
      this.events.push({kind, fields, at})
    }
  }

  /** Index of the next event to come. */
  mark(): number {
    this.pump()
    return this.events.length
  }

  /**
   * The first event from index `from` on that `match` accepts (each event is taken once), waiting up to
   * `timeoutMs`; `alive` says whether whoever must write it still can (else the wait fails at once).
   */
  waitFor(from: number, match: (event: LogEvent) => boolean, what: string, alive: () => boolean, timeoutMs: number): LogEvent {
    const deadline = performance.now() + timeoutMs
    let index = from
    for (;;) {
      this.pump()
      for (; index < this.events.length; index++) {
        const event = this.events[index]!
        if (event.kind === 'FATAL' || match(event)) {
          if (event.kind === 'FATAL') throw new CxlforkError('BENCH_TARGET_FAILED', `${what}: the function logged FATAL ${JSON.stringify(event.fields)}`)
          this.events[index] = {kind: '', fields: {}, at: event.at}
          return event
        }
      }
      if (!alive()) {
        this.pump()
        if (index === this.events.length) throw new CxlforkError('BENCH_CLONE_DIED', `${what}: the process ended before logging it (log ${this.path})`)
        continue
      }
      if (performance.now() > deadline) throw new CxlforkError('BENCH_TARGET_FAILED', `${what}: nothing after ${timeoutMs / 1000} s (log ${this.path})`)
      pause(POLL_MS)
    }
  }

  close(): void {
    closeSync(this.fd)
  }
}

/** The real interpreter behind `python3` (a pyenv shim would spawn helpers; the bench needs the exact pid it starts). */
export function resolvePython(): {path: string; version: string} {
  try {
    const out = execFileSync('python3', ['-c', 'import sys; print(sys.executable); print(sys.version.split()[0])'], {encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore']})
    const [path, version] = out.trim().split('\n')
    if (path && version) return {path, version}
  } catch {
    // reported below
  }
  throw new CxlforkError('BENCH_NO_PYTHON', 'the FaaS section needs python3 (the functions are Python programs), and none was found on PATH',
    "Install python3, or skip the section with --faas ''.")
}

interface Memory {
  rssAnonKb: number
  pssKb: number
  pssAnonKb: number
  pssShmemKb: number
}

function memoryOf(pid: number): Memory {
  const rollup = readSmapsRollup(pid)
  return {
    rssAnonKb: kb(readStatus(pid).rssAnon), pssKb: kb(rollup['Pss'] ?? 0), pssAnonKb: kb(rollup['Pss_Anon'] ?? 0), pssShmemKb: kb(rollup['Pss_Shmem'] ?? 0),
  }
}

/** A process to measure: the clone (or forked child) and what must go with it. */
interface Instance {
  pid: number
  /** The init of its PID namespace (a moa clone's), our child or adopted. */
  initPid?: number
  /** Its fault server (moa) or recorder (--record). */
  serverPid?: number
}

/** Everything the per-function measurement needs, bound once. */
class FunctionBench {
  readonly samples = new Samples()
  invocationsChecked = 0
  private readonly instances = new Set<Instance>()
  crc = ''

  constructor(
    private readonly ctx: FaasContext,
    readonly fn: FaasFunction,
    readonly mib: number,
    readonly log: FunctionLog,
    private readonly python: string,
  ) {}

  /** Start the function; returns its pid once READY, and the cold start. */
  spawn(): {pid: number; readyMs: number; initMs: number} {
    const script = join(projectRoot(), 'fixtures', 'faas', this.fn.file)
    const from = this.log.mark()
    const t0 = performance.now()
    const pid = posixSpawn({
      path: this.python, argv: [this.python, '-B', script, this.log.path, '--mib', String(this.mib), '--lifetime', '7200'],
      env: {PATH: process.env.PATH ?? '/usr/bin:/bin', PYTHONHASHSEED: '0', PYTHONDONTWRITEBYTECODE: '1'}, fds: [null, null, null], cwd: '/',
    })
    this.ctx.track(pid)
    try {
      const ready = this.log.waitFor(from, (event) => event.kind === 'READY' && Number(event.fields['pid']) === pid, `${this.fn.name} (pid ${pid}) READY`, () => isAlive(pid), READY_TIMEOUT_MS)
      const crc = ready.fields['crc'] ?? ''
      if (this.crc !== '' && crc !== this.crc) throw new CxlforkError('BENCH_CLONE_CORRUPT', `${this.fn.name}: init computed crc ${crc}, an earlier init ${this.crc}`)
      this.crc = crc
      return {pid, readyMs: ready.at - t0, initMs: Number(ready.fields['init_us']) / 1000}
    } catch (error) {
      this.ctx.stop(pid)
      throw error
    }
  }

  /** One invocation of `pid`: the function's own time and the round trip, ms; the crc checked. */
  invoke(pid: number, what: string): {ms: number; roundTripMs: number} {
    const from = this.log.mark()
    const t0 = performance.now()
    if (!killQuiet(pid, SIG.USR1)) throw new CxlforkError('BENCH_CLONE_DIED', `${what} (pid ${pid}) is gone before its invocation`)
    const done = this.log.waitFor(from, (event) => event.kind === 'DONE' && Number(event.fields['pid']) === pid, `${what} (pid ${pid}) invocation`, () => isAlive(pid), INVOKE_TIMEOUT_MS)
    this.check(done, pid, what)
    return {ms: Number(done.fields['us']) / 1000, roundTripMs: done.at - t0}
  }

  /** Invoke every pid at once; each one's time, in order. */
  invokeAll(pids: readonly number[], what: string): number[] {
    const from = this.log.mark()
    for (const pid of pids) if (!killQuiet(pid, SIG.USR1)) throw new CxlforkError('BENCH_CLONE_DIED', `${what} (pid ${pid}) is gone before its invocation`)
    return pids.map((pid) => {
      const done = this.log.waitFor(from, (event) => event.kind === 'DONE' && Number(event.fields['pid']) === pid, `${what} (pid ${pid}) invocation`, () => isAlive(pid), INVOKE_TIMEOUT_MS)
      this.check(done, pid, what)
      return Number(done.fields['us']) / 1000
    })
  }

  private check(done: LogEvent, pid: number, what: string): void {
    if (done.fields['crc'] !== this.crc) {
      throw new CxlforkError('BENCH_CLONE_CORRUPT', `${what} (pid ${pid}) computed crc ${done.fields['crc']}, not ${this.crc} as the function did at init`)
    }
    this.invocationsChecked++
  }

  /** Engine restore of `name` under `policy`, tracked for cleanup. */
  restore(name: string, policy: Policy, record = false, faultPages?: number): {instance: Instance; restoreMs: number; stats: Record<string, number>} {
    const result = this.ctx.engine.restoreFromPool(this.ctx.pool, {name, policy, wait: false, ...(record ? {record: true} : {}), ...(faultPages === undefined ? {} : {faultPages})})
    const instance: Instance = {
      pid: result.pid, ...(result.pidNamespace ? {initPid: result.pidNamespace.initPid} : {}), ...(result.faultServerPid === undefined ? {} : {serverPid: result.faultServerPid}),
    }
    this.adopt(instance)
    if (!isAlive(result.pid)) throw new CxlforkError('BENCH_CLONE_DIED', `${this.fn.name}/${policy} clone ${result.pid} died right after restore`)
    return {instance, restoreMs: result.stats.restore_time / 1000, stats: {...result.stats}}
  }

  /** Fork a child of the function's own process (SIGUSR2); tracked for cleanup. */
  fork(original: number): {instance: Instance; forkMs: number} {
    const from = this.log.mark()
    if (!killQuiet(original, SIG.USR2)) throw new CxlforkError('BENCH_TARGET_FAILED', `${this.fn.name} (pid ${original}) is gone`)
    const forked = this.log.waitFor(from, (event) => event.kind === 'FORKED' && Number(event.fields['pid']) === original, `${this.fn.name} (pid ${original}) fork`, () => isAlive(original), INVOKE_TIMEOUT_MS)
    const instance: Instance = {pid: Number(forked.fields['child'])}
    this.adopt(instance)
    return {instance, forkMs: Number(forked.fields['us']) / 1000}
  }

  private adopt(instance: Instance): void {
    this.instances.add(instance)
    this.ctx.track(instance.pid)
    if (instance.initPid !== undefined) this.ctx.track(instance.initPid)
    if (instance.serverPid !== undefined) this.ctx.track(instance.serverPid)
  }

  /** Kill and reap a clone, then its init and its server (which ends with the clone anyway). */
  end(instance: Instance): void {
    this.ctx.stop(instance.pid)
    if (instance.initPid !== undefined) this.ctx.stop(instance.initPid)
    if (instance.serverPid !== undefined) this.ctx.stop(instance.serverPid)
    this.instances.delete(instance)
  }

  endAll(): void {
    for (const instance of [...this.instances]) this.end(instance)
  }

  /** VmRSS and Pss of a fault server, kB. */
  serverMemory(pid: number): {rssKb: number; pssKb: number} {
    return {rssKb: kb(readStatus(pid).vmRSS), pssKb: kb(readSmapsRollup(pid)['Pss'] ?? 0)}
  }

  /** Measure one clone or forked child: first invocation, memory, warm invocations; then end it. */
  measure(row: string, instance: Instance, tag: string): void {
    const s = this.samples
    try {
      const first = this.invoke(instance.pid, `${this.fn.name}/${row}`)
      const memory = memoryOf(instance.pid)
      s.add(`${row}.first`, first.ms)
      s.add(`${row}.firstRoundTrip`, first.roundTripMs)
      s.add(`${row}.rssAnon`, memory.rssAnonKb)
      s.add(`${row}.pss`, memory.pssKb)
      s.add(`${row}.pssAnon`, memory.pssAnonKb)
      s.add(`${row}.pssShmem`, memory.pssShmemKb)
      let server = ''
      if (instance.serverPid !== undefined && row.startsWith('moa')) {
        const sm = this.serverMemory(instance.serverPid)
        s.add(`${row}.serverRss`, sm.rssKb)
        s.add(`${row}.serverPss`, sm.pssKb)
        server = `; its fault server ${sm.rssKb} kB RSS`
      }
      const warm: number[] = []
      for (let i = 0; i < this.ctx.warm; i++) warm.push(this.invoke(instance.pid, `${this.fn.name}/${row}`).ms)
      for (const ms of warm) s.add(`${row}.warm`, ms)
      const sorted = [...warm].sort((a, b) => a - b)
      this.ctx.log(`${tag} ${row}: first invocation ${first.ms.toFixed(1)} ms (round trip ${first.roundTripMs.toFixed(1)}), warm ${sorted.length ? sorted[sorted.length >> 1]!.toFixed(1) : '–'} ms; RssAnon ${memory.rssAnonKb} kB, Pss ${memory.pssKb} kB${server}`)
    } finally {
      this.end(instance)
    }
  }

  /** A whole `cxlfork restore` command: wall clock; its clone (and init, fault server: adopted by us, the subreaper) killed. */
  command(name: string, policy: Policy, faultPages?: number): number {
    let instance: Instance | undefined
    const run = wholeCommand({
      argv: [this.ctx.cli.node, this.ctx.cli.entry, 'restore', name, '--policy', policy, ...(faultPages === undefined ? [] : ['--fault-pages', String(faultPages)]), '--json', '--pool', this.ctx.pool.path],
      parse: (stdout) => {
        const parsed = JSON.parse(stdout) as {pid?: unknown; faultServerPid?: unknown; pidNamespace?: {initPid?: unknown} | null}
        if (typeof parsed.pid !== 'number') throw new Error(`cxlfork restore printed no pid: ${stdout.slice(0, 200)}`)
        instance = {
          pid: parsed.pid, ...(typeof parsed.pidNamespace?.initPid === 'number' ? {initPid: parsed.pidNamespace.initPid} : {}),
          ...(typeof parsed.faultServerPid === 'number' ? {serverPid: parsed.faultServerPid} : {}),
        }
        this.adopt(instance)
        return {pid: parsed.pid}
      },
    })
    if (instance) {
      const alive = isAlive(instance.pid)
      this.end(instance)
      if (!alive) throw new CxlforkError('BENCH_CLONE_DIED', `${this.fn.name}/${policy} clone ${run.pid} of the whole command is not running`)
    }
    return run.ms
  }
}

function measureFunction(ctx: FaasContext, selection: FaasSelection, python: string): FaasFunctionResult {
  const fn = FAAS_FUNCTIONS.find((item) => item.name === selection.name)!
  const dir = mkdtempSync(join(tmpdir(), `cxlfork-bench-faas-${fn.name}-`))
  const log = new FunctionLog(join(dir, `${fn.name}.log`))
  const bench = new FunctionBench(ctx, fn, selection.mib, log, python)
  const s = bench.samples
  const concurrent: FaasConcurrent[] = []
  let bytes = 0
  try {
    for (let run = 1; run <= ctx.runs; run++) {
      const tag = `[faas ${fn.name}:${selection.mib} ${run}/${ctx.runs}]`
      const original = bench.spawn()
      s.add('coldStart', original.readyMs)
      s.add('init', original.initMs)
      s.add('originalRssAnon', kb(readStatus(original.pid).rssAnon))
      ctx.log(`${tag} cold start ${original.readyMs.toFixed(0)} ms (init ${original.initMs.toFixed(0)} ms), RssAnon ${kb(readStatus(original.pid).rssAnon)} kB, crc ${bench.crc}`)
      const name = `bench-faas-${fn.name}-${run}-${process.pid}`
      try {
        const checkpoint = ctx.engine.checkpointToPool(ctx.pool, {pid: original.pid, name, kill: false})
        bytes = checkpoint.bytes
        s.add('checkpoint', checkpoint.totalUs / 1000)
        ctx.log(`${tag} checkpoint ${(checkpoint.totalUs / 1000).toFixed(1)} ms, ${(checkpoint.bytes / 1048576).toFixed(1)} MiB`)
        try {
          const unrecorded = bench.restore(name, 'mow')
          s.add('mow-unrecorded.restore', unrecorded.restoreMs)
          addStats(s, 'mow-unrecorded', unrecorded.stats)
          bench.measure('mow-unrecorded', unrecorded.instance, tag)

          record(ctx, bench, name, tag)

          for (const variant of VARIANTS) {
            const id = variant.id
            const restored = bench.restore(name, variant.policy, false, variant.faultPages)
            s.add(`${id}.restore`, restored.restoreMs)
            addStats(s, id, restored.stats)
            if (restored.stats['pages_restored'] !== undefined) ctx.log(`${tag} ${id}: engine restore ${restored.restoreMs.toFixed(1)} ms, ${restored.stats['pages_restored']} pages copied, ${restored.stats['pages_mapped']} mapped, ${restored.stats['pages_lazy']} lazy`)
            bench.measure(id, restored.instance, tag)
            const commandMs = bench.command(name, variant.policy, variant.faultPages)
            s.add(`${id}.command`, commandMs)
            ctx.log(`${tag} ${id}: whole command ${commandMs.toFixed(0)} ms`)
          }

          const fork = bench.fork(original.pid)
          s.add('fork.restore', fork.forkMs)
          ctx.log(`${tag} fork: os.fork() ${fork.forkMs.toFixed(2)} ms in the function`)
          bench.measure('fork', fork.instance, tag)

          if (run === ctx.runs && ctx.clones > 0) {
            for (const variant of VARIANTS) concurrent.push(concurrentSet(ctx, bench, variant.id, () => bench.restore(name, variant.policy, false, variant.faultPages).instance, tag))
            concurrent.push(concurrentSet(ctx, bench, 'fork', () => bench.fork(original.pid).instance, tag))
          }
        } finally {
          bench.endAll()
          ctx.pool.remove(name)
          ctx.pool.gc()
        }
      } finally {
        ctx.stop(original.pid)
      }
    }
  } finally {
    bench.endAll()
    log.close()
    rmSync(dir, {recursive: true, force: true})
  }
  const rowIds = ['fork', 'mow-unrecorded', ...VARIANTS.map((variant) => variant.id)]
  const rows: FaasRow[] = rowIds.map((id) => ({
    id, restoreMs: s.summary(`${id}.restore`), commandMs: s.summary(`${id}.command`), firstMs: s.summary(`${id}.first`), firstRoundTripMs: s.summary(`${id}.firstRoundTrip`),
    warmMs: s.summary(`${id}.warm`), rssAnonKb: s.summary(`${id}.rssAnon`), pssKb: s.summary(`${id}.pss`), pssAnonKb: s.summary(`${id}.pssAnon`), pssShmemKb: s.summary(`${id}.pssShmem`),
    pagesRestored: s.summary(`${id}.pages_restored`), pagesMapped: s.summary(`${id}.pages_mapped`), pagesLazy: s.summary(`${id}.pages_lazy`),
    ...(id.startsWith('moa') ? {faultServerRssKb: s.summary(`${id}.serverRss`), faultServerPssKb: s.summary(`${id}.serverPss`)} : {}),
  }))
  return {
    name: fn.name, file: `fixtures/faas/${fn.file}`, mib: selection.mib, readMostly: fn.readMostly, invocation: fn.invocation, bytes,
    coldStartMs: s.summary('coldStart'), initMs: s.summary('init'), originalRssAnonKb: s.summary('originalRssAnon'), checkpointMs: s.summary('checkpoint'),
    recordedAccessed: s.summary('recordedAccessed'), recordedDirty: s.summary('recordedDirty'), rows, concurrent, invocationsChecked: bench.invocationsChecked,
  }
}

function addStats(s: Samples, row: string, stats: Record<string, number>): void {
  for (const key of ['pages_restored', 'pages_mapped', 'pages_lazy']) if (stats[key] !== undefined) s.add(`${row}.${key}`, stats[key]!)
}

/** Wait until a process exits by itself: reaped if it is our child, else until /proc shows it gone. */
function awaitExit(pid: number): void {
  try {
    wait4(pid, 0)
    return
  } catch {
    // not our child
  }
  const deadline = performance.now() + INVOKE_TIMEOUT_MS
  while (isAlive(pid)) {
    if (performance.now() > deadline) throw new CxlforkError('BENCH_PROCESS_LEFT', `process ${pid} did not exit by itself`)
    pause(POLL_MS)
  }
}

/**
 * Record access bits the way a deployment would: a mow clone restored with --record serves one invocation and
 * exits; its recorder records at the exit stop and then exits itself (both are our children: reaped in order).
 */
function record(ctx: FaasContext, bench: FunctionBench, name: string, tag: string): void {
  const restored = bench.restore(name, 'mow', true)
  const {instance} = restored
  const first = bench.invoke(instance.pid, `${bench.fn.name}/record`)
  const from = bench.log.mark()
  killQuiet(instance.pid, SIG.TERM)
  bench.log.waitFor(from, (event) => event.kind === 'EXIT' && Number(event.fields['pid']) === instance.pid, `${bench.fn.name}/record exit`, () => isAlive(instance.pid), INVOKE_TIMEOUT_MS)
  awaitExit(instance.pid)
  if (instance.serverPid !== undefined) awaitExit(instance.serverPid)
  bench.end(instance)
  const summary = ctx.engine.loadCheckpoint(ctx.pool, name).members[0]?.loaded?.record?.summary()
  if (!summary || summary.recordings < 1) throw new CxlforkError('BENCH_CLONE_DIED', `${bench.fn.name}: the --record clone's exit recorded nothing in ${name}`)
  bench.samples.add('recordedAccessed', summary.accessed)
  bench.samples.add('recordedDirty', summary.dirty)
  ctx.log(`${tag} recorded (a --record clone, one invocation of ${first.ms.toFixed(1)} ms, then exit): ${summary.accessed} pages accessed, ${summary.dirty} written`)
}

/** `clones` instances alive together, invoked at once; their memory summed after. */
function concurrentSet(ctx: FaasContext, bench: FunctionBench, id: string, make: () => Instance, tag: string): FaasConcurrent {
  const instances: Instance[] = []
  try {
    for (let i = 0; i < ctx.clones; i++) instances.push(make())
    const times = bench.invokeAll(instances.map((instance) => instance.pid), `${bench.fn.name}/${id} x${ctx.clones}`)
    let rssAnonKb = 0
    let pssKb = 0
    let serversRss = 0
    let serversPss = 0
    for (const instance of instances) {
      const memory = memoryOf(instance.pid)
      rssAnonKb += memory.rssAnonKb
      pssKb += memory.pssKb
      if (instance.serverPid !== undefined) {
        const sm = bench.serverMemory(instance.serverPid)
        serversRss += sm.rssKb
        serversPss += sm.pssKb
      }
    }
    times.sort((a, b) => a - b)
    const firstMs = times.length % 2 ? times[times.length >> 1]! : (times[times.length / 2 - 1]! + times[times.length / 2]!) / 2
    const servers = instances.some((instance) => instance.serverPid !== undefined)
    ctx.log(`${tag} ${ctx.clones} x ${id}: RssAnon ${rssAnonKb} kB, Pss ${pssKb} kB together${servers ? `; fault servers ${serversRss} kB RSS, ${serversPss} kB Pss` : ''}; first invocation ${firstMs.toFixed(1)} ms (median)`)
    return {id, clones: instances.length, rssAnonKb, pssKb, firstMs: Math.round(firstMs * 1000) / 1000, ...(servers ? {faultServersRssKb: serversRss, faultServersPssKb: serversPss} : {})}
  } finally {
    for (const instance of instances) bench.end(instance)
  }
}

export async function measureFaas(ctx: FaasContext): Promise<FaasResult> {
  const python = resolvePython()
  ctx.log(`[faas] ${python.path} (Python ${python.version}); functions: ${ctx.functions.map((fn) => `${fn.name}:${fn.mib}M`).join(', ')}; ${ctx.clones} concurrent clones`)
  const functions: FaasFunctionResult[] = []
  for (const selection of ctx.functions) functions.push(measureFunction(ctx, selection, python.path))
  return {python: `${python.path} (${python.version})`, clones: ctx.clones, warm: ctx.warm, functions}
}

// ---------------------------------------------------------------------------------------
// Verdicts and report

const round = (value: number, digits = 3): number => Math.round(value * 10 ** digits) / 10 ** digits

function verdict(id: string, description: string, measured: number, limit: number, unit: string): TargetVerdict {
  return {id, description, measured: round(measured), limit: round(limit), unit, pass: round(measured) <= round(limit)}
}

function rowOf(fn: FaasFunctionResult, id: string): FaasRow | undefined {
  return fn.rows.find((row) => row.id === id && row.firstMs.n > 0)
}

/** The issue's targets, after the paper, per function; local memory is RssAnon after the first invocation. */
export function faasTargets(faas: FaasResult): TargetVerdict[] {
  const out: TargetVerdict[] = []
  for (const fn of faas.functions) {
    const [fork, mow, moa, hybrid, local] = ['fork', 'mow', 'moa', 'hybrid', 'local'].map((id) => rowOf(fn, id))
    const at = `${fn.name}:${fn.mib}M`
    if (mow && fork) {
      out.push(verdict(`faas-mow-first-vs-fork@${at}`, `mow first invocation <= 1.2 x a local fork's first invocation (${at})`, mow.firstMs.median / fork.firstMs.median, 1.2, 'x'))
    }
    if (mow && local && fn.readMostly) {
      out.push(verdict(`faas-mow-memory@${at}`, `RssAnon of a mow clone after its first invocation <= 15% of a local clone's (${at}, read-mostly)`,
        100 * mow.rssAnonKb.median / local.rssAnonKb.median, 15, '%'))
    }
    if (moa && local) out.push(verdict(`faas-moa-memory-below-local@${at}`, `RssAnon of a moa clone <= a local clone's (${at})`, moa.rssAnonKb.median / local.rssAnonKb.median, 1, 'x'))
    if (moa && mow) out.push(verdict(`faas-moa-memory-above-mow@${at}`, `RssAnon of a mow clone <= a moa clone's (${at})`, mow.rssAnonKb.median / moa.rssAnonKb.median, 1, 'x'))
    if (hybrid && mow) out.push(verdict(`faas-hybrid-warm-vs-mow@${at}`, `hybrid warm invocation <= mow's (${at})`, hybrid.warmMs.median / mow.warmMs.median, 1, 'x'))
    if (hybrid && local) out.push(verdict(`faas-hybrid-memory@${at}`, `RssAnon of a hybrid clone <= a local clone's (${at})`, hybrid.rssAnonKb.median / local.rssAnonKb.median, 1, 'x'))
  }
  return out
}

function fmt(value: number): string {
  if (!Number.isFinite(value)) return '–'
  const abs = Math.abs(value)
  return abs >= 100 ? value.toFixed(0) : abs >= 10 ? value.toFixed(1) : abs >= 1 ? value.toFixed(2) : value.toFixed(3)
}

function cell(summary: Summary | undefined, scale = 1): string {
  if (!summary || summary.n === 0) return '–'
  return `${fmt(summary.median * scale)} (${fmt(summary.min * scale)}–${fmt(summary.max * scale)})`
}

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n')
}

const mibOfKb = (value: number): string => fmt(value / 1024)

/** The FaaS section of BENCHMARKS.md. */
export function faasSection(faas: FaasResult, runs: number): string[] {
  const out: string[] = ['## FaaS functions', '']
  out.push(`Functions modeled on FunctionBench, in Python (${faas.python}), from \`fixtures/faas/\`. Each repetition cold-starts the function (spawn until READY: init builds the state, runs one invocation, \`gc.freeze()\`), checkpoints it, restores it per policy and invokes each clone: once (**first**), then ${faas.warm} more times (**warm**, pooled over repetitions). Invocation times are what the function measured around its call (\`perf_counter\`); the round trip (SIGUSR1 until the DONE line is read) is in the JSON. Every result's crc equals the one the function computed at init. Access bits come from a \`--record\` mow clone that served one invocation and exited, so \`mow\` then copies the pages it wrote and \`hybrid\` those it accessed; \`mow-unrecorded\` is a mow clone before any bits existed. **fork** is a child the initialized function forks (\`os.fork()\` on SIGUSR2; its time is the parent's \`os.fork()\`), measured as a clone. Memory is read after the first invocation: **RssAnon** (the clone's local memory) and **Pss** from \`smaps_rollup\` (pool pages it maps count in part; a fork child's RssAnon counts the pages it still shares copy-on-write with the function's process, its Pss half of each). A \`moa\` clone's fault server is a process of its own (Node), reported apart. ${runs} repetitions; medians (min–max).`, '')
  out.push(table(['Function', 'State (--mib)', 'Checkpointed', 'Invocation', 'Cold start (exec + init)', 'Checkpoint', 'RssAnon of the function', 'Recorded: accessed / written pages'],
    faas.functions.map((fn) => [
      `${fn.name}${fn.readMostly ? ' (read-mostly)' : ''}`, `${fn.mib} MiB`, `${fmt(fn.bytes / 1048576)} MiB`, fn.invocation, cell(fn.coldStartMs), cell(fn.checkpointMs),
      `${mibOfKb(fn.originalRssAnonKb.median)} MiB`, `${fmt(fn.recordedAccessed.median)} / ${fmt(fn.recordedDirty.median)}`,
    ])), '')
  out.push('Per clone (ms; memory in MiB):', '')
  out.push(table(['Function', 'Row', 'Restore (engine)', 'Whole command', 'First invocation', 'Warm invocation', 'First / fork\'s first', 'RssAnon', 'RssAnon / local\'s', 'Pss', 'Pages copied / mapped / lazy at restore', 'Fault server RSS / Pss'],
    faas.functions.flatMap((fn) => {
      const fork = rowOf(fn, 'fork')
      const local = rowOf(fn, 'local')
      return fn.rows.filter((row) => row.firstMs.n > 0).map((row) => [
        fn.name, row.id, cell(row.restoreMs), cell(row.commandMs), cell(row.firstMs), cell(row.warmMs),
        fork ? `${fmt(row.firstMs.median / fork.firstMs.median)}x` : '–', mibOfKb(row.rssAnonKb.median),
        local ? `${fmt(100 * row.rssAnonKb.median / local.rssAnonKb.median)} %` : '–', mibOfKb(row.pssKb.median),
        row.id === 'fork' ? '–' : `${fmt(row.pagesRestored.median)} / ${fmt(row.pagesMapped.median)} / ${fmt(row.pagesLazy.median)}`,
        row.faultServerRssKb && row.faultServerRssKb.n > 0 ? `${mibOfKb(row.faultServerRssKb.median)} / ${mibOfKb(row.faultServerPssKb?.median ?? Number.NaN)}` : '–',
      ])
    })), '')
  if (faas.functions.some((fn) => fn.concurrent.length > 0)) {
    out.push(`${faas.clones} clones together (last repetition; all invoked at once, memory summed after; MiB):`, '')
    out.push(table(['Function', 'Row', 'Sum of RssAnon', 'Sum of Pss', 'Fault servers: RSS / Pss', 'First invocation under contention (median, ms)'],
      faas.functions.flatMap((fn) => fn.concurrent.map((set) => [
        fn.name, `${set.clones} x ${set.id}`, mibOfKb(set.rssAnonKb), mibOfKb(set.pssKb),
        set.faultServersRssKb === undefined ? '–' : `${mibOfKb(set.faultServersRssKb)} / ${mibOfKb(set.faultServersPssKb ?? Number.NaN)}`, fmt(set.firstMs),
      ]))), '')
  }
  return out
}

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
import {mkdtempSync, rmSync} from 'node:fs'
import {execFileSync} from 'node:child_process'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {CxlforkError} from '../errors.js'
import {projectRoot} from '../paths.js'
import type {Policy} from '../restore/plan.js'
import {wait4} from '../sys/ptrace.js'
import {posixSpawn} from '../sys/spawn.js'
import {SIG, killQuiet} from '../sys/syscall.js'
import {isAlive, readSmapsRollup, readStatus} from '../sys/proc.js'
import {wholeCommand} from './measure.js'
import {Samples} from './summary.js'
import {type LogEvent, FunctionLog} from './faas-log.js'
import {FAAS_FUNCTIONS, type FaasConcurrent, type FaasContext, type FaasFunction, type FaasFunctionResult, type FaasResult, type FaasRow, type FaasSelection} from './faas-spec.js'

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

  /**
   * Measure one clone or forked child: first invocation, memory, warm invocations; then end it.
   * With `deferWarm` the clone is left running after its first invocation and memory, for warmRoundRobin.
   */
  measure(row: string, instance: Instance, tag: string, deferWarm = false): void {
    const s = this.samples
    let ended = true
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
      const what = `first invocation ${first.ms.toFixed(1)} ms (round trip ${first.roundTripMs.toFixed(1)})`
      if (deferWarm) {
        this.ctx.log(`${tag} ${row}: ${what}; RssAnon ${memory.rssAnonKb} kB, Pss ${memory.pssKb} kB${server}; warm invocations later, in turn with the other clones`)
        ended = false
        return
      }
      const warm: number[] = []
      for (let i = 0; i < this.ctx.warm; i++) warm.push(this.invoke(instance.pid, `${this.fn.name}/${row}`).ms)
      for (const ms of warm) s.add(`${row}.warm`, ms)
      this.ctx.log(`${tag} ${row}: ${what}, warm ${median(warm)} ms; RssAnon ${memory.rssAnonKb} kB, Pss ${memory.pssKb} kB${server}`)
    } catch (error) {
      ended = true
      throw error
    } finally {
      if (ended) this.end(instance)
    }
  }

  /**
   * Warm invocations of clones measured with deferWarm, taken in turn (one invocation of each
   * clone, then the next round), so that a drift of the host during the sequence weighs on every
   * row alike: warm rows differ by a few percent, less than the host drifts between two clones
   * measured one after the other. Every clone is ended afterwards.
   */
  warmRoundRobin(clones: readonly {row: string; instance: Instance}[], tag: string): void {
    try {
      const warm = new Map(clones.map(({row}) => [row, [] as number[]]))
      for (let i = 0; i < this.ctx.warm; i++) {
        // Each round in another order: no row is always first after the previous round's last.
        const order = clones.map((_, k) => clones[(k + i) % clones.length]!)
        for (const {row, instance} of order) warm.get(row)!.push(this.invoke(instance.pid, `${this.fn.name}/${row}`).ms)
      }
      for (const [row, times] of warm) {
        for (const ms of times) this.samples.add(`${row}.warm`, ms)
      }
      this.ctx.log(`${tag} warm invocations in turn: ${[...warm].map(([row, times]) => `${row} ${median(times)} ms`).join(', ')}`)
    } finally {
      for (const {instance} of clones) this.end(instance)
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

function median(times: readonly number[]): string {
  const sorted = [...times].sort((a, b) => a - b)
  return sorted.length ? sorted[sorted.length >> 1]!.toFixed(1) : '–'
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

          const waiting: {row: string; instance: Instance}[] = []
          for (const variant of VARIANTS) {
            const id = variant.id
            const restored = bench.restore(name, variant.policy, false, variant.faultPages)
            s.add(`${id}.restore`, restored.restoreMs)
            addStats(s, id, restored.stats)
            if (restored.stats['pages_restored'] !== undefined) ctx.log(`${tag} ${id}: engine restore ${restored.restoreMs.toFixed(1)} ms, ${restored.stats['pages_restored']} pages copied, ${restored.stats['pages_mapped']} mapped, ${restored.stats['pages_lazy']} lazy`)
            bench.measure(id, restored.instance, tag, true)
            waiting.push({row: id, instance: restored.instance})
            const commandMs = bench.command(name, variant.policy, variant.faultPages)
            s.add(`${id}.command`, commandMs)
            ctx.log(`${tag} ${id}: whole command ${commandMs.toFixed(0)} ms`)
          }

          const fork = bench.fork(original.pid)
          s.add('fork.restore', fork.forkMs)
          ctx.log(`${tag} fork: os.fork() ${fork.forkMs.toFixed(2)} ms in the function`)
          bench.measure('fork', fork.instance, tag, true)
          waiting.push({row: 'fork', instance: fork.instance})
          bench.warmRoundRobin(waiting.splice(0), tag)

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

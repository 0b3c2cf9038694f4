/**
 * The benchmark run: for each size, one long-lived target is checkpointed
 * --runs times; each checkpoint is restored per policy in process (engine)
 * and by the whole `cxlfork restore` command, each clone measured, checked
 * and killed, then the checkpoint removed. Plain write, local fork and cold
 * start are measured in the same repetitions, so every ratio comes from one run.
 * Then the threads section (threads.ts): checkpoint and engine restore of
 * targets with 1, 8, 64... threads at one size, into the same pool; and the
 * trees section (trees.ts): the same for trees of 1, 4... processes.
 */
import {randomBytes} from 'node:crypto'
import {rmSync, unlinkSync} from 'node:fs'
import {loadavg} from 'node:os'
import {dirname, join} from 'node:path'

import {CxlforkError} from '../errors.js'
import {Pool, SEGMENT_SIZE} from '../pool/index.js'
import {isAlive, readMaps, readStatus} from '../sys/proc.js'
import {PR, prctl} from '../sys/syscall.js'
import {machineInfo, stealMs} from './machine.js'
import {commandWallMs, localFork, nodeStartup, patternBuffer, plainMmap, plainWrite, plainWriteFromMemory, plainWriteIntoAllocated, primeFreePages, sameBytesBuffer, timedSpawn, wholeCommand} from './measure.js'
import type {BenchPath, RestoreSample} from './paths.js'
import {Samples, summarize} from './summary.js'
import {spawnTarget, stopProcess, sweepChildren, TargetFiles, TARGET_COMM, verifyPattern} from './target.js'
import {type BenchPorter, startBenchPorter} from './bench-porter.js'
import {type RealCriuProbe, realCriuCycle} from './real-criu.js'
import {measureThreads} from './threads.js'
import {measureTrees} from './trees.js'
import {measureFaas} from './faas.js'
import {faasTargets} from './faas-report.js'
import {faasCheckpointBytes, type FaasResult, type FaasSelection} from './faas-spec.js'
import type {BenchResult, PathResult, RestoreRow, SizeResult, TargetVerdict, ThreadsResult, TreesResult} from './types.js'
import {evaluateTargets, threadRatios, treeRatios} from './verdicts.js'

const WARMUP_SIZE = 4 << 20
/** Row prefix of real CRIU's figures ("real-criu", "real-criu/restore"). */
export const REAL_CRIU = 'real-criu'

export interface BenchSize {
  bytes: number
  label: string
}

export interface BenchOptions {
  sizes: readonly BenchSize[]
  runs: number
  policies: readonly ('mow' | 'local')[]
  /** Use this pool (created if missing, kept); default: a temporary pool removed at the end. */
  pool?: string
  hugePages: boolean
  /** Also measure the CRIU-format baseline path (criu dump / criu restore). */
  criu: boolean
  /** Real CRIU to measure beside the rest (probeRealCriu), or why there is none. */
  realCriu?: RealCriuProbe
  /** Thread counts of the threads section, measured at `threadsSize`; empty: no threads section. */
  threads: readonly number[]
  /** Size of the threads section's targets; default: the first of `sizes`. */
  threadsSize?: BenchSize
  /** Process counts of the trees section, measured at `treeSize`; empty: no trees section. */
  trees: readonly number[]
  /** Size the root of each of the trees section's targets touches; default: the first of `sizes`. */
  treeSize?: BenchSize
  /** Functions of the FaaS section (bench/faas.ts) with their state sizes; empty: no FaaS section. */
  faas?: readonly FaasSelection[]
  /** Clones per policy alive together in the FaaS section (its memory of N concurrent clones). */
  faasClones?: number
  /** Warm invocations per clone in the FaaS section. */
  faasWarm?: number
  /** Touch and free SIZE bytes before each timed step that takes new memory (primeFreePages): on by default. */
  primeFreePages: boolean
  /** Called after each step (cli/signals): throws to stop the run there; every process is stopped and every temporary file removed on the way out. */
  stopPoint?: () => void
  /** The command line, recorded in the result. */
  command: string
  /** Absolute path of bin/run.js, for whole-command restores. */
  cliEntry: string
  log: (line: string) => void
}

const alignUp = (value: number, alignment: number): number => Math.ceil(value / alignment) * alignment

/**
 * A pool for `checkpoints` checkpoints of the largest size, plus metadata (1/32 of the pool)
 * and slack. Each run's checkpoint is removed before the next one, so two are room enough.
 */
export function temporaryPoolSize(largest: number, checkpoints: number): bigint {
  const data = (alignUp(largest, SEGMENT_SIZE) + 8 * SEGMENT_SIZE) * checkpoints
  return BigInt(alignUp(Math.ceil(data * 33 / 32) + 64 * SEGMENT_SIZE, SEGMENT_SIZE))
}

const ms = (us: number): number => us / 1000

export async function runBench(options: BenchOptions): Promise<BenchResult> {
  const started = new Date()
  const atStart = {load: Math.round(loadavg()[0]! * 100) / 100, stealMs: stealMs()}
  const t0 = performance.now()
  // Each step ends with a line of progress, and a safe point: an interrupted run unwinds from there through its cleanup.
  const log = (line: string): void => {
    options.log(line)
    options.stopPoint?.()
  }
  const [{checkpointToPool}, {restoreFromPool, loadCheckpoint}, {PoolPath, CriuPath}, {criuDump}, {criuRestore}] = await Promise.all([
    import('../checkpoint/checkpoint.js'), import('../restore/restore.js'), import('./paths.js'), import('../criu/dump.js'), import('../criu/restore.js'),
  ])
  const threadsSize = options.threads.length === 0 ? undefined : options.threadsSize ?? options.sizes[0]
  if (options.threads.length > 0 && threadsSize === undefined) throw new CxlforkError('BENCH_NO_SIZE', 'the threads section needs a size: give --sizes or --threads-size')
  const treeSize = options.trees.length === 0 ? undefined : options.treeSize ?? options.sizes[0]
  if (options.trees.length > 0 && treeSize === undefined) throw new CxlforkError('BENCH_NO_SIZE', 'the trees section needs a size: give --sizes or --tree-size')
  // A tree checkpoint holds every member's pages (each child's are the parent's, copy-on-write), one extent per member.
  const treeBytes = treeSize === undefined ? 0 : Math.max(...options.trees) * (alignUp(treeSize.bytes, SEGMENT_SIZE) + SEGMENT_SIZE)
  const largest = Math.max(...options.sizes.map((size) => size.bytes), threadsSize?.bytes ?? 0, treeBytes, faasCheckpointBytes(options.faas ?? []))
  const temporary = options.pool === undefined
  const poolPath = options.pool ?? join('/dev/shm', `cxlfork-bench-${process.pid}-${randomBytes(4).toString('hex')}.pool`)
  // With a temporary pool, a checkpoint-only second path writes into a sparse pool beside it.
  const sparsePoolPath = temporary ? poolPath.replace(/\.pool$/, '-sparse.pool') : undefined
  const realCriuProbe: RealCriuProbe = options.realCriu ?? {missing: 'not probed'}
  const criu = 'criu' in realCriuProbe ? realCriuProbe.criu : undefined
  const criuMissing = 'missing' in realCriuProbe ? realCriuProbe.missing : ''
  const pids = new Set<number>()
  const live = new Set<number>()
  const track = (pid: number): number => {
    pids.add(pid)
    live.add(pid)
    return pid
  }
  const stop = (pid: number): void => {
    stopProcess(pid)
    live.delete(pid)
  }
  // The clone first: a multi-threaded clone's init then sees it end, exits by itself and is reaped as our child.
  const stopClone = (clone: RestoreSample): void => {
    stop(clone.pid)
    if (clone.initPid !== undefined) stop(clone.initPid)
  }

  // Clones restored by `cxlfork restore` outlive that command: adopt them so they can be reaped.
  prctl(PR.SET_CHILD_SUBREAPER, 1)
  const files = new TargetFiles(options.hugePages)
  let pool: Pool | undefined
  let sparsePool: Pool | undefined
  let benchPorter: BenchPorter | undefined
  const paths: BenchPath[] = []
  try {
    const engine = {checkpointToPool, restoreFromPool}
    const cli = {node: process.execPath, entry: options.cliEntry}
    if (temporary) {
      const size = temporaryPoolSize(largest, 2)
      log(`pool: temporary ${poolPath} (${size / (1n << 20n)} MiB, provisioned), and ${sparsePoolPath} (sparse, checkpoints only)`)
      pool = Pool.create(poolPath, {size, provision: true})
      sparsePool = Pool.create(sparsePoolPath!, {size})
    } else {
      log(`pool: ${poolPath}`)
      pool = Pool.open(poolPath, {create: true})
    }
    paths.push(new PoolPath('pool', pool, options.policies, engine, cli))
    if (sparsePool) paths.push(new PoolPath('pool-sparse', sparsePool, [], engine, cli))
    if (options.criu) {
      const imagesRoot = join(dirname(pool.path), `cxlfork-bench-images-${process.pid}`)
      paths.push(new CriuPath(imagesRoot, {criuDump, criuRestore}, {node: process.execPath, entry: options.cliEntry}))
    }
    // The CRIU-format path's whole commands are also timed through a porter (its engine loaded, as CRIU's RPC service keeps criu resident).
    if (options.criu) {
      benchPorter = await startBenchPorter(cli, pool.path)
      log(`porter: pid ${benchPorter.pid} on ${benchPorter.socket}, for the whole \`criu dump\` / \`criu restore\` commands it serves`)
    }
    const plainDir = dirname(pool.path)
    const buffer = patternBuffer()
    const realCriuRoot = join(plainDir, `cxlfork-bench-real-criu-${process.pid}`)
    if (criu) log(`real CRIU: ${criu.version} at ${criu.bin}, images under ${realCriuRoot}`)
    else log(`real CRIU: not measured (${criuMissing})`)

    log(`node start-up: ${options.runs} runs of \`node -e 0\``)
    nodeStartup(process.execPath) // warm the page cache
    const nodeSamples: number[] = []
    for (let run = 0; run < options.runs; run++) nodeSamples.push(nodeStartup(process.execPath))
    const nodeStartupMs = summarize(nodeSamples)
    log(`  node -e 0: ${nodeStartupMs.median.toFixed(1)} ms`)
    const versionArgv = [process.execPath, options.cliEntry, '--version']
    const cliSamples: number[] = []
    for (let run = 0; run < options.runs; run++) cliSamples.push(commandWallMs(versionArgv))
    const cliVersionMs = summarize(cliSamples)
    log(`  node bin/run.js --version: ${cliVersionMs.median.toFixed(1)} ms`)

    // Warm-up, untimed: a first checkpoint/restore/fork in this process pays for JIT and FFI binding.
    log('warm-up: one untimed checkpoint, restore per policy and fork of a 4 MiB target')
    const warm = spawnTarget(files.executable(WARMUP_SIZE))
    track(warm.pid)
    try {
      for (const path of paths) {
        await path.checkpoint(warm.pid, `bench-warmup-${process.pid}`)
        try {
          for (const policy of path.policies) {
            const clone = path.restore(policy)
            track(clone.pid)
            if (clone.initPid !== undefined) track(clone.initPid)
            stopClone(clone)
          }
          // The porter's engine warms up too: its first dump and restore pay for JIT and FFI binding.
          const viaPorter = benchPorter && path.porterCommands?.(benchPorter)
          if (viaPorter) {
            stop(track(wholeCommand(viaPorter.restore()).pid))
            const dump = viaPorter.checkpoint(warm.pid, `bench-warmup-${process.pid}`)
            try {
              timedSpawn(dump.argv, dump.env)
            } finally {
              dump.cleanup()
            }
          }
        } finally {
          path.cleanup()
        }
      }
      pids.add(localFork(warm.pid).childPid)
      if (criu) realCriuCycle(criu, warm.pid, join(realCriuRoot, 'warmup'))
      plainWrite(plainDir, WARMUP_SIZE, buffer)
      plainMmap(plainDir, WARMUP_SIZE, buffer)
    } finally {
      stop(warm.pid)
    }

    const sizes: SizeResult[] = []
    for (const size of options.sizes) {
      const exe = files.executable(size.bytes)
      const samples = new Samples()
      const bytesByPath = new Map<string, number>()
      log(`[${size.label}] spawning the target${criu ? ' and the real-CRIU target' : ''}`)
      const target = spawnTarget(exe)
      track(target.pid)
      let criuTarget: number | undefined
      try {
        const region = readMaps(target.pid).find((vma) => vma.size === size.bytes && vma.kind === 'anon')
        if (!region) throw new CxlforkError('BENCH_TARGET_LAYOUT', `target ${target.pid} has no ${size.label} anonymous mapping`)
        if (criu) {
          criuTarget = spawnTarget(exe).pid
          track(criuTarget)
        }
        const criuRegion = criuTarget === undefined ? undefined : readMaps(criuTarget).find((vma) => vma.size === size.bytes && vma.kind === 'anon')
        if (criuTarget !== undefined && !criuRegion) throw new CxlforkError('BENCH_TARGET_LAYOUT', `real-CRIU target ${criuTarget} has no ${size.label} anonymous mapping`)
        const sameBytes = sameBytesBuffer(size.bytes, buffer)
        // Before each timed step that takes new memory: the same host-backed free pages for every path (measure.ts).
        const prime = (): void => {
          if (options.primeFreePages) primeFreePages(size.bytes)
        }
        for (let run = 1; run <= options.runs; run++) {
          const tag = `[${size.label} ${run}/${options.runs}]`
          // The anchor comes right before the checkpoints it is compared with. The two other
          // plain writes come after them: run in between, they slowed the next checkpoint by
          // 5-7 ms at 64 MiB (measured in one process: 50.3 against 43.8 ms), not the anchor.
          prime()
          const fromMemory = plainWriteFromMemory(plainDir, sameBytes)
          samples.add('plainWriteMemory', fromMemory)
          log(`${tag} plain write ${fromMemory.toFixed(1)} ms (same bytes from memory)`)

          for (const path of paths) {
            prime()
            const checkpoint = await path.checkpoint(target.pid, `bench-${size.label}-${run}-${process.pid}`)
            bytesByPath.set(path.name, checkpoint.bytes)
            samples.add(`${path.name}.checkpoint`, ms(checkpoint.timeUs))
            samples.add(`${path.name}.downtime`, ms(checkpoint.downtimeUs))
            samples.addAll(`${path.name}.stats.`, checkpoint.stats)
            log(`${tag} ${path.name} checkpoint ${ms(checkpoint.timeUs).toFixed(1)} ms, downtime ${ms(checkpoint.downtimeUs).toFixed(2)} ms, ${(checkpoint.bytes / 1048576).toFixed(1)} MiB`)
            try {
              for (const policy of path.policies) {
                const row = `${path.name}/${policy}`
                prime()
                const restored = path.restore(policy)
                track(restored.pid)
                if (restored.initPid !== undefined) track(restored.initPid)
                try {
                  const status = readStatus(restored.pid)
                  if (status.state === 'Z' || status.state === 'X') throw new CxlforkError('BENCH_CLONE_DIED', `${row} clone ${restored.pid} died right after restore`)
                  samples.add(`${row}.rss`, status.rssAnon / 1024)
                  samples.add(`${row}.engine`, ms(restored.engineUs))
                  samples.addAll(`${row}.stats.`, restored.stats)
                  const bad = verifyPattern(restored.pid, region.start, size.bytes)
                  if (bad >= 0) throw new CxlforkError('BENCH_CLONE_CORRUPT', `${row} clone ${restored.pid}: page ${bad} does not hold the target's pattern`)
                  log(`${tag} ${row} engine restore ${ms(restored.engineUs).toFixed(2)} ms, RssAnon ${status.rssAnon / 1024} kB`)
                } finally {
                  stopClone(restored)
                }
                prime()
                const command = wholeCommand(path.restoreCommand(policy))
                track(command.pid)
                try {
                  if (!isAlive(command.pid)) throw new CxlforkError('BENCH_CLONE_DIED', `${row} clone ${command.pid} of the whole command is not running`)
                  samples.add(`${row}.command`, command.ms)
                  if (command.engineUs !== undefined) samples.add(`${row}.commandEngine`, ms(command.engineUs))
                  log(`${tag} ${row} whole command ${command.ms.toFixed(1)} ms`)
                } finally {
                  stop(command.pid)
                }
                const viaPorter = benchPorter && path.porterCommands?.(benchPorter)
                if (viaPorter) {
                  prime()
                  const served = wholeCommand(viaPorter.restore())
                  track(served.pid)
                  try {
                    if (!isAlive(served.pid)) throw new CxlforkError('BENCH_CLONE_DIED', `${row} clone ${served.pid} of the whole command through the porter is not running`)
                    const bad = verifyPattern(served.pid, region.start, size.bytes)
                    if (bad >= 0) throw new CxlforkError('BENCH_CLONE_CORRUPT', `${row} clone ${served.pid} restored through the porter: page ${bad} does not hold the target's pattern`)
                    samples.add(`${row}.commandPorter`, served.ms)
                    log(`${tag} ${row} whole command through the porter ${served.ms.toFixed(1)} ms`)
                  } finally {
                    stop(served.pid)
                  }
                }
              }
            } finally {
              path.cleanup()
            }
            const dumpCommand = path.checkpointCommand?.(target.pid, `bench-${size.label}-${run}-${process.pid}`)
            if (dumpCommand) {
              try {
                prime()
                const timed = timedSpawn(dumpCommand.argv)
                if (timed.status !== 0) throw new CxlforkError('BENCH_COMMAND_FAILED', `${dumpCommand.argv.slice(1).join(' ')} exited with ${timed.status}: ${timed.stderr.trim().split('\n').pop() ?? ''}`)
                samples.add(`${path.name}.checkpointCommand`, timed.ms)
                log(`${tag} ${path.name} whole checkpoint command ${timed.ms.toFixed(1)} ms`)
              } finally {
                dumpCommand.cleanup()
              }
            }
            const porterDump = benchPorter && path.porterCommands?.(benchPorter).checkpoint(target.pid, `bench-${size.label}-${run}-${process.pid}`)
            if (porterDump) {
              try {
                prime()
                const timed = timedSpawn(porterDump.argv, porterDump.env)
                if (timed.status !== 0) throw new CxlforkError('BENCH_COMMAND_FAILED', `${porterDump.argv.slice(1).join(' ')} exited with ${timed.status}: ${timed.stderr.trim().split('\n').pop() ?? ''}`)
                const servedBy = (JSON.parse(timed.stdout) as {servedBy?: unknown}).servedBy
                if (servedBy !== 'porter') throw new CxlforkError('BENCH_COMMAND_FAILED', `${porterDump.argv.slice(1).join(' ')} was served by ${String(servedBy)}, not by the porter`)
                samples.add(`${path.name}.checkpointCommandPorter`, timed.ms)
                log(`${tag} ${path.name} whole checkpoint command through the porter ${timed.ms.toFixed(1)} ms`)
              } finally {
                porterDump.cleanup()
              }
            }
          }

          if (criu && criuTarget !== undefined && criuRegion) {
            // Dumped (and so killed) by CRIU, then restored as itself under the same pid.
            const real = realCriuCycle(criu, criuTarget, join(realCriuRoot, `${size.label}-${run}`), prime)
            const bad = verifyPattern(criuTarget, criuRegion.start, size.bytes)
            if (bad >= 0) throw new CxlforkError('BENCH_CLONE_CORRUPT', `process ${criuTarget} restored by real CRIU: page ${bad} does not hold the target's pattern`)
            bytesByPath.set(REAL_CRIU, real.imageBytes)
            samples.add(`${REAL_CRIU}.checkpoint`, real.dumpMs)
            samples.add(`${REAL_CRIU}.downtime`, ms(real.dumpStats['frozen_time'] ?? Number.NaN))
            samples.addAll(`${REAL_CRIU}.stats.`, {...real.dumpStats, image_bytes: real.imageBytes})
            const row = `${REAL_CRIU}/restore`
            samples.add(`${row}.command`, real.restoreMs)
            samples.add(`${row}.engine`, ms(real.restoreStats['restore_time'] ?? Number.NaN))
            samples.add(`${row}.commandEngine`, ms(real.restoreStats['restore_time'] ?? Number.NaN))
            samples.add(`${row}.rss`, real.rssAnonKb)
            samples.addAll(`${row}.stats.`, real.restoreStats)
            log(`${tag} real criu dump ${real.dumpMs.toFixed(1)} ms (frozen_time ${ms(real.dumpStats['frozen_time'] ?? Number.NaN).toFixed(1)} ms, ${(real.imageBytes / 1048576).toFixed(1)} MiB), restore ${real.restoreMs.toFixed(1)} ms (restore_time ${ms(real.restoreStats['restore_time'] ?? Number.NaN).toFixed(1)} ms), RssAnon ${real.rssAnonKb} kB`)
          }

          prime()
          const write = plainWrite(plainDir, size.bytes, buffer)
          prime()
          const mapped = plainMmap(plainDir, size.bytes, buffer)
          prime()
          const allocated = plainWriteIntoAllocated(plainDir, sameBytes)
          samples.add('plainWrite', write)
          samples.add('plainMmap', mapped)
          samples.add('plainWriteAllocated', allocated)
          log(`${tag} plain write ${write.toFixed(1)} ms (1 MiB hot buffer loop), ${mapped.toFixed(1)} ms (mmap+copy), ${allocated.toFixed(1)} ms (same bytes into allocated pages)`)

          const fork = localFork(target.pid)
          pids.add(fork.childPid)
          samples.add('fork', fork.forkMs)
          samples.add('forkInjection', fork.cloneInjectionMs)
          samples.add('noopInjection', fork.noopInjectionMs)
          log(`${tag} local fork ${fork.forkMs.toFixed(3)} ms (injected clone ${fork.cloneInjectionMs.toFixed(3)} - no-op ${fork.noopInjectionMs.toFixed(3)})`)

          prime()
          const cold = spawnTarget(exe)
          track(cold.pid)
          stop(cold.pid)
          samples.add('coldStart', cold.readyMs)
          log(`${tag} cold start ${cold.readyMs.toFixed(1)} ms`)
        }
      } finally {
        stop(target.pid)
        if (criuTarget !== undefined) stop(criuTarget)
      }

      const plainWriteMs = samples.summary('plainWrite')
      const plainMmapMs = samples.summary('plainMmap')
      const rowsOf: {name: string; policies: readonly string[]; poolKind?: 'provisioned' | 'sparse' | undefined}[] = [...paths, ...(criu ? [{name: REAL_CRIU, policies: ['restore']}] : [])]
      const pathResults: PathResult[] = rowsOf.map((path) => {
        const bytes = bytesByPath.get(path.name) ?? 0
        const restores: RestoreRow[] = path.policies.map((policy) => {
          const row = `${path.name}/${policy}`
          const rssAnonKb = samples.summary(`${row}.rss`)
          return {
            id: row, path: path.name, policy, engineMs: samples.summary(`${row}.engine`), commandMs: samples.summary(`${row}.command`),
            commandEngineMs: samples.summary(`${row}.commandEngine`),
            ...(samples.summary(`${row}.commandPorter`).n > 0 ? {commandPorterMs: samples.summary(`${row}.commandPorter`)} : {}),
            rssAnonKb, rssAnonPct: bytes > 0 ? Math.round((rssAnonKb.median * 1024 / bytes) * 100 * 10000) / 10000 : Number.NaN,
            engineStats: samples.group(`${row}.stats.`),
          }
        })
        const checkpointCommandMs = samples.summary(`${path.name}.checkpointCommand`)
        const checkpointCommandPorterMs = samples.summary(`${path.name}.checkpointCommandPorter`)
        return {
          path: path.name, ...(path.poolKind === undefined ? {} : {poolKind: path.poolKind}),
          checkpointMs: samples.summary(`${path.name}.checkpoint`), ...(checkpointCommandMs.n > 0 ? {checkpointCommandMs} : {}), ...(checkpointCommandPorterMs.n > 0 ? {checkpointCommandPorterMs} : {}), downtimeMs: samples.summary(`${path.name}.downtime`),
          bytes, engineStats: samples.group(`${path.name}.stats.`), restores,
        }
      })
      sizes.push({
        size: size.bytes, label: size.label, coldStartMs: samples.summary('coldStart'), plainWriteMs, plainMmapMs,
        plainWriteMemoryMs: samples.summary('plainWriteMemory'), plainWriteAllocatedMs: samples.summary('plainWriteAllocated'), plainAnchor: 'memory',
        forkMs: samples.summary('fork'), forkInjectionMs: samples.summary('forkInjection'), noopInjectionMs: samples.summary('noopInjection'),
        paths: pathResults,
      })
    }

    let threads: ThreadsResult | undefined
    if (threadsSize !== undefined) {
      const rows = await measureThreads({
        path: paths[0]!, files, size: threadsSize, counts: options.threads, runs: options.runs,
        track: (pid) => void track(pid), stop, stopClone, log,
      })
      threads = {size: threadsSize.bytes, label: threadsSize.label, policy: 'mow', rows, ratios: []}
      threads.ratios = threadRatios(threads)
    }

    let trees: TreesResult | undefined
    if (treeSize !== undefined) {
      const pool = paths[0]
      if (!(pool instanceof PoolPath)) throw new Error('the first bench path is not the pool path')
      const rows = await measureTrees({
        path: pool, files, size: treeSize, counts: options.trees, runs: options.runs,
        track: (pid) => void track(pid), stop, stopClone, log,
      })
      trees = {size: treeSize.bytes, label: treeSize.label, policy: 'mow', rows, ratios: []}
      trees.ratios = treeRatios(trees)
    }

    let faas: FaasResult | undefined
    if ((options.faas ?? []).length > 0) {
      faas = await measureFaas({
        pool, engine: {checkpointToPool, restoreFromPool, loadCheckpoint}, cli: {node: process.execPath, entry: options.cliEntry},
        functions: options.faas!, runs: options.runs, clones: options.faasClones ?? 8, warm: options.faasWarm ?? 5,
        track: (pid) => void track(pid), stop, log,
      })
    }

    const targets: TargetVerdict[] = [...evaluateTargets(sizes, nodeStartupMs, threads, trees), ...(faas ? faasTargets(faas) : [])]
    return {
      command: options.command, date: started.toISOString(), durationS: Math.round((performance.now() - t0) / 100) / 10, machine: machineInfo(atStart),
      config: {
        sizes: options.sizes.map((size) => size.bytes), runs: options.runs, policies: [...options.policies], pool: poolPath, poolTemporary: temporary, primeFreePages: options.primeFreePages,
        target: `static ELF generated by cxlfork (${TARGET_COMM}): mmap SIZE private anonymous, ${options.hugePages ? 'MADV_HUGEPAGE' : 'MADV_NOHUGEPAGE'}, fill page i with the word 0x63786c666f726b00+i (rep stosq), report ready on a pipe, pause() forever${threadsSize === undefined ? '' : '; in the threads section, before reporting ready, THREADS-1 more threads by raw clone(CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM), each on a 64 KiB stack of its own and in pause()'}${treeSize === undefined ? '' : "; in the trees section, before reporting ready, PROCESSES-1 children by fork(), each with PR_SET_PDEATHSIG SIGKILL and in pause(), never writing (its pages are the parent's, copy-on-write)"}`,
        hugePages: options.hugePages,
        ...(threadsSize === undefined ? {} : {threads: [...options.threads], threadsSize: threadsSize.bytes}),
        ...(treeSize === undefined ? {} : {trees: [...options.trees], treeSize: treeSize.bytes}),
      },
      realCriu: criu ? {bin: criu.bin, version: criu.version} : {missing: criuMissing},
      nodeStartupMs, cliVersionMs, sizes, ...(threads === undefined ? {} : {threads}), ...(trees === undefined ? {} : {trees}), ...(faas === undefined ? {} : {faas}), targets, pass: targets.every((verdict) => verdict.pass), pids: [...pids].sort((a, b) => a - b),
    }
  } finally {
    for (const pid of live) stopProcess(pid)
    await benchPorter?.stop()
    sweepChildren()
    for (const path of paths) path.close()
    rmSync(join(dirname(poolPath), `cxlfork-bench-real-criu-${process.pid}`), {recursive: true, force: true})
    pool?.close()
    sparsePool?.close()
    if (temporary) {
      for (const path of [poolPath, sparsePoolPath!]) {
        try {
          unlinkSync(path)
        } catch {
          // never created
        }
      }
    }
    files.remove()
    prctl(PR.SET_CHILD_SUBREAPER, 0)
  }
}

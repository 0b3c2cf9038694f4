/**
 * The threads section of a benchmark run: how checkpoint downtime and engine
 * restore grow with the number of threads at one size. For each thread count,
 * one target of that size with that many threads is checkpointed --runs
 * times into the run's provisioned pool while it keeps running; each
 * checkpoint is restored once in process (mow), the clone checked (memory
 * pattern, one /proc task per thread), killed, its PID namespace's init
 * reaped, and the checkpoint removed before the next repetition.
 *
 * Only the engine is measured here, not the whole `cxlfork restore` command:
 * the command's cost beyond the engine (Node and oclif start-up) does not
 * depend on the thread count and is in the size rows already.
 */
import {readdirSync} from 'node:fs'

import {CxlforkError} from '../errors.js'
import {readMaps, readStatus} from '../sys/proc.js'
import type {BenchPath, RestoreSample} from './paths.js'
import {Samples} from './summary.js'
import {spawnTarget, type TargetFiles, verifyPattern} from './target.js'
import type {ThreadRow} from './types.js'

/** Size of the untimed warm-up target. */
const WARMUP_SIZE = 4 << 20

/** What a section of the run measured at one size (threads, trees) gets from the run: its path, files, pids, log. */
export interface SectionContext<P extends BenchPath = BenchPath> {
  /** The provisioned pool's path: the same pool and engine calls as the size rows. */
  path: P
  files: TargetFiles
  size: {bytes: number; label: string}
  counts: readonly number[]
  runs: number
  /** Record a pid the run created (killed at the end if still alive). */
  track: (pid: number) => void
  /** Kill and reap a process (our child, or an orphan adopted as subreaper). */
  stop: (pid: number) => void
  /** Kill and reap a clone and, when it has a PID namespace of its own, its init. */
  stopClone: (clone: RestoreSample) => void
  log: (line: string) => void
}

export type ThreadsContext = SectionContext

const POLICY = 'mow'
const ms = (us: number): number => us / 1000

function taskCount(pid: number): number {
  return readdirSync(`/proc/${pid}/task`).length
}

/** Restore the path's last checkpoint (mow), hand the clone to `check`, then kill it and reap its init whatever happens. */
function withClone(ctx: ThreadsContext, check: (clone: RestoreSample) => void): void {
  const clone = ctx.path.restore(POLICY)
  ctx.track(clone.pid)
  if (clone.initPid !== undefined) ctx.track(clone.initPid)
  try {
    check(clone)
  } finally {
    ctx.stopClone(clone)
  }
}

/**
 * A first restore into a PID namespace pays for code paths that a single-threaded restore never takes
 * (the init, clone3 with set_tid, per-thread state), JIT and FFI binding included: one untimed round
 * of a 2-thread target keeps that cost out of the first measured multi-threaded row.
 */
async function warmUp(ctx: ThreadsContext): Promise<void> {
  ctx.log('[threads] warm-up: one untimed checkpoint and mow restore of a 4 MiB target with 2 threads')
  const warm = spawnTarget(ctx.files.executable(WARMUP_SIZE, 2))
  ctx.track(warm.pid)
  try {
    await ctx.path.checkpoint(warm.pid, `bench-threads-warmup-${process.pid}`)
    try {
      withClone(ctx, () => undefined)
    } finally {
      ctx.path.cleanup()
    }
  } finally {
    ctx.stop(warm.pid)
  }
}

export async function measureThreads(ctx: ThreadsContext): Promise<ThreadRow[]> {
  if (ctx.counts.some((threads) => threads > 1)) await warmUp(ctx)
  const rows: ThreadRow[] = []
  for (const threads of ctx.counts) {
    const samples = new Samples()
    let bytes = 0
    let verified = 0
    const label = `[threads ${threads} @ ${ctx.size.label}]`
    ctx.log(`${label} spawning the target`)
    const target = spawnTarget(ctx.files.executable(ctx.size.bytes, threads))
    ctx.track(target.pid)
    try {
      // The target creates its threads before it reports ready, so all of them exist by now.
      const tasks = taskCount(target.pid)
      if (tasks !== threads) throw new CxlforkError('BENCH_TARGET_THREADS', `target ${target.pid} runs ${tasks} threads, not ${threads}`)
      const region = readMaps(target.pid).find((vma) => vma.size === ctx.size.bytes && vma.kind === 'anon')
      if (!region) throw new CxlforkError('BENCH_TARGET_LAYOUT', `target ${target.pid} has no ${ctx.size.label} anonymous mapping`)
      for (let run = 1; run <= ctx.runs; run++) {
        const tag = `[threads ${threads} @ ${ctx.size.label} ${run}/${ctx.runs}]`
        const checkpoint = await ctx.path.checkpoint(target.pid, `bench-threads${threads}-${ctx.size.label}-${run}-${process.pid}`)
        bytes = checkpoint.bytes
        samples.add('checkpoint', ms(checkpoint.timeUs))
        samples.add('downtime', ms(checkpoint.downtimeUs))
        samples.addAll('checkpoint.stats.', checkpoint.stats)
        try {
          withClone(ctx, (clone) => {
            const status = readStatus(clone.pid)
            if (status.state === 'Z' || status.state === 'X') throw new CxlforkError('BENCH_CLONE_DIED', `${label} clone ${clone.pid} died right after restore`)
            samples.add('engine', ms(clone.engineUs))
            samples.addAll('restore.stats.', clone.stats)
            const cloneTasks = taskCount(clone.pid)
            if (clone.threads !== threads || cloneTasks !== threads) {
              throw new CxlforkError('BENCH_CLONE_THREADS', `${label} clone ${clone.pid} was built with ${clone.threads} threads and runs ${cloneTasks}, not ${threads}`)
            }
            const bad = verifyPattern(clone.pid, region.start, ctx.size.bytes)
            if (bad >= 0) throw new CxlforkError('BENCH_CLONE_CORRUPT', `${label} clone ${clone.pid}: page ${bad} does not hold the target's pattern`)
            verified++
            ctx.log(`${tag} checkpoint ${ms(checkpoint.timeUs).toFixed(1)} ms, downtime ${ms(checkpoint.downtimeUs).toFixed(2)} ms; mow engine restore ${ms(clone.engineUs).toFixed(2)} ms, ${cloneTasks} threads`)
          })
        } finally {
          ctx.path.cleanup()
        }
        // A checkpoint stops and resumes every thread: the original must go on with all of them.
        const after = taskCount(target.pid)
        if (after !== threads) throw new CxlforkError('BENCH_TARGET_THREADS', `target ${target.pid} runs ${after} threads after checkpoint ${run}, not ${threads}`)
      }
    } finally {
      ctx.stop(target.pid)
    }
    rows.push({
      threads, bytes, checkpointMs: samples.summary('checkpoint'), downtimeMs: samples.summary('downtime'), engineMs: samples.summary('engine'),
      clonesVerified: verified, checkpointStats: samples.group('checkpoint.stats.'), restoreStats: samples.group('restore.stats.'),
    })
  }
  return rows
}

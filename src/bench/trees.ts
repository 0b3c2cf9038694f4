/**
 * The trees section of a benchmark run: how checkpoint downtime and engine
 * restore grow with the number of processes in a tree, at one size. For each
 * process count, one target that forked that many processes minus one is
 * checkpointed with all its descendants (`checkpoint --tree`) --runs times
 * into the run's provisioned pool while the tree keeps running; each
 * checkpoint is restored once in process (mow), a tree of more than one
 * process into a PID namespace of its own (one process: in ours, as any
 * single process), the clone tree checked (members built, the root's children
 * in /proc, every member's memory pattern), its root killed (which ends the
 * namespace), its init reaped, and the checkpoint removed before the next
 * repetition.
 *
 * The children never write their memory: each holds the parent's pages
 * copy-on-write, and a checkpoint stores every member's present anonymous
 * pages, so the checkpointed bytes grow with the process count (recorded per
 * row from the checkpoint's own figure). Only the engine is measured, as in
 * the threads section.
 */
import {CxlforkError} from '../errors.js'
import {childrenOf} from '../checkpoint/preflight.js'
import {isAlive, readMaps, readStatus} from '../sys/proc.js'
import type {PoolPath, RestoreSample} from './paths.js'
import {Samples} from './summary.js'
import type {SectionContext} from './threads.js'
import {spawnTarget, verifyPattern} from './target.js'
import type {TreeRow} from './types.js'

/** Size of the untimed warm-up target. */
const WARMUP_SIZE = 4 << 20
/** How long the members of a killed clone tree may take to be gone (the kernel ends a PID namespace's processes asynchronously). */
const GONE_TIMEOUT_MS = 5000

/** Only a pool path checkpoints a tree. */
export type TreesContext = SectionContext<PoolPath>

const POLICY = 'mow'
const ms = (us: number): number => us / 1000

/** Block until every pid is gone (or a zombie); `what` names them in the error if one outlives the timeout. */
function waitGone(pids: readonly number[], what: string): void {
  const deadline = Date.now() + GONE_TIMEOUT_MS
  const sleeper = new Int32Array(new SharedArrayBuffer(4))
  for (;;) {
    const left = pids.filter(isAlive)
    if (left.length === 0) return
    if (Date.now() > deadline) throw new CxlforkError('BENCH_PROCESS_LEFT', `${what}: ${left.join(', ')} still running ${GONE_TIMEOUT_MS} ms after being killed`)
    Atomics.wait(sleeper, 0, 0, 2)
  }
}

/** Live children of a process, in pid order. */
function liveChildren(pid: number): number[] {
  return childrenOf(pid).filter(isAlive).sort((a, b) => a - b)
}

/**
 * Spawn a tree target; hand it and its children to `use`, then kill the root (its children die by their
 * PR_SET_PDEATHSIG and are reparented to this process, the run's subreaper) and reap every member whatever happens.
 */
async function withTarget(ctx: TreesContext, size: number, processes: number, use: (root: number, children: readonly number[]) => Promise<void>): Promise<void> {
  const target = spawnTarget(ctx.files.executable(size, 1, processes))
  ctx.track(target.pid)
  // The target reports ready only once every child exists and has set its death signal.
  const children = liveChildren(target.pid)
  for (const child of children) ctx.track(child)
  try {
    if (children.length !== processes - 1) {
      throw new CxlforkError('BENCH_TARGET_TREE', `target ${target.pid} has ${children.length} children, not ${processes - 1}`)
    }
    await use(target.pid, children)
  } finally {
    ctx.stop(target.pid)
    for (const child of children) ctx.stop(child)
  }
}

/**
 * Restore the path's last checkpoint (mow), hand the clone root and its children to `check`, then kill the root,
 * reap the namespace's init and wait until the children are gone, whatever happens.
 */
function withCloneTree(ctx: TreesContext, label: string, check: (clone: RestoreSample, children: readonly number[]) => void): void {
  const clone = ctx.path.restore(POLICY)
  ctx.track(clone.pid)
  if (clone.initPid !== undefined) ctx.track(clone.initPid)
  let children: number[] = []
  try {
    // Not our children (the root's, inside the namespace), but recorded so the run's pid list and its end-of-run kill cover them.
    children = liveChildren(clone.pid)
    for (const child of children) ctx.track(child)
    check(clone, children)
  } finally {
    // Killing the root makes the init exit, which ends the namespace and with it every other member.
    ctx.stopClone(clone)
    waitGone(children, `${label} members of clone tree ${clone.pid}`)
    for (const child of children) ctx.stop(child)
  }
}

/**
 * A first tree checkpoint and restore pays for code paths no single-process one takes (freezing and capturing
 * descendants, building members in a PID namespace), JIT and FFI binding included: one untimed round of a
 * 2-process tree keeps that cost out of the first measured row.
 */
async function warmUp(ctx: TreesContext): Promise<void> {
  ctx.log('[trees] warm-up: one untimed tree checkpoint and mow restore of a 4 MiB target with 2 processes')
  await withTarget(ctx, WARMUP_SIZE, 2, async (root) => {
    ctx.path.checkpointTree(root, `bench-trees-warmup-${process.pid}`)
    try {
      withCloneTree(ctx, '[trees warm-up]', () => undefined)
    } finally {
      ctx.path.cleanup()
    }
  })
}

export async function measureTrees(ctx: TreesContext): Promise<TreeRow[]> {
  if (ctx.counts.length > 0) await warmUp(ctx)
  const rows: TreeRow[] = []
  for (const processes of ctx.counts) {
    const samples = new Samples()
    let bytes = 0
    let verified = 0
    let pidNamespace: boolean | undefined
    const label = `[trees ${processes} @ ${ctx.size.label}]`
    ctx.log(`${label} spawning the target`)
    await withTarget(ctx, ctx.size.bytes, processes, async (root, children) => {
      const region = readMaps(root).find((vma) => vma.size === ctx.size.bytes && vma.kind === 'anon')
      if (!region) throw new CxlforkError('BENCH_TARGET_LAYOUT', `target ${root} has no ${ctx.size.label} anonymous mapping`)
      for (let run = 1; run <= ctx.runs; run++) {
        const tag = `[trees ${processes} @ ${ctx.size.label} ${run}/${ctx.runs}]`
        const checkpoint = ctx.path.checkpointTree(root, `bench-trees${processes}-${ctx.size.label}-${run}-${process.pid}`)
        try {
          if (checkpoint.members !== processes) throw new CxlforkError('BENCH_TARGET_TREE', `${tag} the checkpoint of ${root} holds ${checkpoint.members} processes, not ${processes}`)
          bytes = checkpoint.bytes
          samples.add('checkpoint', ms(checkpoint.timeUs))
          samples.add('downtime', ms(checkpoint.downtimeUs))
          // With one process nothing but the root is stopped: the engine's interval would be the root's snapshot, not a descendant's downtime.
          if (processes > 1) samples.add('treeDowntime', ms(checkpoint.treeDowntimeUs))
          samples.addAll('checkpoint.stats.', checkpoint.stats)
          withCloneTree(ctx, label, (clone, cloneChildren) => {
            const status = readStatus(clone.pid)
            if (status.state === 'Z' || status.state === 'X') throw new CxlforkError('BENCH_CLONE_DIED', `${label} clone ${clone.pid} died right after restore`)
            samples.add('engine', ms(clone.engineUs))
            samples.addAll('restore.stats.', clone.stats)
            // The engine picks the namespace from the checkpoint: every repetition of a row must be built the same way to be one row.
            const namespaced = clone.initPid !== undefined
            if (pidNamespace !== undefined && namespaced !== pidNamespace) throw new CxlforkError('BENCH_CLONE_TREE', `${label} clone ${clone.pid} was built ${namespaced ? 'in a PID namespace of its own' : 'in ours'}, unlike the row's earlier clones`)
            pidNamespace = namespaced
            if (clone.processes !== processes || cloneChildren.length !== processes - 1) {
              throw new CxlforkError('BENCH_CLONE_TREE', `${label} clone ${clone.pid} was built with ${clone.processes ?? '?'} processes and has ${cloneChildren.length} children, not ${processes} and ${processes - 1}`)
            }
            // Every member holds the root's pattern: the children's pages were the parent's when checkpointed.
            for (const member of [clone.pid, ...cloneChildren]) {
              const bad = verifyPattern(member, region.start, ctx.size.bytes)
              if (bad >= 0) throw new CxlforkError('BENCH_CLONE_CORRUPT', `${label} member ${member} of clone ${clone.pid}: page ${bad} does not hold the target's pattern`)
            }
            verified++
            ctx.log(`${tag} checkpoint ${ms(checkpoint.timeUs).toFixed(1)} ms (${(checkpoint.bytes / 1048576).toFixed(1)} MiB), root downtime ${ms(checkpoint.downtimeUs).toFixed(2)} ms, descendants stopped ${processes > 1 ? `${ms(checkpoint.treeDowntimeUs).toFixed(2)} ms` : '–'}; mow engine restore ${ms(clone.engineUs).toFixed(2)} ms, ${cloneChildren.length} children`)
          })
        } finally {
          ctx.path.cleanup()
        }
        // A checkpoint stops and resumes every member: the original tree must go on whole.
        const after = liveChildren(root)
        if (after.join(',') !== children.join(',')) throw new CxlforkError('BENCH_TARGET_TREE', `target ${root} has children ${after.join(', ') || 'none'} after checkpoint ${run}, not ${children.join(', ') || 'none'}`)
      }
    })
    rows.push({
      processes, bytes, checkpointMs: samples.summary('checkpoint'), downtimeMs: samples.summary('downtime'), treeDowntimeMs: samples.summary('treeDowntime'),
      engineMs: samples.summary('engine'), pidNamespace: pidNamespace ?? false, clonesVerified: verified, checkpointStats: samples.group('checkpoint.stats.'), restoreStats: samples.group('restore.stats.'),
    })
  }
  return rows
}

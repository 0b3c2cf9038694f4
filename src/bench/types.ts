/**
 * The typed result of `cxlfork bench` (printed as JSON with --json). Every
 * figure is a summary of one sample per repetition, all taken in one run.
 * Times are milliseconds (suffix Ms) unless a field says otherwise; memory
 * is kB (suffix Kb, as /proc reports it) or bytes.
 */

/** Median, min and max of n samples. */
export interface Summary {
  median: number
  min: number
  max: number
  n: number
}

export interface MachineInfo {
  cpu: string
  cores: number
  ramBytes: number
  kernel: string
  node: string
  /** /sys/kernel/mm/transparent_hugepage/enabled, the selected value. */
  thp: string
  /** 1-minute load average at the start and at the end of the run (other work on the machine skews timings). */
  loadAverage: [number, number]
  /** CPU time (ms, all cores) the hypervisor gave to other guests during the run: VM noise that load average does not show. */
  stealMs: number
}

/** One restore policy of one path, e.g. pool/mow. */
export interface RestoreRow {
  /** `${path}/${policy}`, the row's stable id. */
  id: string
  path: string
  policy: string
  /** In-process engine restore (pool: stats.restore_time). */
  engineMs: Summary
  /** Whole command, wall clock from spawn to exit, the clone detached and running by then. */
  commandMs: Summary
  /** Engine restore time the whole command reported itself (a cold process); n = 0 if it reports none. */
  commandEngineMs: Summary
  /** The CRIU-format path: the same whole command served by a running porter (engine loaded), wall clock, ms. */
  commandPorterMs?: Summary
  /** RssAnon of the clone right after restore, kB. */
  rssAnonKb: Summary
  /** Median RssAnon as a percentage of the checkpointed bytes. */
  rssAnonPct: number
  /** Engine statistics by their own (CRIU-style) names; µs unless a count. */
  engineStats: Record<string, Summary>
}

/** One checkpoint path at one size, e.g. the pool. */
export interface PathResult {
  /**
   * "pool", "pool-sparse", "criu" (cxlfork's CRIU-format path, in process) or "real-criu": a real CRIU's
   * whole `criu dump` command (checkpointMs), its stats-dump frozen_time (downtimeMs) and image bytes, and
   * one restore row, "real-criu/restore": the whole `criu restore -d` (commandMs) and its stats-restore
   * restore_time (engineMs and commandEngineMs).
   */
  path: string
  /** Pool paths: whether the pool's memory was allocated ahead (`pool init --provision`) or is taken as pages are written. */
  poolKind?: 'provisioned' | 'sparse'
  /** Whole checkpoint, ms. */
  checkpointMs: Summary
  /** The CRIU-format path: the whole `cxlfork criu dump` command (a fresh process), wall clock, ms. */
  checkpointCommandMs?: Summary
  /** The CRIU-format path: the same whole `cxlfork criu dump` served by a running porter, ms. */
  checkpointCommandPorterMs?: Summary
  /** Time the target was stopped, ms. */
  downtimeMs: Summary
  /** Bytes of memory the checkpoint holds (pool: pages × 4 KiB; CRIU: image bytes). */
  bytes: number
  /** Engine statistics by their own names; µs unless a count. */
  engineStats: Record<string, Summary>
  restores: RestoreRow[]
}

export interface SizeResult {
  /** Bytes the target touches. */
  size: number
  /** As given on the command line, e.g. 64M. */
  label: string
  /** Spawn of a fresh target until it has touched all its memory. */
  coldStartMs: Summary
  /** write(2) loop rewriting one cache-hot 1 MiB buffer, SIZE bytes in all, into a new file on the pool's file system (shown, not the anchor). */
  plainWriteMs: Summary
  /** ftruncate + mmap(MAP_SHARED) + copy (shown, not the anchor). */
  plainMmapMs: Summary
  /** write(2) of the same SIZE bytes from a SIZE-byte buffer in memory: the anchor of the checkpoint target. */
  plainWriteMemoryMs: Summary
  /** The same write(2) loop into a file whose pages were allocated first, untimed (shown, not the anchor). */
  plainWriteAllocatedMs: Summary
  /** Which plain write is the anchor (named in the JSON and the target's description): always plainWriteMemoryMs. */
  plainAnchor: 'memory'
  /** Local fork() of the target, parent side: injected clone minus a no-op injected getpid. */
  forkMs: Summary
  /** Raw injected clone(CLONE_PARENT|SIGCHLD), ms. */
  forkInjectionMs: Summary
  /** Injected getpid (the injection overhead subtracted), ms. */
  noopInjectionMs: Summary
  paths: PathResult[]
}

/** One thread count of the threads section: a target of the section's size with `threads` threads, checkpointed and restored --runs times. */
export interface ThreadRow {
  threads: number
  /** Bytes of memory each checkpoint held. */
  bytes: number
  /** Whole checkpoint into the provisioned pool (checkpointToPool), ms. */
  checkpointMs: Summary
  /** Time every thread of the target was stopped (stats.frozen_time), ms. */
  downtimeMs: Summary
  /** In-process engine restore (restoreFromPool, policy mow, stats.restore_time), ms. */
  engineMs: Summary
  /**
   * Clones whose memory pattern and task count (/proc/CLONE/task lists `threads` tasks) were checked; a clone
   * that fails either check ends the run with an error, so this equals `runs` in every result there is.
   */
  clonesVerified: number
  /** Checkpoint statistics by their CRIU names; µs unless a count. */
  checkpointStats: Record<string, Summary>
  /** Engine restore statistics by their names; µs unless a count. */
  restoreStats: Record<string, Summary>
}

/**
 * One process count of the trees section: a target of the section's size that forked `processes`-1 children
 * (idle, never writing: each child's pages are the parent's, shared copy-on-write), checkpointed with its
 * descendants (`checkpoint --tree`) and restored --runs times.
 */
export interface TreeRow {
  processes: number
  /**
   * Bytes of memory each checkpoint held, every member's: a checkpoint stores each member's present anonymous
   * pages, and a forked child has all of its parent's present, so about `processes` x the section's size.
   */
  bytes: number
  /** Whole tree checkpoint into the provisioned pool (checkpointToPool with tree: true), ms. */
  checkpointMs: Summary
  /** Time the root was stopped (downtimeUs, stats.frozen_time), ms. */
  downtimeMs: Summary
  /**
   * Time the root's descendants were stopped (treeDowntimeUs: from freezing them, before the root's snapshot,
   * until their pages were copied), ms; n = 0 for one process, which has no descendant to stop.
   */
  treeDowntimeMs: Summary
  /** In-process engine restore of the whole tree (restoreFromPool, policy mow, stats.restore_time), ms. */
  engineMs: Summary
  /**
   * Whether the clones were built in a PID namespace of their own (a pid-1 init plus the members, each with its
   * original pid), as every tree of more than one process is; a one-process tree is restored like any single
   * process, in ours, so a ratio against it includes the namespace's cost.
   */
  pidNamespace: boolean
  /**
   * Clone trees checked: `processes` members built, the root's memory pattern, `processes`-1 children of the
   * root in /proc, each child's memory pattern; a tree that fails a check ends the run with an error, so this
   * equals `runs` in every result there is.
   */
  clonesVerified: number
  /** Checkpoint statistics by their CRIU names (the root's, pages_written: every member's); µs unless a count. */
  checkpointStats: Record<string, Summary>
  /** Engine restore statistics by their names; µs unless a count. */
  restoreStats: Record<string, Summary>
}

/** A figure derived from the run and reported without a limit. */
export interface InformationalRatio {
  id: string
  description: string
  value: number
  unit: string
}

/** The threads section: one size, the same pool as the size rows, one restore policy. */
export interface ThreadsResult {
  /** Bytes each target touches. */
  size: number
  /** As given on the command line, e.g. 64M. */
  label: string
  policy: 'mow'
  rows: ThreadRow[]
  /** E.g. engine restore at the most threads / at the fewest. */
  ratios: InformationalRatio[]
}

/** The trees section: one size, the same pool as the size rows, one restore policy. */
export interface TreesResult {
  /** Bytes the root of each target touches (its children share them copy-on-write). */
  size: number
  /** As given on the command line, e.g. 64M. */
  label: string
  policy: 'mow'
  rows: TreeRow[]
  /** E.g. root downtime at the most processes / at the fewest. */
  ratios: InformationalRatio[]
}

export interface TargetVerdict {
  id: string
  description: string
  measured: number
  limit: number
  unit: string
  pass: boolean
}

export interface BenchResult {
  /** The FaaS section (bench/faas.ts, faas-spec.ts); absent when skipped (`--faas ''`, the default). */
  faas?: import('./faas-spec.js').FaasResult
  /** The exact command line. */
  command: string
  /** ISO 8601 start time. */
  date: string
  durationS: number
  machine: MachineInfo
  config: {
    sizes: number[]
    runs: number
    policies: string[]
    pool: string
    /** True when the pool was a temporary one, removed at the end. */
    poolTemporary: boolean
    /** Whether SIZE bytes were touched and freed before each timed step that takes new memory (bench --prime). */
    primeFreePages?: boolean
    target: string
    hugePages: boolean
    /** Thread counts of the threads section, absent when it was skipped. */
    threads?: number[]
    /** Bytes of the threads section's targets, absent when it was skipped. */
    threadsSize?: number
    /** Process counts of the trees section, absent when it was skipped. */
    trees?: number[]
    /** Bytes the root of each of the trees section's targets touches, absent when it was skipped. */
    treeSize?: number
  }
  /**
   * The real CRIU measured beside cxlfork's paths (rows "real-criu" and "real-criu/restore"), or why
   * none was: no --criu-bin and no `criu` on PATH, one older than 4.x, or `criu check` failing.
   */
  realCriu: {bin: string; version: string} | {missing: string}
  /** `node -e 0`, wall clock. */
  nodeStartupMs: Summary
  /** `node bin/run.js --version`: the floor of any cxlfork command (Node + oclif), wall clock. */
  cliVersionMs: Summary
  sizes: SizeResult[]
  /** Checkpoint and engine restore by thread count; absent when skipped (`--threads ''`). */
  threads?: ThreadsResult
  /** Tree checkpoint and engine restore by process count; absent when skipped (`--trees ''`). */
  trees?: TreesResult
  targets: TargetVerdict[]
  pass: boolean
  /** Every process the run created (targets, clones, fork children); all are gone when it returns. */
  pids: number[]
}

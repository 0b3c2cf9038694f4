/**
 * Checkpoint/restore paths the benchmark compares. A path checkpoints a live
 * target, restores the last checkpoint in process (engine) and names the
 * command that restores it from a fresh process (whole command). The pool
 * path is cxlfork itself; a CRIU-format path (dump to protobuf images,
 * restore by copying) is one more implementation of BenchPath, added to the
 * list the runner gets, with policies such as ['copy'].
 */
import {rmSync} from 'node:fs'
import {join} from 'node:path'

import type {Pool} from '../pool/index.js'
import type {Policy} from '../restore/plan.js'

export interface CheckpointSample {
  /** Whole checkpoint, µs. */
  timeUs: number
  /** Time the target was stopped, µs. */
  downtimeUs: number
  /** Bytes of memory the checkpoint holds. */
  bytes: number
  /** Engine statistics by name (µs or counts), summarized per size. */
  stats: Readonly<Record<string, number>>
}

/** A checkpoint of a process and all its descendants (pool path only: the CRIU-format dump takes one process). */
export interface TreeCheckpointSample extends CheckpointSample {
  /** Processes the checkpoint holds, the root included (zombies too, though the bench's trees have none). */
  members: number
  /** µs the root's descendants stayed stopped; `downtimeUs` is the root's own. */
  treeDowntimeUs: number
}

export interface RestoreSample {
  /** The clone, running detached; the runner measures, then kills and reaps it. */
  pid: number
  /** Threads the clone was built with. */
  threads: number
  /** Processes the clone tree was built with, the root included (pool path; the CRIU path builds one). */
  processes?: number
  /**
   * A multi-threaded clone lives in a PID namespace of its own whose init is our child: it ends by itself
   * once the clone is killed and is ours to reap.
   */
  initPid?: number
  /** Engine restore, µs. */
  engineUs: number
  stats: Readonly<Record<string, number>>
}

export interface WholeCommand {
  /** argv[0] is an absolute executable path. */
  argv: string[]
  /** Added to the environment (e.g. CXLFORK_PORTER_SOCKET). */
  env?: Readonly<Record<string, string>>
  /** The clone's pid from the command's stdout, and the engine time the command reported itself (µs), if it does. */
  parse(stdout: string): {pid: number; engineUs?: number}
}

export interface BenchPath {
  /** Row prefix, e.g. "pool" (rows are "pool/mow", "pool/local"). */
  readonly name: string
  readonly policies: readonly string[]
  /** Pool paths: the kind of pool they write into. */
  readonly poolKind?: 'provisioned' | 'sparse'
  /** Checkpoint the live target as `label`; the target keeps running. */
  checkpoint(pid: number, label: string): CheckpointSample | Promise<CheckpointSample>
  /** Restore the last checkpoint in this process. */
  restore(policy: string): RestoreSample
  /** The command that restores the last checkpoint on its own, timed wall clock. */
  restoreCommand(policy: string): WholeCommand
  /**
   * Optionally, the command that checkpoints the live target on its own (the target keeps
   * running), timed wall clock; cleanup() deletes what it wrote. The CRIU-format path has
   * one, to compare with real CRIU's whole `criu dump`.
   */
  checkpointCommand?(pid: number, label: string): {argv: string[]; cleanup(): void}
  /**
   * Optionally, the same whole commands served by a running porter (`porter`: its socket and
   * pool), which keeps the engine loaded: the CRIU-format path has them, as CRIU has its RPC service.
   */
  porterCommands?(porter: {socket: string; pool: string}): {restore(): WholeCommand; checkpoint(pid: number, label: string): {argv: string[]; env: Record<string, string>; cleanup(): void}}
  /** Delete the last checkpoint (its clones are gone by then). */
  cleanup(): void
  /** End of run: release what the path holds. */
  close(): void
}

/** cxlfork's own path: checkpointToPool / restoreFromPool on one pool file. */
export class PoolPath implements BenchPath {
  private current: string | undefined

  constructor(
    /** "pool"; "pool-sparse" for the checkpoint-only comparison on a sparse pool. */
    readonly name: string,
    private readonly pool: Pool,
    readonly policies: readonly Policy[],
    private readonly engine: {checkpointToPool: typeof import('../checkpoint/checkpoint.js').checkpointToPool; restoreFromPool: typeof import('../restore/restore.js').restoreFromPool},
    /** `node bin/run.js` of this installation. */
    private readonly cli: {node: string; entry: string},
  ) {}

  get poolKind(): 'provisioned' | 'sparse' {
    return this.pool.header.provisioned ? 'provisioned' : 'sparse'
  }

  private get checkpointName(): string {
    if (this.current === undefined) throw new Error('pool path: no checkpoint taken yet')
    return this.current
  }

  checkpoint(pid: number, label: string): CheckpointSample {
    const result = this.engine.checkpointToPool(this.pool, {pid, name: label, kill: false})
    this.current = label
    return {timeUs: result.totalUs, downtimeUs: result.downtimeUs, bytes: result.bytes, stats: {...result.stats}}
  }

  /** Checkpoint the live target and all its descendants (`checkpoint --tree`); the tree keeps running. */
  checkpointTree(pid: number, label: string): TreeCheckpointSample {
    const result = this.engine.checkpointToPool(this.pool, {pid, name: label, kill: false, tree: true})
    this.current = label
    if (result.tree === undefined || result.treeDowntimeUs === undefined) throw new Error(`checkpoint ${label} of ${pid} with tree: true reported no tree`)
    return {
      timeUs: result.totalUs, downtimeUs: result.downtimeUs, bytes: result.bytes, stats: {...result.stats},
      members: result.tree.length, treeDowntimeUs: result.treeDowntimeUs,
    }
  }

  restore(policy: string): RestoreSample {
    const result = this.engine.restoreFromPool(this.pool, {name: this.checkpointName, policy: policy as Policy, wait: false})
    return {
      pid: result.pid, threads: result.threads, processes: result.processes, ...(result.pidNamespace ? {initPid: result.pidNamespace.initPid} : {}),
      engineUs: result.stats.restore_time, stats: {...result.stats},
    }
  }

  restoreCommand(policy: string): WholeCommand {
    return {
      argv: [this.cli.node, this.cli.entry, 'restore', this.checkpointName, '--policy', policy, '--json', '--no-porter', '--pool', this.pool.path],
      parse: (stdout) => {
        const parsed = JSON.parse(stdout) as {pid?: unknown; stats?: {restore_time?: unknown}}
        if (typeof parsed.pid !== 'number') throw new Error(`cxlfork restore printed no pid: ${stdout.slice(0, 200)}`)
        const engineUs = parsed.stats?.restore_time
        return typeof engineUs === 'number' ? {pid: parsed.pid, engineUs} : {pid: parsed.pid}
      },
    }
  }

  cleanup(): void {
    if (this.current === undefined) return
    this.pool.remove(this.current)
    this.pool.gc()
    this.current = undefined
  }

  close(): void {
    try {
      this.cleanup()
    } catch {
      // a checkpoint still referenced is collected with the pool
    }
  }
}

/** A `criu restore --json` reply: the clone and the engine time; refused if not served by whom the row says. */
function parseCriuRestore(stdout: string, servedBy: 'cli' | 'porter'): {pid: number; engineUs?: number} {
  const parsed = JSON.parse(stdout) as {pid?: unknown; servedBy?: unknown; stats?: {restore_time?: unknown}}
  if (typeof parsed.pid !== 'number') throw new Error(`cxlfork criu restore printed no pid: ${stdout.slice(0, 200)}`)
  if (parsed.servedBy !== servedBy) throw new Error(`cxlfork criu restore was served by ${String(parsed.servedBy)}, not by the ${servedBy} this row measures`)
  const engineUs = parsed.stats?.restore_time
  return typeof engineUs === 'number' ? {pid: parsed.pid, engineUs} : {pid: parsed.pid}
}

/**
 * The CRIU-style baseline, "CRIU over shared memory": dump to a CRIU image set
 * on the pool's own mount, restore by deserializing and copying every page.
 */
export class CriuPath implements BenchPath {
  readonly name = 'criu'
  readonly policies = ['copy'] as const
  private current: string | undefined
  private sequence = 0

  constructor(
    /** Directory on the pool's file system that receives one image set per checkpoint. */
    private readonly imagesRoot: string,
    private readonly engine: {criuDump: typeof import('../criu/dump.js').criuDump; criuRestore: typeof import('../criu/restore.js').criuRestore},
    private readonly cli: {node: string; entry: string},
  ) {}

  private get images(): string {
    if (this.current === undefined) throw new Error('criu path: no dump taken yet')
    return this.current
  }

  async checkpoint(pid: number, label: string): Promise<CheckpointSample> {
    const images = join(this.imagesRoot, `${label}-${++this.sequence}`)
    const result = await this.engine.criuDump({pid, images, kill: false})
    this.current = images
    return {timeUs: result.totalUs, downtimeUs: result.downtimeUs, bytes: result.imageBytes, stats: {...result.stats, image_bytes: result.imageBytes}}
  }

  restore(_policy: string): RestoreSample {
    const result = this.engine.criuRestore({images: this.images, wait: false})
    return {
      pid: result.pid, threads: result.threads, ...(result.pidNamespace ? {initPid: result.pidNamespace.initPid} : {}),
      engineUs: result.stats.restore_time, stats: {...result.stats},
    }
  }

  restoreCommand(_policy: string): WholeCommand {
    return {
      argv: [this.cli.node, this.cli.entry, 'criu', 'restore', '--images', this.images, '--json', '--no-porter'],
      parse: (stdout) => parseCriuRestore(stdout, 'cli'),
    }
  }

  checkpointCommand(pid: number, label: string): {argv: string[]; cleanup(): void} {
    const images = join(this.imagesRoot, `${label}-${++this.sequence}-command`)
    return {
      argv: [this.cli.node, this.cli.entry, 'criu', 'dump', String(pid), '--images', images, '--json', '--no-porter'],
      cleanup: () => rmSync(images, {recursive: true, force: true}),
    }
  }

  porterCommands(porter: {socket: string; pool: string}): {restore(): WholeCommand; checkpoint(pid: number, label: string): {argv: string[]; env: Record<string, string>; cleanup(): void}} {
    const env = {CXLFORK_PORTER_SOCKET: porter.socket}
    return {
      restore: () => ({
        argv: [this.cli.node, this.cli.entry, 'criu', 'restore', '--images', this.images, '--json', '--pool', porter.pool], env,
        parse: (stdout) => parseCriuRestore(stdout, 'porter'),
      }),
      checkpoint: (pid, label) => {
        const images = join(this.imagesRoot, `${label}-${++this.sequence}-porter`)
        return {
          argv: [this.cli.node, this.cli.entry, 'criu', 'dump', String(pid), '--images', images, '--json', '--pool', porter.pool], env,
          cleanup: () => rmSync(images, {recursive: true, force: true}),
        }
      },
    }
  }

  cleanup(): void {
    if (this.current !== undefined) rmSync(this.current, {recursive: true, force: true})
    this.current = undefined
  }

  close(): void {
    this.cleanup()
    rmSync(this.imagesRoot, {recursive: true, force: true})
  }
}

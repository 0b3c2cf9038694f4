/**
 * The porter's functions (CXLporter's autoscaler, issue 15): deploy, invoke,
 * list and remove, each authorized for the request's peer. The first
 * invocation cold-starts an instance; a cold-started instance is
 * checkpointed into the pool (a real checkpoint of the running process,
 * which then serves on) after its Nth invocation; invocations beyond the idle
 * instances start more, up to max-instances (further ones queue): cold
 * starts until the checkpoint exists, restored clones of it with the
 * function's policy after. An instance idle for the keep-alive is stopped.
 * Records (not instances) persist in a file beside the socket, so functions
 * and their checkpoints outlive a porter restart; instances die with the
 * porter.
 *
 * Policy `criu` is the CRIU-format baseline: the instance is dumped with
 * `criu dump`'s engine (live, it serves on) into an image set of its own
 * under a 0700 directory of the porter's on /dev/shm, and clones are built
 * from that set by `criu restore`'s engine (deserialized, every page
 * copied); the set is removed with the function.
 */
import {createHash} from 'node:crypto'
import {existsSync, lstatSync, mkdirSync, renameSync, readFileSync, rmSync, rmdirSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {checkpointToPool} from '../../checkpoint/checkpoint.js'
import {criuDump} from '../../criu/dump.js'
import {ConflictError, CxlforkError, NotFoundError, PermissionError, UnsupportedError, UsageError} from '../../errors.js'
import {faultPoint} from '../../fault.js'
import type {Pool} from '../../pool/index.js'
import type {RestoreRequest} from '../../restore/restore.js'
import type {PeerCredentials} from '../peer.js'
import {Instance, type InstanceOrigin, resolveProgram} from './instance.js'
import {FUNCTION_POLICIES, type FunctionRecord, type FunctionSpec, type PoolFunctionPolicy, checkpointNameOf, validateFunctionName} from './spec.js'

/** How an invocation was served: by a new instance cold-started for it, by an idle one, or by a new clone restored from the checkpoint. */
export type StartKind = 'cold' | 'warm' | 'restored'

/** Longest an instance may take to answer one request. */
export const INVOCATION_TIMEOUT_MS = 120_000
/** Invocations waiting for an instance, per function, at most. */
const MAX_QUEUE = 10_000

export interface InvokeResult {
  name: string
  servedBy: 'porter'
  start: StartKind
  /** The instance that answered: its pid and how it was started. */
  pid: number
  instance: InstanceOrigin
  /** The function's response line, parsed. */
  output: unknown
  /** From the request reaching the porter to the response; the part spent waiting for a free instance (max-instances busy); the part starting one (spawn, or restore), ms. */
  latencyMs: number
  queuedMs: number
  startupMs: number
  /** For `restored`: the restore's engine statistics (µs). */
  restoreStats?: Record<string, number>
  /** This invocation was the Nth of a cold instance, which was then checkpointed. */
  checkpointed?: {name: string; ms: number}
}

export interface FunctionInfo extends FunctionRecord {
  instances: {pid: number; origin: InstanceOrigin; busy: boolean; served: number; faultServerPid?: number}[]
  queued: number
  invocations: number
  starts: Record<StartKind, number>
  scaledIn: number
  failures: number
}

export interface FunctionRemoval {
  name: string
  removed: true
  instancesStopped: number
  /** Its checkpoint (for `criu`, its image directory), if one was taken, and what became of it (`removed`, or `deleting` while a clone restored by hand still maps it). */
  checkpoint: string | null
  checkpointState?: string
}

interface Waiter {
  data: unknown
  arrived: number
  resolve: (result: InvokeResult) => void
  reject: (error: Error) => void
}

class Deployed {
  readonly instances: Instance[] = []
  readonly queue: Waiter[] = []
  readonly starts: Record<StartKind, number> = {cold: 0, warm: 0, restored: 0}
  invocations = 0
  scaledIn = 0
  failures = 0
  nextId = 1
  /** A `criu` dump is being written (it yields to the event loop): no second one starts. */
  dumping = false
  constructor(public record: FunctionRecord) {}
}

function notFound(name: string): NotFoundError {
  return new NotFoundError('FUNCTION_NOT_FOUND', `no function named ${name}`, 'See `cxlfork fn ls`; deploy it with `cxlfork fn deploy NAME --cmd ...`.')
}

export class FunctionManager {
  private readonly functions = new Map<string, Deployed>()
  private readonly timer: NodeJS.Timeout
  private readonly porterUid = process.geteuid?.() ?? 0
  /** Records whose file could not be read at start (kept aside, not overwritten). */
  readonly loadError?: string

  /** Where `criu` functions' image sets go, one directory per function: the porter's own, 0700, on /dev/shm. */
  private readonly imagesRoot: string

  /** stubSource: the porter's ghosts, for clones (their fds 0-2 are installed when one is taken). */
  constructor(private readonly options: {pool: () => Pool; statePath: string; imagesRoot?: string; stubSource?: RestoreRequest['stubSource']}) {
    // Named after the records file, so a restarted porter finds its functions' image sets again.
    this.imagesRoot = options.imagesRoot ?? `/dev/shm/cxlfork-fn-images-${this.porterUid}-${createHash('sha256').update(options.statePath).digest('hex').slice(0, 16)}`
    try {
      const text = readFileSync(options.statePath, 'utf8')
      const parsed = JSON.parse(text) as {functions?: FunctionRecord[]}
      const names = new Set(options.pool().list().map((entry) => entry.name))
      for (const record of parsed.functions ?? []) {
        if (record.policy === 'criu') {
          // A set without its inventory is a dump cut short (a porter killed while writing it): cold-start again.
          if (record.checkpoint !== null && !existsSync(join(record.checkpoint, 'inventory.img'))) record.checkpoint = null
          if (record.checkpoint === null) rmSync(this.imagesDirOf(record.name), {recursive: true, force: true})
          this.functions.set(record.name, new Deployed(record))
          continue
        }
        // A checkpoint removed from the pool meanwhile (rm, pool init --force): cold-start again.
        if (record.checkpoint !== null && !names.has(record.checkpoint)) record.checkpoint = null
        // A porter killed between publishing the checkpoint and saving the record: the checkpoint is whole (published), and ours (deploy refuses a taken name).
        if (record.checkpoint === null && names.has(checkpointNameOf(record.name))) record.checkpoint = checkpointNameOf(record.name)
        this.functions.set(record.name, new Deployed(record))
      }
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.loadError = `${options.statePath}: ${(error as Error).message}`
        renameSync(options.statePath, `${options.statePath}.unreadable`)
      }
    }
    this.timer = setInterval(() => this.tick(), 100)
    this.timer.unref()
  }

  private imagesDirOf(name: string): string {
    return join(this.imagesRoot, name)
  }

  /** The images root, created 0700 if missing; refused unless it is a directory of ours that no one else can enter (/dev/shm is shared by every user). */
  private ensureImagesRoot(): void {
    try {
      mkdirSync(this.imagesRoot, {mode: 0o700})
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
    }
    const stat = lstatSync(this.imagesRoot)
    if (!stat.isDirectory() || stat.uid !== this.porterUid || (stat.mode & 0o077) !== 0) {
      throw new PermissionError('NOT_PERMITTED', `${this.imagesRoot} is not a private directory of uid ${this.porterUid} (a directory, mode 0700)`, 'Remove it; the porter creates it for the image sets of its criu functions.')
    }
  }

  private save(): void {
    const tmp = `${this.options.statePath}.tmp`
    writeFileSync(tmp, JSON.stringify({version: 1, functions: [...this.functions.values()].map((fn) => fn.record)}, null, 2) + '\n', {mode: 0o600})
    renameSync(tmp, this.options.statePath)
  }

  private get(name: string, peer: PeerCredentials): Deployed {
    validateFunctionName(name)
    const fn = this.functions.get(name)
    if (!fn) throw notFound(name)
    if (peer.uid !== 0 && peer.uid !== fn.record.owner) {
      throw new PermissionError('FUNCTION_ACCESS', `function ${name} belongs to uid ${fn.record.owner}; you are uid ${peer.uid}`, 'Invoke and remove your own functions, or run as root.')
    }
    return fn
  }

  /**
   * Record a function. `adopt`: serve it from that existing checkpoint (one another
   * porter's function published into the shared pool, say) instead of taking its own:
   * every instance is a clone of it, --cmd only cold-starts should its restore fail, and
   * `fn rm` leaves it in the pool. The peer must be allowed to open it, as for `restore`.
   */
  deploy(spec: FunctionSpec, peer: PeerCredentials, adopt?: string): FunctionInfo {
    if (peer.uid !== this.porterUid && peer.uid !== 0) {
      throw new UnsupportedError('PORTER_UNSERVED', `the porter runs as uid ${this.porterUid} and does not deploy functions for uid ${peer.uid}: their instances would run as uid ${this.porterUid}`,
        'Start a porter of your own (`cxlfork porter start` as yourself, on a pool of yours).')
    }
    validateFunctionName(spec.name)
    if (!(FUNCTION_POLICIES as readonly string[]).includes(spec.policy)) throw new UsageError('INVALID_POLICY', `invalid policy ${spec.policy}`, `Use one of ${FUNCTION_POLICIES.join(', ')}.`)
    if (spec.policy === 'criu' && adopt !== undefined) {
      throw new UsageError('INVALID_POLICY', 'policy criu serves a function from a CRIU-format image set of its own, not from a pool checkpoint', 'Deploy with --checkpoint and a pool policy (mow, moa, hybrid, local), or with --policy criu without --checkpoint.')
    }
    if (this.functions.has(spec.name)) {
      throw new ConflictError('FUNCTION_EXISTS', `a function named ${spec.name} is already deployed`, `Invoke it, or remove it first: \`cxlfork fn rm ${spec.name}\`.`)
    }
    resolveProgram(spec.argv[0]!, spec.cwd)
    const checkpoint = checkpointNameOf(spec.name)
    if (spec.policy !== 'criu' && this.options.pool().has(checkpoint)) {
      throw new ConflictError('NAME_TAKEN', `the pool already has a checkpoint named ${checkpoint}, which this function's checkpoint would take`, `Remove it (\`cxlfork rm ${checkpoint}\`) or deploy under another name.`)
    }
    // Opened (and its checksums verified) to refuse now what every restore would refuse later.
    if (adopt !== undefined) this.options.pool().openCheckpoint(adopt, {uid: peer.uid})
    const record: FunctionRecord = {...spec, owner: peer.uid, createdAt: new Date().toISOString(), checkpoint: adopt ?? null}
    this.functions.set(spec.name, new Deployed(record))
    this.save()
    return this.info(this.functions.get(spec.name)!)
  }

  list(peer: PeerCredentials): FunctionInfo[] {
    return [...this.functions.values()].filter((fn) => peer.uid === 0 || fn.record.owner === peer.uid).map((fn) => this.info(fn))
  }

  show(name: string, peer: PeerCredentials): FunctionInfo {
    return this.info(this.get(name, peer))
  }

  private info(fn: Deployed): FunctionInfo {
    return {
      ...fn.record, instances: fn.instances.map((i) => ({pid: i.pid, origin: i.origin, busy: i.busy, served: i.served, ...(i.faultServerPid === undefined ? {} : {faultServerPid: i.faultServerPid})})),
      queued: fn.queue.length, invocations: fn.invocations, starts: {...fn.starts}, scaledIn: fn.scaledIn, failures: fn.failures,
    }
  }

  invoke(name: string, data: unknown, peer: PeerCredentials): Promise<InvokeResult> {
    const fn = this.get(name, peer)
    if (fn.queue.length >= MAX_QUEUE) {
      return Promise.reject(new CxlforkError('FUNCTION_FAILED', `function ${name} has ${fn.queue.length} invocations waiting`, 'Raise --max-instances, or invoke less often.'))
    }
    return new Promise((resolvePromise, reject) => {
      fn.queue.push({data, arrived: performance.now(), resolve: resolvePromise, reject})
      this.dispatch(fn)
    })
  }

  /** Hand queued invocations to idle instances, starting instances up to max-instances. */
  private dispatch(fn: Deployed): void {
    while (fn.queue.length > 0 && this.functions.get(fn.record.name) === fn) {
      let instance = fn.instances.find((i) => !i.busy && !i.ended)
      const picked = performance.now()
      if (!instance) {
        if (fn.instances.filter((i) => !i.ended).length >= fn.record.maxInstances) return
        try {
          instance = this.startInstance(fn)
        } catch (error) {
          fn.failures++
          fn.queue.shift()!.reject(error as Error)
          continue
        }
        fn.instances.push(instance)
      }
      this.run(fn, instance, fn.queue.shift()!, picked)
    }
  }

  /** A restored clone when the checkpoint exists (a cold start if the restore fails), else a cold start. */
  private startInstance(fn: Deployed): Instance {
    const {record} = fn
    if (record.checkpoint !== null) {
      try {
        const clone = record.policy === 'criu' ? Instance.criuRestored(record.name, record.checkpoint) : Instance.restored(record.name, this.options.pool(), record.checkpoint, record.policy as PoolFunctionPolicy, this.options.stubSource)
        // Killed here: the clone is released but dies with us (its death signal).
        faultPoint('porter-fn-restored')
        return clone
      } catch (error) {
        // The function still serves; the reason is kept for `fn ls`.
        record.checkpointError = `restore of ${record.checkpoint} failed: ${(error as Error).message}`
      }
    }
    const instance = Instance.cold(record.name, record.argv, record.cwd)
    faultPoint('porter-fn-cold-started')
    return instance
  }

  private run(fn: Deployed, instance: Instance, waiter: Waiter, picked: number): void {
    instance.busy = true
    const start: StartKind = instance.served === 0 ? instance.origin : 'warm'
    const queuedMs = picked - waiter.arrived
    const startupMs = performance.now() - picked
    instance.invoke({id: fn.nextId++, data: waiter.data}, INVOCATION_TIMEOUT_MS).then(async (output) => {
      fn.invocations++
      fn.starts[start]++
      const result: InvokeResult = {
        name: fn.record.name, servedBy: 'porter', start, pid: instance.pid, instance: instance.origin, output,
        latencyMs: round(performance.now() - waiter.arrived), queuedMs: round(queuedMs), startupMs: round(startupMs),
        ...(start === 'restored' && instance.restoreStats ? {restoreStats: instance.restoreStats} : {}),
      }
      // The instance stays busy while a criu dump is written, so that no invocation runs under it.
      const checkpointed = fn.record.policy === 'criu' ? await this.maybeDumpCriu(fn, instance) : this.maybeCheckpoint(fn, instance)
      instance.busy = false
      instance.idleSince = performance.now()
      if (checkpointed) result.checkpointed = checkpointed
      // Keep-alive 0 (the replay's `cold` policy, not offered by `fn deploy`): an instance serves one invocation.
      if (fn.record.keepAliveMs === 0) {
        instance.stop()
        fn.instances.splice(fn.instances.indexOf(instance), 1)
      }
      waiter.resolve(result)
    }, (error: Error) => {
      instance.busy = false
      fn.failures++
      waiter.reject(error)
    }).finally(() => this.dispatch(fn))
  }

  private checkpointDue(fn: Deployed, instance: Instance): boolean {
    const {record} = fn
    return instance.origin === 'cold' && record.checkpoint === null && record.checkpointError === undefined && record.checkpointAfter !== 0 && instance.served === record.checkpointAfter && !fn.dumping
  }

  /** After the Nth invocation of a cold instance, while it waits for its next request: checkpoint it into the pool, leaving it running. */
  private maybeCheckpoint(fn: Deployed, instance: Instance): {name: string; ms: number} | undefined {
    const {record} = fn
    if (!this.checkpointDue(fn, instance)) return undefined
    const name = checkpointNameOf(record.name)
    const t0 = performance.now()
    try {
      checkpointToPool(this.options.pool(), {pid: instance.pid, name, kill: false})
    } catch (error) {
      // A failed checkpoint leaves the target running: the function keeps serving, with cold starts.
      record.checkpointError = `checkpoint of instance ${instance.pid} failed: ${error instanceof CxlforkError ? `${error.code}: ` : ''}${(error as Error).message}`
      this.save()
      return undefined
    }
    // Killed here: the checkpoint is published, the record not saved; a restarted porter adopts it (constructor).
    faultPoint('porter-fn-checkpointed')
    record.checkpoint = name
    this.save()
    return {name, ms: round(performance.now() - t0)}
  }

  /** Policy `criu`: the same moment, a CRIU-format dump of the instance (live: it serves on) into the function's image directory. Never throws. */
  private async maybeDumpCriu(fn: Deployed, instance: Instance): Promise<{name: string; ms: number} | undefined> {
    const {record} = fn
    if (!this.checkpointDue(fn, instance)) return undefined
    const images = this.imagesDirOf(record.name)
    const t0 = performance.now()
    fn.dumping = true
    let failure: string | undefined
    try {
      this.ensureImagesRoot()
      // What a porter killed mid-dump left.
      rmSync(images, {recursive: true, force: true})
      await criuDump({pid: instance.pid, images, kill: false})
    } catch (error) {
      failure = `CRIU-format dump of instance ${instance.pid} failed: ${error instanceof CxlforkError ? `${error.code}: ` : ''}${(error as Error).message}`
    } finally {
      fn.dumping = false
    }
    if (this.functions.get(record.name) !== fn) {
      // Removed while the set was written: it goes too.
      rmSync(images, {recursive: true, force: true})
      this.removeImagesRootIfEmpty()
      return undefined
    }
    if (failure !== undefined) {
      // A failed dump leaves the target running (and no half-written set): the function keeps serving, with cold starts.
      record.checkpointError = failure
      this.save()
      return undefined
    }
    faultPoint('porter-fn-checkpointed')
    record.checkpoint = images
    this.save()
    return {name: images, ms: round(performance.now() - t0)}
  }

  /** Reap instances that ended; stop those idle past the keep-alive. */
  tick(): void {
    const now = performance.now()
    let clonesGone = 0
    for (const fn of this.functions.values()) {
      for (const instance of [...fn.instances]) {
        let gone = instance.poll()
        if (!gone && !instance.busy && now - instance.idleSince > fn.record.keepAliveMs) {
          instance.stop()
          fn.scaledIn++
          gone = true
        }
        if (gone) {
          fn.instances.splice(fn.instances.indexOf(instance), 1)
          if (instance.origin === 'restored') clonesGone++
        }
      }
      // An instance that ended frees a slot for what waits.
      if (fn.queue.length > 0) this.dispatch(fn)
    }
    // Their pool references go with them, as the porter's own clones' do (left to gc, dead references slow every restore).
    if (clonesGone > 0) this.options.pool().releaseDeadReferences()
  }

  /** Stop its instances, fail what waits, remove its checkpoint and its record. */
  remove(name: string, peer: PeerCredentials): FunctionRemoval {
    const fn = this.get(name, peer)
    this.functions.delete(name)
    for (const waiter of fn.queue.splice(0)) waiter.reject(new NotFoundError('FUNCTION_NOT_FOUND', `function ${name} was removed while the invocation waited`))
    const stopped = fn.instances.length
    const clones = fn.instances.filter((instance) => instance.origin === 'restored').length
    for (const instance of fn.instances.splice(0)) instance.stop()
    // Their references go now: another host judges them by our lease, not their pids, and would count them live for its length.
    if (clones > 0) this.options.pool().releaseDeadReferences()
    if (fn.record.policy === 'criu') {
      const images = this.imagesDirOf(name)
      const existed = existsSync(images)
      rmSync(images, {recursive: true, force: true})
      this.removeImagesRootIfEmpty()
      this.save()
      return {name, removed: true, instancesStopped: stopped, checkpoint: fn.record.checkpoint, ...(existed ? {checkpointState: 'removed'} : {})}
    }
    let checkpointState: string | undefined
    const own = checkpointNameOf(name)
    const checkpoint = fn.record.checkpoint ?? (this.options.pool().has(own) ? own : null)
    // An adopted checkpoint is not this function's to delete (another porter's function may serve from it).
    if (checkpoint !== null && checkpoint !== own) {
      checkpointState = 'kept'
    } else if (checkpoint !== null) {
      try {
        // Forced: a clone someone restored from it by hand keeps it until it exits (gc then frees it).
        checkpointState = this.options.pool().remove(checkpoint, {force: true}).state
      } catch (error) {
        if (!(error instanceof NotFoundError)) throw error
        checkpointState = 'gone'
      }
    }
    this.save()
    return {name, removed: true, instancesStopped: stopped, checkpoint, ...(checkpointState === undefined ? {} : {checkpointState})}
  }

  private removeImagesRootIfEmpty(): void {
    try {
      rmdirSync(this.imagesRoot)
    } catch {
      // not empty (another criu function's set), or not there
    }
  }

  /** Figures for /v1/metrics. */
  metrics(): {functions: number; instances: number; queued: number; loadError?: string} {
    let instances = 0
    let queued = 0
    for (const fn of this.functions.values()) {
      instances += fn.instances.length
      queued += fn.queue.length
    }
    return {functions: this.functions.size, instances, queued, ...(this.loadError === undefined ? {} : {loadError: this.loadError})}
  }

  close(): void {
    clearInterval(this.timer)
    for (const fn of this.functions.values()) {
      for (const waiter of fn.queue.splice(0)) waiter.reject(new CxlforkError('PORTER_FAILED', 'the porter is stopping'))
      for (const instance of fn.instances.splice(0)) instance.stop()
    }
  }

}

function round(ms: number): number {
  return Math.round(ms * 1000) / 1000
}

/**
 * What the porter does for one request, with the pool kept open and the
 * engine loaded: the same library calls as the CLI commands (restore,
 * checkpoint, ls, inspect, rm), authorized for the peer of the request as
 * the CLI would be if that user ran it.
 *
 * Authorization. A peer whose uid is the porter's own is served as the CLI
 * serves that user. Any other peer is judged as the CLI would judge it
 * (could it open the pool file? trust it? open or remove that checkpoint?
 * trace that pid?), and refused with the CLI's code if the CLI would refuse.
 * Past those checks, reading (ls, inspect) and rm are served for it, since
 * their result does not depend on who runs them; restore and checkpoint are
 * not (PORTER_UNSERVED): a clone the porter builds, or a checkpoint it
 * takes, would belong to the porter's user, not to the peer's. The client
 * then does the work itself, as that user.
 */
import {createHash} from 'node:crypto'
import {fstatSync, statSync} from 'node:fs'
import {isAbsolute} from 'node:path'

import {NotFoundError, PermissionError, UnsupportedError, UsageError} from '../errors.js'
import {checkpointContents} from '../image/details.js'
import {Pool, validateCheckpointName} from '../pool/index.js'
import {trustPool} from '../pool/pool-file.js'
import {type RestoreResult, restoreFromPool} from '../restore/restore.js'
import {checkpointToPool} from '../checkpoint/checkpoint.js'
import {type CriuDumpResult, criuDump} from '../criu/dump.js'
import {type CriuRestoreResult, criuRestore} from '../criu/restore.js'
import {wait4} from '../sys/ptrace.js'
import {WNOHANG} from '../sys/syscall.js'
import {readStatus} from '../sys/proc.js'
import {faultPoint} from '../fault.js'
import {type CgroupLimits, type CloneCgroup, PorterCgroups} from './cgroups.js'
import {type Ghost, type GhostKind, Ghosts, kindOf} from './ghosts.js'
import {FunctionManager} from './functions/manager.js'
import {handleFunctions} from './functions/routes.js'
import type {PeerCredentials} from './peer.js'

export interface ServiceOptions {
  poolPath: string
  socket: string
  ghosts: number
  /** Ghost kinds kept warm from the start (default plain); others are learned from demand. */
  ghostKinds?: GhostKind[]
  /** false: no per-clone cgroups (porter start --no-cgroups). */
  cgroups?: boolean
}

export interface Reply {
  status: number
  body: unknown
}

const POLICIES = ['mow', 'moa', 'hybrid', 'local'] as const
const PIDNS = ['new', 'host'] as const

/** A restore request body: the restore command's flags, minus --wait (a porter's clone cannot use the client's terminal). */
interface RestoreBody {
  name: string
  policy?: (typeof POLICIES)[number]
  pidns?: (typeof PIDNS)[number]
  netns?: string
  verify?: boolean
  record?: boolean
  fillAfterMs?: number
  faultPages?: number
  /** Limits for the clone's cgroup: bytes, and CPUs (0.5: half of one). */
  memoryMax?: number
  cpuMax?: number
}

interface CheckpointBody {
  pid: number
  name: string
  kill?: boolean
  tree?: boolean
  tcpClose?: boolean
}

/** `criu dump` and `criu restore` (no --wait) as request bodies; paths absolute (the porter's cwd is its own). */
interface CriuDumpBody {
  pid: number
  images: string
  kill?: boolean
  tree?: boolean
  tcpClose?: boolean
}

interface CriuRestoreBody {
  images: string
  pidns?: (typeof PIDNS)[number]
  netns?: string
}

function badRequest(message: string, hint = 'See the README, "Porter", for the request bodies.'): UsageError {
  return new UsageError('PORTER_BAD_REQUEST', message, hint)
}

/** An object with only `allowed` keys, each of its expected type. */
function fields<T>(body: unknown, shape: Record<string, 'string' | 'boolean' | 'integer' | 'number'>, required: readonly string[]): T {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('the request body must be a JSON object')
  const record = body as Record<string, unknown>
  for (const [key, value] of Object.entries(record)) {
    const type = shape[key]
    if (type === undefined) throw badRequest(`unknown field ${JSON.stringify(key)} (expected ${Object.keys(shape).join(', ')})`)
    const ok = type === 'integer' ? Number.isSafeInteger(value) : type === 'number' ? Number.isFinite(value) : typeof value === type
    if (!ok) throw badRequest(`field ${key} must be ${type === 'integer' ? 'an integer' : `a ${type}`}`)
  }
  for (const key of required) if (record[key] === undefined) throw badRequest(`field ${key} is required`)
  return record as T
}

function oneOf<T extends string>(value: string | undefined, options: readonly T[], field: string): T | undefined {
  if (value === undefined) return undefined
  if (!(options as readonly string[]).includes(value)) throw badRequest(`field ${field} must be one of ${options.join(', ')}`)
  return value as T
}

/** p-th percentile (0..100) of sorted samples. */
function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

export class PorterService {
  readonly ghosts: Ghosts
  /** Per-clone cgroups (cgroups.ts); what the host allows is in status(). */
  readonly cgroups: PorterCgroups
  readonly startedAt = Date.now()
  private pool: Pool
  private poolIdentity: string
  /** Processes of ours to reap: released clones (or their namespace inits) and fault servers. */
  private readonly children = new Set<number>()
  private readonly counts = new Map<string, number>()
  private readonly restoreMs: number[] = []
  /** How the last clones we reaped ended (an OOM kill shows as signal 9). */
  private readonly exits: {pid: number; code: number | null; signal: number | null}[] = []
  private readonly timers: NodeJS.Timeout[] = []
  readonly recovered: {referencesReleased: number; buildsReleased: number; cgroupsRemoved: number}
  /** Serverless functions (functions/manager.ts); their records live beside the socket. */
  readonly functions: FunctionManager

  constructor(readonly options: ServiceOptions) {
    this.pool = Pool.open(options.poolPath)
    this.poolIdentity = this.identityOf()
    // A porter killed while building left a stub (killed by the kernel with it) and maybe a reference for it: release such references now.
    const report = this.pool.gc()
    // Cgroups of ghosts and clones a SIGKILLed porter left: every empty one goes (a clone still running keeps its own).
    this.cgroups = new PorterCgroups(createHash('sha256').update(options.socket).digest('hex').slice(0, 12), options.cgroups ?? true, `${options.socket}.cgroups`)
    this.recovered = {referencesReleased: report.referencesReleased, buildsReleased: report.buildsReleased, cgroupsRemoved: this.cgroups.sweep()}
    this.ghosts = new Ghosts(options.ghosts, options.ghostKinds ?? ['plain'], this.cgroups)
    this.functions = new FunctionManager({pool: () => this.currentPool(), statePath: `${options.socket}.functions.json`,
      stubSource: (opts, shape) => this.ghosts.take(opts, shape)})
    this.ghosts.scheduleRefill()
    this.timers.push(setInterval(() => this.reap(), 200))
    // Function instances and clones of a previous porter end without a reap of ours: their empty cgroups go here.
    this.timers.push(setInterval(() => this.cgroups.sweep(), 5000))
    this.timers.push(setInterval(() => this.pool.renewLease(), Math.max(1000, Math.floor(this.pool.leaseMs / 3))))
    for (const timer of this.timers) timer.unref()
  }

  get poolPath(): string {
    return this.pool.path
  }

  private identityOf(): string {
    const stat = fstatSync(this.pool.fd)
    return `${stat.dev}:${stat.ino}`
  }

  /** The pool as the path names it now: a pool replaced (pool init --force) or removed under us is reopened, or refused. */
  private currentPool(): Pool {
    let stat
    try {
      stat = statSync(this.pool.path)
    } catch {
      stat = undefined
    }
    if (stat && `${stat.dev}:${stat.ino}` === this.poolIdentity) return this.pool
    const reopened = Pool.open(this.pool.path)
    this.pool.close()
    this.pool = reopened
    this.poolIdentity = this.identityOf()
    return reopened
  }

  private served(peer: PeerCredentials): boolean {
    return peer.uid === (process.geteuid?.() ?? 0)
  }

  /**
   * For a peer that is not the porter's user: refuse what opening the pool
   * as that user would refuse (open(2) permission, then trustPool's rules).
   */
  private requirePoolAccess(pool: Pool, peer: PeerCredentials): void {
    if (this.served(peer)) return
    const stat = fstatSync(pool.fd, {bigint: true})
    const mode = Number(stat.mode & 0o777n)
    const canOpen = peer.uid === 0
      || (BigInt(peer.uid) === stat.uid ? (mode & 0o600) === 0o600
        : peer.groups.some((gid) => BigInt(gid) === stat.gid) ? (mode & 0o060) === 0o060 : (mode & 0o006) === 0o006)
    if (!canOpen) {
      throw new PermissionError('POOL_ACCESS', `no permission to open pool ${pool.path}`,
        'A pool is private to the user who created it (mode 0600) unless `pool init --shared-group` shared it: run as that user, as root, or as a member of its group.')
    }
    trustPool(pool.path, stat, pool.header.sharedGid, {uid: peer.uid, groups: peer.groups})
  }

  private unserved(peer: PeerCredentials, what: string): UnsupportedError {
    return new UnsupportedError('PORTER_UNSERVED', `the porter runs as uid ${process.geteuid?.()} and does not ${what} for uid ${peer.uid}: the result would belong to uid ${process.geteuid?.()}`,
      'Run the command without the porter (--no-porter; the CLI falls back by itself), or start a porter as that user.')
  }

  private count(key: string): void {
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1)
  }

  /** Dispatch one parsed request; errors are thrown as CxlforkErrors (the server turns them into JSON). */
  handle(method: string, url: URL, body: unknown, peer: PeerCredentials): Reply | Promise<Reply> {
    const path = url.pathname
    const route = (methods: string[]): void => {
      if (!methods.includes(method)) {
        throw new UsageError('PORTER_METHOD', `${method} is not allowed on ${path} (allowed: ${methods.join(', ')})`, 'See the README, "Porter", for the API.')
      }
    }
    // Counted by route, never by the raw path (a peer must not grow the porter's memory with made-up paths).
    const known = ['/v1/status', '/v1/metrics', '/v1/restore', '/v1/checkpoint', '/v1/checkpoints', '/v1/criu/dump', '/v1/criu/restore']
    this.count(`${['GET', 'POST', 'DELETE', 'PUT', 'HEAD'].includes(method) ? method : 'OTHER'} ${path.startsWith('/v1/checkpoints/') ? '/v1/checkpoints/NAME' : path.startsWith('/v1/functions') ? '/v1/functions...' : known.includes(path) ? path : 'unknown'}`)
    if (path === '/v1/functions' || path.startsWith('/v1/functions/')) return handleFunctions(this.functions, method, path, body, peer)
    if (path === '/v1/status') {
      route(['GET'])
      return {status: 200, body: this.status()}
    }
    if (path === '/v1/metrics') {
      route(['GET'])
      return {status: 200, body: this.metrics()}
    }
    if (path === '/v1/restore') {
      route(['POST'])
      return {status: 200, body: this.restore(body, peer)}
    }
    if (path === '/v1/checkpoint') {
      route(['POST'])
      return {status: 200, body: this.checkpoint(body, peer)}
    }
    if (path === '/v1/criu/dump') {
      route(['POST'])
      return this.criuDump(body, peer).then((result) => ({status: 200, body: result}))
    }
    if (path === '/v1/criu/restore') {
      route(['POST'])
      return {status: 200, body: this.criuRestore(body, peer)}
    }
    if (path === '/v1/checkpoints') {
      route(['GET'])
      const pool = this.currentPool()
      this.requirePoolAccess(pool, peer)
      return {status: 200, body: {pool: pool.path, checkpoints: pool.list(), servedBy: 'porter'}}
    }
    if (path.startsWith('/v1/checkpoints/')) {
      route(['GET', 'DELETE'])
      let name: string
      try {
        name = decodeURIComponent(path.slice('/v1/checkpoints/'.length))
      } catch {
        throw badRequest('the checkpoint name in the path is not valid percent-encoding')
      }
      validateCheckpointName(name)
      const pool = this.currentPool()
      this.requirePoolAccess(pool, peer)
      if (method === 'DELETE') {
        const force = url.searchParams.get('force')
        return {status: 200, body: {...pool.remove(name, {force: force === '1' || force === 'true', uid: peer.uid}), servedBy: 'porter'}}
      }
      const verify = url.searchParams.get('verify')
      const details = pool.inspect(name, {uid: peer.uid, verifyData: verify === '1' || verify === 'true'})
      return {status: 200, body: {...details, ...checkpointContents(pool.openCheckpoint(name, {uid: peer.uid})), servedBy: 'porter'}}
    }
    throw new NotFoundError('PORTER_NO_ROUTE', `no such endpoint: ${method} ${path}`,
      'The porter serves /v1/status, /v1/metrics, /v1/restore, /v1/checkpoint, /v1/checkpoints, /v1/checkpoints/NAME, /v1/criu/dump, /v1/criu/restore and /v1/functions[/NAME[/invoke]].')
  }

  private restore(raw: unknown, peer: PeerCredentials): RestoreResult & {servedBy: 'porter'; ghost: boolean | string; cgroup: object} {
    const body = fields<RestoreBody>(raw, {name: 'string', policy: 'string', pidns: 'string', netns: 'string', verify: 'boolean', record: 'boolean', fillAfterMs: 'integer', faultPages: 'integer', memoryMax: 'integer', cpuMax: 'number'}, ['name'])
    validateCheckpointName(body.name)
    const policy = oneOf(body.policy, POLICIES, 'policy') ?? 'mow'
    const pidns = oneOf(body.pidns, PIDNS, 'pidns')
    if (body.fillAfterMs !== undefined && (policy !== 'moa' || body.fillAfterMs < 0)) throw new UsageError('USAGE', '--fill-after applies to --policy moa only', 'Drop fillAfterMs, or restore with policy moa.')
    if (body.faultPages !== undefined && (policy !== 'moa' || body.faultPages < 1 || body.faultPages > 512)) throw new UsageError('USAGE', '--fault-pages applies to --policy moa only, 1 to 512', 'Drop faultPages, or restore with policy moa.')
    const limits: CgroupLimits = {...(body.memoryMax === undefined ? {} : {memoryMax: body.memoryMax}), ...(body.cpuMax === undefined ? {} : {cpuMax: body.cpuMax})}
    const limited = body.memoryMax !== undefined || body.cpuMax !== undefined
    this.cgroups.check(limits) // refused before any work: a limit the host cannot enforce is never dropped
    const pool = this.currentPool()
    this.requirePoolAccess(pool, peer)
    if (!this.served(peer)) {
      pool.openCheckpoint(body.name, {uid: peer.uid}) // the CLI's refusals first (CHECKPOINT_NOT_FOUND, CHECKPOINT_ACCESS)
      throw this.unserved(peer, 'restore')
    }
    const t0 = performance.now()
    let tookGhost = false
    let why = 'none configured'
    let taken: Ghost | undefined
    let result: RestoreResult
    try {
      result = restoreFromPool(pool, {
      name: body.name, policy, wait: false, verify: body.verify ?? false,
      ...(pidns === undefined ? {} : {pidns}), ...(body.netns === undefined ? {} : {netns: body.netns}),
      ...(body.fillAfterMs === undefined ? {} : {fillAfterMs: body.fillAfterMs}),
      ...(body.faultPages === undefined ? {} : {faultPages: body.faultPages}), ...(body.record ? {record: true} : {}),
      stubSource: (opts, shape) => {
        taken = this.ghosts.take(opts, shape)
        tookGhost = taken !== undefined
        const kind = kindOf(shape)
        if (!tookGhost && this.ghosts.target > 0) why = kind === undefined ? 'a network namespace given by path is joined by a stub of its own' : `none of kind ${kind} ready (kept warm from now on)`
        // A restore with limits and no ghost ready: a stub made now, in a cgroup of its own. Without limits a
        // fresh stub is not moved into one: the move costs ~6 ms here (v1 cgroup migration), more than the spawn.
        if (!taken && limited) taken = this.ghosts.fresh(opts, shape)
        if (limited && !taken?.cgroup) throw new UnsupportedError('CGROUP_UNAVAILABLE', `this restore's stub cannot be put in a cgroup${kind === undefined ? ' (a network namespace given by path)' : ''}`, 'Restore without --memory-max/--cpu-max, or with --netns new or host.')
        this.cgroups.apply(taken?.cgroup, limits)
        faultPoint('porter-stub-taken')
        return taken
      },
    })
    } catch (error) {
      if (taken?.cgroup) this.cgroups.remove(taken.cgroup) // the build killed its stub: its cgroup is empty
      throw error
    }
    // Killed here: the clone runs on, released; only the reply is lost.
    faultPoint('porter-restored')
    this.restoreMs.push(performance.now() - t0)
    if (this.restoreMs.length > 10_000) this.restoreMs.splice(0, 5000)
    this.children.add(result.pidNamespace?.initPid ?? result.pid)
    if (result.faultServerPid !== undefined) this.children.add(result.faultServerPid)
    // Why no ghost: threads and trees are built from a stub that is pid 1 of a new PID namespace (and moa/record clones too).
    const ghost = tookGhost ? true : why
    return {...result, servedBy: 'porter', ghost, cgroup: this.cgroupReply(taken?.cgroup, limits)}
  }

  /** What the reply says of the clone's cgroup: where, the limits set, or why there is none. */
  private cgroupReply(cgroup: CloneCgroup | undefined, limits: CgroupLimits): object {
    if (!cgroup) return {placed: false, why: this.cgroups.support.notes.join('; ') || 'no cgroup'}
    return {placed: true, name: cgroup.name, dirs: cgroup.dirs, ...limits, memory: this.cgroups.support.memory, cpu: this.cgroups.support.cpu}
  }

  private checkpoint(raw: unknown, peer: PeerCredentials): object {
    const body = fields<CheckpointBody>(raw, {pid: 'integer', name: 'string', kill: 'boolean', tree: 'boolean', tcpClose: 'boolean'}, ['pid', 'name'])
    validateCheckpointName(body.name)
    if (body.pid <= 0) throw new UsageError('INVALID_PID', `invalid pid ${body.pid}: expected a positive integer`, 'Give the pid of a running process (see `ps`).')
    const pool = this.currentPool()
    this.requirePoolAccess(pool, peer)
    if (!this.served(peer)) {
      // The CLI's rule for a user: every one of the target's real, effective and saved uids must be theirs.
      let uids: number[]
      try {
        uids = readStatus(body.pid).uid.slice(0, 3)
      } catch {
        throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${body.pid}`, 'Give the pid of a running process (see `ps`).')
      }
      if (peer.uid !== 0 && uids.some((uid) => uid !== peer.uid)) {
        throw new PermissionError('NOT_PERMITTED', `process ${body.pid} runs with uid ${uids.find((uid) => uid !== peer.uid)} (real/effective/saved uids ${uids.join('/')}); you are uid ${peer.uid}`,
          'Checkpoint your own processes, or run as root.')
      }
      throw this.unserved(peer, 'checkpoint')
    }
    const result = checkpointToPool(pool, {pid: body.pid, name: body.name, kill: body.kill ?? false, tree: body.tree ?? false, tcpClose: body.tcpClose ?? false})
    return {...result, servedBy: 'porter'}
  }

  /**
   * The CRIU-format path, for the porter's own user only: its image files and its clone would
   * belong to the porter's user. Others do it themselves (PORTER_UNSERVED; the CLI falls back).
   */
  private async criuDump(raw: unknown, peer: PeerCredentials): Promise<CriuDumpResult & {servedBy: 'porter'}> {
    const body = fields<CriuDumpBody>(raw, {pid: 'integer', images: 'string', kill: 'boolean', tree: 'boolean', tcpClose: 'boolean'}, ['pid', 'images'])
    if (body.pid <= 0) throw new UsageError('INVALID_PID', `invalid pid ${body.pid}: expected a positive integer`, 'Give the pid of a running process (see `ps`).')
    if (!isAbsolute(body.images)) throw badRequest('field images must be an absolute path')
    if (!this.served(peer)) throw this.unserved(peer, 'dump processes')
    // Killing and reaping the fork snapshot waits until the reply is out.
    const result = await criuDump({pid: body.pid, images: body.images, kill: body.kill ?? false, tree: body.tree ?? false, tcpClose: body.tcpClose ?? false, cleanUp: (work) => setImmediate(work)})
    return {...result, servedBy: 'porter'}
  }

  private criuRestore(raw: unknown, peer: PeerCredentials): CriuRestoreResult & {servedBy: 'porter'} {
    const body = fields<CriuRestoreBody>(raw, {images: 'string', pidns: 'string', netns: 'string'}, ['images'])
    const pidns = oneOf(body.pidns, PIDNS, 'pidns')
    if (!isAbsolute(body.images)) throw badRequest('field images must be an absolute path')
    if (body.netns !== undefined && body.netns !== 'new' && !isAbsolute(body.netns)) throw badRequest('field netns must be "new" or an absolute path')
    if (!this.served(peer)) throw this.unserved(peer, 'restore image sets')
    // Our unmapping of the pages images waits until the reply is out.
    const result = criuRestore({images: body.images, wait: false, cleanUp: (work) => setImmediate(work), ...(pidns === undefined ? {} : {pidns}), ...(body.netns === undefined ? {} : {netns: body.netns})})
    this.children.add(result.pidNamespace?.initPid ?? result.pid)
    return {...result, servedBy: 'porter'}
  }

  status(): object {
    return {
      pid: process.pid, uid: process.geteuid?.() ?? 0, pool: this.pool.path, socket: this.options.socket, startedAt: new Date(this.startedAt).toISOString(),
      uptimeMs: Date.now() - this.startedAt, ghosts: {...this.ghosts.stats}, ghostPids: this.ghosts.pids(), recovered: this.recovered, node: process.version,
      cgroups: {...this.cgroups.support, enabled: this.cgroups.enabled},
    }
  }

  metrics(): object {
    const sorted = [...this.restoreMs].sort((a, b) => a - b)
    const round = (ms: number | null): number | null => (ms === null ? null : Math.round(ms * 1000) / 1000)
    return {
      requests: Object.fromEntries(this.counts), restores: {count: this.restoreMs.length, p50Ms: round(percentile(sorted, 50)), p99Ms: round(percentile(sorted, 99)), maxMs: round(sorted.at(-1) ?? null)},
      ghosts: {...this.ghosts.stats}, functions: this.functions.metrics(), childrenToReap: this.children.size, recentExits: [...this.exits], rssBytes: process.memoryUsage.rss(), uptimeMs: Date.now() - this.startedAt,
    }
  }

  /** Reap released clones (or inits) and fault servers that ended: they are our children, posix_spawned, unknown to libuv. */
  reap(): void {
    let reaped = 0
    for (const pid of this.children) {
      try {
        const status = wait4(pid, WNOHANG)
        if (status) {
          this.children.delete(pid)
          this.exits.push({pid, code: status.exited ? status.exitCode ?? 0 : null, signal: status.signaled ? status.termSignal ?? null : null})
          if (this.exits.length > 64) this.exits.shift()
          reaped++
        }
      } catch {
        this.children.delete(pid) // ECHILD: not ours any more
      }
    }
    // Their references go with them: left to gc, hundreds of dead clones' references slow every restore's count of live ones.
    if (reaped > 0) {
      this.pool.releaseDeadReferences()
      this.cgroups.sweep()
    }
  }

  close(): void {
    for (const timer of this.timers) clearInterval(timer)
    this.functions.close()
    this.ghosts.stop()
    this.reap()
    this.cgroups.close()
    // The function instances just stopped were clones: their references go now, not at the next start or gc
    // (another host would count them alive for this host's whole lease).
    this.pool.releaseDeadReferences()
    this.pool.close()
  }
}

/**
 * Ghosts: restore stubs the porter spawns and seizes ahead of time, so that a
 * restore only builds the image into one (CXLporter's pre-created
 * containers). A ghost is an ordinary stub (inject/stub) in its ptrace stop,
 * made for one namespace shape (its kind):
 *   plain        the host's PID and network namespaces
 *   netns        a network namespace of its own, loopback up (restore/network)
 *   pidns        pid 1 of a new PID namespace: the init a clone's root is
 *                cloned from with its original pid (threads, trees, moa, --pidns new)
 *   pidns-netns  both
 * and placed in a cgroup of its own (cgroups.ts) where the host allows it,
 * so that a restore's limits are one write into that cgroup.
 *
 * Which kinds are kept warm: those given (`porter start --ghost-kinds`,
 * default plain), and every kind a restore asked for since the porter
 * started (learned from demand: the first such restore spawns its stub,
 * later ones find a ghost), each at the `--ghosts` target.
 *
 * stdio: a ghost is spawned with /dev/null on fds 0-2 and, on fd 3, a pidfd
 * of the porter. A build that wants other fds 0-2 (a function instance's
 * pipes) gets them installed when it takes the ghost: pidfd_getfd from the
 * porter through that pidfd, dup3 onto 0-2 (the image build leaves fds 0-2
 * that were a pipe or a terminal as the stub has them). fd 3 is closed
 * before the ghost is handed out.
 *
 * A ghost never outlives the porter: it was seized with PTRACE_O_EXITKILL
 * (the kernel kills it when its tracer exits, SIGKILL included) and asked
 * for SIGKILL at its parent's death (PR_SET_PDEATHSIG); the stub clears that
 * only when it is released as a clone. Ghosts are refilled one at a time
 * between requests, on the porter's main thread, which must be the tracer.
 */
import {readFileSync} from 'node:fs'

import {UsageError} from '../errors.js'
import {STUB_DEFAULT_BASE, type Stub, type StubOptions, spawnStub} from '../inject/stub.js'
import type {ReadyStub, StubShape} from '../restore/build-process.js'
import {enterNetwork} from '../restore/network.js'
import {spawnNamespaceInit} from '../restore/pid-namespace.js'
import {cpuMask, currentCpu, setAffinity} from '../sys/affinity.js'
import {close} from '../sys/file-io.js'
import {SYS, pidfdOpen} from '../sys/syscall.js'
import type {CloneCgroup, PorterCgroups} from './cgroups.js'

export const GHOST_KINDS = ['plain', 'netns', 'pidns', 'pidns-netns'] as const
export type GhostKind = (typeof GHOST_KINDS)[number]

export interface GhostStats {
  /** Ghosts kept ready per warm kind. */
  target: number
  /** Kinds kept warm (given, then learned from demand). */
  kinds: GhostKind[]
  ready: number
  readyByKind: Partial<Record<GhostKind, number>>
  /** Restores built into a ghost. */
  used: number
  usedByKind: Partial<Record<GhostKind, number>>
  /** Restores that asked for a stub a ghost does not fit (--wait, a namespace path, a colliding stub address). */
  unfit: number
  /** Restores that found no ghost of their kind ready. */
  empty: number
  spawned: number
  /** Ghosts found dead when taken (killed from outside). */
  lost: number
  spawnFailures: number
  lastSpawnError?: string
}

/** A ghost handed to a build: the stub (or init), its shape, its cgroup. */
export interface Ghost extends ReadyStub {
  kind: GhostKind
  cgroup?: CloneCgroup
}

/** The ghost kind for a build's shape, or undefined for a network namespace given by path (joined by the build). */
export function kindOf(shape: StubShape): GhostKind | undefined {
  if (shape.network !== 'host' && shape.network !== 'new') return undefined
  if (shape.pidns === 'new') return shape.network === 'new' ? 'pidns-netns' : 'pidns'
  return shape.network === 'new' ? 'netns' : 'plain'
}

/** Parse `--ghost-kinds plain,pidns,...`. */
export function parseGhostKinds(text: string): GhostKind[] {
  const kinds = text.split(',').map((kind) => kind.trim()).filter(Boolean)
  for (const kind of kinds) {
    if (!(GHOST_KINDS as readonly string[]).includes(kind)) throw new UsageError('USAGE', `unknown ghost kind ${JSON.stringify(kind)}`, `Give a comma-separated list of ${GHOST_KINDS.join(', ')}.`)
  }
  return [...new Set(kinds)] as GhostKind[]
}

/** Whether a build asking for `opts` can take a ghost (spawned in a new session at the default base; fds 0-2 are installed at take). */
export function fitsGhost(opts: StubOptions): boolean {
  return opts.fds === undefined && opts.env === undefined && opts.argv === undefined && opts.cwd === undefined && opts.ptraceOptions === undefined
    && (opts.setsid ?? true) && (opts.base ?? STUB_DEFAULT_BASE) === STUB_DEFAULT_BASE
}

/** A stub still in its ptrace stop (state 't'), not killed behind our back. */
function stillParked(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 't'
  } catch {
    return false
  }
}

/** fd 3 of every ghost: a pidfd of the porter, for pidfd_getfd of the fds a build wants on 0-2. */
const PORTER_PIDFD_SLOT = 3

export class Ghosts {
  private readonly ready = new Map<GhostKind, Ghost[]>()
  private readonly warm: Set<GhostKind>
  private refillScheduled = false
  private stopped = false
  private porterPidfd: number | undefined
  readonly stats: GhostStats

  constructor(readonly target: number, kinds: readonly GhostKind[] = ['plain'], private readonly cgroups?: PorterCgroups) {
    this.warm = new Set(kinds)
    this.stats = {target, kinds: [...this.warm], ready: 0, readyByKind: {}, used: 0, usedByKind: {}, unfit: 0, empty: 0, spawned: 0, lost: 0, spawnFailures: 0}
  }

  /**
   * For buildTree: a ready ghost of the shape asked for, else undefined (the
   * build makes its own stub). Installs fds 0-2 the build wants.
   */
  take(opts: StubOptions, shape: StubShape): Ghost | undefined {
    if (this.target === 0) return undefined
    const kind = kindOf(shape)
    if (kind === undefined || !fitsGhost(opts)) {
      this.stats.unfit++
      return undefined
    }
    if (!this.warm.has(kind)) {
      this.warm.add(kind) // learned from demand: kept warm from now on
      this.stats.kinds = [...this.warm]
    }
    const queue = this.ready.get(kind) ?? []
    for (;;) {
      const ghost = queue.shift()
      this.count()
      this.scheduleRefill()
      if (!ghost) {
        this.stats.empty++
        return undefined
      }
      if (!stillParked(ghost.stub.pid)) {
        this.stats.lost++
        ghost.stub.kill()
        continue
      }
      try {
        this.prepare(ghost, opts)
      } catch (error) {
        ghost.stub.kill()
        throw error
      }
      this.stats.used++
      this.stats.usedByKind[kind] = (this.stats.usedByKind[kind] ?? 0) + 1
      return ghost
    }
  }

  /** Hand-out: on our CPU as a fresh stub would be, fds 0-2 as asked, the porter's pidfd closed. */
  private prepare(ghost: Ghost, opts: StubOptions): void {
    const cpu = currentCpu()
    if (cpu !== undefined) setAffinity(ghost.stub.pid, cpuMask(cpu))
    const tracee = ghost.stub.tracee
    const wanted = [opts.stdin ?? null, opts.stdout ?? null, opts.stderr ?? null]
    wanted.forEach((fd, target) => {
      if (fd === null) return
      const copy = tracee.syscallChecked(`pidfd_getfd(porter, ${fd})`, SYS.pidfd_getfd, PORTER_PIDFD_SLOT, fd, 0)
      tracee.syscallChecked(`dup3(${copy}, ${target})`, SYS.dup3, copy, target, 0)
      tracee.syscall(SYS.close, copy)
    })
    tracee.syscall(SYS.close, PORTER_PIDFD_SLOT)
  }

  /**
   * A ghost made now, for a restore that found none ready but must be in a
   * cgroup of its own (it asks for limits); undefined if the shape never fits.
   */
  fresh(opts: StubOptions, shape: StubShape): Ghost | undefined {
    const kind = kindOf(shape)
    if (kind === undefined || !fitsGhost(opts)) return undefined
    const ghost = this.spawn(kind)
    try {
      this.prepare(ghost, opts)
    } catch (error) {
      ghost.stub.kill()
      this.cgroups?.remove(ghost.cgroup)
      throw error
    }
    return ghost
  }

  private spawn(kind: GhostKind): Ghost {
    this.porterPidfd ??= pidfdOpen(process.pid)
    const options: StubOptions = {fds: [null, null, null, this.porterPidfd], setsid: true, base: STUB_DEFAULT_BASE}
    const pidns = kind.startsWith('pidns')
    const stub: Stub = pidns ? spawnNamespaceInit(options) : spawnStub(options)
    try {
      const network = kind.endsWith('netns') ? 'new' : 'host'
      enterNetwork(stub.tracee, network)
      const cgroup = this.cgroups?.place(stub.pid)
      return {stub, pidns: pidns ? 'new' : 'host', network, kind, ...(cgroup ? {cgroup} : {})}
    } catch (error) {
      stub.kill()
      throw error
    }
  }

  private count(): void {
    let ready = 0
    for (const kind of GHOST_KINDS) {
      const n = this.ready.get(kind)?.length ?? 0
      if (n > 0 || this.warm.has(kind)) this.stats.readyByKind[kind] = n
      ready += n
    }
    this.stats.ready = ready
  }

  /** The warm kind furthest below the target, if any. */
  private neediest(): GhostKind | undefined {
    let best: GhostKind | undefined
    let fewest = this.target
    for (const kind of this.warm) {
      const n = this.ready.get(kind)?.length ?? 0
      if (n < fewest) {
        fewest = n
        best = kind
      }
    }
    return best
  }

  /** Top up every warm kind to the target, one ghost per turn of the event loop so requests are served in between. */
  scheduleRefill(): void {
    if (this.refillScheduled || this.stopped || this.neediest() === undefined) return
    this.refillScheduled = true
    setImmediate(() => {
      this.refillScheduled = false
      const kind = this.stopped ? undefined : this.neediest()
      if (kind === undefined) return
      try {
        const ghost = this.spawn(kind)
        const queue = this.ready.get(kind) ?? []
        queue.push(ghost)
        this.ready.set(kind, queue)
        this.stats.spawned++
        this.count()
      } catch (error) {
        this.stats.spawnFailures++
        this.stats.lastSpawnError = (error as Error).message
        // Back off: a host that cannot spawn stubs now is not helped by a busy loop.
        setTimeout(() => this.scheduleRefill(), 1000).unref()
        return
      }
      this.scheduleRefill()
    })
  }

  pids(): number[] {
    return [...this.ready.values()].flat().map((ghost) => ghost.stub.pid)
  }

  /** Names of the ghosts' cgroups. */
  cgroupNames(): string[] {
    return [...this.ready.values()].flat().flatMap((ghost) => (ghost.cgroup ? [ghost.cgroup.name] : []))
  }

  /** Kill and reap every ready ghost and remove its cgroup. */
  stop(): void {
    this.stopped = true
    for (const queue of this.ready.values()) {
      for (const ghost of queue.splice(0)) {
        ghost.stub.kill()
        this.cgroups?.remove(ghost.cgroup)
      }
    }
    this.count()
    if (this.porterPidfd !== undefined) close(this.porterPidfd)
    this.porterPidfd = undefined
  }
}

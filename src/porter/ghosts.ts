/**
 * Ghosts: restore stubs the porter spawns and seizes ahead of time, so that a
 * restore only builds the image into one (CXLporter's pre-created
 * containers). A ghost is an ordinary stub (inject/stub) in its ptrace stop:
 * spawned with the options a detached single-threaded restore in the host's
 * PID namespace asks for, and handed out only to a build asking for exactly
 * those (buildTree's stubSource). Threads and trees need a stub as pid 1 of a
 * new PID namespace and take the normal path.
 *
 * A ghost never outlives the porter: it was seized with PTRACE_O_EXITKILL
 * (the kernel kills it when its tracer exits, SIGKILL included) and asked
 * for SIGKILL at its parent's death (PR_SET_PDEATHSIG); the stub clears that
 * only when it is released as a clone. Ghosts are refilled one at a time
 * between requests, on the porter's main thread, which must be the tracer.
 */
import {readFileSync} from 'node:fs'

import {STUB_DEFAULT_BASE, type Stub, type StubOptions, spawnStub} from '../inject/stub.js'
import {cpuMask, currentCpu, setAffinity} from '../sys/affinity.js'

export interface GhostStats {
  target: number
  ready: number
  /** Restores built into a ghost. */
  used: number
  /** Restores that asked for a stub a ghost does not fit (threads, trees, --wait, a colliding stub address). */
  unfit: number
  /** Restores that found no ghost ready. */
  empty: number
  spawned: number
  /** Ghosts found dead when taken (killed from outside). */
  lost: number
  spawnFailures: number
  lastSpawnError?: string
}

/** Whether a build asking for `opts` can take a ghost (spawned with stdio /dev/null, a new session, the default base). */
export function fitsGhost(opts: StubOptions): boolean {
  return opts.fds === undefined && opts.env === undefined && opts.argv === undefined && opts.cwd === undefined && opts.ptraceOptions === undefined
    && (opts.stdin ?? null) === null && (opts.stdout ?? null) === null && (opts.stderr ?? null) === null
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

export class Ghosts {
  private readonly ready: Stub[] = []
  private refillScheduled = false
  private stopped = false
  readonly stats: GhostStats

  constructor(readonly target: number) {
    this.stats = {target, ready: 0, used: 0, unfit: 0, empty: 0, spawned: 0, lost: 0, spawnFailures: 0}
  }

  /** For buildTree: a ready ghost if it fits `opts`, else undefined (the build spawns its own stub). */
  take(opts: StubOptions): Stub | undefined {
    if (this.target === 0) return undefined
    if (!fitsGhost(opts)) {
      this.stats.unfit++
      return undefined
    }
    for (;;) {
      const ghost = this.ready.shift()
      this.stats.ready = this.ready.length
      this.scheduleRefill()
      if (!ghost) {
        this.stats.empty++
        return undefined
      }
      if (!stillParked(ghost.pid)) {
        this.stats.lost++
        ghost.kill()
        continue
      }
      // As a fresh stub would be: on the CPU of the thread that will drive it (the build gives it its CPUs back at release).
      const cpu = currentCpu()
      if (cpu !== undefined) setAffinity(ghost.pid, cpuMask(cpu))
      this.stats.used++
      return ghost
    }
  }

  /** Top up to the target, one ghost per turn of the event loop so requests are served in between. */
  scheduleRefill(): void {
    if (this.refillScheduled || this.stopped || this.ready.length >= this.target) return
    this.refillScheduled = true
    setImmediate(() => {
      this.refillScheduled = false
      if (this.stopped || this.ready.length >= this.target) return
      try {
        this.ready.push(spawnStub({stdin: null, stdout: null, stderr: null, setsid: true, base: STUB_DEFAULT_BASE}))
        this.stats.spawned++
        this.stats.ready = this.ready.length
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
    return this.ready.map((ghost) => ghost.pid)
  }

  /** Kill and reap every ready ghost. */
  stop(): void {
    this.stopped = true
    for (const ghost of this.ready.splice(0)) ghost.kill()
    this.stats.ready = 0
  }
}

/**
 * A ptrace-stopped process we can inspect and drive with injected system
 * calls. `Tracee` is the last of a chain of layers, one file each:
 * tracee-core.ts (attach/wait, registers, memory, resume/detach) ->
 * single-call.ts (one injected call) -> batch.ts (many calls, one resume) ->
 * fork.ts (process creation, self-healing mode) -> this file (the
 * constructors and scratch memory, remote-scratch.ts).
 */
import {ConflictError, CxlforkError, NotFoundError, PermissionError, SyscallError, UnsupportedError} from '../errors.js'
import {PTRACE, PTRACE_EVENT, PTRACE_O, ptrace, ptraceRaw} from '../sys/ptrace.js'
import {SIG} from '../sys/syscall.js'
import {readStat, readStatus} from '../sys/proc.js'
import {BATCH_AREA} from './batch.js'
import {HealingTracee} from './fork.js'
import {RemoteScratch} from './remote-scratch.js'
import type {TraceeState} from './tracee-core.js'

export {TraceeGoneError, type PendingSignals} from './tracee-core.js'
export type {RseqConfig} from '../sys/ptrace.js'
export {CLONE, type ForkResult} from './fork.js'
export {BATCH_MAX_CALLS, type BatchCall, type PendingSyscalls} from './batch.js'

export interface SeizeOptions {
  /** PTRACE_O_* bits. TRACESYSGOOD is always added. Default: EXITKILL. */
  options?: number
  /** Stop the tracee after seizing (PTRACE_INTERRUPT + wait). Default true. */
  interrupt?: boolean
  /** Give up waiting for the stop after this many ms (polling); default: block. */
  timeoutMs?: number
}

export class Tracee extends HealingTracee {
  private readonly scratchArea = RemoteScratch.owned(this)

  private constructor(pid: number, options: number, state: TraceeState) {
    super(pid, options, state)
  }

  /**
   * PTRACE_SEIZE + PTRACE_INTERRUPT and wait for the stop. Typed errors:
   * NotFoundError (no such process / zombie), UnsupportedError (kernel thread,
   * ourselves), ConflictError (already traced), PermissionError (EPERM).
   */
  static seize(pid: number, opts: SeizeOptions = {}): Tracee {
    if (!Number.isInteger(pid) || pid <= 0) throw new NotFoundError('PROCESS_NOT_FOUND', `invalid pid: ${pid}`)
    if (pid === process.pid) {
      throw new UnsupportedError('SELF_TRACE', 'cannot trace the cxlfork process itself', 'pass the pid of another process')
    }
    const st = readStat(pid) // NotFoundError if gone
    if (st.isKernelThread) {
      throw new UnsupportedError('KERNEL_THREAD', `process ${pid} (${st.comm}) is a kernel thread`, 'only user-space processes can be checkpointed')
    }
    if (st.state === 'Z' || st.state === 'X') {
      throw new UnsupportedError('PROCESS_ZOMBIE', `process ${pid} (${st.comm}) is a zombie: it has exited and waits to be reaped`, 'A zombie has no memory left to checkpoint.')
    }
    const options = (opts.options ?? PTRACE_O.EXITKILL) | PTRACE_O.TRACESYSGOOD
    const r = ptraceRaw(PTRACE.SEIZE, pid, 0, options)
    if (r < 0n) {
      const e = Number(-r)
      if (e === 3) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
      if (e === 1) {
        let tracer = 0
        try {
          const s = readStatus(pid)
          tracer = s.tracerPid
          if (s.state === 'Z') throw new UnsupportedError('PROCESS_ZOMBIE', `process ${pid} is a zombie: it has exited and waits to be reaped`, 'A zombie has no memory left to checkpoint.')
        } catch (err) {
          if (err instanceof CxlforkError) throw err
        }
        if (tracer !== 0) {
          throw new ConflictError('ALREADY_TRACED', `process ${pid} is already traced by process ${tracer}`, 'detach the debugger/strace (or the other cxlfork) first')
        }
        throw new PermissionError('PTRACE_DENIED', `not allowed to trace process ${pid}`, 'run as root or with CAP_SYS_PTRACE; check /proc/sys/kernel/yama/ptrace_scope')
      }
      throw new SyscallError(`ptrace(SEIZE, ${pid})`, e)
    }
    const t = new Tracee(pid, options, 'running')
    if (opts.interrupt ?? true) {
      try {
        t.interrupt(opts.timeoutMs)
      } catch (err) {
        ptraceRaw(PTRACE.DETACH, pid, 0, 0)
        throw err
      }
    }
    return t
  }

  /**
   * Adopt a process that is already our tracee (e.g. auto-attached by
   * PTRACE_O_TRACEFORK) and wait for its first stop.
   */
  static adopt(pid: number, options: number, waitForStop = true): Tracee {
    const t = new Tracee(pid, options, 'running')
    if (waitForStop) t.waitStop()
    return t
  }

  /**
   * Adopt a process or thread that an injected fork/clone created and ptrace
   * attached to us on its own (PTRACE_O_TRACEFORK/CLONE): wait for its first
   * stop, PTRACE_EVENT_STOP when the parent was seized (SIGSTOP otherwise).
   */
  static adoptNewChild(pid: number, options: number): Tracee {
    const child = Tracee.adopt(pid, options, false)
    for (;;) {
      const w = child.waitStop()
      if (w.event === PTRACE_EVENT.STOP || w.stopSignal === SIG.STOP) return child
      child.resume(PTRACE.CONT, 0)
    }
  }

  protected adoptChild(pid: number): Tracee {
    return Tracee.adoptNewChild(pid, this.options)
  }

  /**
   * Stop several tracees at once: every PTRACE_INTERRUPT is sent before the
   * first stop is awaited, so their stops overlap instead of queuing.
   */
  static interruptAll(tracees: readonly Tracee[], timeoutMs?: number): void {
    const running = tracees.filter((t) => t.state === 'running')
    for (const t of running) ptrace(PTRACE.INTERRUPT, t.pid)
    for (const t of running) t.awaitInterruptStop(timeoutMs)
  }

  // -------------------------------------------------------------------------
  // Scratch memory in the tracee (remote-scratch.ts)

  /** Ensures a scratch mapping of at least `size` bytes and resets its allocator; returns its address (RemoteScratch.ensure). */
  scratch(size = 4096): bigint {
    return this.scratchArea.ensure(size)
  }

  /** [start, end) of the scratch mapping, or null. */
  get scratchRange(): [bigint, bigint] | null {
    return this.scratchArea.range
  }

  /** Reserves `len` bytes of scratch; growing it invalidates earlier addresses (RemoteScratch.alloc). */
  scratchAlloc(len: number, align = 8): bigint {
    return this.scratchArea.alloc(len, align)
  }

  /** Copies bytes (or a string, NUL-terminated) into scratch memory; returns their remote address. */
  scratchWrite(bytes: Uint8Array | string, align = 8): bigint {
    return this.scratchArea.write(bytes, align)
  }

  /** munmap the scratch mapping (injected). */
  freeScratch(): void {
    this.scratchArea.free()
  }

  /** Every mapping this object created in the tracee ([start, end) pairs): exclude them from dumps. */
  injectionRanges(): [bigint, bigint][] {
    const out: [bigint, bigint][] = []
    const scratch = this.scratchArea.range
    if (scratch) out.push(scratch)
    if (this.batchBase !== null) out.push([this.batchBase, this.batchBase + BigInt(BATCH_AREA)])
    return out
  }
}

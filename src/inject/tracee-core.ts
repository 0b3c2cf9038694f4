/**
 * The core of a traced process: attaching and waiting (one ptrace event loop
 * for every injection), the program's registers, signal mask and memory, and
 * resuming, detaching and killing. The program's registers and mask are kept
 * while injections (single-call.ts, batch.ts, fork.ts) clobber the kernel's,
 * and written back (lazily, before anything reads them or the tracee
 * resumes) with the syscall-restart fix-up applied (regs.restartFixup),
 * because resuming from a syscall-exit stop does not re-run the kernel's
 * restart logic. Synchronous only, and from this thread only: ptrace
 * requests are accepted only from the thread that attached.
 */
import {CxlforkError, NotFoundError, ConflictError} from '../errors.js'
import {describeWait, getRegset, peekSigInfo, ptrace, PTRACE, PTRACE_EVENT, PTRACE_O, rseqConfiguration, type RseqConfig, setRegset, wait4, type WaitStatus} from '../sys/ptrace.js'
import {killQuiet, SIG, WNOHANG} from '../sys/syscall.js'
import {readProcessMemory, writeProcessMemory} from '../sys/vm-io.js'
import {readMaps, type Vma} from '../sys/proc.js'
import {faultPoint} from '../fault.js'
import {NT_PRFPREG, NT_X86_XSTATE, type Regs, regsFromArray, regsToArray, restartFixup} from './regs.js'

export class TraceeGoneError extends NotFoundError {
  constructor(readonly pid: number, readonly status: WaitStatus) {
    super('TRACEE_GONE', `process ${pid} ${describeWait(status)}`, 'the process died while being traced')
  }
}

export interface PendingSignals {
  /** Raw 128-byte siginfo_t of the thread's private queue, oldest first. */
  private: Uint8Array[]
  /** Raw 128-byte siginfo_t of the process-wide (shared) queue, oldest first. */
  shared: Uint8Array[]
}

export type TraceeState = 'running' | 'stopped' | 'detached' | 'dead'

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}


export abstract class TraceeCore {
  protected state: TraceeState
  /** Program registers (kernel values as of the stop), or null if not read yet. */
  protected progRegs: BigUint64Array | null = null
  /** The kernel currently holds registers other than progRegs (after an injection). */
  protected regsClobbered = false
  /** The program's own signal mask while we hold every signal blocked. */
  protected progMask: bigint | null = null
  /** The program's XSAVE state as of this stop, once read. */
  protected progXState: Uint8Array | null = null
  protected site: bigint | null = null
  /** Signals dequeued by the tracee during an injection; re-delivered on cont(). */
  protected deferredSignals: number[] = []
  /** Children reported by PTRACE_EVENT_FORK/VFORK/CLONE during the last injection. */
  protected newChildren: number[] = []
  /** Last wait status that left the tracee stopped. */
  lastStop: WaitStatus | null = null
  private readonly peekBuf = new BigUint64Array(1)
  /** Number of syscalls injected so far. */
  injectedCount = 0
  /** Self-healing mode (fork.ts, enterSelfHealing): the registers that lead back through the frame, and where the frame is. */
  protected healing: {regs: BigUint64Array; frame: bigint} | null = null
  /** Address of an rt_sigreturn sequence in the tracee, for self-healing syscalls. */
  protected sigreturnGadget: bigint | null = null

  protected constructor(readonly pid: number, public options: number, state: TraceeState) {
    this.state = state
  }

  get isStopped(): boolean {
    return this.state === 'stopped'
  }

  get isAlive(): boolean {
    return this.state === 'stopped' || this.state === 'running'
  }

  /** PTRACE_INTERRUPT and wait for the resulting stop. */
  interrupt(timeoutMs?: number): WaitStatus {
    this.requireAttached()
    if (this.state === 'stopped') return this.lastStop!
    ptrace(PTRACE.INTERRUPT, this.pid)
    return this.awaitInterruptStop(timeoutMs)
  }

  protected awaitInterruptStop(timeoutMs?: number): WaitStatus {
    for (;;) {
      const w = this.waitStop(timeoutMs)
      if (w.event === PTRACE_EVENT.STOP) return w
      if (w.stopSignal !== undefined && w.event === 0 && w.stopSignal !== (SIG.TRAP | 0x80)) {
        // signal-delivery-stop that raced with the interrupt: let it be delivered
        // normally; the interrupt trap is still pending and follows.
        this.resume(PTRACE.CONT, w.stopSignal)
        continue
      }
      return w
    }
  }

  /**
   * Wait (wait4 __WALL on this pid only) for the next stop. Throws
   * TraceeGoneError if the process exited or was killed.
   */
  waitStop(timeoutMs?: number): WaitStatus {
    let w: WaitStatus | null
    if (timeoutMs === undefined) {
      w = wait4(this.pid, 0)
    } else {
      const deadline = Date.now() + timeoutMs
      let spins = 0
      for (;;) {
        w = wait4(this.pid, WNOHANG)
        if (w) break
        if (Date.now() > deadline) {
          throw new CxlforkError('TRACEE_STOP_TIMEOUT', `process ${this.pid} did not stop within ${timeoutMs} ms`, 'it may be in uninterruptible sleep (D state); retry later')
        }
        if (++spins > 100) sleepMs(1)
      }
    }
    if (w!.exited || w!.signaled) {
      this.state = 'dead'
      // Reap the zombie too when we are also the real parent.
      try {
        wait4(this.pid, WNOHANG)
      } catch {
        /* not our child */
      }
      throw new TraceeGoneError(this.pid, w!)
    }
    this.state = 'stopped'
    this.lastStop = w!
    return w!
  }

  /**
   * The one ptrace event loop of an injection: waits for stops until `done`
   * accepts one, resuming with `request` in between. On the way it collects
   * the children that fork/clone events report (takeNewChildren) and keeps
   * signals the tracee dequeued for cont(); other events (exec, exit, group
   * stop) are passed over. The tracee must have been resumed already.
   */
  protected pump(request: number, done: (w: WaitStatus) => boolean): WaitStatus {
    for (;;) {
      const w = this.waitStop()
      if (done(w)) return w
      const ev = w.event ?? 0
      if (ev === PTRACE_EVENT.FORK || ev === PTRACE_EVENT.VFORK || ev === PTRACE_EVENT.CLONE) {
        this.newChildren.push(Number(this.getEventMsg()))
      } else if (ev === 0 && w.stopSignal !== undefined && w.stopSignal !== 0) {
        // signal-delivery-stop (a synchronous or unblockable signal): keep it for cont()
        this.deferredSignals.push(w.stopSignal)
      }
      this.resume(request, 0)
    }
  }

  /** Resume to the next syscall-entry or -exit stop, collecting fork children and deferring signals on the way. */
  protected toSyscallStop(): void {
    this.resume(PTRACE.SYSCALL, 0)
    this.awaitSyscallStop()
  }

  /** Wait (the tracee was resumed with PTRACE_SYSCALL) until it stops at a syscall entry or exit. */
  protected awaitSyscallStop(): void {
    this.pump(PTRACE.SYSCALL, (w) => w.stopSignal === (SIG.TRAP | 0x80))
  }

  // -------------------------------------------------------------------------
  // Registers and state

  protected requireAttached(): void {
    if (this.state === 'dead') throw new NotFoundError('TRACEE_GONE', `process ${this.pid} is gone`)
    if (this.state === 'detached') throw new CxlforkError('TRACEE_DETACHED', `process ${this.pid} is no longer traced`)
  }

  protected requireStopped(): void {
    this.requireAttached()
    if (this.state !== 'stopped') throw new CxlforkError('TRACEE_RUNNING', `process ${this.pid} is running; interrupt it first`)
  }

  protected readRegsKernel(): BigUint64Array {
    const a = new BigUint64Array(27)
    ptrace(PTRACE.GETREGS, this.pid, 0, a)
    return a
  }

  protected writeRegsKernel(a: BigUint64Array): void {
    ptrace(PTRACE.SETREGS, this.pid, 0, a)
  }

  /** One register of the kernel's current set (PTRACE_PEEKUSER, which stores the word at *data). */
  protected peekReg(index: number): bigint {
    ptrace(PTRACE.PEEKUSER, this.pid, index * 8, this.peekBuf)
    return this.peekBuf[0]!
  }

  /** The program's registers as raw user_regs_struct (copy). */
  getRegsArray(): BigUint64Array {
    this.requireStopped()
    this.progRegs ??= this.readRegsKernel()
    return new BigUint64Array(this.progRegs)
  }

  /** The program's registers (what it had when stopped; unaffected by injections). */
  getRegs(): Regs {
    return regsFromArray(this.getRegsArray())
  }

  /** Sets the program's registers (written to the kernel immediately). */
  setRegs(regs: Regs | BigUint64Array): void {
    this.requireStopped()
    const a = regs instanceof BigUint64Array ? new BigUint64Array(regs) : regsToArray(regs)
    if (a.length !== 27) throw new RangeError('user_regs_struct has 27 registers')
    if (this.healing) throw new ConflictError('SELF_HEALING', 'cannot set registers in self-healing mode', 'detach or cont first')
    this.writeRegsKernel(a)
    this.progRegs = a
    this.regsClobbered = false
  }

  /** Raw regset (PTRACE_GETREGSET) of type `nt`; returns a copy sized by the kernel. */
  getRegset(nt: number): Uint8Array {
    this.requireStopped()
    return getRegset(this.pid, nt)
  }

  setRegset(nt: number, bytes: Uint8Array): void {
    this.requireStopped()
    setRegset(this.pid, nt, bytes)
  }

  /**
   * NT_X86_XSTATE (FPU/SSE/AVX/... state, XSAVE layout). Size is the CPU's
   * xstate size. Read once per stop: injected calls leave it alone, and a
   * thread's checkpoint and self-healing frame both need it.
   */
  getXState(): Uint8Array {
    this.progXState ??= this.getRegset(NT_X86_XSTATE)
    return new Uint8Array(this.progXState)
  }

  setXState(bytes: Uint8Array): void {
    this.setRegset(NT_X86_XSTATE, bytes)
    this.progXState = new Uint8Array(bytes)
  }

  /** NT_PRFPREG: the 512-byte FXSAVE area. */
  getFpRegs(): Uint8Array {
    return this.getRegset(NT_PRFPREG)
  }

  /** The program's blocked-signal mask (bit n-1 = signal n). */
  getSigMask(): bigint {
    this.requireStopped()
    if (this.progMask !== null) return this.progMask
    return this.readMaskKernel()
  }

  /** Sets the program's blocked-signal mask (applied before the tracee runs again). */
  setSigMask(mask: bigint): void {
    this.requireStopped()
    if (this.progMask !== null) this.progMask = BigInt.asUintN(64, mask)
    else this.writeMaskKernel(mask)
  }

  protected readMaskKernel(): bigint {
    const m = new BigUint64Array(1)
    ptrace(PTRACE.GETSIGMASK, this.pid, 8, m)
    return m[0]!
  }

  protected writeMaskKernel(mask: bigint): void {
    ptrace(PTRACE.SETSIGMASK, this.pid, 8, BigUint64Array.of(BigInt.asUintN(64, mask)))
  }

  /** Raw siginfo_t (128 bytes) of the current signal stop (PTRACE_GETSIGINFO). */
  getSigInfo(): Uint8Array {
    this.requireStopped()
    const b = new Uint8Array(128)
    ptrace(PTRACE.GETSIGINFO, this.pid, 0, b)
    return b
  }

  /** PTRACE_GETEVENTMSG (new child pid after a fork event, exit status after EXIT...). */
  getEventMsg(): bigint {
    const m = new BigUint64Array(1)
    ptrace(PTRACE.GETEVENTMSG, this.pid, 0, m)
    return m[0]!
  }

  /** Pending (queued, not yet delivered) signals, private and shared queues, via PTRACE_PEEKSIGINFO. */
  peekPendingSignals(queues: 'both' | 'private' = 'both'): PendingSignals {
    this.requireStopped()
    return {private: peekSigInfo(this.pid, false), shared: queues === 'both' ? peekSigInfo(this.pid, true) : []}
  }

  /** PTRACE_GET_RSEQ_CONFIGURATION: the registered rseq area (pointer 0 if none). */
  getRseqConfig(): RseqConfig {
    this.requireStopped()
    return rseqConfiguration(this.pid)
  }

  /** Changes the ptrace options (TRACESYSGOOD is always kept). */
  setOptions(options: number): void {
    this.requireStopped()
    const o = options | PTRACE_O.TRACESYSGOOD
    ptrace(PTRACE.SETOPTIONS, this.pid, 0, o)
    this.options = o
  }

  // -------------------------------------------------------------------------
  // Memory

  /** Reads `len` bytes of the tracee. Falls back to /proc/PID/mem (reads PROT_NONE pages too). */
  readMemory(addr: bigint, len: number): Uint8Array {
    const out = new Uint8Array(len)
    this.readMemoryInto(addr, out)
    return out
  }

  readMemoryInto(addr: bigint, dest: Uint8Array | bigint, len?: number): void {
    readProcessMemory(this.pid, addr, dest, len)
  }

  /** Writes bytes into the tracee; falls back to /proc/PID/mem for read-only pages (FOLL_FORCE, COW). */
  writeMemory(addr: bigint, bytes: Uint8Array | bigint, len?: number): void {
    writeProcessMemory(this.pid, addr, bytes, len)
  }

  /** Current memory map of the tracee. */
  maps(): Vma[] {
    return readMaps(this.pid)
  }

  /** Puts the program's registers and signal mask back into the kernel. */
  protected restoreProgramState(): void {
    // The mask before the registers: in self-healing mode a tracee detached in
    // between still holds registers that restore everything from the frame.
    if (this.progMask !== null) {
      this.writeMaskKernel(this.progMask)
      this.progMask = null
    }
    if (this.healing) faultPoint('fork-unwind')
    if (this.regsClobbered && this.progRegs) {
      this.writeRegsKernel(restartFixup(this.progRegs, 'live'))
      this.regsClobbered = false
    }
    this.healing = null
  }

  // -------------------------------------------------------------------------
  // Resume / detach / kill

  protected resume(request: number, sig: number): void {
    ptrace(request, this.pid, 0, sig)
    this.state = 'running'
  }

  /** Restores program registers/mask and continues (PTRACE_CONT), delivering `sig` (or a deferred signal). */
  cont(sig = 0): void {
    this.requireStopped()
    this.restoreProgramState()
    const s = sig || this.deferredSignals.shift() || 0
    this.progRegs = null
    this.progXState = null
    this.resume(PTRACE.CONT, s)
    for (const d of this.deferredSignals.splice(0)) killQuiet(this.pid, d)
  }

  /** Restores program state and detaches; the process runs on (optionally delivering `sig`). */
  detach(sig = 0): void {
    if (this.state === 'dead' || this.state === 'detached') return
    if (this.state === 'running') this.interrupt()
    this.restoreProgramState()
    const s = sig || this.deferredSignals.shift() || 0
    ptrace(PTRACE.DETACH, this.pid, 0, s)
    this.state = 'detached'
    this.progXState = null
    for (const d of this.deferredSignals.splice(0)) killQuiet(this.pid, d)
  }

  /**
   * SIGKILL and reap (as tracer; and as parent when we are that too).
   * Safe to call in any state, never throws for an already-gone process.
   */
  kill(): void {
    if (this.state === 'dead') return
    killQuiet(this.pid, SIG.KILL)
    if (this.state !== 'detached') {
      for (;;) {
        let w: WaitStatus | null
        try {
          w = wait4(this.pid, 0)
        } catch {
          break
        }
        if (!w || w.exited || w.signaled) break
      }
    }
    // If we are also the real parent, the zombie is ours to reap.
    try {
      wait4(this.pid, WNOHANG)
    } catch {
      /* not our child */
    }
    this.state = 'dead'
  }
}

/**
 * The core of a traced process: attaching and waiting, the program's
 * registers, signal mask and memory, and single injected system calls.
 * Batches (batch.ts), self-healing and fork injection (fork.ts) and scratch
 * memory (remote-scratch.ts) are built on it; tracee.ts puts them together.
 *
 * - A single system call is injected without writing code into the tracee:
 *   the registers are set to {rip = a `0f 05` inside its own [vdso], rax = nr,
 *   args, orig_rax = -1} and it is run with PTRACE_SYSCALL to its syscall-entry
 *   and then its syscall-exit stop: no breakpoint and no signal (an int3 or
 *   single-step SIGTRAP is a *forced* signal, which resets a blocked or
 *   ignored SIGTRAP disposition in the tracee). Batches and the fork
 *   trampoline, in contrast, do write code into the tracee (see there).
 * - While injecting, every signal is blocked in the tracee (PTRACE_SETSIGMASK)
 *   so a pending signal cannot be dequeued and lost; the mask the program had is
 *   put back before the tracee runs again (cont/detach). getSigMask()/setSigMask()
 *   always act on the program's own mask.
 * - The registers the program had are kept; after injections they are written
 *   back (lazily, before anything reads them or the tracee resumes) with the
 *   syscall-restart fix-up applied (regs.restartFixup), because resuming from a
 *   syscall-exit stop does not re-run the kernel's restart logic.
 * - Synchronous only, and from this thread only: ptrace requests are accepted
 *   only from the thread that attached, and Node may run a worker elsewhere.
 */
import {CxlforkError, NotFoundError, SyscallError, UnsupportedError, ConflictError} from '../errors.js'
import {
  describeWait, killQuiet, mmap, MAP, O, open, close, pread, pwrite, PROT, ptrace, PTRACE, PTRACE_EVENT,
  PTRACE_O, SIG, SYS, view, vmRead, vmWrite, wait4, WNOHANG, type WaitStatus,
} from '../sys/libc.js'
import {readMaps, type Vma} from '../sys/proc.js'
import {faultPoint} from '../fault.js'
import {NO_SYSCALL, NT_PRFPREG, NT_X86_XSTATE, REG, type Regs, regsFromArray, regsToArray, restartFixup, setSyscallArgs, signed, signedErr} from './regs.js'
import {HEAL_SCRATCH} from './sigframe.js'

export class TraceeGoneError extends NotFoundError {
  constructor(readonly pid: number, readonly status: WaitStatus) {
    super('TRACEE_GONE', `process ${pid} ${describeWait(status)}`, 'the process died while being traced')
  }
}

export interface RseqConfig {
  rseqAbiPointer: bigint
  rseqAbiSize: number
  signature: number
  flags: number
}

export interface PendingSignals {
  /** Raw 128-byte siginfo_t of the thread's private queue, oldest first. */
  private: Uint8Array[]
  /** Raw 128-byte siginfo_t of the process-wide (shared) queue, oldest first. */
  shared: Uint8Array[]
}

export type TraceeState = 'running' | 'stopped' | 'detached' | 'dead'

const ALL_SIGNALS = 0xffffffffffffffffn
const XSTATE_MAX = 64 * 1024
/** Off-heap buffer (stable address) for regsets, mapped on first use rather than when the module loads. */
let xstateBuffer: bigint | undefined
function xstateAddr(): bigint {
  xstateBuffer ??= mmap(null, XSTATE_MAX, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
  return xstateBuffer
}

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/** System calls after which the cached injection site may be gone. */
function movesSite(nr: number): boolean {
  return nr === SYS.munmap || nr === SYS.mremap || nr === SYS.execve || nr === SYS.arch_prctl
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
    const at = xstateAddr()
    const iov = new BigUint64Array([at, BigInt(XSTATE_MAX)])
    ptrace(PTRACE.GETREGSET, this.pid, nt, iov)
    const n = Number(iov[1]!)
    return new Uint8Array(view(at, n))
  }

  setRegset(nt: number, bytes: Uint8Array): void {
    this.requireStopped()
    if (bytes.length > XSTATE_MAX) throw new RangeError(`regset of ${bytes.length} bytes exceeds ${XSTATE_MAX}`)
    const at = xstateAddr()
    view(at, bytes.length).set(bytes)
    const iov = new BigUint64Array([at, BigInt(bytes.length)])
    ptrace(PTRACE.SETREGSET, this.pid, nt, iov)
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
    const peek = (shared: boolean): Uint8Array[] => {
      const out: Uint8Array[] = []
      const batch = 32
      const buf = new Uint8Array(128 * batch)
      const args = new Uint8Array(16)
      const dv = new DataView(args.buffer)
      for (;;) {
        dv.setBigUint64(0, BigInt(out.length), true)
        dv.setUint32(8, shared ? 1 : 0, true)
        dv.setInt32(12, batch, true)
        const n = Number(ptrace(PTRACE.PEEKSIGINFO, this.pid, args, buf))
        for (let i = 0; i < n; i++) out.push(buf.slice(i * 128, i * 128 + 128))
        if (n < batch) break
      }
      return out
    }
    return {private: peek(false), shared: queues === 'both' ? peek(true) : []}
  }

  /** PTRACE_GET_RSEQ_CONFIGURATION: the registered rseq area (pointer 0 if none). */
  getRseqConfig(): RseqConfig {
    this.requireStopped()
    const b = new Uint8Array(32)
    ptrace(PTRACE.GET_RSEQ_CONFIGURATION, this.pid, 32, b)
    const dv = new DataView(b.buffer)
    return {
      rseqAbiPointer: dv.getBigUint64(0, true), rseqAbiSize: dv.getUint32(8, true), signature: dv.getUint32(12, true),
      flags: dv.getUint32(16, true),
    }
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
    const n = len ?? (typeof dest === 'bigint' ? 0 : dest.byteLength)
    try {
      vmRead(this.pid, addr, dest, n)
    } catch (err) {
      if (!(err instanceof SyscallError) || err.errno !== 14) throw err
      this.memIo(false, addr, dest, n)
    }
  }

  /** Writes bytes into the tracee; falls back to /proc/PID/mem for read-only pages (FOLL_FORCE, COW). */
  writeMemory(addr: bigint, bytes: Uint8Array | bigint, len?: number): void {
    const n = len ?? (typeof bytes === 'bigint' ? 0 : bytes.byteLength)
    try {
      vmWrite(this.pid, addr, bytes, n)
    } catch (err) {
      if (!(err instanceof SyscallError) || err.errno !== 14) throw err
      this.memIo(true, addr, bytes, n)
    }
  }

  private memIo(write: boolean, addr: bigint, buf: Uint8Array | bigint, len: number): void {
    const fd = open(`/proc/${this.pid}/mem`, write ? O.RDWR : O.RDONLY)
    try {
      let done = 0
      while (done < len) {
        const b = typeof buf === 'bigint' ? buf + BigInt(done) : buf.subarray(done)
        const r = write ? pwrite(fd, b, addr + BigInt(done), len - done) : pread(fd, b, addr + BigInt(done), len - done)
        if (r === 0) throw new SyscallError(write ? 'pwrite(/proc/pid/mem)' : 'pread(/proc/pid/mem)', 5, `at 0x${(addr + BigInt(done)).toString(16)}`)
        done += r
      }
    } finally {
      close(fd)
    }
  }

  /** Current memory map of the tracee. */
  maps(): Vma[] {
    return readMaps(this.pid)
  }

  // -------------------------------------------------------------------------
  // Syscall injection

  /** Address of a `syscall` instruction (0f 05) inside the tracee's [vdso] (found in `maps` when given, else in a fresh read). */
  syscallSite(maps?: readonly Vma[]): bigint {
    if (this.site !== null) return this.site
    const vdso = (maps ?? readMaps(this.pid)).find((v) => v.kind === 'vdso')
    if (!vdso) throw new UnsupportedError('NO_VDSO', `process ${this.pid} has no [vdso]; no injection site`, 'call setSyscallSite() with the address of a syscall instruction')
    const code = this.readMemory(vdso.start, vdso.size)
    for (let i = 0; i + 1 < code.length; i++) {
      if (code[i] === 0x0f && code[i + 1] === 0x05) {
        this.site = vdso.start + BigInt(i)
        return this.site
      }
    }
    throw new UnsupportedError('NO_SYSCALL_SITE', `no syscall instruction in the [vdso] of process ${this.pid}`)
  }

  /** Overrides (or with null, forgets) the cached injection site, e.g. after moving the vDSO. */
  setSyscallSite(addr: bigint | null): void {
    this.site = addr
  }

  /** Forget the cached injection site if system call `nr` may have moved or removed it. */
  protected forgetSiteAfter(nr: number): void {
    if (movesSite(nr)) this.site = null
  }

  protected blockAllSignals(): void {
    if (this.progMask === null) {
      this.progMask = this.readMaskKernel()
      this.writeMaskKernel(ALL_SIGNALS)
    }
  }

  /** Every signal blocked but `except` (a signal number, or 0 for none). */
  protected maskInjection(except = 0): void {
    this.writeMaskKernel(except === 0 ? ALL_SIGNALS : ALL_SIGNALS & ~(1n << BigInt(except - 1)))
  }

  /**
   * Load the kernel with a copy of the program's registers changed by `edit`
   * (the program's own stay kept), block every signal but `unblocked` (0 for
   * none), and count `calls` injected calls. The tracee is then resumed by the caller.
   */
  protected beginInjection(edit: (r: BigUint64Array) => void, calls: number, unblocked = 0): void {
    this.progRegs ??= this.readRegsKernel()
    const r = new BigUint64Array(this.progRegs)
    r[REG.orig_rax] = NO_SYSCALL
    edit(r)
    this.blockAllSignals()
    if (unblocked !== 0) this.maskInjection(unblocked)
    this.writeRegsKernel(r)
    this.regsClobbered = true
    this.injectedCount += calls
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

  /**
   * Injects one system call into the stopped tracee and returns rax as a
   * signed value (negative = -errno). The program's registers are kept.
   * For exit/exit_group the tracee dies and 0n is returned.
   * Children created by an injected fork/clone are collected: see takeNewChildren().
   */
  syscall(nr: number, ...args: (number | bigint)[]): bigint {
    this.requireStopped()
    if (args.length > 6) throw new RangeError('at most 6 syscall arguments')
    if (this.healing) return this.healingSyscall(nr, args, `sys${nr}`)
    const site = this.syscallSite()
    this.beginInjection((r) => {
      r[REG.rax] = BigInt(nr)
      setSyscallArgs(r, args)
      r[REG.rip] = site
    }, 1)
    try {
      this.toSyscallStop() // entry
      this.toSyscallStop() // exit
    } catch (err) {
      if (err instanceof TraceeGoneError && (nr === SYS.exit || nr === SYS.exit_group)) return 0n
      throw err
    }
    const ret = signed(this.peekReg(REG.rax))
    this.forgetSiteAfter(nr)
    return ret
  }

  /** Like syscall() but throws SyscallError(name) for a negative result. */
  syscallChecked(name: string, nr: number, ...args: (number | bigint)[]): bigint {
    const r = this.syscall(nr, ...args)
    if (signedErr(r)) throw new SyscallError(`${name} (injected into ${this.pid})`, Number(-r))
    return r
  }

  /** pids reported by PTRACE_EVENT_FORK/VFORK/CLONE since the last call. */
  takeNewChildren(): number[] {
    const c = this.newChildren
    this.newChildren = []
    return c
  }

  /** Whether enterSelfHealing() succeeded and the tracee is in that mode. */
  get selfHealing(): boolean {
    return this.healing !== null
  }

  /** One syscall in self-healing mode, run from the pending rt_sigreturn's entry stop. */
  protected healingSyscall(nr: number, args: readonly (number | bigint)[], label: string): bigint {
    const heal = this.healing!.regs
    this.injectedCount++
    this.toSyscallStop() // entry of rt_sigreturn
    this.loadHealingCall(nr, args)
    faultPoint(`fork-${label}-entry`)
    this.toSyscallStop() // exit
    faultPoint(`fork-${label}-exit`)
    const result = signed(this.readRegsKernel()[REG.rax]!)
    this.writeRegsKernel(heal)
    return result
  }

  /** At the entry stop of the pending rt_sigreturn: turn it into call `nr`, returning into rt_sigreturn (rsp still points just above the frame). */
  protected loadHealingCall(nr: number, args: readonly (number | bigint)[]): void {
    const regs = this.readRegsKernel()
    regs[REG.orig_rax] = BigInt(nr)
    setSyscallArgs(regs, args)
    if (this.sigreturnGadget !== null) regs[REG.rip] = this.sigreturnGadget
    this.writeRegsKernel(regs)
  }

  /** An 8-byte aligned scratch slot of `len` (≤ 256) bytes on the tracee's stack that the program cannot be using: below its red zone, or below the healing frame. */
  stackSlot(len: number): bigint {
    if (len > HEAL_SCRATCH) throw new RangeError(`stackSlot: at most ${HEAL_SCRATCH} bytes`)
    const below = this.healing ? this.healing.frame : (this.progRegs ??= this.readRegsKernel())[REG.rsp]! - 512n
    return (below - BigInt(len)) & ~7n
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

/**
 * A ptrace-stopped process we can inspect and drive with injected system calls.
 *
 * Model
 * - `Tracee.seize()` attaches with PTRACE_SEIZE (+TRACESYSGOOD always) and
 *   stops the thread with PTRACE_INTERRUPT. Only the thread `pid` is traced.
 * - `syscall()` injects one system call: the registers are set to
 *   {rip = a `0f 05` inside the tracee's own [vdso], rax = nr, args, orig_rax = -1}
 *   and the tracee is run with PTRACE_SYSCALL to its syscall-entry stop and then
 *   to its syscall-exit stop: no breakpoint, no code written into the tracee, no
 *   signal involved (an int3/single-step SIGTRAP would be a *forced* signal, which
 *   resets a blocked/ignored SIGTRAP disposition in the tracee).
 * - While injecting, every signal is blocked in the tracee (PTRACE_SETSIGMASK)
 *   so a pending signal cannot be dequeued and lost; the mask the program had is
 *   put back before the tracee runs again (cont/detach). getSigMask()/setSigMask()
 *   always act on the program's own mask.
 * - The registers the program had are kept; after injections they are written
 *   back (lazily, before anything reads them or the tracee resumes) with the
 *   syscall-restart fix-up applied (pitfall 4), because resuming from a
 *   syscall-exit stop does not re-run the kernel's restart logic.
 * - Synchronous only, and from this thread only (pitfall 13).
 */
import {ConflictError, CxlforkError, NotFoundError, PermissionError, SyscallError, UnsupportedError} from '../errors.js'
import {
  decodeWaitStatus, describeWait, killQuiet, mmap, MAP, O, open, close, pread, pwrite, PROT, ptrace, PTRACE, PTRACE_EVENT,
  PTRACE_O, ptraceRaw, SIG, SYS, view, vmRead, vmWrite, wait4, WNOHANG, type WaitStatus,
} from '../sys/libc.js'
import {readMaps, readStat, readStatus, type Vma} from '../sys/proc.js'
import {faultPoint} from '../fault.js'

// ---------------------------------------------------------------------------
// Registers

/** user_regs_struct field order (x86_64), 27 x u64. */
export const REG_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi', 'rdi', 'orig_rax',
  'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const
export type RegName = (typeof REG_NAMES)[number]
export type Regs = Record<RegName, bigint>
export const REG = Object.fromEntries(REG_NAMES.map((n, i) => [n, i])) as Record<RegName, number>
export const USER_REGS_SIZE = 27 * 8

export function regsFromArray(a: BigUint64Array): Regs {
  const r = {} as Regs
  REG_NAMES.forEach((n, i) => {
    r[n] = a[i]!
  })
  return r
}

export function regsToArray(r: Regs): BigUint64Array {
  const a = new BigUint64Array(27)
  REG_NAMES.forEach((n, i) => {
    a[i] = BigInt.asUintN(64, r[n])
  })
  return a
}

/** Interprets a u64 register value as signed (rax after a syscall: negative = -errno). */
export function signed(v: bigint): bigint {
  return BigInt.asIntN(64, v)
}

const ERESTARTSYS = 512n
const ERESTARTNOINTR = 513n
const ERESTARTNOHAND = 514n
const ERESTART_RESTARTBLOCK = 516n
const EINTR = 4n
const NR_restart_syscall = 219n

/**
 * Syscall-restart fix-up of registers taken while stopped inside a system call
 * (orig_rax >= 0 and rax = -ERESTART*), for resuming WITHOUT the kernel's
 * restart logic (after injections, or in a restored process).
 * - -ERESTARTSYS/NOINTR/NOHAND: re-run the call (rax = orig_rax, rip -= 2).
 * - -ERESTART_RESTARTBLOCK: 'live' (same process, its restart_block intact):
 *   rax = restart_syscall, rip -= 2; 'restore' (new process): rax = -EINTR.
 * orig_rax becomes -1 in every case. Returns a new array; input untouched.
 */
export function restartFixup(regs: BigUint64Array, mode: 'live' | 'restore'): BigUint64Array {
  const r = new BigUint64Array(regs)
  const orig = signed(r[REG.orig_rax]!)
  if (orig >= 0n) {
    const ax = signed(r[REG.rax]!)
    if (ax === -ERESTARTSYS || ax === -ERESTARTNOINTR || ax === -ERESTARTNOHAND) {
      r[REG.rax] = BigInt(orig)
      r[REG.rip] = r[REG.rip]! - 2n
    } else if (ax === -ERESTART_RESTARTBLOCK) {
      if (mode === 'live') {
        r[REG.rax] = NR_restart_syscall
        r[REG.rip] = r[REG.rip]! - 2n
      } else {
        r[REG.rax] = BigInt.asUintN(64, -EINTR)
      }
    }
  }
  r[REG.orig_rax] = 0xffffffffffffffffn
  return r
}

// ---------------------------------------------------------------------------

export const NT_PRSTATUS = 1
export const NT_PRFPREG = 2
export const NT_X86_XSTATE = 0x202

export const CLONE = {
  VM: 0x100, FS: 0x200, FILES: 0x400, SIGHAND: 0x800, PIDFD: 0x1000, PTRACE: 0x2000, VFORK: 0x4000, PARENT: 0x8000,
  THREAD: 0x10000, NEWNS: 0x20000, SYSVSEM: 0x40000, SETTLS: 0x80000, PARENT_SETTID: 0x100000,
  CHILD_CLEARTID: 0x200000, UNTRACED: 0x800000, CHILD_SETTID: 0x1000000,
} as const

export interface SeizeOptions {
  /** PTRACE_O_* bits. TRACESYSGOOD is always added. Default: EXITKILL. */
  options?: number
  /** Stop the tracee after seizing (PTRACE_INTERRUPT + wait). Default true. */
  interrupt?: boolean
  /** Give up waiting for the stop after this many ms (polling); default: block. */
  timeoutMs?: number
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

/** Result of fork injection: the child, stopped and traced by us. */
export interface ForkResult {
  pid: number
  tracee: Tracee
  /** Mappings the injection itself created that the child inherited (exclude them from a dump). */
  transientRanges: [bigint, bigint][]
}

/**
 * Code of the self-healing fork trampoline (one page, r-x):
 *   syscall                 ; the injected clone
 *   test rax, rax
 *   je   child
 *   mov  eax, 15            ; parent: rt_sigreturn to the frame below rsp
 *   syscall
 * child:
 *   mov  eax, 231           ; an orphaned snapshot must not run on: exit_group(0)
 *   xor  edi, edi
 *   syscall
 */
const FORK_TRAMPOLINE = Uint8Array.from([
  0x0f, 0x05, 0x48, 0x85, 0xc0, 0x74, 0x07, 0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05,
])
/**
 * A trampoline page is mapped (MAP_FIXED_NOREPLACE) where the low 32 bits of
 * its address are this tag, with 256 MiB free on either side: mmap gives it
 * that identity in the same instant it creates it, so a page left by a
 * cxlfork killed right after the mmap (still empty) is recognisable as ours.
 * Once written, the page also carries TRAMPOLINE_MARKER.
 */
const TRAMPOLINE_TAG = 0xcf0fc000n
const TRAMPOLINE_CLEARANCE = 256n << 20n
const TRAMPOLINE_MARKER_OFFSET = 2048
const TRAMPOLINE_MARKER = new TextEncoder().encode('cxlfork fork trampoline, unmapped by the next checkpoint\0')
const TRAMPOLINE_PAGE = (() => {
  const page = new Uint8Array(4096)
  page.set(FORK_TRAMPOLINE)
  page.set(TRAMPOLINE_MARKER, TRAMPOLINE_MARKER_OFFSET)
  return page
})()

/** The first tagged page address (TRAMPOLINE_TAG) with TRAMPOLINE_CLEARANCE free around it, from 0x6000'00000000 down, then up; undefined if none. */
function trampolineAddress(maps: readonly Vma[]): bigint | undefined {
  const free = (at: bigint): boolean => maps.every((vma) => vma.end + TRAMPOLINE_CLEARANCE <= at || vma.start >= at + 4096n + TRAMPOLINE_CLEARANCE)
  const start = 0x6000n
  for (let k = start; k >= 1n; k--) if (free((k << 32n) | TRAMPOLINE_TAG)) return (k << 32n) | TRAMPOLINE_TAG
  for (let k = start + 1n; k < 0x7fffn; k++) if (free((k << 32n) | TRAMPOLINE_TAG)) return (k << 32n) | TRAMPOLINE_TAG
  return undefined
}
const FP_XSTATE_MAGIC1 = 0x46505853
const FP_XSTATE_MAGIC2 = 0x46505845
const UC_FP_XSTATE = 1n
const UC_SIGCONTEXT_SS = 2n
const UC_STRICT_RESTORE_SS = 4n
/** An ss_flags value sigaltstack rejects: rt_sigreturn then leaves the alternate stack as it is. */
const SS_FLAGS_KEEP = 0x10
const RT_SIGFRAME_SIZE = 440
/** Bytes of stack kept free below the healing frame for stackSlot(). */
const HEAL_SCRATCH = 256
/**
 * `mov rax, 15; syscall` (glibc's and musl's __restore_rt, Go's sigreturn) and
 * `mov eax, 15; syscall`: code that performs rt_sigreturn wherever it is entered.
 */
const SIGRETURN_GADGETS = [
  Uint8Array.from([0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]),
  Uint8Array.from([0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]),
]
const SIGRETURN_GADGET_MAX = 9
/** Stop looking for a gadget after this many bytes of code. */
const GADGET_SCAN_LIMIT = 64 << 20

/**
 * The address of an rt_sigreturn sequence in pid's file-backed executable
 * mappings (the C library's signal restorer, in practice), or null. Read
 * while the process runs, before it is stopped: code mappings do not change
 * under it, and useSigreturnGadget() checks the bytes again once stopped.
 */
export function findSigreturnGadget(pid: number): bigint | null {
  const code = readMaps(pid).filter((vma) => vma.perms.startsWith('r-x') && vma.path.startsWith('/'))
  // The C library first: that is where the restorer lives.
  code.sort((a, b) => Number(/\/lib[^/]*\.so/.test(b.path)) - Number(/\/lib[^/]*\.so/.test(a.path)))
  let scanned = 0
  for (const vma of code) {
    if (scanned + Number(vma.size) > GADGET_SCAN_LIMIT) break
    scanned += Number(vma.size)
    const bytes = Buffer.alloc(Number(vma.size))
    try {
      vmRead(pid, vma.start, bytes)
    } catch {
      continue
    }
    for (const gadget of SIGRETURN_GADGETS) {
      const at = bytes.indexOf(gadget)
      if (at >= 0) return vma.start + BigInt(at)
    }
  }
  return null
}

export class TraceeGoneError extends NotFoundError {
  constructor(readonly pid: number, readonly status: WaitStatus) {
    super('TRACEE_GONE', `process ${pid} ${describeWait(status)}`, 'the process died while being traced')
  }
}


export interface BatchCall {
  nr: number
  args?: (number | bigint)[]
}

/** A batch the tracee is running (Tracee.startSyscalls). */
export interface PendingSyscalls {
  /** Wait for it; the results, as Tracee.syscalls() returns them. */
  finish(): bigint[]
  /**
   * Without stopping the tracee: the results of the calls that have
   * completed so far, from call `from` on (at most `max` of them, in order).
   * Only calls of the first BATCH_MAX_CALLS are seen before finish().
   */
  poll(from: number, max?: number): bigint[]
}

const SYSCALL_ARG_REGS = [REG.rdi, REG.rsi, REG.rdx, REG.r10, REG.r8, REG.r9]

function signedErr(v: bigint): boolean {
  return v < 0n && v > -4096n
}

/**
 * The batch loop. Registers in: rbx = table, r12 = count, r13 = 1 to stop on
 * error. Table entries are 8 x u64 {nr, a1..a6, result}.
 */
const BATCH_CODE = Uint8Array.from([
  /* 0  loop: */ 0x4d, 0x85, 0xe4, //          test r12, r12
  /* 3  */ 0x74, 0x36, //                      jz   done (+54 -> 57)
  /* 5  */ 0x48, 0x8b, 0x03, //                mov  rax, [rbx]
  /* 8  */ 0x48, 0x8b, 0x7b, 0x08, //          mov  rdi, [rbx+8]
  /* 12 */ 0x48, 0x8b, 0x73, 0x10, //          mov  rsi, [rbx+16]
  /* 16 */ 0x48, 0x8b, 0x53, 0x18, //          mov  rdx, [rbx+24]
  /* 20 */ 0x4c, 0x8b, 0x53, 0x20, //          mov  r10, [rbx+32]
  /* 24 */ 0x4c, 0x8b, 0x43, 0x28, //          mov  r8,  [rbx+40]
  /* 28 */ 0x4c, 0x8b, 0x4b, 0x30, //          mov  r9,  [rbx+48]
  /* 32 */ 0x0f, 0x05, //                      syscall
  /* 34 */ 0x48, 0x89, 0x43, 0x38, //          mov  [rbx+56], rax
  /* 38 */ 0x48, 0x83, 0xc3, 0x40, //          add  rbx, 64
  /* 42 */ 0x49, 0xff, 0xcc, //                dec  r12
  /* 45 */ 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
  /* 51 */ 0x72, 0xcb, //                      jb   loop (-53 -> 0)
  /* 53 */ 0x41, 0xf6, 0xc5, 0x01, //          test r13b, 1
  /* 57 */ 0x74, 0xc5, //                      jz   loop (-59 -> 0)
  /* 59 done: */ 0xcc, //                      int3
])
const BATCH_INT3_OFFSET = 59
/** One code page + a 60 KiB call table. */
const BATCH_AREA = 64 * 1024
const BATCH_MAX = (BATCH_AREA - 4096) / 64
/** Calls one launched batch runs before startSyscalls' finish() has to run the rest. */
export const BATCH_MAX_CALLS = BATCH_MAX
/** A result word no system call returns (not an errno, not a canonical address): the call has not run yet. */
const NOT_RUN = 1n << 63n

type State = 'running' | 'stopped' | 'detached' | 'dead'

// Reusable native buffers (off-heap, stable addresses).
const XSTATE_MAX = 64 * 1024
const nativeBuf = mmap(null, XSTATE_MAX + 8192, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
const xstateAddr = nativeBuf
const miscAddr = nativeBuf + BigInt(XSTATE_MAX)

const ALL_SIGNALS = 0xffffffffffffffffn

function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

export class Tracee {
  private state: State
  /** Program registers (kernel values as of the stop), or null if not read yet. */
  private progRegs: BigUint64Array | null = null
  /** The kernel currently holds registers other than progRegs (after an injection). */
  private regsClobbered = false
  /** The program's own signal mask while we hold every signal blocked. */
  private progMask: bigint | null = null
  /** The program's XSAVE state as of this stop, once read. */
  private progXState: Uint8Array | null = null
  private site: bigint | null = null
  private scratchBase: bigint | null = null
  private scratchSize = 0
  private scratchUsed = 0
  /** Signals dequeued by the tracee during an injection; re-delivered on cont(). */
  private deferredSignals: number[] = []
  /** Children reported by PTRACE_EVENT_FORK/VFORK/CLONE during the last injection. */
  private newChildren: number[] = []
  /** Last wait status that left the tracee stopped. */
  lastStop: WaitStatus | null = null
  private readonly peekBuf = new BigUint64Array(1)
  /** RWX shared mapping holding the batch loop (code page + call table), or null. */
  private batchBase: bigint | null = null
  /** Where the batch area must go (MAP_FIXED_NOREPLACE), e.g. clear of a restore's target layout. */
  private batchPlacement = 0n
  /** SIGTRAP ignored by the program: batches (which end on int3) fall back to single injections. */
  private trapIgnored: boolean | null = null
  /** Number of syscalls injected so far. */
  injectedCount = 0
  /** Self-healing mode (enterSelfHealing): the registers that lead back through the frame, and where the frame is. */
  private healing: {regs: BigUint64Array; frame: bigint} | null = null
  /** Address of an rt_sigreturn sequence in the tracee, for self-healing syscalls. */
  private sigreturnGadget: bigint | null = null

  private constructor(readonly pid: number, public options: number, state: State) {
    this.state = state
  }

  // -------------------------------------------------------------------------
  // Attach

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

  /**
   * Stop several tracees at once: every PTRACE_INTERRUPT is sent before the
   * first stop is awaited, so their stops overlap instead of queuing.
   */
  static interruptAll(tracees: readonly Tracee[], timeoutMs?: number): void {
    const running = tracees.filter((t) => t.state === 'running')
    for (const t of running) ptrace(PTRACE.INTERRUPT, t.pid)
    for (const t of running) t.awaitInterruptStop(timeoutMs)
  }

  private awaitInterruptStop(timeoutMs?: number): WaitStatus {
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

  // -------------------------------------------------------------------------
  // Registers and state

  private requireAttached(): void {
    if (this.state === 'dead') throw new NotFoundError('TRACEE_GONE', `process ${this.pid} is gone`)
    if (this.state === 'detached') throw new CxlforkError('TRACEE_DETACHED', `process ${this.pid} is no longer traced`)
  }

  private requireStopped(): void {
    this.requireAttached()
    if (this.state !== 'stopped') throw new CxlforkError('TRACEE_RUNNING', `process ${this.pid} is running; interrupt it first`)
  }

  private readRegsKernel(): BigUint64Array {
    const a = new BigUint64Array(27)
    ptrace(PTRACE.GETREGS, this.pid, 0, a)
    return a
  }

  private writeRegsKernel(a: BigUint64Array): void {
    ptrace(PTRACE.SETREGS, this.pid, 0, a)
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
    const iov = new BigUint64Array([xstateAddr, BigInt(XSTATE_MAX)])
    ptrace(PTRACE.GETREGSET, this.pid, nt, iov)
    const n = Number(iov[1]!)
    return new Uint8Array(view(xstateAddr, n))
  }

  setRegset(nt: number, bytes: Uint8Array): void {
    this.requireStopped()
    if (bytes.length > XSTATE_MAX) throw new RangeError(`regset of ${bytes.length} bytes exceeds ${XSTATE_MAX}`)
    view(xstateAddr, bytes.length).set(bytes)
    const iov = new BigUint64Array([xstateAddr, BigInt(bytes.length)])
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

  private readMaskKernel(): bigint {
    const m = new BigUint64Array(1)
    ptrace(PTRACE.GETSIGMASK, this.pid, 8, m)
    return m[0]!
  }

  private writeMaskKernel(mask: bigint): void {
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

  private blockAllSignals(): void {
    if (this.progMask === null) {
      this.progMask = this.readMaskKernel()
      this.writeMaskKernel(ALL_SIGNALS)
    }
  }

  /** Puts the program's registers and signal mask back into the kernel. */
  private restoreProgramState(): void {
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
    this.progRegs ??= this.readRegsKernel()
    const site = this.syscallSite()
    const r = new BigUint64Array(this.progRegs)
    r[REG.rax] = BigInt(nr)
    SYSCALL_ARG_REGS.forEach((reg, i) => {
      r[reg] = BigInt.asUintN(64, BigInt(args[i] ?? 0))
    })
    r[REG.orig_rax] = 0xffffffffffffffffn
    r[REG.rip] = site
    this.blockAllSignals()
    this.writeRegsKernel(r)
    this.regsClobbered = true
    this.injectedCount++

    let sawEntry = false
    try {
      for (;;) {
        this.resume(PTRACE.SYSCALL, 0)
        const w = this.waitStop()
        if (w.stopSignal === (SIG.TRAP | 0x80)) {
          if (!sawEntry) {
            sawEntry = true
            continue
          }
          break // syscall-exit stop
        }
        const ev = w.event ?? 0
        if (ev === PTRACE_EVENT.FORK || ev === PTRACE_EVENT.VFORK || ev === PTRACE_EVENT.CLONE) {
          this.newChildren.push(Number(this.getEventMsg()))
          continue
        }
        if (ev !== 0) continue // EXEC/EXIT/STOP (group stop): keep going
        // signal-delivery-stop (a synchronous or unblockable signal): keep it for cont()
        if (w.stopSignal !== undefined && w.stopSignal !== 0) this.deferredSignals.push(w.stopSignal)
      }
    } catch (err) {
      if (err instanceof TraceeGoneError && (nr === SYS.exit || nr === SYS.exit_group)) return 0n
      throw err
    }
    // Raw PTRACE_PEEKUSER stores the word at *data.
    ptrace(PTRACE.PEEKUSER, this.pid, REG.rax * 8, this.peekBuf)
    const ret = signed(this.peekBuf[0]!)
    if (nr === SYS.munmap || nr === SYS.mremap || nr === SYS.execve || nr === SYS.arch_prctl) this.site = null
    return ret
  }

  /** Like syscall() but throws SyscallError(name) for a negative result. */
  syscallChecked(name: string, nr: number, ...args: (number | bigint)[]): bigint {
    const r = this.syscall(nr, ...args)
    if (r < 0n && r > -4096n) throw new SyscallError(`${name} (injected into ${this.pid})`, Number(-r))
    return r
  }

  /** pids reported by PTRACE_EVENT_FORK/VFORK/CLONE since the last call. */
  takeNewChildren(): number[] {
    const c = this.newChildren
    this.newChildren = []
    return c
  }

  /**
   * Fork snapshot (pitfall 16): injects clone(flags) — by default
   * CLONE_PARENT|SIGCHLD, so the child is a sibling and the target gets no
   * SIGCHLD — with fork tracing on, and returns the child, auto-attached and
   * stopped (its registers are the injection's, rax = 0; use the parent's
   * getRegs() for the program state). The child starts with every signal
   * blocked; its `getSigMask()` reports the parent's program mask.
   * MADV_DONTFORK / WIPEONFORK ranges are missing or zero in the child.
   */
  injectFork(flags: number = CLONE.PARENT | SIG.CHLD): ForkResult {
    const {tracee} = this.injectCreate('clone', SYS.clone, flags, 0, 0, 0, 0)
    return {pid: tracee.pid, tracee, transientRanges: []}
  }

  /**
   * Inject a call that creates one process or thread (clone3, clone) with
   * fork and clone tracing on, and return the new task adopted and stopped.
   * `result` is what the call returned in the tracee (the id in its own pid
   * namespace); `tracee.pid` is the id in ours, from the ptrace event.
   */
  injectCreate(name: string, nr: number, ...args: (number | bigint)[]): {result: bigint; tracee: Tracee} {
    this.requireStopped()
    const need = PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.TRACEVFORK
    const old = this.options
    if ((old & need) !== need) this.setOptions(old | need)
    let created: number[]
    let result: bigint
    try {
      this.takeNewChildren()
      result = this.syscall(nr, ...args)
      created = this.takeNewChildren()
    } finally {
      if ((old & need) !== need) this.setOptions(old)
    }
    if (signedErr(result)) throw new SyscallError(`${name} (injected into ${this.pid})`, Number(-result))
    if (created.length !== 1) throw new CxlforkError('CHILD_NOT_SEEN', `${name} in ${this.pid} returned ${result} but ptrace reported ${created.length} new tasks`)
    const child = Tracee.adoptNewChild(created[0]!, this.options)
    child.progMask = this.progMask ?? this.readMaskKernel()
    child.site = this.site
    return {result, tracee: child}
  }

  /**
   * Self-healing mode: from here until cont()/detach(), the kernel state of
   * the tracee is at every instant one it resumes from on its own if we die
   * (SIGKILLed cxlfork: the kernel detaches it). Below its red zone lies an
   * rt_sigframe holding the program's registers (syscall restart applied),
   * signal mask and XSAVE state, and the registers point at a syscall
   * instruction with rax = rt_sigreturn, so a detached tracee returns to
   * exactly where it was. syscall() then runs each call by turning that
   * pending rt_sigreturn into it at syscall entry; with a sigreturn gadget
   * (useSigreturnGadget) the call also returns into rt_sigreturn, so dying
   * in the middle of it is harmless too. Without a gadget the few µs from a
   * call's entry to its exit are the one window left.
   * Returns false (and changes nothing) when the stack has no room for the frame.
   * `maps`: the tracee's layout, when the caller has just read it (it is stopped).
   */
  enterSelfHealing(maps: readonly Vma[] = readMaps(this.pid)): boolean {
    this.requireStopped()
    if (this.healing) return true
    const prog = (this.progRegs ??= this.readRegsKernel())
    const progMask = this.progMask ?? this.readMaskKernel()
    const resume = restartFixup(prog, 'live')
    const xstate = this.getXState()
    const rsp = prog[REG.rsp]!
    const fpstate = (rsp - 256n - BigInt(xstate.length + 4)) & ~63n
    const frame = (fpstate - BigInt(RT_SIGFRAME_SIZE) - 64n) & ~15n
    const stack = maps.find((vma) => vma.start <= rsp && rsp < vma.end)
    // Room for the frame plus a small scratch area below it (stackSlot()).
    if (!stack || frame - BigInt(HEAL_SCRATCH) < stack.start || xstate.length < 576) return false

    // XSAVE image as a signal frame expects it: software bytes at 464, magic after the end.
    const fp = new Uint8Array(xstate.length + 4)
    fp.set(xstate)
    const fpView = new DataView(fp.buffer)
    const xfeatures = new DataView(xstate.buffer, xstate.byteOffset).getBigUint64(464, true) // XCR0, as ptrace reports it
    fpView.setUint32(464, FP_XSTATE_MAGIC1, true)
    fpView.setUint32(468, xstate.length + 4, true)
    fpView.setBigUint64(472, xfeatures, true)
    fpView.setUint32(480, xstate.length, true)
    for (let off = 484; off < 512; off += 4) fpView.setUint32(off, 0, true)
    fpView.setUint32(xstate.length, FP_XSTATE_MAGIC2, true)

    const f = new DataView(new ArrayBuffer(RT_SIGFRAME_SIZE))
    const uc = 8
    f.setBigUint64(uc, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS, true)
    f.setBigUint64(uc + 16, 0n, true)
    f.setInt32(uc + 24, SS_FLAGS_KEEP, true)
    const sc = uc + 40
    const order: RegName[] = ['r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rdi', 'rsi', 'rbp', 'rbx', 'rdx', 'rax', 'rcx', 'rsp', 'rip', 'eflags']
    order.forEach((name, i) => f.setBigUint64(sc + i * 8, resume[REG[name]]!, true))
    f.setUint16(sc + 144, Number(resume[REG.cs]!), true)
    f.setUint16(sc + 150, Number(resume[REG.ss]!), true)
    f.setBigUint64(sc + 184, fpstate, true)
    f.setBigUint64(sc + 256, progMask, true)
    this.writeMemory(fpstate, fp)
    this.writeMemory(frame, new Uint8Array(f.buffer))

    // From here on the kernel registers always lead back through rt_sigreturn.
    // Registers first, then the mask: a tracee detached in between restores its own mask from the frame.
    const heal = new BigUint64Array(prog)
    heal[REG.rip] = this.syscallSite(maps)
    heal[REG.rax] = BigInt(SYS.rt_sigreturn)
    heal[REG.orig_rax] = 0xffffffffffffffffn
    heal[REG.rsp] = frame + 8n
    this.writeRegsKernel(heal)
    this.regsClobbered = true
    this.healing = {regs: heal, frame}
    this.blockAllSignals()
    faultPoint('fork-frame-ready')
    return true
  }

  /**
   * Check and adopt an rt_sigreturn gadget (see findSigreturnGadget) for
   * self-healing syscalls. Returns false if the bytes there are not one.
   */
  useSigreturnGadget(addr: bigint): boolean {
    let bytes: Uint8Array
    try {
      bytes = this.readMemory(addr, SIGRETURN_GADGET_MAX)
    } catch {
      return false
    }
    if (!SIGRETURN_GADGETS.some((g) => g.every((b, i) => bytes[i] === b))) return false
    this.sigreturnGadget = addr
    return true
  }

  /** An 8-byte aligned scratch slot of `len` (≤ 256) bytes on the tracee's stack that the program cannot be using: below its red zone, or below the healing frame. */
  stackSlot(len: number): bigint {
    if (len > HEAL_SCRATCH) throw new RangeError(`stackSlot: at most ${HEAL_SCRATCH} bytes`)
    const below = this.healing ? this.healing.frame : (this.progRegs ??= this.readRegsKernel())[REG.rsp]! - 512n
    return (below - BigInt(len)) & ~7n
  }

  /** One syscall in self-healing mode, run from the pending rt_sigreturn's entry stop. */
  private healingSyscall(nr: number, args: readonly (number | bigint)[], label: string): bigint {
    const heal = this.healing!.regs
    this.injectedCount++
    this.toSyscallStop() // entry of rt_sigreturn
    const regs = this.readRegsKernel()
    regs[REG.orig_rax] = BigInt(nr)
    SYSCALL_ARG_REGS.forEach((reg, i) => {
      regs[reg] = BigInt.asUintN(64, BigInt(args[i] ?? 0))
    })
    // Return into rt_sigreturn (rsp still points just above the frame).
    if (this.sigreturnGadget !== null) regs[REG.rip] = this.sigreturnGadget
    this.writeRegsKernel(regs)
    faultPoint(`fork-${label}-entry`)
    this.toSyscallStop() // exit
    faultPoint(`fork-${label}-exit`)
    const result = signed(this.readRegsKernel()[REG.rax]!)
    this.writeRegsKernel(heal)
    return result
  }

  /**
   * The fork snapshot of injectFork(), made safe against our own death (see
   * enterSelfHealing): the clone runs from a trampoline page that returns the
   * parent through rt_sigreturn and makes an orphaned child exit. The
   * trampoline page is mapped and unmapped by self-healing syscalls.
   * Falls back to injectFork() when the stack has no room for the frame.
   * `maps`: the stopped tracee's layout, when the caller has read it already.
   */
  injectForkSelfHealing(flags: number = CLONE.PARENT | SIG.CHLD, maps: readonly Vma[] = readMaps(this.pid)): ForkResult {
    // One read of the layout (the target is stopped): for the frame's room and for a leftover trampoline.
    if (!this.enterSelfHealing(maps)) return this.injectFork(flags)
    const heal = this.healing!.regs
    const progMask = this.progMask!

    // A cxlfork killed between mapping and unmapping leaves its trampoline page behind: reuse one
    // such page, unmap any other (each by a self-healing call: a kill meanwhile leaves the rest for next time).
    const leftovers = this.findLeftoverTrampolines(maps)
    for (const extra of leftovers.slice(1)) this.healingSyscall(SYS.munmap, [extra, 4096n], 'munmap-leftover')
    let page = leftovers[0]
    if (page === undefined) {
      const at = trampolineAddress(maps)
      const map = (addr: bigint, flags: number): bigint =>
        this.healingSyscall(SYS.mmap, [addr, 4096n, BigInt(PROT.READ | PROT.EXEC), BigInt(MAP.PRIVATE | MAP.ANONYMOUS | flags), -1n, 0n], 'mmap')
      page = at === undefined ? map(0n, 0) : map(at, MAP.FIXED_NOREPLACE)
      // No tagged room after all: an untagged page still works, it is only not recognisable after a kill.
      if (at !== undefined && page < 0n && page > -4096n) page = map(0n, 0)
      if (page < 0n && page > -4096n) throw new SyscallError(`mmap (injected into ${this.pid})`, Number(-page))
    }
    let childPid = 0
    try {
      this.writeMemory(page, TRAMPOLINE_PAGE)
      faultPoint('fork-trampoline-ready')
      const need = PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.TRACEVFORK
      const old = this.options
      if ((old & need) !== need) this.setOptions(old | need)
      try {
        const regs = new BigUint64Array(heal)
        regs[REG.rip] = page
        regs[REG.rax] = BigInt(SYS.clone)
        regs[REG.rdi] = BigInt(flags)
        regs[REG.rsi] = 0n
        regs[REG.rdx] = 0n
        regs[REG.r10] = 0n
        regs[REG.r8] = 0n
        this.writeRegsKernel(regs)
        this.takeNewChildren()
        this.injectedCount++
        this.toSyscallStop() // entry
        faultPoint('fork-clone-entry')
        this.toSyscallStop() // exit; the fork event in between is collected
        faultPoint('fork-clone-exit')
        const r = signed(this.readRegsKernel()[REG.rax]!)
        if (r < 0n) throw new SyscallError(`clone (injected into ${this.pid})`, Number(-r))
        childPid = Number(r)
        this.takeNewChildren()
      } finally {
        this.writeRegsKernel(heal)
        if ((old & need) !== need) this.setOptions(old)
      }
    } finally {
      this.healingSyscall(SYS.munmap, [page, 4096n], 'munmap')
    }
    faultPoint('fork-done')
    const child = Tracee.adoptNewChild(childPid, this.options)
    child.progMask = progMask
    child.site = this.site
    return {pid: childPid, tracee: child, transientRanges: [[page, page + 4096n]]}
  }

  /**
   * Pages an earlier, killed cxlfork left: a one-page private anonymous r-x
   * mapping at a tagged address (trampolineAddress) that is still empty or
   * holds exactly TRAMPOLINE_PAGE; or, from cxlforks before the tag, any
   * such page holding exactly the bare trampoline code. Nothing else is
   * touched, however much it looks like one.
   */
  private findLeftoverTrampolines(maps: readonly Vma[]): bigint[] {
    const found: bigint[] = []
    for (const vma of maps) {
      if (vma.kind !== 'anon' || vma.perms !== 'r-xp') continue
      const tagged = vma.size === 4096 && (vma.start & 0xffffffffn) === TRAMPOLINE_TAG
      for (let page = vma.start; page < vma.end; page += 4096n) {
        try {
          // A whole page only where its first bytes can match (a JIT's large r-x regions are read 23 bytes a page).
          if (!tagged) {
            const head = this.readMemory(page, FORK_TRAMPOLINE.length)
            if (!FORK_TRAMPOLINE.every((b, i) => head[i] === b)) continue
          }
          const bytes = this.readMemory(page, 4096)
          const legacy = FORK_TRAMPOLINE.every((b, i) => bytes[i] === b) && bytes.subarray(FORK_TRAMPOLINE.length).every((b) => b === 0)
          if (legacy || (tagged && (bytes.every((b) => b === 0) || bytes.every((b, i) => b === TRAMPOLINE_PAGE[i])))) found.push(page)
        } catch {
          // unreadable: not ours to judge
        }
      }
    }
    return found
  }

  /** Resume to the next syscall-entry or -exit stop, collecting fork children and deferring signals on the way. */
  private toSyscallStop(): void {
    this.resume(PTRACE.SYSCALL, 0)
    this.awaitSyscallStop()
  }

  /** Wait (the tracee was resumed with PTRACE_SYSCALL) until it stops at a syscall entry or exit. */
  private awaitSyscallStop(): void {
    for (;;) {
      const w = this.waitStop()
      if (w.stopSignal === (SIG.TRAP | 0x80)) return
      const ev = w.event ?? 0
      if (ev === PTRACE_EVENT.FORK || ev === PTRACE_EVENT.VFORK || ev === PTRACE_EVENT.CLONE) {
        this.newChildren.push(Number(this.getEventMsg()))
      } else if (ev === 0 && w.stopSignal !== undefined && w.stopSignal !== 0) {
        this.deferredSignals.push(w.stopSignal)
      }
      this.resume(PTRACE.SYSCALL, 0)
    }
  }

  /**
   * One self-healing syscall in each of several stopped threads (each in
   * self-healing mode), run side by side: every thread is resumed before any
   * is awaited, so their round trips overlap. `args` gives each its arguments.
   */
  static healingSyscallAll(threads: readonly Tracee[], nr: number, args: (thread: Tracee) => readonly (number | bigint)[]): bigint[] {
    for (const t of threads) {
      t.requireStopped()
      if (!t.healing) throw new CxlforkError('NOT_SELF_HEALING', `thread ${t.pid} is not in self-healing mode`)
    }
    for (const t of threads) {
      t.injectedCount++
      t.resume(PTRACE.SYSCALL, 0) // to the entry of the pending rt_sigreturn
    }
    for (const t of threads) {
      t.awaitSyscallStop()
      const regs = t.readRegsKernel()
      regs[REG.orig_rax] = BigInt(nr)
      const values = args(t)
      SYSCALL_ARG_REGS.forEach((reg, i) => {
        regs[reg] = BigInt.asUintN(64, BigInt(values[i] ?? 0))
      })
      if (t.sigreturnGadget !== null) regs[REG.rip] = t.sigreturnGadget
      t.writeRegsKernel(regs)
      t.resume(PTRACE.SYSCALL, 0)
    }
    return threads.map((t) => {
      t.awaitSyscallStop()
      const result = signed(t.readRegsKernel()[REG.rax]!)
      t.writeRegsKernel(t.healing!.regs)
      return result
    })
  }

  /** Whether enterSelfHealing() succeeded and the tracee is in that mode. */
  get selfHealing(): boolean {
    return this.healing !== null
  }


  // -------------------------------------------------------------------------
  // Batched injection

  /**
   * Runs several system calls with ONE resume of the tracee: a small loop
   * (written once into an RWX MAP_SHARED page of the tracee) executes a table
   * of {nr, 6 args} and ends on int3. Returns the results (negative = -errno),
   * one per executed call; with stopOnError the batch stops after the first
   * failing call (the returned array is then shorter than `calls`).
   * Arguments must be plain values (addresses of scratch data written before).
   * Falls back to one injection per call if the program ignores SIGTRAP or the
   * system refuses an executable mapping.
   */
  syscalls(calls: readonly BatchCall[], opts: {stopOnError?: boolean} = {}): bigint[] {
    this.requireStopped()
    const out: bigint[] = []
    if (calls.length === 0) return out
    // In self-healing mode every call goes through healingSyscall(); no batch code is mapped.
    if (this.healing || !this.batchUsable()) {
      for (const c of calls) {
        const r = this.syscall(c.nr, ...(c.args ?? []))
        out.push(r)
        if (opts.stopOnError && r < 0n && r > -4096n) break
      }
      return out
    }
    for (let i = 0; i < calls.length; i += BATCH_MAX) {
      const part = calls.slice(i, i + BATCH_MAX)
      const res = this.runBatch(part, opts.stopOnError ?? false)
      out.push(...res)
      if (res.length < part.length) break
    }
    return out
  }

  /** Bytes the batch area needs; place it with placeBatchArea() before the first batch. */
  static readonly batchAreaSize = BigInt(BATCH_AREA)

  /** Put the batch area at `addr` (must be free) instead of wherever the kernel picks. */
  placeBatchArea(addr: bigint): void {
    if (this.batchBase !== null) throw new CxlforkError('BATCH_AREA_EXISTS', 'the batch area is already mapped')
    this.batchPlacement = addr
  }

  /** Tell batched injection what SIGTRAP's disposition is when it is known (a freshly spawned stub), sparing a /proc read. */
  knowTrapIgnored(ignored: boolean): void {
    this.trapIgnored = ignored
  }

  private batchUsable(): boolean {
    if (this.trapIgnored === null) this.trapIgnored = (readStatus(this.pid).sigIgn & (1n << BigInt(SIG.TRAP - 1))) !== 0n
    if (this.trapIgnored) return false
    if (this.batchBase === null) {
      const fixed = this.batchPlacement === 0n ? 0 : MAP.FIXED_NOREPLACE
      const r = this.syscall(SYS.mmap, this.batchPlacement, BATCH_AREA, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.SHARED | MAP.ANONYMOUS | fixed, -1, 0)
      if (r < 0n && r > -4096n) return false
      this.batchBase = r
      this.writeMemory(r, BATCH_CODE)
    }
    return true
  }

  /**
   * Start `calls` and return at once: the tracee runs them on its own while
   * the caller does other work (the snapshot's page write overlaps the rest
   * of a checkpoint this way). finish() waits and returns the results like
   * syscalls(); calls beyond one batch's room run there, synchronously. Until
   * then the tracee counts as running: other injections are refused.
   */
  startSyscalls(calls: readonly BatchCall[], opts: {stopOnError?: boolean} = {}): PendingSyscalls {
    this.requireStopped()
    const stopOnError = opts.stopOnError ?? false
    if (calls.length === 0 || this.healing || !this.batchUsable()) {
      const results = this.syscalls(calls, opts)
      return {finish: () => results, poll: (from, max = results.length) => results.slice(from, from + max)}
    }
    const first = calls.slice(0, BATCH_MAX)
    const tableAddr = this.launchBatch(first, stopOnError)
    let done: bigint[] | undefined
    return {
      poll: (from, max = 64) => {
        if (done) return done.slice(from, from + max)
        const count = Math.min(max, first.length - from)
        if (count <= 0) return []
        const words = new BigUint64Array(count * 8)
        this.readMemoryInto(tableAddr + BigInt(from * 64), new Uint8Array(words.buffer))
        const out: bigint[] = []
        for (let k = 0; k < count; k++) {
          const v = words[k * 8 + 7]!
          if (v === NOT_RUN) break
          out.push(signed(v))
        }
        return out
      },
      finish: () => {
        if (done) return done
        const out = this.collectBatch(first, stopOnError, tableAddr)
        if (out.length === first.length && calls.length > first.length) out.push(...this.syscalls(calls.slice(BATCH_MAX), opts))
        done = out
        return out
      },
    }
  }

  private runBatch(calls: readonly BatchCall[], stopOnError: boolean): bigint[] {
    return this.collectBatch(calls, stopOnError, this.launchBatch(calls, stopOnError))
  }

  /** Write the call table, point the tracee at the batch code and let it run; returns the table's address. */
  private launchBatch(calls: readonly BatchCall[], stopOnError: boolean): bigint {
    const n = calls.length
    const table = new BigUint64Array(n * 8)
    for (let k = 0; k < n; k++) {
      const c = calls[k]!
      const args = c.args ?? []
      if (args.length > 6) throw new RangeError('at most 6 syscall arguments')
      table[k * 8] = BigInt(c.nr)
      for (let j = 0; j < 6; j++) table[k * 8 + 1 + j] = BigInt.asUintN(64, BigInt(args[j] ?? 0))
      table[k * 8 + 7] = NOT_RUN
    }
    const tableAddr = this.batchBase! + 4096n
    this.writeMemory(tableAddr, new Uint8Array(table.buffer))
    this.progRegs ??= this.readRegsKernel()
    const r = new BigUint64Array(this.progRegs)
    r[REG.rip] = this.batchBase!
    r[REG.rbx] = tableAddr
    r[REG.r12] = BigInt(n)
    r[REG.r13] = stopOnError ? 1n : 0n
    r[REG.orig_rax] = 0xffffffffffffffffn
    this.blockAllSignals()
    // int3 raises a forced SIGTRAP: were SIGTRAP blocked, the kernel would
    // reset its disposition to SIG_DFL. Leave it unblocked for the batch.
    this.writeMaskKernel(ALL_SIGNALS & ~(1n << BigInt(SIG.TRAP - 1)))
    this.writeRegsKernel(r)
    this.regsClobbered = true
    this.injectedCount += n
    try {
      this.resume(PTRACE.CONT, 0)
    } catch (error) {
      if (this.isAlive) this.writeMaskKernel(ALL_SIGNALS)
      throw error
    }
    return tableAddr
  }

  /** Wait for a launched batch's closing int3 and read its results. */
  private collectBatch(calls: readonly BatchCall[], stopOnError: boolean, tableAddr: bigint): bigint[] {
    const n = calls.length
    const trapRip = this.batchBase! + BigInt(BATCH_INT3_OFFSET + 1)
    try {
      for (;;) {
        const w = this.waitStop()
        const ev = w.event ?? 0
        if (ev === PTRACE_EVENT.FORK || ev === PTRACE_EVENT.VFORK || ev === PTRACE_EVENT.CLONE) {
          this.newChildren.push(Number(this.getEventMsg()))
        } else if (ev === 0) {
          if (w.stopSignal === SIG.TRAP) {
            ptrace(PTRACE.PEEKUSER, this.pid, REG.rip * 8, this.peekBuf)
            if (this.peekBuf[0] === trapRip) break
          }
          if (w.stopSignal !== undefined && w.stopSignal !== 0) this.deferredSignals.push(w.stopSignal)
        }
        this.resume(PTRACE.CONT, 0)
      }
    } finally {
      if (this.isAlive) this.writeMaskKernel(ALL_SIGNALS)
    }
    const res = new BigUint64Array(n * 8)
    this.readMemoryInto(tableAddr, new Uint8Array(res.buffer))
    const out: bigint[] = []
    for (let k = 0; k < n; k++) {
      const v = signed(res[k * 8 + 7]!)
      out.push(v)
      const nr = calls[k]!.nr
      if (nr === SYS.munmap || nr === SYS.mremap || nr === SYS.execve || nr === SYS.arch_prctl) this.site = null
      // with stopOnError the loop ran exactly up to the first failure
      if (stopOnError && signedErr(v)) break
    }
    return out
  }

  // -------------------------------------------------------------------------
  // Scratch memory in the tracee

  /**
   * Ensures an RW anonymous scratch mapping in the tracee (injected mmap),
   * of at least `size` bytes, and resets its bump allocator. Returns its address.
   * It is MAP_SHARED|MAP_ANONYMOUS, so it shows as its own VMA '/dev/zero
   * (deleted)' (see scratchRange): exclude it from dumps (a fork child
   * inherits it, shared), or release it with freeScratch().
   */
  scratch(size = 4096): bigint {
    size = Math.ceil(size / 4096) * 4096
    if (this.scratchBase !== null && this.scratchSize >= size) {
      this.scratchUsed = 0
      return this.scratchBase
    }
    if (this.scratchBase !== null) this.freeScratch()
    // MAP_SHARED anonymous (shmem, '/dev/zero (deleted)' in maps): unlike private
    // anonymous memory it never merges with a neighbouring VMA of the program.
    const addr = this.syscallChecked('mmap(scratch)', SYS.mmap, 0, size, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.ANONYMOUS, -1, 0)
    this.scratchBase = addr
    this.scratchSize = size
    this.scratchUsed = 0
    return addr
  }

  /** [start, end) of the scratch mapping, or null. */
  get scratchRange(): [bigint, bigint] | null {
    return this.scratchBase === null ? null : [this.scratchBase, this.scratchBase + BigInt(this.scratchSize)]
  }

  /**
   * Reserves `len` bytes of scratch (e.g. for an output struct); returns the
   * remote address. Grows the mapping if needed (which invalidates earlier
   * scratch addresses: size it up front with scratch(n) for multi-part arguments).
   */
  scratchAlloc(len: number, align = 8): bigint {
    if (this.scratchBase === null) this.scratch(Math.max(4096, len))
    let off = Math.ceil(this.scratchUsed / align) * align
    if (off + len > this.scratchSize) {
      this.scratch(Math.max(this.scratchSize * 2, len + 4096))
      off = 0
    }
    this.scratchUsed = off + len
    return this.scratchBase! + BigInt(off)
  }

  /** Copies bytes (or a string, NUL-terminated) into scratch memory; returns their remote address. */
  scratchWrite(bytes: Uint8Array | string, align = 8): bigint {
    const b = typeof bytes === 'string' ? Buffer.from(bytes + '\0', 'utf8') : bytes
    const addr = this.scratchAlloc(b.length, align)
    if (b.length) this.writeMemory(addr, b)
    return addr
  }

  /** Resets the scratch bump allocator (keeps the mapping). */
  scratchReset(): void {
    this.scratchUsed = 0
  }

  /** Every mapping this object created in the tracee ([start, end) pairs): exclude them from dumps. */
  injectionRanges(): [bigint, bigint][] {
    const out: [bigint, bigint][] = []
    if (this.scratchBase !== null) out.push([this.scratchBase, this.scratchBase + BigInt(this.scratchSize)])
    if (this.batchBase !== null) out.push([this.batchBase, this.batchBase + BigInt(BATCH_AREA)])
    return out
  }

  /** munmap the batch-code mapping (injected). */
  freeBatch(): void {
    if (this.batchBase === null) return
    const base = this.batchBase
    this.batchBase = null
    if (this.isAlive && this.isStopped) this.syscallChecked('munmap(batch)', SYS.munmap, base, BATCH_AREA)
  }

  /** munmap the scratch mapping (injected). */
  freeScratch(): void {
    if (this.scratchBase === null) return
    const base = this.scratchBase
    const size = this.scratchSize
    this.scratchBase = null
    this.scratchSize = 0
    this.scratchUsed = 0
    if (this.isAlive && this.isStopped) this.syscallChecked('munmap(scratch)', SYS.munmap, base, size)
  }

  // -------------------------------------------------------------------------
  // Resume / detach / kill

  private resume(request: number, sig: number): void {
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

  /** Raw wait status decode helper re-exported for callers that wait themselves. */
  static decodeStatus = decodeWaitStatus

  /** Native scratch address used for regsets (for callers needing a stable local buffer of 8 KiB). */
  static readonly localScratch = miscAddr
}

/**
 * Creating processes and threads by injection, and the self-healing mode that
 * makes the fork snapshot safe against cxlfork's own death: the tracee's
 * registers always lead back through a signal frame (sigframe.ts), and the
 * clone runs from a trampoline page written into the tracee for the purpose.
 */
import {CxlforkError, SyscallError} from '../errors.js'
import {PTRACE, PTRACE_O} from '../sys/ptrace.js'
import {MAP, PROT, SIG, SYS} from '../sys/syscall.js'
import {readMaps, type Vma} from '../sys/proc.js'
import {faultPoint} from '../fault.js'
import {BatchingTracee} from './batch.js'
import {NO_SYSCALL, REG, signed, signedErr} from './regs.js'
import {buildHealingFrame, isSigreturnGadget, SIGRETURN_GADGET_MAX} from './sigframe.js'
import type {Tracee} from './tracee.js'

export const CLONE = {
  VM: 0x100, FS: 0x200, FILES: 0x400, SIGHAND: 0x800, PIDFD: 0x1000, PTRACE: 0x2000, VFORK: 0x4000, PARENT: 0x8000,
  THREAD: 0x10000, NEWNS: 0x20000, SYSVSEM: 0x40000, SETTLS: 0x80000, PARENT_SETTID: 0x100000,
  CHILD_CLEARTID: 0x200000, UNTRACED: 0x800000, CHILD_SETTID: 0x1000000,
} as const

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

/**
 * Pages an earlier, killed cxlfork left in `tracee`: a one-page private
 * anonymous r-x mapping at a tagged address (trampolineAddress) that is still
 * empty or holds exactly TRAMPOLINE_PAGE; or, from cxlforks before the tag,
 * any such page holding exactly the bare trampoline code. Nothing else is
 * touched, however much it looks like one.
 */
function findLeftoverTrampolines(tracee: {readMemory(addr: bigint, len: number): Uint8Array}, maps: readonly Vma[]): bigint[] {
  const found: bigint[] = []
  for (const vma of maps) {
    if (vma.kind !== 'anon' || vma.perms !== 'r-xp') continue
    const tagged = vma.size === 4096 && (vma.start & 0xffffffffn) === TRAMPOLINE_TAG
    for (let page = vma.start; page < vma.end; page += 4096n) {
      try {
        // A whole page only where its first bytes can match (a JIT's large r-x regions are read 23 bytes a page).
        if (!tagged) {
          const head = tracee.readMemory(page, FORK_TRAMPOLINE.length)
          if (!FORK_TRAMPOLINE.every((b, i) => head[i] === b)) continue
        }
        const bytes = tracee.readMemory(page, 4096)
        const legacy = FORK_TRAMPOLINE.every((b, i) => bytes[i] === b) && bytes.subarray(FORK_TRAMPOLINE.length).every((b) => b === 0)
        if (legacy || (tagged && (bytes.every((b) => b === 0) || bytes.every((b, i) => b === TRAMPOLINE_PAGE[i])))) found.push(page)
      } catch {
        // unreadable: not ours to judge
      }
    }
  }
  return found
}

const FORK_TRACING = PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.TRACEVFORK

export abstract class HealingTracee extends BatchingTracee {
  /** Adopt a task an injected fork/clone created (tracee.ts: Tracee.adoptNewChild). */
  protected abstract adoptChild(pid: number): Tracee

  /** Run `fn` with fork and clone tracing on (so new tasks are attached to us), then put the options back. */
  private withForkTracing<T>(fn: () => T): T {
    const old = this.options
    const toggle = (old & FORK_TRACING) !== FORK_TRACING
    if (toggle) this.setOptions(old | FORK_TRACING)
    try {
      return fn()
    } finally {
      if (toggle) this.setOptions(old)
    }
  }

  /** The task an injected call created, adopted and stopped, with the program mask and injection site of its parent. */
  private adoptCreated(pid: number, progMask: bigint): Tracee {
    const child = this.adoptChild(pid)
    child.progMask = progMask
    child.site = this.site
    return child
  }

  /**
   * Fork snapshot: injects clone(flags) — by default CLONE_PARENT|SIGCHLD, so
   * the child is a sibling and the target gets no SIGCHLD — with fork tracing
   * on, and returns the child, auto-attached and stopped (its registers are
   * the injection's, rax = 0; use the parent's getRegs() for the program
   * state). Copy-on-write makes the child's memory the parent's as of the
   * clone, so the parent may run on while the child is dumped. The child
   * starts with every signal blocked; its `getSigMask()` reports the parent's
   * program mask. MADV_DONTFORK / WIPEONFORK ranges are missing or zero in the child.
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
    const {result, created} = this.withForkTracing(() => {
      this.takeNewChildren()
      const result = this.syscall(nr, ...args)
      return {result, created: this.takeNewChildren()}
    })
    if (signedErr(result)) throw new SyscallError(`${name} (injected into ${this.pid})`, Number(-result))
    if (created.length !== 1) throw new CxlforkError('CHILD_NOT_SEEN', `${name} in ${this.pid} returned ${result} but ptrace reported ${created.length} new tasks`)
    return {result, tracee: this.adoptCreated(created[0]!, this.progMask ?? this.readMaskKernel())}
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
    const built = buildHealingFrame(prog, this.progMask ?? this.readMaskKernel(), this.getXState(), maps)
    if (!built) return false
    this.writeMemory(built.fpstate, built.fpBytes)
    this.writeMemory(built.frame, built.frameBytes)

    // From here on the kernel registers always lead back through rt_sigreturn.
    // Registers first, then the mask: a tracee detached in between restores its own mask from the frame.
    const heal = new BigUint64Array(prog)
    heal[REG.rip] = this.syscallSite(maps)
    heal[REG.rax] = BigInt(SYS.rt_sigreturn)
    heal[REG.orig_rax] = NO_SYSCALL
    heal[REG.rsp] = built.frame + 8n
    this.writeRegsKernel(heal)
    this.regsClobbered = true
    this.healing = {regs: heal, frame: built.frame}
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
    if (!isSigreturnGadget(bytes)) return false
    this.sigreturnGadget = addr
    return true
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
    const leftovers = findLeftoverTrampolines(this, maps)
    for (const extra of leftovers.slice(1)) this.healingSyscall(SYS.munmap, [extra, 4096n], 'munmap-leftover')
    let page = leftovers[0]
    if (page === undefined) {
      const at = trampolineAddress(maps)
      const map = (addr: bigint, flags: number): bigint =>
        this.healingSyscall(SYS.mmap, [addr, 4096n, BigInt(PROT.READ | PROT.EXEC), BigInt(MAP.PRIVATE | MAP.ANONYMOUS | flags), -1n, 0n], 'mmap')
      page = at === undefined ? map(0n, 0) : map(at, MAP.FIXED_NOREPLACE)
      // No tagged room after all: an untagged page still works, it is only not recognisable after a kill.
      if (at !== undefined && signedErr(page)) page = map(0n, 0)
      if (signedErr(page)) throw new SyscallError(`mmap (injected into ${this.pid})`, Number(-page))
    }
    let childPid = 0
    try {
      this.writeMemory(page, TRAMPOLINE_PAGE)
      faultPoint('fork-trampoline-ready')
      this.withForkTracing(() => {
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
          if (signedErr(r)) throw new SyscallError(`clone (injected into ${this.pid})`, Number(-r))
          childPid = Number(r)
          this.takeNewChildren()
        } finally {
          this.writeRegsKernel(heal)
        }
      })
    } finally {
      this.healingSyscall(SYS.munmap, [page, 4096n], 'munmap')
    }
    faultPoint('fork-done')
    return {pid: childPid, tracee: this.adoptCreated(childPid, progMask), transientRanges: [[page, page + 4096n]]}
  }

  /**
   * One self-healing syscall in each of several stopped threads (each in
   * self-healing mode), run side by side: every thread is resumed before any
   * is awaited, so their round trips overlap. `args` gives each its arguments.
   */
  static healingSyscallAll<T extends HealingTracee>(threads: readonly T[], nr: number, args: (thread: T) => readonly (number | bigint)[]): bigint[] {
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
      t.loadHealingCall(nr, args(t))
      t.resume(PTRACE.SYSCALL, 0)
    }
    return threads.map((t) => {
      t.awaitSyscallStop()
      const result = signed(t.readRegsKernel()[REG.rax]!)
      t.writeRegsKernel(t.healing!.regs)
      return result
    })
  }
}

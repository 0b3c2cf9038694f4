/**
 * Single injected system calls, the layer over the tracee core (tracee-core.ts).
 *
 * - A call is injected without writing code into the tracee: the registers
 *   are set to {rip = a `0f 05` inside its own [vdso], rax = nr, args,
 *   orig_rax = -1} and it is run with PTRACE_SYSCALL to its syscall-entry and
 *   then its syscall-exit stop: no breakpoint and no signal (an int3 or
 *   single-step SIGTRAP is a *forced* signal, which resets a blocked or
 *   ignored SIGTRAP disposition in the tracee). Batches (batch.ts) and the
 *   fork trampoline (fork.ts), in contrast, do write code into the tracee.
 * - While injecting, every signal is blocked in the tracee (PTRACE_SETSIGMASK)
 *   so a pending signal cannot be dequeued and lost; the core puts the
 *   program's mask and registers back before the tracee runs again.
 * - In self-healing mode (fork.ts) each call is run from the entry of a
 *   pending rt_sigreturn instead.
 */
import {SyscallError, UnsupportedError} from '../errors.js'
import {SYS} from '../sys/syscall.js'
import {readMaps, type Vma} from '../sys/proc.js'
import {faultPoint} from '../fault.js'
import {NO_SYSCALL, REG, setSyscallArgs, signed, signedErr} from './regs.js'
import {HEAL_SCRATCH} from './sigframe.js'
import {TraceeCore, TraceeGoneError} from './tracee-core.js'

const ALL_SIGNALS = 0xffffffffffffffffn

/** System calls after which the cached injection site may be gone. */
function movesSite(nr: number): boolean {
  return nr === SYS.munmap || nr === SYS.mremap || nr === SYS.execve || nr === SYS.arch_prctl
}

export abstract class InjectingTracee extends TraceeCore {
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
}

/**
 * x86_64 registers as ptrace hands them over (user_regs_struct), and the
 * system-call restart fix-up applied to registers taken inside a call.
 */

/** user_regs_struct field order (x86_64), 27 x u64. */
export const REG_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi', 'rdi', 'orig_rax',
  'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const
export type RegName = (typeof REG_NAMES)[number]
export type Regs = Record<RegName, bigint>
export const REG = Object.fromEntries(REG_NAMES.map((n, i) => [n, i])) as Record<RegName, number>
export const USER_REGS_SIZE = 27 * 8

/** The registers that carry a system call's six arguments, in order. */
export const SYSCALL_ARG_REGS = [REG.rdi, REG.rsi, REG.rdx, REG.r10, REG.r8, REG.r9]

/** orig_rax = -1: the registers are not inside a system call. */
export const NO_SYSCALL = 0xffffffffffffffffn

export const NT_PRSTATUS = 1
export const NT_PRFPREG = 2
export const NT_X86_XSTATE = 0x202

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

/** A system call's signed result that is an error (-4095..-1), not an address or a count. */
export function signedErr(v: bigint): boolean {
  return v < 0n && v > -4096n
}

/** Sets the six argument registers of `r` (missing arguments are 0). */
export function setSyscallArgs(r: BigUint64Array, args: readonly (number | bigint)[]): void {
  SYSCALL_ARG_REGS.forEach((reg, i) => {
    r[reg] = BigInt.asUintN(64, BigInt(args[i] ?? 0))
  })
}

const ERESTARTSYS = 512n
const ERESTARTNOINTR = 513n
const ERESTARTNOHAND = 514n
const ERESTART_RESTARTBLOCK = 516n
const EINTR = 4n
const NR_restart_syscall = 219n
const NR_poll = 7n

/**
 * How a new process (a restore) resumes a thread stopped inside system call `orig` with
 * rax = `ax`: the kernel's restart logic does not run for it, so an interrupted call would
 * return the kernel-internal -ERESTART* code to the program.
 * - -ERESTARTSYS/NOINTR/NOHAND: run it again (rax = orig, rip -= 2).
 * - -ERESTART_RESTARTBLOCK: EINTR, as its kernel restart block does not survive (CRIU's
 *   choice too); except poll(2), run again with its own arguments (still in rdi, rsi,
 *   rdx): a poll(-1) waits on exactly as it did, a finite timeout starts over. Programs
 *   that take EINTR from poll as fatal (tail -f) then run on.
 * - anything else: as it is.
 */
export function restoredCallResumes(orig: bigint, ax: bigint): 'again' | 'eintr' | 'as-is' {
  if (ax === -ERESTARTSYS || ax === -ERESTARTNOINTR || ax === -ERESTARTNOHAND) return 'again'
  if (ax === -ERESTART_RESTARTBLOCK) return orig === NR_poll ? 'again' : 'eintr'
  return 'as-is'
}

/**
 * Syscall-restart fix-up of registers taken while stopped inside a system call
 * (orig_rax >= 0 and rax = -ERESTART*), for resuming WITHOUT the kernel's
 * restart logic: resuming from a syscall-exit stop does not re-run it.
 * 'restore' (new process): restoredCallResumes. 'live' (same process, after
 * injections): the same, but -ERESTART_RESTARTBLOCK goes through
 * restart_syscall, its restart_block being intact.
 * orig_rax becomes -1 in every case. Returns a new array; input untouched.
 */
export function restartFixup(regs: BigUint64Array, mode: 'live' | 'restore'): BigUint64Array {
  const r = new BigUint64Array(regs)
  const orig = signed(r[REG.orig_rax]!)
  if (orig >= 0n) {
    const ax = signed(r[REG.rax]!)
    if (mode === 'live' && ax === -ERESTART_RESTARTBLOCK) {
      r[REG.rax] = NR_restart_syscall
      r[REG.rip] = r[REG.rip]! - 2n
    } else {
      const resumes = restoredCallResumes(orig, ax)
      if (resumes === 'again') {
        r[REG.rax] = BigInt(orig)
        r[REG.rip] = r[REG.rip]! - 2n
      } else if (resumes === 'eintr') {
        r[REG.rax] = BigInt.asUintN(64, -EINTR)
      }
    }
  }
  r[REG.orig_rax] = NO_SYSCALL
  return r
}

/**
 * The signal frame self-healing injection hides below a tracee's stack, and
 * the rt_sigreturn code ("gadget") it returns through: with both in place a
 * tracee whose tracer dies resumes exactly where it was.
 */
import {vmRead} from '../sys/vm-io.js'
import {readMaps, type Vma} from '../sys/proc.js'
import {REG, type RegName, restartFixup} from './regs.js'

const FP_XSTATE_MAGIC1 = 0x46505853
const FP_XSTATE_MAGIC2 = 0x46505845
const UC_FP_XSTATE = 1n
const UC_SIGCONTEXT_SS = 2n
const UC_STRICT_RESTORE_SS = 4n
/** An ss_flags value sigaltstack rejects: rt_sigreturn then leaves the alternate stack as it is. */
const SS_FLAGS_KEEP = 0x10
const RT_SIGFRAME_SIZE = 440
/** Bytes of stack kept free below the healing frame for Tracee.stackSlot(). */
export const HEAL_SCRATCH = 256

/**
 * `mov rax, 15; syscall` (glibc's and musl's __restore_rt, Go's sigreturn) and
 * `mov eax, 15; syscall`: code that performs rt_sigreturn wherever it is entered.
 */
const SIGRETURN_GADGETS = [
  Uint8Array.from([0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]),
  Uint8Array.from([0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]),
]
export const SIGRETURN_GADGET_MAX = 9
/** Stop looking for a gadget after this many bytes of code. */
const GADGET_SCAN_LIMIT = 64 << 20

/** Whether `bytes` (at least SIGRETURN_GADGET_MAX of them) start with an rt_sigreturn sequence. */
export function isSigreturnGadget(bytes: Uint8Array): boolean {
  return SIGRETURN_GADGETS.some((g) => g.every((b, i) => bytes[i] === b))
}

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

/** An rt_sigframe and its XSAVE area, laid out for one stopped thread's stack. */
export interface HealingFrame {
  /** Address of the frame; rsp must point 8 bytes above it for rt_sigreturn. */
  frame: bigint
  frameBytes: Uint8Array
  /** Address of the XSAVE area the frame points at. */
  fpstate: bigint
  fpBytes: Uint8Array
}

/**
 * The rt_sigframe that brings a thread back to the program state `prog`
 * (syscall restart applied), with signal mask `mask` and XSAVE state
 * `xstate`, placed below its red zone; null when its stack (in `maps`) has
 * no room for the frame plus HEAL_SCRATCH bytes, or the XSAVE image is too small.
 */
export function buildHealingFrame(prog: BigUint64Array, mask: bigint, xstate: Uint8Array, maps: readonly Vma[]): HealingFrame | null {
  const resume = restartFixup(prog, 'live')
  const rsp = prog[REG.rsp]!
  const fpstate = (rsp - 256n - BigInt(xstate.length + 4)) & ~63n
  const frame = (fpstate - BigInt(RT_SIGFRAME_SIZE) - 64n) & ~15n
  const stack = maps.find((vma) => vma.start <= rsp && rsp < vma.end)
  if (!stack || frame - BigInt(HEAL_SCRATCH) < stack.start || xstate.length < 576) return null

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
  f.setBigUint64(sc + 256, mask, true)
  return {frame, frameBytes: new Uint8Array(f.buffer), fpstate, fpBytes: fp}
}

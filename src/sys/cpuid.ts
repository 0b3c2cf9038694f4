/**
 * The CPUID and XGETBV instructions, callable from JavaScript. Node has no
 * binding for either and cxlfork ships no native addon, so a few bytes of
 * x86-64 machine code go into a private PROT_READ|PROT_EXEC page and koffi
 * calls them through a function pointer (SysV calling convention). The page
 * is made once, on first use, and never unmapped: the code is tiny and
 * leaving it mapped avoids any call racing an unmap.
 */
import {UnsupportedError} from '../errors.js'
import {koffi} from './ffi.js'
import {MAP, PROT} from './syscall.js'
import {mmap, mprotect, view} from './vm-io.js'

export interface CpuidResult {
  eax: number
  ebx: number
  ecx: number
  edx: number
}

/**
 * void cpuid(uint32 leaf (edi), uint32 subleaf (esi), uint32 out[4] (rdx))
 * rbx is callee-saved in the SysV ABI and CPUID clobbers it: save it.
 */
const CPUID_CODE = [
  0x53, //                  push rbx
  0x89, 0xf8, //            mov eax, edi
  0x89, 0xf1, //            mov ecx, esi
  0x49, 0x89, 0xd0, //      mov r8, rdx
  0x0f, 0xa2, //            cpuid
  0x41, 0x89, 0x00, //      mov [r8], eax
  0x41, 0x89, 0x58, 0x04, // mov [r8+4], ebx
  0x41, 0x89, 0x48, 0x08, // mov [r8+8], ecx
  0x41, 0x89, 0x50, 0x0c, // mov [r8+12], edx
  0x5b, //                  pop rbx
  0xc3, //                  ret
]

/** uint64 xgetbv(uint32 xcr (edi)): EDX:EAX joined in rax. */
const XGETBV_CODE = [
  0x89, 0xf9, //            mov ecx, edi
  0x0f, 0x01, 0xd0, //      xgetbv
  0x48, 0xc1, 0xe2, 0x20, // shl rdx, 32
  0x48, 0x09, 0xd0, //      or rax, rdx
  0xc3, //                  ret
]

const XGETBV_AT = 32

interface Thunks {
  cpuid: (leaf: number, subleaf: number, out: Uint32Array) => void
  xgetbv: (xcr: number) => bigint | number
}

let thunks: Thunks | undefined

function load(): Thunks {
  if (thunks) return thunks
  if (process.arch !== 'x64') throw new UnsupportedError('UNSUPPORTED_ARCH', `CPUID is an x86-64 instruction; this is ${process.arch}`, 'Run cxlfork on an x86-64 host.')
  const page = mmap(null, 4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
  const code = view(page, 4096)
  code.set(CPUID_CODE, 0)
  code.set(XGETBV_CODE, XGETBV_AT)
  // Never writable and executable at once.
  mprotect(page, 4096, PROT.READ | PROT.EXEC)
  const cpuidProto = koffi.proto('void cxlfork_cpuid_fn(uint32_t leaf, uint32_t subleaf, _Out_ uint32_t *out)')
  const xgetbvProto = koffi.proto('uint64_t cxlfork_xgetbv_fn(uint32_t xcr)')
  thunks = {
    cpuid: koffi.decode(page, cpuidProto) as Thunks['cpuid'],
    xgetbv: koffi.decode(page + BigInt(XGETBV_AT), xgetbvProto) as Thunks['xgetbv'],
  }
  return thunks
}

/** CPUID with EAX = `leaf`, ECX = `subleaf`. */
export function cpuid(leaf: number, subleaf = 0): CpuidResult {
  const out = new Uint32Array(4)
  load().cpuid(leaf >>> 0, subleaf >>> 0, out)
  return {eax: out[0]!, ebx: out[1]!, ecx: out[2]!, edx: out[3]!}
}

/** CPUID.1:ECX.OSXSAVE: the kernel enabled XSAVE, so XGETBV may run in user mode. */
export function osxsave(): boolean {
  return ((cpuid(1).ecx >>> 27) & 1) === 1
}

/** XGETBV: the extended control register `xcr` (0 is XCR0, the enabled XSAVE features). Faults (#UD) without OSXSAVE: check osxsave() first. */
export function xgetbv(xcr = 0): bigint {
  return BigInt.asUintN(64, BigInt(load().xgetbv(xcr >>> 0)))
}

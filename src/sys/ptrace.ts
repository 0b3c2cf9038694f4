/** ptrace(2) and wait4(2): the requests, options and events, and wait statuses decoded. */
import {errno as lastErrno, libc} from './ffi.js'
import {SyscallError} from '../errors.js'
import {__WALL, MAP, PROT, SYS, syscallRaw, type SysArg} from './syscall.js'
import {mmap, view} from './vm-io.js'

// ---------------------------------------------------------------------------
// ptrace

export const PTRACE = {
  TRACEME: 0, PEEKTEXT: 1, PEEKDATA: 2, PEEKUSER: 3, POKETEXT: 4, POKEDATA: 5, POKEUSER: 6, CONT: 7, KILL: 8,
  SINGLESTEP: 9, GETREGS: 12, SETREGS: 13, GETFPREGS: 14, SETFPREGS: 15, ATTACH: 16, DETACH: 17, SYSCALL: 24,
  SETOPTIONS: 0x4200, GETEVENTMSG: 0x4201, GETSIGINFO: 0x4202, SETSIGINFO: 0x4203, GETREGSET: 0x4204,
  SETREGSET: 0x4205, SEIZE: 0x4206, INTERRUPT: 0x4207, LISTEN: 0x4208, PEEKSIGINFO: 0x4209, GETSIGMASK: 0x420a,
  SETSIGMASK: 0x420b, SECCOMP_GET_FILTER: 0x420c, SECCOMP_GET_METADATA: 0x420d, GET_SYSCALL_INFO: 0x420e,
  GET_RSEQ_CONFIGURATION: 0x420f,
} as const

export const PTRACE_O = {
  TRACESYSGOOD: 1, TRACEFORK: 2, TRACEVFORK: 4, TRACECLONE: 8, TRACEEXEC: 0x10, TRACEVFORKDONE: 0x20,
  TRACEEXIT: 0x40, TRACESECCOMP: 0x80, EXITKILL: 0x100000, SUSPEND_SECCOMP: 0x200000,
} as const

export const PTRACE_EVENT = {FORK: 1, VFORK: 2, CLONE: 3, EXEC: 4, VFORK_DONE: 5, EXIT: 6, SECCOMP: 7, STOP: 128} as const

/** ptrace(2) through the raw syscall; returns the kernel value (-errno on failure). */
export function ptraceRaw(request: number, pid: number, addr: SysArg = 0, data: SysArg = 0): bigint {
  return syscallRaw(SYS.ptrace, request, pid, addr, data)
}

/** ptrace(2) through the raw syscall; throws SyscallError('ptrace(NAME)'). */
export function ptrace(request: number, pid: number, addr: SysArg = 0, data: SysArg = 0): bigint {
  const r = syscallRaw(SYS.ptrace, request, pid, addr, data)
  if (r < 0n) throw new SyscallError(`ptrace(${ptraceName(request)}, ${pid})`, Number(-r))
  return r
}

export function ptraceName(request: number): string {
  for (const [k, v] of Object.entries(PTRACE)) if (v === request) return k
  return `0x${request.toString(16)}`
}

// ---------------------------------------------------------------------------
// wait4

const cWait4 = libc.func('int wait4(int pid, void *status, int options, void *rusage)')

export interface WaitStatus {
  pid: number
  /** Raw status word. */
  raw: number
  exited: boolean
  /** Exit code when exited. */
  exitCode?: number
  signaled: boolean
  /** Terminating signal when signaled. */
  termSignal?: number
  coreDumped?: boolean
  stopped: boolean
  /** Stop signal when stopped (SIGTRAP|0x80 = 0x85 for syscall stops with TRACESYSGOOD). */
  stopSignal?: number
  /** PTRACE_EVENT_* (status >> 16) when stopped, 0 if none. */
  event?: number
  continued: boolean
}

export function decodeWaitStatus(pid: number, st: number): WaitStatus {
  const low = st & 0x7f
  const w: WaitStatus = {pid, raw: st, exited: false, signaled: false, stopped: false, continued: false}
  if (st === 0xffff) {
    w.continued = true
  } else if ((st & 0xff) === 0x7f) {
    w.stopped = true
    w.stopSignal = (st >> 8) & 0xff
    w.event = (st >>> 16) & 0xff
  } else if (low === 0) {
    w.exited = true
    w.exitCode = (st >> 8) & 0xff
  } else {
    w.signaled = true
    w.termSignal = low
    w.coreDumped = (st & 0x80) !== 0
  }
  return w
}

export function describeWait(w: WaitStatus): string {
  if (w.exited) return `exited with code ${w.exitCode}`
  if (w.signaled) return `killed by signal ${w.termSignal}`
  if (w.stopped) return `stopped (signal ${w.stopSignal}${w.event ? `, event ${w.event}` : ''})`
  return 'continued'
}

const waitBuf = new Int32Array(1)

/**
 * wait4(pid, options|__WALL). Retries on EINTR. Returns null when WNOHANG
 * was given and nothing happened. Always pass a specific pid: waiting for any
 * child could take a stop or exit another part of cxlfork waits for.
 */
export function wait4(pid: number, options = 0): WaitStatus | null {
  for (;;) {
    waitBuf[0] = 0
    const r = cWait4(pid, waitBuf, options | __WALL, null) as number
    if (r === -1) {
      const e = lastErrno()
      if (e === 4) continue
      throw new SyscallError(`wait4(${pid})`, e, e === 10 ? 'not a child or tracee of this process' : undefined)
    }
    if (r === 0) return null
    return decodeWaitStatus(r, waitBuf[0]!)
  }
}

const REGSET_MAX = 64 * 1024
/** Off-heap buffer (stable address) for regsets, mapped on first use rather than when the module loads. */
let regsetBuffer: bigint | undefined
function regsetAddr(): bigint {
  regsetBuffer ??= mmap(null, REGSET_MAX, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
  return regsetBuffer
}

/** PTRACE_GETREGSET of type `nt`: a copy, sized by the kernel. */
export function getRegset(pid: number, nt: number): Uint8Array {
  const at = regsetAddr()
  const iov = new BigUint64Array([at, BigInt(REGSET_MAX)])
  ptrace(PTRACE.GETREGSET, pid, nt, iov)
  return new Uint8Array(view(at, Number(iov[1]!)))
}

/** PTRACE_SETREGSET of type `nt`. */
export function setRegset(pid: number, nt: number, bytes: Uint8Array): void {
  if (bytes.length > REGSET_MAX) throw new RangeError(`regset of ${bytes.length} bytes exceeds ${REGSET_MAX}`)
  const at = regsetAddr()
  view(at, bytes.length).set(bytes)
  ptrace(PTRACE.SETREGSET, pid, nt, new BigUint64Array([at, BigInt(bytes.length)]))
}

/** The raw 128-byte siginfo_t of every signal queued for a stopped tracee (PTRACE_PEEKSIGINFO), oldest first: its own queue, or with `shared` its process's. */
export function peekSigInfo(pid: number, shared: boolean): Uint8Array[] {
  const out: Uint8Array[] = []
  const batch = 32
  const buf = new Uint8Array(128 * batch)
  const args = new Uint8Array(16)
  const dv = new DataView(args.buffer)
  for (;;) {
    dv.setBigUint64(0, BigInt(out.length), true)
    dv.setUint32(8, shared ? 1 : 0, true)
    dv.setInt32(12, batch, true)
    const n = Number(ptrace(PTRACE.PEEKSIGINFO, pid, args, buf))
    for (let i = 0; i < n; i++) out.push(buf.slice(i * 128, i * 128 + 128))
    if (n < batch) break
  }
  return out
}

export interface RseqConfig {
  rseqAbiPointer: bigint
  rseqAbiSize: number
  signature: number
  flags: number
}

/** PTRACE_GET_RSEQ_CONFIGURATION of a stopped tracee: its registered rseq area (pointer 0 if none). */
export function rseqConfiguration(pid: number): RseqConfig {
  const b = new Uint8Array(32)
  ptrace(PTRACE.GET_RSEQ_CONFIGURATION, pid, 32, b)
  const dv = new DataView(b.buffer)
  return {rseqAbiPointer: dv.getBigUint64(0, true), rseqAbiSize: dv.getUint32(8, true), signature: dv.getUint32(12, true), flags: dv.getUint32(16, true)}
}

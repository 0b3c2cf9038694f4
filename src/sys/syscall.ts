/**
 * The x86_64 system call table and constants, the raw system call through the
 * single koffi handle of ./ffi.ts, and the small process and signal calls.
 * Every wrapper in src/sys throws SyscallError on failure, except the `*Raw`
 * variants, which return the kernel convention (-errno).
 *
 * Conventions
 * - Addresses are bigint. A "buffer" is either a Uint8Array (any
 *   ArrayBufferView: koffi passes it by pointer, zero copy) or a bigint
 *   address of native memory (e.g. from mmap) plus an explicit length.
 * - Only synchronous koffi calls: ptrace requests must come from the thread
 *   that seized the tracee, and an async koffi call runs on another thread.
 * - glibc `ptrace()` and `syscall()` are variadic: we declare `syscall` as a
 *   NON-variadic function taking six pointer-sized arguments, which matches the
 *   x86_64 register convention exactly.
 */
import {errno as lastErrno, libc} from './ffi.js'
import {NotFoundError, PermissionError, SyscallError} from '../errors.js'

export type Addr = bigint
/** A syscall argument: integer, address, or a typed array passed by pointer. */
export type SysArg = number | bigint | ArrayBufferView | null
/** Memory the kernel reads or writes: a typed array, or a native address. */
export type Buf = ArrayBufferView | bigint

// ---------------------------------------------------------------------------
// Constants (x86_64)

export const SYS = {
  read: 0, write: 1, open: 2, sendfile: 40, connect: 42, fstatfs: 138, close: 3, stat: 4, fstat: 5, lseek: 8, mmap: 9, mprotect: 10, munmap: 11,
  brk: 12, rt_sigaction: 13, rt_sigprocmask: 14, rt_sigreturn: 15, ioctl: 16, pread64: 17, pwrite64: 18,
  mremap: 25, madvise: 28, dup: 32, dup2: 33, pause: 34, nanosleep: 35, getpid: 39, clone: 56, fork: 57,
  execve: 59, exit: 60, wait4: 61, kill: 62, uname: 63, fcntl: 72, ftruncate: 77, getcwd: 79, chdir: 80,
  fchdir: 81, getuid: 102, getgid: 104, geteuid: 107, getppid: 110, setsid: 112, sigaltstack: 131, prctl: 157,
  arch_prctl: 158, setrlimit: 160, gettid: 186, tkill: 200, futex: 202, set_tid_address: 218,
  clock_gettime: 228, clock_nanosleep: 230, exit_group: 231, tgkill: 234, openat: 257, set_robust_list: 273,
  get_robust_list: 274, splice: 275, fallocate: 285, vmsplice: 278, dup3: 292, pipe2: 293, prlimit64: 302, process_vm_readv: 310, process_vm_writev: 311,
  memfd_create: 319, userfaultfd: 323, rseq: 334, pidfd_send_signal: 424, pidfd_open: 434, clone3: 435, close_range: 436,
  ptrace: 101, umask: 95, personality: 135, chroot: 161, rt_sigqueueinfo: 129, rt_tgsigqueueinfo: 297,
  sched_setaffinity: 203, sched_getaffinity: 204, getcpu: 309, timerfd_create: 283, timerfd_settime: 286, signalfd4: 289, sendto: 44, recvfrom: 45, socketpair: 53, pidfd_getfd: 438, socket: 41, bind: 49, listen: 50, getsockname: 51, getpeername: 52, setsockopt: 54, getsockopt: 55, tee: 276, kcmp: 312, eventfd2: 290, epoll_create1: 291, epoll_ctl: 233, unshare: 272, setns: 308, setpgid: 109, rt_sigtimedwait: 128,
} as const

export const PROT = {NONE: 0, READ: 1, WRITE: 2, EXEC: 4} as const
export const MREMAP = {MAYMOVE: 1, FIXED: 2, DONTUNMAP: 4} as const
/** prctl options (and PR_SET_MM sub-options) used by checkpoint and restore. */
export const PR = {SET_NAME: 15, GET_NAME: 16, SET_MM: 35, SET_CHILD_SUBREAPER: 36, SET_MM_MAP: 14, SET_MM_MAP_SIZE: 15, GET_TID_ADDRESS: 40} as const
export const MAP = {
  SHARED: 0x01, PRIVATE: 0x02, FIXED: 0x10, ANONYMOUS: 0x20, GROWSDOWN: 0x100, NORESERVE: 0x4000,
  POPULATE: 0x8000, FIXED_NOREPLACE: 0x100000,
} as const
export const MADV = {
  NORMAL: 0, RANDOM: 1, SEQUENTIAL: 2, WILLNEED: 3, DONTNEED: 4, FREE: 8, REMOVE: 9, DONTFORK: 10, DOFORK: 11,
  MERGEABLE: 12, HUGEPAGE: 14, NOHUGEPAGE: 15, DONTDUMP: 16, WIPEONFORK: 18, KEEPONFORK: 19, POPULATE_READ: 22,
  POPULATE_WRITE: 23,
} as const
export const O = {
  RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, EXCL: 0o200, NOCTTY: 0o400, TRUNC: 0o1000, APPEND: 0o2000,
  NONBLOCK: 0o4000, DIRECTORY: 0o200000, NOFOLLOW: 0o400000, CLOEXEC: 0o2000000, PATH: 0o10000000,
} as const
export const SIG = {
  HUP: 1, INT: 2, QUIT: 3, ILL: 4, TRAP: 5, ABRT: 6, BUS: 7, FPE: 8, KILL: 9, USR1: 10, SEGV: 11, USR2: 12,
  PIPE: 13, ALRM: 14, TERM: 15, CHLD: 17, CONT: 18, STOP: 19, TSTP: 20, TTIN: 21, TTOU: 22, WINCH: 28,
} as const
export const WNOHANG = 1
export const WUNTRACED = 2
export const __WALL = 0x40000000
export const MFD_CLOEXEC = 1
export const MFD_ALLOW_SEALING = 2
export const MFD_EXEC = 0x10
/** Linux IOV_MAX: the most iovecs one readv/process_vm_readv call takes. */
export const IOV_MAX = 1024

// ---------------------------------------------------------------------------
// Raw system call

const cSyscall = libc.func('syscall', 'int64', ['int64', 'void *', 'void *', 'void *', 'void *', 'void *', 'void *'])

function a(x: SysArg | undefined): unknown {
  return x === undefined ? 0 : x
}

/**
 * Raw system call. Returns the kernel's value: >= 0 on success, -errno on failure.
 * Arguments: number | bigint | typed array (by pointer) | null (0).
 */
export function syscallRaw(nr: number, a1?: SysArg, a2?: SysArg, a3?: SysArg, a4?: SysArg, a5?: SysArg, a6?: SysArg): bigint {
  const r = cSyscall(nr, a(a1), a(a2), a(a3), a(a4), a(a5), a(a6)) as number | bigint
  if (r === -1 || r === -1n) return -BigInt(lastErrno())
  return BigInt(r)
}

/** Raw system call that throws SyscallError(name) on failure; returns the result. */
export function syscall(name: string, nr: number, a1?: SysArg, a2?: SysArg, a3?: SysArg, a4?: SysArg, a5?: SysArg, a6?: SysArg): bigint {
  const r = cSyscall(nr, a(a1), a(a2), a(a3), a(a4), a(a5), a(a6)) as number | bigint
  if (r === -1 || r === -1n) throw new SyscallError(name, lastErrno())
  return BigInt(r)
}

/** Same as syscall(), result as a JS number (for fds, counts, pids). */
export function sysN(name: string, nr: number, a1?: SysArg, a2?: SysArg, a3?: SysArg, a4?: SysArg, a5?: SysArg, a6?: SysArg): number {
  const r = cSyscall(nr, a(a1), a(a2), a(a3), a(a4), a(a5), a(a6)) as number | bigint
  if (r === -1 || r === -1n) throw new SyscallError(name, lastErrno())
  return Number(r)
}

/** Throws SyscallError unless `ret` (kernel convention) is >= 0. */
export function check(name: string, ret: bigint, detail?: string, hint?: string): bigint {
  if (ret < 0n) throw new SyscallError(name, Number(-ret), detail, hint)
  return ret
}

/** Length of a buffer argument; bigint addresses need an explicit length. */
export function blen(buf: Buf, len: number | undefined): number {
  if (len !== undefined) {
    if (typeof buf !== 'bigint' && len > buf.byteLength) throw new RangeError(`length ${len} exceeds buffer (${buf.byteLength})`)
    return len
  }
  if (typeof buf === 'bigint') throw new TypeError('a length is required with a native address')
  return buf.byteLength
}

// ---------------------------------------------------------------------------
// Signals and processes

export function kill(pid: number, sig: number): void {
  const r = syscallRaw(SYS.kill, pid, sig)
  if (r < 0n) {
    const e = Number(-r)
    if (e === 3) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
    if (e === 1) throw new PermissionError('SIGNAL_DENIED', `not allowed to signal process ${pid}`, 'run as root or as the owner of the process')
    throw new SyscallError(`kill(${pid}, ${sig})`, e)
  }
}

/** kill() that ignores ESRCH; returns false when the process was already gone. */
export function killQuiet(pid: number, sig: number): boolean {
  return syscallRaw(SYS.kill, pid, sig) >= 0n
}

export function tgkill(tgid: number, tid: number, sig: number): void {
  syscall(`tgkill(${tgid}, ${tid}, ${sig})`, SYS.tgkill, tgid, tid, sig)
}

export function pidfdOpen(pid: number, flags = 0): number {
  return sysN(`pidfd_open(${pid})`, SYS.pidfd_open, pid, flags)
}

export function getpid(): number {
  return process.pid
}

export function gettid(): number {
  return Number(syscallRaw(SYS.gettid))
}

export function getuid(): number {
  return Number(syscallRaw(SYS.getuid))
}

export function geteuid(): number {
  return Number(syscallRaw(SYS.geteuid))
}

export function prctl(option: number, a2: SysArg = 0, a3: SysArg = 0, a4: SysArg = 0, a5: SysArg = 0): bigint {
  return syscall(`prctl(${option})`, SYS.prctl, option, a2, a3, a4, a5)
}

export interface ResourceLimit {
  cur: bigint
  max: bigint
}

/** RLIM_INFINITY */
export const RLIM_INFINITY = 0xffffffffffffffffn

/** prlimit64(pid, resource, NULL, &old): read a resource limit of any process. */
export function prlimit(pid: number, resource: number, set?: ResourceLimit): ResourceLimit {
  const old = new BigUint64Array(2)
  let nw: BigUint64Array | null = null
  if (set) nw = BigUint64Array.of(set.cur, set.max)
  syscall(`prlimit64(${pid}, ${resource})`, SYS.prlimit64, pid, resource, nw, old)
  return {cur: old[0]!, max: old[1]!}
}

// ---------------------------------------------------------------------------
// Misc

export interface Utsname {
  sysname: string
  nodename: string
  release: string
  version: string
  machine: string
}

export function uname(): Utsname {
  const b = new Uint8Array(65 * 6)
  syscall('uname', SYS.uname, b)
  const f = (i: number): string => {
    const s = b.subarray(i * 65, i * 65 + 65)
    const z = s.indexOf(0)
    return Buffer.from(s.subarray(0, z < 0 ? 65 : z)).toString('utf8')
  }
  return {sysname: f(0), nodename: f(1), release: f(2), version: f(3), machine: f(4)}
}

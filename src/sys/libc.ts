/**
 * Thin typed wrappers over libc / raw Linux system calls, through the single
 * koffi handle of ./ffi.ts. Every wrapper throws SyscallError on failure,
 * except the `*Raw` variants, which return the kernel convention (-errno).
 *
 * Conventions
 * - Addresses are bigint. A "buffer" is either a Uint8Array (any
 *   ArrayBufferView: koffi passes it by pointer, zero copy) or a bigint
 *   address of native memory (e.g. from mmap) plus an explicit length.
 * - Only synchronous koffi calls: ptrace requests must come from the thread
 *   that seized the tracee (facts, pitfall 13).
 * - glibc `ptrace()` and `syscall()` are variadic: we declare `syscall` as a
 *   NON-variadic function taking six pointer-sized arguments, which matches the
 *   x86_64 register convention exactly.
 */
import {errno as lastErrno, koffi, libc} from './ffi.js'
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
  PIPE: 13, ALRM: 14, TERM: 15, CHLD: 17, CONT: 18, STOP: 19, TSTP: 20, TTIN: 21, TTOU: 22,
} as const
export const WNOHANG = 1
export const WUNTRACED = 2
export const __WALL = 0x40000000
export const MFD_CLOEXEC = 1
export const MFD_ALLOW_SEALING = 2
export const MFD_EXEC = 0x10
export const PAGE_SIZE = 4096
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
function sysN(name: string, nr: number, a1?: SysArg, a2?: SysArg, a3?: SysArg, a4?: SysArg, a5?: SysArg, a6?: SysArg): number {
  const r = cSyscall(nr, a(a1), a(a2), a(a3), a(a4), a(a5), a(a6)) as number | bigint
  if (r === -1 || r === -1n) throw new SyscallError(name, lastErrno())
  return Number(r)
}

/** Throws SyscallError unless `ret` (kernel convention) is >= 0. */
export function check(name: string, ret: bigint, detail?: string, hint?: string): bigint {
  if (ret < 0n) throw new SyscallError(name, Number(-ret), detail, hint)
  return ret
}

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
 * was given and nothing happened. Always pass a specific pid (pitfall 14).
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

export interface Rlimit {
  cur: bigint
  max: bigint
}

/** RLIM_INFINITY */
export const RLIM_INFINITY = 0xffffffffffffffffn

/** prlimit64(pid, resource, NULL, &old): read a resource limit of any process. */
export function prlimit(pid: number, resource: number, set?: Rlimit): Rlimit {
  const old = new BigUint64Array(2)
  let nw: BigUint64Array | null = null
  if (set) nw = BigUint64Array.of(set.cur, set.max)
  syscall(`prlimit64(${pid}, ${resource})`, SYS.prlimit64, pid, resource, nw, old)
  return {cur: old[0]!, max: old[1]!}
}

// ---------------------------------------------------------------------------
// posix_spawn

const cFaInit = libc.func('int posix_spawn_file_actions_init(void *fa)')
const cFaDestroy = libc.func('int posix_spawn_file_actions_destroy(void *fa)')
const cFaDup2 = libc.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)')
const cFaOpen = libc.func('int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, uint32 mode)')
const cFaClose = libc.func('int posix_spawn_file_actions_addclose(void *fa, int fd)')
const cFaClosefrom = libc.func('int posix_spawn_file_actions_addclosefrom_np(void *fa, int from)')
const cFaChdir = libc.func('int posix_spawn_file_actions_addchdir_np(void *fa, const char *path)')
const cAttrInit = libc.func('int posix_spawnattr_init(void *attr)')
const cAttrDestroy = libc.func('int posix_spawnattr_destroy(void *attr)')
const cAttrSetflags = libc.func('int posix_spawnattr_setflags(void *attr, short flags)')
const cAttrSetsigdefault = libc.func('int posix_spawnattr_setsigdefault(void *attr, void *set)')
const cAttrSetsigmask = libc.func('int posix_spawnattr_setsigmask(void *attr, void *set)')
const cAttrSetpgroup = libc.func('int posix_spawnattr_setpgroup(void *attr, int pgroup)')
const cSigemptyset = libc.func('int sigemptyset(void *set)')
const cPosixSpawn = libc.func('int posix_spawn(void *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)')

const POSIX_SPAWN_SETPGROUP = 0x02
const POSIX_SPAWN_SETSIGDEF = 0x04
const POSIX_SPAWN_SETSIGMASK = 0x08
const POSIX_SPAWN_SETSID = 0x80

export interface SpawnOptions {
  /** Executable path (no PATH search). */
  path: string
  /** argv, including argv[0]; defaults to [path]. */
  argv?: string[]
  /** Explicit environment as KEY=VALUE strings; defaults to an EMPTY environment. */
  env?: string[] | Record<string, string>
  /**
   * Child fd table: index = child fd, value = parent fd to dup there, or null
   * for /dev/null. Defaults to [0, 1, 2] (inherit stdio). Every other fd is
   * closed in the child (pitfall 9).
   */
  fds?: (number | null)[]
  /** Working directory of the child. */
  cwd?: string
  /**
   * Reset every signal disposition to SIG_DFL (Node ignores SIGPIPE) and
   * clear the blocked mask. Default true.
   */
  resetSignals?: boolean
  /** Put the child in a new session (setsid) — detaches it from our terminal's job control. */
  setsid?: boolean
  /** Put the child in its own process group. */
  newProcessGroup?: boolean
}

/** posix_spawn through the FFI (never child_process for tracees: pitfall 14). Returns the pid. */
export function posixSpawn(opts: SpawnOptions): number {
  const fa = new Uint8Array(128) // posix_spawn_file_actions_t is 80 bytes on glibc x86_64
  const attr = new Uint8Array(512) // posix_spawnattr_t is 336 bytes
  const sigdef = new Uint8Array(128)
  const sigmask = new Uint8Array(128)
  let e = cFaInit(fa) as number
  if (e !== 0) throw new SyscallError('posix_spawn_file_actions_init', e)
  e = cAttrInit(attr) as number
  if (e !== 0) {
    cFaDestroy(fa)
    throw new SyscallError('posix_spawnattr_init', e)
  }
  try {
    const fds = opts.fds ?? [0, 1, 2]
    const chk = (what: string, rc: number): void => {
      if (rc !== 0) throw new SyscallError(what, rc)
    }
    // Two phases so that a source fd < n is not clobbered by an earlier dup2:
    // first move every source that is itself a target slot out of the way.
    const n = fds.length
    const src: (number | null)[] = [...fds]
    for (let i = 0; i < n; i++) {
      const s = src[i]
      if (s !== null && s !== undefined && s < n && s !== i) {
        const tmp = 1000 + i
        chk('posix_spawn_file_actions_adddup2', cFaDup2(fa, s, tmp) as number)
        src[i] = tmp
      }
    }
    for (let i = 0; i < n; i++) {
      const s = src[i]
      if (s === null || s === undefined) {
        chk('posix_spawn_file_actions_addopen', cFaOpen(fa, i, '/dev/null', i === 0 ? O.RDONLY : O.WRONLY, 0) as number)
      } else {
        chk('posix_spawn_file_actions_adddup2', cFaDup2(fa, s, i) as number)
      }
    }
    chk('posix_spawn_file_actions_addclosefrom_np', cFaClosefrom(fa, Math.max(n, 0)) as number)
    if (opts.cwd !== undefined) chk('posix_spawn_file_actions_addchdir_np', cFaChdir(fa, opts.cwd) as number)

    let flags = 0
    if (opts.resetSignals ?? true) {
      // Every signal 1..64, including glibc's internal 32/33 that sigfillset()
      // leaves out (and that glibc would otherwise set to SIG_IGN in the child).
      sigdef.fill(0)
      sigdef.fill(0xff, 0, 8)
      cSigemptyset(sigmask)
      chk('posix_spawnattr_setsigdefault', cAttrSetsigdefault(attr, sigdef) as number)
      chk('posix_spawnattr_setsigmask', cAttrSetsigmask(attr, sigmask) as number)
      flags |= POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
    }
    if (opts.setsid) flags |= POSIX_SPAWN_SETSID
    else if (opts.newProcessGroup) {
      chk('posix_spawnattr_setpgroup', cAttrSetpgroup(attr, 0) as number)
      flags |= POSIX_SPAWN_SETPGROUP
    }
    chk('posix_spawnattr_setflags', cAttrSetflags(attr, flags) as number)

    const argv = [...(opts.argv ?? [opts.path]), null]
    let envList: string[]
    if (opts.env === undefined) envList = []
    else if (Array.isArray(opts.env)) envList = opts.env
    else envList = Object.entries(opts.env).map(([k, v]) => `${k}=${v}`)
    const envp = [...envList, null]
    const pidOut = new Int32Array(1)
    const rc = cPosixSpawn(pidOut, opts.path, fa, attr, argv, envp) as number
    if (rc !== 0) {
      if (rc === 2) throw new NotFoundError('EXECUTABLE_NOT_FOUND', `cannot spawn ${opts.path}: no such file`)
      throw new SyscallError('posix_spawn', rc, opts.path)
    }
    return pidOut[0]!
  } finally {
    cFaDestroy(fa)
    cAttrDestroy(attr)
  }
}

// ---------------------------------------------------------------------------
// Files

export function open(path: string, flags: number, mode = 0o600): number {
  const r = cOpen(path, flags | O.CLOEXEC, mode) as number
  if (r < 0) {
    const e = lastErrno()
    if (e === 2) throw new NotFoundError('FILE_NOT_FOUND', `no such file: ${path}`)
    throw new SyscallError('open', e, path)
  }
  return r
}
const cOpen = libc.func('int open(const char *path, int flags, uint32 mode)')

export function close(fd: number): void {
  syscall(`close(${fd})`, SYS.close, fd)
}

/** Length of a buffer argument; bigint addresses need an explicit length. */
function blen(buf: Buf, len: number | undefined): number {
  if (len !== undefined) {
    if (typeof buf !== 'bigint' && len > buf.byteLength) throw new RangeError(`length ${len} exceeds buffer (${buf.byteLength})`)
    return len
  }
  if (typeof buf === 'bigint') throw new TypeError('a length is required with a native address')
  return buf.byteLength
}

/** fallocate(2) modes. */
export const FALLOC = {KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02} as const

/** fallocate(2) of [offset, offset + length); mode 0 allocates. Returns 0 or -errno (callers name their own errors). */
export function fallocateRaw(fd: number, mode: number, offset: bigint | number, length: bigint | number): number {
  return Number(syscallRaw(SYS.fallocate, fd, mode, offset, length))
}

/** read(2); returns bytes read (0 at EOF). Retries EINTR. */
export function read(fd: number, buf: Buf, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.read, fd, buf, n)
    if (r === -4n) continue
    return Number(check(`read(${fd})`, r))
  }
}

/** pread(2) at a byte offset (bigint allowed for offsets >= 2^53). */
export function pread(fd: number, buf: Buf, offset: number | bigint, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.pread64, fd, buf, n, offset)
    if (r === -4n) continue
    return Number(check(`pread(${fd})`, r))
  }
}

/** Reads exactly len bytes at offset or until EOF; returns bytes read. */
export function preadFull(fd: number, buf: Buf, offset: number | bigint, len?: number): number {
  const n = blen(buf, len)
  let done = 0
  while (done < n) {
    const dst = typeof buf === 'bigint' ? buf + BigInt(done) : sub(buf, done)
    const r = pread(fd, dst, typeof offset === 'bigint' ? offset + BigInt(done) : offset + done, n - done)
    if (r === 0) break
    done += r
  }
  return done
}

export function write(fd: number, buf: Buf, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.write, fd, buf, n)
    if (r === -4n) continue
    return Number(check(`write(${fd})`, r))
  }
}

export function pwrite(fd: number, buf: Buf, offset: number | bigint, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.pwrite64, fd, buf, n, offset)
    if (r === -4n) continue
    return Number(check(`pwrite(${fd})`, r))
  }
}

/** Writes everything (loops on short writes). */
export function writeAll(fd: number, buf: Buf, len?: number): void {
  const n = blen(buf, len)
  let done = 0
  while (done < n) {
    const src = typeof buf === 'bigint' ? buf + BigInt(done) : sub(buf, done)
    done += write(fd, src, n - done)
  }
}

function sub(v: ArrayBufferView, off: number): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset + off, v.byteLength - off)
}

export function ftruncate(fd: number, size: number | bigint): void {
  syscall(`ftruncate(${fd})`, SYS.ftruncate, fd, size)
}

/**
 * Copy `bytes` from offset `from` of `inFd` to offset `to` of `outFd` with
 * sendfile(2): in the kernel, no user buffer. (A fresh buffer costs a page
 * fault per page, which in this VM made 64 MiB take ~200 ms instead of ~22 ms.)
 */
export function sendfileAt(outFd: number, inFd: number, from: bigint, to: bigint, bytes: bigint, what: string): void {
  const position = syscallRaw(SYS.lseek, outFd, to, 0 /* SEEK_SET */)
  if (position < 0n) throw new SyscallError(`lseek (${what})`, Number(-position))
  const offset = new BigInt64Array([from])
  for (let left = bytes; left > 0n;) {
    const n = syscallRaw(SYS.sendfile, outFd, inFd, offset, left > 1n << 30n ? 1n << 30n : left)
    if (n === -4n) continue
    if (n < 0n) throw new SyscallError(`sendfile (${what})`, Number(-n))
    if (n === 0n) throw new SyscallError(`sendfile (${what})`, 5, `${left} bytes short`)
    left -= n
  }
}

export function lseek(fd: number, offset: number | bigint, whence: number): bigint {
  return syscall(`lseek(${fd})`, SYS.lseek, fd, offset, whence)
}

export function dup(fd: number): number {
  return sysN(`dup(${fd})`, SYS.dup, fd)
}

/** dup3(old, new, flags). */
export function dup3(oldfd: number, newfd: number, flags = 0): number {
  return sysN(`dup3(${oldfd}, ${newfd})`, SYS.dup3, oldfd, newfd, flags)
}

export function fcntl(fd: number, cmd: number, arg: SysArg = 0): number {
  return sysN(`fcntl(${fd}, ${cmd})`, SYS.fcntl, fd, cmd, arg)
}

/** pipe2(flags) -> [readFd, writeFd]. */
export function pipe2(flags: number = O.CLOEXEC): [number, number] {
  const fds = new Int32Array(2)
  syscall('pipe2', SYS.pipe2, fds, flags)
  return [fds[0]!, fds[1]!]
}

export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  return sysN(`memfd_create(${name})`, SYS.memfd_create, Buffer.from(name + '\0'), flags)
}

export interface Stat {
  dev: bigint
  ino: bigint
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev: bigint
  size: number
  blksize: number
  blocks: number
  atimeNs: bigint
  mtimeNs: bigint
  ctimeNs: bigint
}

/** fstat(2), struct stat of x86_64 (144 bytes). */
export function fstat(fd: number): Stat {
  const b = new BigInt64Array(18)
  syscall(`fstat(${fd})`, SYS.fstat, fd, b)
  const u = new Uint32Array(b.buffer)
  return {
    dev: BigInt.asUintN(64, b[0]!), ino: BigInt.asUintN(64, b[1]!), nlink: Number(b[2]!), mode: u[6]!, uid: u[7]!,
    gid: u[8]!, rdev: BigInt.asUintN(64, b[5]!), size: Number(b[6]!), blksize: Number(b[7]!), blocks: Number(b[8]!),
    atimeNs: b[9]! * 1_000_000_000n + b[10]!, mtimeNs: b[11]! * 1_000_000_000n + b[12]!,
    ctimeNs: b[13]! * 1_000_000_000n + b[14]!,
  }
}

// ---------------------------------------------------------------------------
// Local memory

/** mmap(2); returns the address. */
export function mmap(addr: bigint | null, length: number | bigint, prot: number, flags: number, fd = -1, offset: number | bigint = 0): bigint {
  const r = syscallRaw(SYS.mmap, addr ?? 0, length, prot, flags, fd, offset)
  if (r < 0n) throw new SyscallError('mmap', Number(-r), `length ${length}`)
  return r
}

export function munmap(addr: bigint, length: number | bigint): void {
  syscall('munmap', SYS.munmap, addr, length)
}

export function mprotect(addr: bigint, length: number | bigint, prot: number): void {
  syscall('mprotect', SYS.mprotect, addr, length, prot)
}

export function madvise(addr: bigint, length: number | bigint, advice: number): void {
  syscall(`madvise(${advice})`, SYS.madvise, addr, length, advice)
}

/** A Uint8Array over native memory (no copy). Valid while the mapping lives. */
export function view(addr: bigint, length: number): Uint8Array {
  return new Uint8Array(koffi.view(addr, length))
}

/** Native address of a typed array's first byte (stable for arrays > 64 bytes, which live off the V8 heap). */
export function addressOf(v: ArrayBufferView): bigint {
  return koffi.address(v)
}

// ---------------------------------------------------------------------------
// Cross-process memory

const cVmReadv = libc.func('int64 process_vm_readv(int pid, void *liov, uint64 liovcnt, void *riov, uint64 riovcnt, uint64 flags)')
const cVmWritev = libc.func('int64 process_vm_writev(int pid, void *liov, uint64 liovcnt, void *riov, uint64 riovcnt, uint64 flags)')

/** One copy between our memory (`local`) and another process (`remote`). */
export interface VmSegment {
  /** Local address (native memory) or typed array. */
  local: bigint | ArrayBufferView
  remote: bigint
  /** Byte count; defaults to the typed array's length. */
  len?: number
}

/** Builds paired iovec arrays for segments [from, to); returns the bytes covered. */
const IOV_SCRATCH_L = new BigUint64Array(IOV_MAX * 2)
const IOV_SCRATCH_R = new BigUint64Array(IOV_MAX * 2)

function segLen(s: VmSegment): number {
  if (s.len !== undefined) return s.len
  if (typeof s.local === 'bigint') throw new TypeError('VmSegment.len is required with a native address')
  return s.local.byteLength
}

/**
 * process_vm_readv / writev over many segments, IOV_MAX per system call.
 * Returns the total bytes transferred. A short transfer (a remote page not
 * mapped or not readable) stops early and reports what was done; use
 * vmRead/vmWrite for all-or-error semantics.
 *
 * Typed arrays of 64 bytes or less may live on the V8 heap and move: they are
 * bounced through a native buffer automatically.
 */
function vmTransfer(write: boolean, pid: number, segs: readonly VmSegment[]): number {
  let total = 0
  let i = 0
  while (i < segs.length) {
    const n = Math.min(IOV_MAX, segs.length - i)
    let want = 0
    const bounces: [number, ArrayBufferView][] = []
    for (let k = 0; k < n; k++) {
      const s = segs[i + k]!
      const len = segLen(s)
      let laddr: bigint
      if (typeof s.local === 'bigint') laddr = s.local
      else if (s.local.byteLength > 64) laddr = koffi.address(s.local)
      else {
        laddr = bounceAddr + BigInt(k * 64)
        if (write) view(laddr, len).set(new Uint8Array(s.local.buffer, s.local.byteOffset, len))
        bounces.push([k, s.local])
      }
      IOV_SCRATCH_L[2 * k] = laddr
      IOV_SCRATCH_L[2 * k + 1] = BigInt(len)
      IOV_SCRATCH_R[2 * k] = s.remote
      IOV_SCRATCH_R[2 * k + 1] = BigInt(len)
      want += len
    }
    const fn = write ? cVmWritev : cVmReadv
    let r: number
    for (;;) {
      r = Number(fn(pid, IOV_SCRATCH_L, n, IOV_SCRATCH_R, n, 0) as number | bigint)
      if (r === -1 && lastErrno() === 4) continue
      break
    }
    if (r === -1) {
      const e = lastErrno()
      if (total > 0 && e === 14) return total
      if (e === 3) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
      if (e === 1) throw new PermissionError('PTRACE_DENIED', `no ptrace access to process ${pid}`, 'run as root (CAP_SYS_PTRACE)')
      throw new SyscallError(write ? 'process_vm_writev' : 'process_vm_readv', e, `pid ${pid}`)
    }
    if (!write) {
      for (const [k, v] of bounces) {
        const len = Number(IOV_SCRATCH_L[2 * k + 1]!)
        new Uint8Array(v.buffer, v.byteOffset, len).set(view(bounceAddr + BigInt(k * 64), len))
      }
    }
    total += r
    if (r < want) return total
    i += n
  }
  return total
}

// 64 KiB bounce buffer = IOV_MAX slots of 64 bytes for small typed arrays.
const bounceAddr = mmap(null, IOV_MAX * 64, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)

/** process_vm_readv over many segments; returns bytes read (short on an unreadable remote page). */
export function vmReadv(pid: number, segs: readonly VmSegment[]): number {
  return vmTransfer(false, pid, segs)
}

/** process_vm_writev over many segments; returns bytes written (short on an unwritable remote page). */
export function vmWritev(pid: number, segs: readonly VmSegment[]): number {
  return vmTransfer(true, pid, segs)
}

/** Reads exactly `len` bytes at `remote` of pid into `dest`; throws SyscallError(EFAULT) if short. */
export function vmRead(pid: number, remote: bigint, dest: Buf, len?: number): void {
  const n = blen(dest, len)
  // Split in 1 GiB pieces: one iovec may not exceed MAX_RW_COUNT (2 GiB - 4 KiB).
  const segs: VmSegment[] = []
  for (let off = 0; off < n; off += 1 << 30) {
    const l = Math.min(1 << 30, n - off)
    segs.push({local: typeof dest === 'bigint' ? dest + BigInt(off) : new Uint8Array(dest.buffer, dest.byteOffset + off, l), remote: remote + BigInt(off), len: l})
  }
  const r = vmReadv(pid, segs)
  if (r !== n) throw new SyscallError('process_vm_readv', 14, `pid ${pid}: read ${r} of ${n} bytes at 0x${(remote + BigInt(r)).toString(16)}`)
}

/** Writes all of `src` at `remote` of pid; throws SyscallError(EFAULT) if short. */
export function vmWrite(pid: number, remote: bigint, src: Buf, len?: number): void {
  const n = blen(src, len)
  const segs: VmSegment[] = []
  for (let off = 0; off < n; off += 1 << 30) {
    const l = Math.min(1 << 30, n - off)
    segs.push({local: typeof src === 'bigint' ? src + BigInt(off) : new Uint8Array(src.buffer, src.byteOffset + off, l), remote: remote + BigInt(off), len: l})
  }
  const r = vmWritev(pid, segs)
  if (r !== n) throw new SyscallError('process_vm_writev', 14, `pid ${pid}: wrote ${r} of ${n} bytes at 0x${(remote + BigInt(r)).toString(16)}`)
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

/** Copies a NUL-terminated C string into a new Uint8Array. */
export function cstring(s: string): Uint8Array {
  return Buffer.from(s + '\0', 'utf8')
}

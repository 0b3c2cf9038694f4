/**
 * The captured state of one process, independent of where its memory bytes
 * live. The pool path and the CRIU path both produce and consume this model;
 * only the page store differs (pool segments vs pages-N.img).
 *
 * Addresses and 64-bit kernel values are bigint: user addresses fit in 2^47,
 * but [vsyscall] and masks do not fit in a double.
 */

import type {XsaveLayout} from '../cpu/xsave-layout.js'

export const IMAGE_VERSION = 1

/** x86_64 `struct user_regs_struct`, in kernel order (27 u64). */
export const USER_REGS_NAMES = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi', 'rdi',
  'orig_rax', 'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const
export type UserRegName = (typeof USER_REGS_NAMES)[number]
export type UserRegs = Record<UserRegName, bigint>

/** A file a mapping or an fd refers to, identified so restore can refuse a changed file. */
export interface FileIdentity {
  path: string
  /** st_dev as "major:minor". */
  device: string
  inode: bigint
  size: bigint
  /** st_mtime in nanoseconds since the epoch. */
  mtimeNs: bigint
  /** st_ctime in nanoseconds: catches an in-place rewrite whose mtime was set back. Absent in imported CRIU sets. */
  ctimeNs?: bigint
  mode: number
}

export type VmaKind = 'anon' | 'heap' | 'stack' | 'file' | 'vdso' | 'vvar' | 'vvar_vclock' | 'vsyscall'

export interface VmaImage {
  start: bigint
  end: bigint
  /** PROT_* bits. */
  prot: number
  /** MAP_SHARED (1) or MAP_PRIVATE (2), plus MAP_ANONYMOUS (0x20) and MAP_GROWSDOWN (0x100) where they apply. */
  flags: number
  /** File offset in bytes (file mappings), or offset in the shared object (sharedId). */
  offset: bigint
  kind: VmaKind
  /** Index into ProcessImage.files for file mappings. */
  fileIndex?: number
  /** Shared anonymous memory: the object it maps (shared-memory.ts), at byte `offset` of it. */
  sharedId?: string
  /** MADV_* advice the kernel reports in VmFlags that restore should re-apply (e.g. MADV_DONTDUMP). */
  advice?: number[]
}

/** A run of consecutive virtual pages whose contents the checkpoint stores. */
export interface PageRun {
  vaddr: bigint
  nrPages: number
  vmaIndex: number
}

export interface SigAction {
  signo: number
  handler: bigint
  flags: bigint
  restorer: bigint
  mask: bigint
}

export interface RseqRegistration {
  address: bigint
  length: number
  signature: number
}

export interface ThreadImage {
  tid: number
  regs: UserRegs
  /** Raw NT_X86_XSTATE buffer (legacy FXSAVE area, XSAVE header, extended components). */
  xstate: Uint8Array
  /**
   * Layout of `xstate` (XCR0, size, offset and size of each component) on the
   * CPU that saved it, so another CPU can restore it (src/cpu). Optional, so
   * state records from before it was recorded keep version 1 and stay
   * readable: restore then infers the layout from the buffer's size.
   */
  xsaveLayout?: XsaveLayout
  sigmask: bigint
  /** Raw 128-byte siginfo_t of signals pending for this thread only. */
  pendingSignals: Uint8Array[]
  rseq?: RseqRegistration
  robustList: {head: bigint; length: bigint}
  clearTidAddress: bigint
  /** sigaltstack(2) state: ss_sp, ss_flags, ss_size. */
  altStack: {sp: bigint; flags: number; size: bigint}
  /** The thread's own name (/proc/PID/task/TID/comm); absent in older images and for the first thread (task.comm). */
  comm?: string
}

export interface MmImage {
  startCode: bigint
  endCode: bigint
  startData: bigint
  endData: bigint
  startBrk: bigint
  brk: bigint
  startStack: bigint
  argStart: bigint
  argEnd: bigint
  envStart: bigint
  envEnd: bigint
  /** auxv as a flat list of (type, value) pairs, AT_NULL terminated. */
  auxv: bigint[]
  /** Index into ProcessImage.files of the executable. */
  exeFileIndex: number
}

/** How an fd is restored. */
export type FdKind = 'regular' | 'chardev' | 'tty' | 'pipe' | 'fifo' | 'directory' | 'eventfd' | 'epoll' | 'socket' | 'timerfd' | 'signalfd' | 'inotify' | 'shmem' | 'ghost'

/** A pipe end above fd 2 (fds 0-2 that are pipes are the restorer's stdio instead). */
export interface PipeEndImage {
  /** The pipe's inode: ends of one pipe share it. */
  id: string
  end: 'read' | 'write'
  /** F_GETPIPE_SZ. */
  size: number
  /** Bytes buffered in the pipe at the checkpoint (on one end record per pipe only). */
  data?: Uint8Array
  /** Whether the other end is open in the process (else the clone's other end is closed: EOF or EPIPE). */
  peerInProcess: boolean
}

/** One registration of an epoll instance's interest list. */
export interface EpollTargetImage {
  fd: number
  events: number
  data: bigint
}

export interface FdImage {
  fd: number
  kind: FdKind
  /** Path as /proc/PID/fd showed it. */
  path: string
  /** open(2) flags as /proc/PID/fdinfo shows them (octal there), without O_CLOEXEC. */
  flags: number
  cloexec: boolean
  offset: bigint
  /** Index into ProcessImage.files for regular files and directories. */
  fileIndex?: number
  /** A deleted tmpfs file or a memfd (kind shmem): the shared object it opens (shared-memory.ts). */
  sharedId?: string
  /** fds that share one open file description (dup, inheritance) name the lowest fd of the group; absent when alone. */
  sharedWith?: number
  /**
   * In a tree: the same object held by an earlier member (its pid and fd), handed over at
   * restore: the same open file description, or (a pipe) the same pipe through another end.
   */
  sharedFrom?: {pid: number; fd: number; description: boolean; sameEnd: boolean}
  pipe?: PipeEndImage
  /**
   * A FIFO (named pipe), reopened at its path: its pipe size, and the bytes buffered in it
   * (on the process's first fd of that FIFO), refilled only when no other process holds it.
   */
  fifo?: {size: number; data?: Uint8Array}
  eventfd?: {count: bigint; semaphore: boolean}
  /**
   * A deleted regular file (not on a tmpfs: those are shared memory objects), carried whole as CRIU's ghost
   * files are: its path when it was deleted, mode, owner and contents (at most GHOST_LIMIT bytes).
   */
  ghost?: {path: string; mode: number; uid: number; gid: number; data: Uint8Array}
  /** An inotify instance: its watches, each with the watch descriptor the program knows it by, the path and the mask. */
  inotify?: {watches: {wd: number; path: string; mask: number}[]}
  /**
   * A timerfd: its clock, the time left and interval (seconds, nanoseconds) as of the checkpoint, and the
   * expirations not yet read (absent: none). A periodic timer that fired and was not read shows no time left
   * (the kernel re-arms it when it is read): ticks > 0 with an interval is still a running timer.
   */
  timerfd?: {clockid: number; value: [number, number]; interval: [number, number]; ticks?: number}
  /**
   * Advisory locks held through this open file description: POSIX record locks (fcntl F_SETLK, lockf),
   * flock() locks and OFD locks, each with its byte range (end null: to the end of the file). The clone
   * takes each again, or its restore is refused while another process holds a conflicting one.
   */
  locks?: {kind: 'posix' | 'flock' | 'ofd'; write: boolean; start: number; end: number | null}[]
  /** A terminal on fds 0-2: its modes (the kernel's struct termios), given to the terminal a clone gets under restore --wait. */
  termios?: Uint8Array
  /** A signalfd: the signals it reads. */
  signalfd?: {mask: bigint}
  epoll?: {targets: EpollTargetImage[]}
  /** A TCP listener or a UDP socket (IPv4/IPv6), re-created with its address and options. */
  socket?: SocketImage
}

export interface SocketImage {
  family: number
  type: number
  protocol: number
  listening: boolean
  /** A listener's backlog as the kernel kept it (absent in older checkpoints: restored with somaxconn's cap). */
  backlog?: number
  /** An established connection taken with --tcp-close: the clone gets it closed (a TCP socket connected to nothing). */
  closed?: boolean
  /** The getsockname(2) bytes (sockaddr_in / sockaddr_in6 / sockaddr_un). */
  local: Uint8Array
  /** Integer options to set again: level, name, value. */
  options: {level: number; name: number; value: number}[]
  /** A datagram socket's peer (a connected UDP socket, a client of a named Unix socket): connected to again. */
  peer?: Uint8Array
  /** A Unix socket bound to a path: the socket file's permission bits and owner, given to the file the restore binds. */
  file?: {mode: number; uid: number; gid: number}
  /**
   * A Unix socketpair end: the fd holding its other end (-1: another member of the tree holds it), and the bytes
   * (or datagrams) queued for this end to read. Of a pair split across members, the end that creates the pair at
   * restore also carries what was queued for the other end (peerQueued, peerMessages); the other is handed over.
   */
  /**
   * A socketpair end (or a connection): its peer's fd here, -1 when another member holds it; `peerClosed` when
   * nobody does any more (the peer was closed: what is queued is read, then EOF, as a JVM's leftover ends).
   */
  pair?: {peerFd: number; peerClosed?: boolean; queued?: Uint8Array; messages?: Uint8Array[]; peerQueued?: Uint8Array; peerMessages?: Uint8Array[]}
}

export interface Rlimit {
  resource: number
  cur: bigint
  max: bigint
}

/** A process's credentials (checkpoint/credentials.ts): ids real, effective, saved, filesystem. */
export interface CredentialsImage {
  uids: [number, number, number, number]
  gids: [number, number, number, number]
  groups: number[]
  capInheritable: bigint
  capPermitted: bigint
  capEffective: bigint
  capBounding: bigint
  capAmbient: bigint
  noNewPrivs: boolean
  securebits: number
  /** PR_GET_DUMPABLE: 0, 1 (or 2: suid_dumpable, as the kernel set it). */
  dumpable: number
}

/**
 * An interval timer (setitimer, alarm): the time left and the interval, each [seconds, microseconds].
 * A periodic ITIMER_REAL whose SIGALRM is pending shows no time left: the kernel re-arms it when
 * the signal is delivered (intervalTimerFirstExpiry).
 */
export interface IntervalTimerImage {
  value: [number, number]
  interval: [number, number]
}

/** A POSIX timer (timer_create), re-created under its own id. */
export interface PosixTimerImage {
  /** The kernel's timer id, which the program holds as its timer_t. */
  id: number
  clockid: number
  /** sigev_notify: SIGEV_SIGNAL (0) or SIGEV_NONE (1), with SIGEV_THREAD_ID (4) when it signals one thread. */
  notify: number
  signo: number
  /** sigev_value: what the signal carries in si_value. */
  sigval: bigint
  /** SIGEV_THREAD_ID: the thread it signals, by its tid in the checkpoint. */
  tid?: number
  /**
   * A CPU-time clock of the process itself or one of its threads (clock_getcpuclockid, pthread_getcpuclockid:
   * a negative clockid that encodes that pid or tid): the id it names, which the restore encodes anew.
   */
  clockOf?: number
  /** Time left and interval, each [seconds, nanoseconds]; [0, 0] left: disarmed. */
  value: [number, number]
  interval: [number, number]
}

/** The timers of a process: those armed of its three interval timers, and every POSIX timer. */
export interface TimersImage {
  real?: IntervalTimerImage
  virtual?: IntervalTimerImage
  prof?: IntervalTimerImage
  posix: PosixTimerImage[]
}

export interface TaskImage {
  pid: number
  ppid: number
  pgid: number
  sid: number
  comm: string
  uid: number
  gid: number
  umask: number
  personality: number
  cwd: string
  root: string
  rlimits: Rlimit[]
  sigactions: SigAction[]
  /** Raw 128-byte siginfo_t of process-wide pending signals. */
  sharedPendingSignals: Uint8Array[]
  cmdline: string[]
  /** Absent in checkpoints taken before credentials were carried, and in CRIU imports: the clone keeps the restorer's. */
  credentials?: CredentialsImage
  /**
   * PR_SET_PDEATHSIG of a tree member whose parent is in the checkpoint (a worker that dies with its
   * master). Not recorded for the root: its parent is not restored with it.
   */
  pdeathSignal?: number
  /** Absent when no timer was armed or created (and in checkpoints taken before timers were carried). */
  timers?: TimersImage
}

export interface KernelIdentity {
  release: string
  /** Sizes and relative placement of [vvar], [vvar_vclock], [vdso]: must match on restore. */
  vdsoLayout: {name: string; offset: bigint; size: bigint}[]
  /** Host the checkpoint was taken on (informational). */
  hostname: string
  bootId: string
}

export interface ProcessImage {
  version: typeof IMAGE_VERSION
  capturedAt: number
  kernel: KernelIdentity
  task: TaskImage
  threads: ThreadImage[]
  mm: MmImage
  vmas: VmaImage[]
  files: FileIdentity[]
  fds: FdImage[]
  /** Pages whose contents the checkpoint stores, in ascending address order. */
  pageRuns: PageRun[]
}

export const PAGE_SHIFT = 12

export function totalPages(runs: readonly PageRun[]): number {
  let pages = 0
  for (const run of runs) pages += run.nrPages
  return pages
}

/**
 * When a restored timerfd first fires: the time it had left, or, for a periodic timer that
 * fired and whose expirations were not read yet (no time left, ticks pending), one interval
 * from now, as the kernel would have re-armed it; [0, 0] for a disarmed one.
 */
export function timerfdFirstExpiry(timer: NonNullable<FdImage['timerfd']>): [number, number] {
  if (timer.value[0] !== 0 || timer.value[1] !== 0) return timer.value
  return (timer.ticks ?? 0) > 0 ? timer.interval : [0, 0]
}

/** When a restored interval timer first fires: the time it had left, else (its signal pending) one interval from now. */
export function intervalTimerFirstExpiry(timer: IntervalTimerImage): [number, number] {
  return timer.value[0] !== 0 || timer.value[1] !== 0 ? timer.value : timer.interval
}

/** The pid or tid a CPU-time clock id names (0: the caller), or undefined for a clock that is not one (an fd's clock: low bits 3). */
export function cpuClockOwner(clockid: number): number | undefined {
  if (clockid >= 0 || (clockid & 7) === 3) return undefined
  return ~(clockid >> 3)
}

/** The CPU-time clock id of `owner` (pid or tid) of the same kind (process or thread; scheduler, virtual or profiling time) as `clockid`. */
export function cpuClockOf(owner: number, clockid: number): number {
  return (~owner << 3) | (clockid & 7)
}

export function emptyRegs(): UserRegs {
  return Object.fromEntries(USER_REGS_NAMES.map((name) => [name, 0n])) as UserRegs
}

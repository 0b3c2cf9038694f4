/**
 * Checks made before a target is touched, so that every refusal happens while
 * the target runs undisturbed and names the exact feature that is missing.
 */
import {existsSync, readFileSync, readdirSync, readlinkSync, statSync} from 'node:fs'

import {NotFoundError, PermissionError, UnsupportedError} from '../errors.js'
import {type FdKind} from '../image/process-image.js'
import {requireMapFilesAccess} from '../sys/capabilities.js'
import {SYS, getuid, syscallRaw} from '../sys/syscall.js'
import {isSharedAnonymous, isSharedMemoryFd, isSharedMemoryObject} from './shared-memory.js'
import {refuseUnsupportedCredentials} from './credentials.js'
import {listTids} from './threads.js'
import {listPosixTimers} from './timers.js'
import {AF, SOCK, TCP_CLOSE, describeAddress, readSocket, socketHolders, unixName, unixPeer, unixSocketName} from '../sys/sockets.js'
import {type FdInfo, type SmapsVma, type Vma, listFds, parseLockLine, readSmaps, readStat, readStatus} from '../sys/proc.js'

/** Character devices whose state is fully described by their path. */
const STATELESS_CHARDEVS = new Set(['/dev/null', '/dev/zero', '/dev/full', '/dev/random', '/dev/urandom'])

/** The anonymous-inode descriptors refused, by what a user would call them. */
const ANON_INODE_NAMES: Record<string, string> = {
  'anon_inode:[fanotify]': 'a fanotify group', 'anon_inode:[userfaultfd]': 'a userfaultfd',
  'anon_inode:[io_uring]': 'an io_uring instance', 'anon_inode:[perf_event]': 'a perf event',
  'anon_inode:[pidfd]': 'a pidfd', 'anon_inode:bpf-map': 'a BPF map', 'anon_inode:bpf-prog': 'a BPF program',
}

const FAMILY_NAMES: Record<number, string> = {16: 'a netlink socket', 17: 'a packet socket (AF_PACKET)', 38: 'a kernel crypto socket (AF_ALG)', 40: 'a vsock socket'}
const NETLINK_NAMES: Record<number, string> = {0: 'NETLINK_ROUTE', 2: 'NETLINK_USERSOCK', 4: 'NETLINK_SOCK_DIAG', 9: 'NETLINK_AUDIT', 15: 'NETLINK_KOBJECT_UEVENT', 16: 'NETLINK_GENERIC'}

/** TCP listeners and UDP sockets are restored; anything else is named. */
function classifySocket(pid: number, fd: number, tcpClose: boolean): FdKind | {unsupported: string} {
  const socket = readSocket(pid, fd)
  const inet = socket.family === AF.INET || socket.family === AF.INET6
  const where = describeAddress(socket.local)
  if (socket.family === AF.UNIX) {
    // A socketpair: connected, unbound, its peer unnamed; its peer must be in the process too (checked in preflight, with every fd known).
    if (socket.connected && socket.local.length <= 2 && (socket.peer?.length ?? 0) <= 2 && !socket.listening) return 'socket'
    // A datagram client of a named socket (a syslog() client of /dev/log): each datagram stands alone, so it is connected again.
    if (socket.connected && socket.type === SOCK.DGRAM && socket.local.length <= 2 && (socket.peer?.length ?? 0) > 2) {
      const peer = unixName(socket.peer!)
      return peer.startsWith('/') || peer.startsWith('@') ? 'socket' : {unsupported: `a Unix datagram socket connected to the relative path ${peer}`}
    }
    // A stream or seqpacket connection made through a named listener: carried as a pair, like a
    // socketpair, when its other end is held too (checked in preflight, with every fd known).
    if (socket.connected && socket.type !== SOCK.DGRAM) return 'socket'
    if (socket.connected) return {unsupported: `a Unix datagram socket (local ${where}) connected to ${describeAddress(socket.peer ?? new Uint8Array(0))} (cxlfork carries Unix listeners, bound datagram sockets and socketpairs whose both ends the process holds)`}
    const name = unixName(socket.local)
    // bind(2) resolves a relative path against the cwd of the moment: the clone could not tell which.
    if (name !== '' && !name.startsWith('@') && !name.startsWith('/')) return {unsupported: `a Unix socket bound to the relative path ${name}`}
    if (socket.listening || socket.type === SOCK.DGRAM) return 'socket'
    return {unsupported: `a Unix ${socket.type === SOCK.SEQPACKET ? 'seqpacket' : 'stream'} socket neither listening nor connected (${where || '(unbound)'})`}
  }
  if (!inet) return {unsupported: `${FAMILY_NAMES[socket.family] ?? `a socket of address family ${socket.family}`}${socket.family === 16 ? ` (${NETLINK_NAMES[socket.protocol] ?? `protocol ${socket.protocol}`})` : ''}`}
  if (socket.type === SOCK.STREAM && socket.listening) return 'socket'
  if (socket.type === SOCK.STREAM && socket.connected) return tcpClose ? 'socket' : {unsupported: `an established TCP connection (local ${where}); cxlfork does not repair live connections (--tcp-close restores it closed)`}
  if (socket.type === SOCK.DGRAM && !socket.connected) return 'socket'
  // Connected UDP: connect(2) only sets the default destination, so it is set again at restore.
  if (socket.type === SOCK.DGRAM) return 'socket'
  // Created (perhaps bound) and never connected: a fresh socket, bound again to its address if it was (mosquitto keeps one spare).
  if (socket.type === SOCK.STREAM && socket.tcpState === TCP_CLOSE) return 'socket'
  if (socket.type === SOCK.STREAM) return {unsupported: `a TCP socket that is neither listening nor connected (${where}, TCP state ${socket.tcpState ?? 'unknown'}: a connection being set up or torn down)`}
  return {unsupported: `a socket of type ${socket.type} (${where})`}
}

/** Unix socketpair ends whose other end is not among the process's fds (another process holds it), with the peer's inode when the kernel names it. */
function loneUnixEnds(pid: number, fds: readonly {info: FdInfo; kind: FdKind}[]): {fd: number; peer: number | undefined}[] {
  const inodes = new Set(fds.filter(({kind}) => kind === 'socket').map(({info}) => info.target))
  const lone: {fd: number; peer: number | undefined}[] = []
  for (const {info, kind} of fds) {
    if (kind !== 'socket') continue
    const socket = readSocket(pid, info.fd)
    // Listeners and unconnected datagram sockets have no peer to hold; clients of a named datagram socket connect again.
    if (socket.family !== AF.UNIX || !socket.connected || (socket.type === SOCK.DGRAM && (socket.peer?.length ?? 0) > 2)) continue
    const peer = unixPeer(Number(/^socket:\[(\d+)\]$/.exec(info.target)?.[1] ?? -1))
    // Peer 0: the other end was closed; this end is carried with what is left to read in it.
    if (peer === 0) continue
    if (peer === undefined || !inodes.has(`socket:[${peer}]`)) lone.push({fd: info.fd, peer})
  }
  return lone
}

/** How many PID namespaces this process is nested in (NSpid's length): it never changes, read once. */
let ownPidNamespaceDepth: number | undefined

/** A lone socketpair end is refused by name: outside a tree always, in a tree when no member holds its peer (tree.ts). */
export function refuseLoneUnixEnd(pid: number, end: {fd: number; peer: number | undefined}, inTree: boolean): never {
  // Who holds the other end, and at which address: what an operator needs to decide what to stop or include.
  const holders = end.peer === undefined ? [] : socketHolders(end.peer).filter((holder) => holder.pid !== pid)
  const address = end.peer === undefined ? undefined : unixSocketName(end.peer)
  const about = [holders.length > 0 ? `held by ${holders.map((holder) => `process ${holder.pid} (${holder.comm})`).join(', ')}` : '', address ? `at ${address}` : ''].filter(Boolean).join(', ')
  throw new UnsupportedError('UNSUPPORTED_FD', `fd ${end.fd} of process ${pid} is a Unix socket connected to ${end.peer === undefined ? 'a socket the kernel does not name' : `socket:[${end.peer}]`}${about ? ` (${about})` : ''}, which ${inTree ? 'no process of the tree holds' : 'the process does not hold'}`,
    inTree ? 'cxlfork carries Unix socketpairs and connections whose ends are held within the checkpointed tree; the other end is outside it.'
      : 'cxlfork carries Unix socketpairs and connections whose both ends the process holds (or, with --tree, its tree holds); checkpoint the tree that holds both ends with --tree, or close the end shared with another process first.')
}

/** Largest deleted file whose contents a checkpoint carries (CRIU's default ghost limit). */
export const GHOST_LIMIT = 1 << 20

/** A deleted regular file is carried whole up to GHOST_LIMIT (gunicorn's worker heartbeat files are empty). */
function classifyDeleted(pid: number, fd: number, target: string): FdKind | {unsupported: string} {
  let stat
  try {
    stat = statSync(`/proc/${pid}/fd/${fd}`)
  } catch {
    return {unsupported: `a deleted file that vanished while being inspected (${target})`}
  }
  if (!stat.isFile()) return {unsupported: `a deleted special file (${target})`}
  if (stat.size > GHOST_LIMIT) return {unsupported: `a deleted file of ${stat.size} bytes (${target}); cxlfork carries deleted files up to ${GHOST_LIMIT} bytes`}
  return 'ghost'
}

/** kcmp(2) type: do two processes share one address space? */
const KCMP_VM = 1

/** How an fd can be restored, or why it cannot. */
export function classifyFd(fd: FdInfo, pid: number, tcpClose = false): FdKind | {unsupported: string} {
  const target = fd.target
  if (target.startsWith('pipe:')) return 'pipe'
  if (target.startsWith('socket:')) return classifySocket(pid, fd.fd, tcpClose)
  if (target === 'anon_inode:[eventfd]') return 'eventfd'
  if (target === 'anon_inode:[eventpoll]') return 'epoll'
  if (target === 'anon_inode:[timerfd]') return 'timerfd'
  if (target === 'anon_inode:[signalfd]') return 'signalfd'
  if (target === 'anon_inode:inotify') return 'inotify'
  if (target.startsWith('anon_inode:')) return {unsupported: `${ANON_INODE_NAMES[target] ?? 'an anonymous inode'} (${target})`}
  // A memfd or an unlinked tmpfs file (multiprocessing's heap arena): a shared memory object, its content carried.
  if (isSharedMemoryFd(pid, fd.fd, target)) return 'shmem'
  if (target.startsWith('/memfd:')) return {unsupported: 'a memfd (on no tmpfs)'}
  if (!target.startsWith('/')) return {unsupported: `an unsupported file (${target})`}
  if (target.endsWith(' (deleted)')) return classifyDeleted(pid, fd.fd, target)
  if (/^\/dev\/(pts\/\d+|tty\d*|console)$/.test(target)) return fd.fd <= 2 ? 'tty' : {unsupported: `a terminal (${target}) above stderr`}
  let stat
  try {
    // Follow the fd itself, not the path: the path may name another file by now.
    stat = statSync(`/proc/${pid}/fd/${fd.fd}`)
  } catch {
    return {unsupported: `a file that vanished while being inspected (${target})`}
  }
  if (stat.isFile()) return 'regular'
  if (stat.isFIFO()) return 'fifo'
  if (stat.isDirectory()) return 'directory'
  if (stat.isCharacterDevice() && STATELESS_CHARDEVS.has(target)) return 'chardev'
  if (stat.isCharacterDevice()) return {unsupported: `the character device ${target}`}
  return {unsupported: `a special file (${target})`}
}

/** Memory features a fork snapshot or a restore cannot carry. */
export function unsupportedVmaReason(vma: Vma & {vmFlags: ReadonlySet<string>}, pid?: number): string | undefined {
  const where = `0x${vma.start.toString(16)}-0x${vma.end.toString(16)}`
  if (vma.vmFlags.has('ht')) return `hugetlb memory at ${where}`
  if (vma.vmFlags.has('wf')) return `MADV_WIPEONFORK memory at ${where}`
  if (vma.kind === 'vdso' || vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vsyscall') return undefined
  // MAP_SHARED|MAP_ANONYMOUS is carried (shared-memory.ts); named shared memory is not.
  if (isSharedAnonymous(vma) || (pid !== undefined && isSharedMemoryObject(pid, vma))) return undefined
  if (vma.path.startsWith('/SYSV')) return `System V shared memory (shmat) at ${where} (${vma.path})`
  if (vma.shared && vma.kind === 'anon') return `shared anonymous memory at ${where}${vma.path ? ` (${vma.path})` : ''}`
  if (vma.kind === 'special') return `the special mapping ${vma.path} at ${where}`
  if (vma.deleted) return `a mapping of the deleted file ${vma.path} at ${where}`
  if (vma.kind === 'file' && !vma.path.startsWith('/')) return `a mapping of ${vma.path} at ${where}`
  return undefined
}

/**
 * Pids whose parent is `pid`, zombies included: from each thread's
 * /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN), else by scanning every
 * /proc/N/stat for its parent pid (1-2.5 ms here, against ~0.1 ms).
 */
export function childrenOf(pid: number): number[] {
  try {
    const children = new Set<number>()
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      for (const child of readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim().split(/\s+/)) {
        if (child) children.add(Number(child))
      }
    }
    return [...children]
  } catch {
    // Gone meanwhile: nothing to refuse here, the seize reports it. Otherwise no children files in this kernel: scan.
    if (!existsSync(`/proc/${pid}`)) return []
  }
  const children: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    try {
      const text = readFileSync(`/proc/${name}/stat`, 'utf8')
      const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
      if (Number(fields[1]) === pid) children.push(Number(name))
    } catch {
      // exited while we looked
    }
  }
  return children
}

/** A socket held in a checkpointed tree: its first holder in tree order (rank: that member's place in it). */
export interface TreeSocket {
  pid: number
  fd: number
  rank: number
}

export interface PreflightResult {
  uid: number
  /** Checked as a member of a tree (children allowed). */
  inTree: boolean
  /** Established TCP connections accepted, to be restored closed (--tcp-close). */
  tcpClose: boolean
  /** Advisory record, flock and OFD locks accepted, to be taken again by the clone (the pool path; the CRIU format here carries none). */
  carryLocks: boolean
  /** In a tree: pipes other members hold too ('pipe:[ino]'), carried as pipes even on fds 0-2. */
  internalPipes?: Set<string>
  /** In a tree: every member's sockets ('socket:[ino]'), each with one member fd holding it (a socketpair's other end may be any of them). */
  treeSockets?: Map<string, TreeSocket>
  /** Socketpair ends whose other end this process does not hold (in a tree: held by another member, checked by the tree). */
  loneUnixEnds?: {fd: number; peer: number | undefined}[]
  fds: {info: FdInfo; kind: FdKind}[]
  /** The target's VMAs with their VmFlags; null when the memory check was left to the snapshot (see preflight). */
  smaps: SmapsVma[] | null
}

const LOCK_KINDS: Record<string, string> = {POSIX: 'a POSIX record lock (fcntl F_SETLK, lockf)', FLOCK: 'a flock() lock', OFDLCK: 'an open file description lock (fcntl F_OFD_SETLK)', LEASE: 'a lease (F_SETLEASE)', DELEG: 'a lease (F_SETLEASE)'}

/**
 * Throws FILE_LOCK for an fd through which the process holds a lock: a clone would believe it
 * holds the lock while another process can take it (a database's clone would write outside
 * its lock), and beside its original it could not hold it at all.
 */
/** An advisory POSIX record lock, flock() lock or OFD lock (fdinfo 'lock:' line): a clone can take it again. Leases and mandatory locks cannot be. */
function carriableLock(line: string): boolean {
  const {kind, mode} = parseLockLine(line)
  return (kind === 'POSIX' || kind === 'FLOCK' || kind === 'OFDLCK') && mode === 'ADVISORY'
}

/** Whether `info` holds a lock a checkpoint must refuse: any, unless advisory ones are carried (`carryLocks`, the pool path). */
export function refusedLocks(info: FdInfo, carryLocks: boolean): boolean {
  return info.locks.length > 0 && !(carryLocks && info.locks.every(carriableLock))
}

export function refuseFileLock(pid: number, comm: string, info: FdInfo): never {
  throw fileLockError(pid, comm, info)
}

function fileLockError(pid: number, comm: string, info: FdInfo): UnsupportedError {
  const {kind, access, start, end} = parseLockLine(info.locks[0]!)
  // Advisory locks are refused only where the images carry none (criu dump); leases and mandatory locks everywhere.
  const carriable = info.locks.every(carriableLock)
  return new UnsupportedError('FILE_LOCK', `fd ${info.fd} of process ${pid} (${comm}) holds ${LOCK_KINDS[kind] ?? `a ${kind} lock`} for ${access.toLowerCase()} on ${info.target} (bytes ${start} to ${end}${info.locks.length > 1 ? `, and ${info.locks.length - 1} more lock(s)` : ''}): ${carriable ? 'CRIU-format images carry no file locks' : 'cxlfork does not carry leases or mandatory locks'}, and a clone would run without it`,
    carriable ? 'Checkpoint it into a pool (cxlfork checkpoint): its clones take their advisory locks again.'
      : 'Checkpoint the process once it has released the lease or lock.')
}

const SYS_SEMCTL = 66
const GETPID = 11

/** The rows of /proc/sysvipc/NAME (semaphore sets, message queues) as column name -> value. */
function sysvRows(name: 'sem' | 'msg'): Record<string, string>[] {
  let text: string
  try {
    text = readFileSync(`/proc/sysvipc/${name}`, 'utf8')
  } catch {
    return []
  }
  const [header = '', ...lines] = text.split('\n')
  const columns = header.trim().split(/\s+/)
  return lines.filter((line) => line.trim()).map((line) => Object.fromEntries(line.trim().split(/\s+/).map((value, i) => [columns[i] ?? String(i), value])))
}

/**
 * Throws SYSV_IPC for a process that operates on a System V semaphore set or message queue of
 * its IPC namespace: cxlfork does not carry System V IPC, and its clone would keep using the
 * original's set by id (and lose it when the original removes it: Apache's prefork accept mutex
 * with Mutex sysvsem), or find none on another host. The kernel does not list a process's sets:
 * a set whose semaphores it last operated on (semctl GETPID) or a queue it last sent to or
 * received from names it. Best effort: a set it holds but has not touched yet is not seen.
 */
function refuseSysvIpc(pid: number, comm: string): void {
  let sameNamespace = false
  try {
    sameNamespace = readlinkSync(`/proc/${pid}/ns/ipc`) === readlinkSync('/proc/self/ns/ipc')
  } catch {
    return
  }
  if (!sameNamespace) return
  for (const set of sysvRows('sem')) {
    const semid = Number(set['semid'])
    for (let sem = 0; sem < Number(set['nsems'] ?? 0); sem++) {
      if (syscallRaw(SYS_SEMCTL, semid, sem, GETPID, 0) !== BigInt(pid)) continue
      throw new UnsupportedError('SYSV_IPC', `process ${pid} (${comm}) operates on the System V semaphore set ${semid} (key ${set['key']}, ${set['nsems']} semaphore(s)): cxlfork does not carry System V IPC, and a clone would go on using the original's set`,
        'Use POSIX semaphores or pthread mutexes where the program lets you choose (Apache: Mutex pthread instead of sysvsem).')
    }
  }
  for (const queue of sysvRows('msg')) {
    if (Number(queue['lspid']) !== pid && Number(queue['lrpid']) !== pid) continue
    throw new UnsupportedError('SYSV_IPC', `process ${pid} (${comm}) uses the System V message queue ${queue['msqid']} (key ${queue['key']}): cxlfork does not carry System V IPC, and a clone would go on using the original's queue`,
      'cxlfork carries pipes and sockets, not System V queues.')
  }
}

/** Throws UNSUPPORTED_MEMORY naming the first VMA a checkpoint cannot carry. */
export function refuseUnsupportedMemory(pid: number, vmas: readonly (Vma & {vmFlags: ReadonlySet<string>})[]): void {
  for (const vma of vmas) {
    const reason = unsupportedVmaReason(vma, pid)
    if (reason) throw new UnsupportedError('UNSUPPORTED_MEMORY', `process ${pid} uses ${reason}`, 'cxlfork carries private memory, file mappings and shared memory made with mmap(MAP_SHARED|MAP_ANONYMOUS), memfd_create or a /dev/shm file; System V segments (shmget/shmat), hugetlb and MADV_WIPEONFORK memory are not carried (PostgreSQL always holds a System V segment).')
  }
}

/**
 * Refuse early, with the reason named, anything checkpoint cannot handle.
 * `memory: false` leaves out the memory check: /proc/PID/smaps walks every
 * page table and looks up every page (2 ms at 64 MiB, ~30 ms at 1 GiB
 * here), so a checkpoint into an existing pool makes it on the snapshot
 * instead, while the snapshot writes its pages (LiveSnapshot.checkMemory).
 */
export function preflight(pid: number, options: {memory?: boolean; children?: 'refuse' | 'allow'; tcpClose?: boolean; carryLocks?: boolean} = {}): PreflightResult {
  if (!Number.isInteger(pid) || pid <= 0) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`, 'Give the pid of a running process (see `ps`).')
  let stat
  try {
    stat = readStat(pid)
  } catch {
    throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`, 'Give the pid of a running process (see `ps`).')
  }
  if (stat.isKernelThread) throw new UnsupportedError('KERNEL_THREAD', `process ${pid} (${stat.comm}) is a kernel thread`, 'Only user-space processes can be checkpointed.')
  if ((stat.state === 'Z' || stat.state === 'X') && stat.numThreads > 1) {
    throw new UnsupportedError('LEADER_EXITED', `the main thread of process ${pid} (${stat.comm}) has exited while ${stat.numThreads - 1} other thread(s) run on`,
      'cxlfork restores a thread group through its main thread; checkpoint a process whose main thread is alive.')
  }
  if (stat.state === 'Z' || stat.state === 'X') throw new UnsupportedError('PROCESS_ZOMBIE', `process ${pid} (${stat.comm}) is a zombie: it has exited and waits to be reaped`, 'A zombie has no memory left to checkpoint.')
  let status
  try {
    status = readStatus(pid)
  } catch {
    throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid} (it exited while it was being checked)`, 'Give the pid of a running process (see `ps`).')
  }
  // A process of a PID namespace below ours (a clone cxlfork built in one, a container's process) has
  // other pids inside it than here: the snapshot's and its threads' ids would not match (wait4 ECHILD).
  ownPidNamespaceDepth ??= readStatus(process.pid).nspid.length
  if (status.nspid.length > ownPidNamespaceDepth) {
    throw new UnsupportedError('OTHER_PID_NAMESPACE', `process ${pid} (${stat.comm}) runs in a PID namespace below cxlfork's (its pid there is ${status.nspid.at(-1)})`,
      'cxlfork checkpoints processes of its own PID namespace: checkpoint the original process, or a clone restored with --pidns host (single-threaded clones only), or run cxlfork inside that namespace.')
  }
  const caller = getuid()
  if (caller !== 0 && caller !== status.uid[0]) {
    throw new PermissionError('NOT_PERMITTED', `process ${pid} belongs to uid ${status.uid[0]}; you are uid ${caller}`, 'Checkpoint your own processes, or run as root.')
  }
  // The kernel lets a user trace only a process whose real, effective and saved ids are all theirs: a
  // set-user-ID program they started (passwd, su) is another user's process, refused here by name, not
  // later as an unreadable /proc file.
  const otherUid = status.uid.slice(0, 3).find((uid) => uid !== caller)
  if (caller !== 0 && otherUid !== undefined) {
    throw new PermissionError('NOT_PERMITTED', `process ${pid} runs with uid ${otherUid} (real/effective/saved uids ${status.uid.slice(0, 3).join('/')}); you are uid ${caller}`,
      'A set-user-ID process (or one that changed its ids) can be checkpointed only by root.')
  }
  // Without CAP_CHECKPOINT_RESTORE the capture would fail on map_files after the target's downtime.
  requireMapFilesAccess(pid)
  refuseUnsupportedCredentials(pid)
  // A vfork() child runs on its parent's memory until it execs (clone(CLONE_VM) without CLONE_THREAD too):
  // neither one can be captured as a process of its own, and stopping the parent waits for the child.
  if (stat.ppid > 1 && syscallRaw(SYS.kcmp, pid, stat.ppid, KCMP_VM, 0, 0) === 0n) {
    throw new UnsupportedError('SHARED_ADDRESS_SPACE', `process ${pid} (${stat.comm}) shares its address space with its parent ${stat.ppid} (a vfork() child that has not called exec yet, or clone(CLONE_VM) without CLONE_THREAD)`,
      'A vfork child execs or exits within moments: checkpoint again once it has.')
  }
  const children = options.children === 'allow' ? [] : childrenOf(pid)
  const vforked = children.find((child) => syscallRaw(SYS.kcmp, pid, child, KCMP_VM, 0, 0) === 0n)
  if (vforked !== undefined) {
    throw new UnsupportedError('SHARED_ADDRESS_SPACE', `process ${pid} (${stat.comm}) shares its address space with its child ${vforked} (a vfork() child that has not called exec yet, or clone(CLONE_VM) without CLONE_THREAD)`,
      'A vfork child execs or exits within moments: checkpoint again once it has.')
  }
  if (children.length > 0) {
    throw new UnsupportedError('HAS_CHILDREN', `process ${pid} (${stat.comm}) has ${children.length} child process(es) (${children.slice(0, 5).join(', ')}); without --tree cxlfork checkpoints a single process`,
      'Checkpoint the whole tree with --tree, or a process without children (a zombie child counts until it is reaped).')
  }
  const fds: PreflightResult['fds'] = []
  // Every fd that is refused, so that one refusal names them all (mariadbd holds a lock and an io_uring: fixing one would only show the next).
  const refused: UnsupportedError[] = []
  for (const info of listFds(pid)) {
    const kind = classifyFd(info, pid, options.tcpClose ?? false)
    if (typeof kind === 'object') {
      // An interactive shell (bash keeps its terminal as fd 255), less and top hold the terminal above stderr: closing it is not the user's to do.
      const hint = kind.unsupported.startsWith('an established TCP connection')
        ? 'Pass --tcp-close: the clone gets the connection closed (its peer outside cannot follow it to the clone), or checkpoint while no connection is open.'
        : kind.unsupported.startsWith('a terminal')
        ? 'A clone gets a terminal only on fds 0-2 (this command\'s, with restore --wait). An interactive shell (bash keeps its terminal as fd 255) or a full-screen program holds one above them: checkpoint the program the shell runs instead (started with exec, or by bash -c / a script).'
        : 'cxlfork restores regular files, directories, /dev/null-style devices, pipes, FIFOs, eventfds, epoll instances, timerfds, signalfds, TCP listeners and unconnected TCP sockets, UDP sockets, Unix sockets, and a tty on fds 0-2. Close the fd before checkpointing.'
      refused.push(new UnsupportedError('UNSUPPORTED_FD', `fd ${info.fd} of process ${pid} is ${kind.unsupported}`, hint))
      continue
    }
    if (refusedLocks(info, options.carryLocks ?? false)) refused.push(fileLockError(pid, stat.comm, info))
    fds.push({info, kind})
  }
  if (refused.length > 0) {
    const first = refused[0]!
    const more = refused.slice(1)
    if (more.length === 0) throw first
    const short = (error: UnsupportedError): string => error.message.replace(` of process ${pid} (${stat.comm})`, '').replace(` of process ${pid}`, '')
    throw new UnsupportedError(first.code as 'UNSUPPORTED_FD', `${first.message}; and ${more.length} more: ${more.map(short).join('; ')}`, first.hint)
  }
  const lone = loneUnixEnds(pid, fds)
  if (lone.length > 0 && options.children !== 'allow') refuseLoneUnixEnd(pid, lone[0]!, false)
  // A timer that cannot be re-created is refused now, before the target is stopped (read again, with its time left, then).
  listPosixTimers(pid, stat.comm, listTids(pid))
  refuseSysvIpc(pid, stat.comm)
  const loneEnds = lone.length > 0 ? {loneUnixEnds: lone} : {}
  const carryLocks = options.carryLocks ?? false
  if (options.memory === false) return {uid: status.uid[0], inTree: options.children === 'allow', tcpClose: options.tcpClose ?? false, carryLocks, fds, ...loneEnds, smaps: null}
  const smaps = readSmaps(pid)
  refuseUnsupportedMemory(pid, smaps)
  return {uid: status.uid[0], inTree: options.children === 'allow', tcpClose: options.tcpClose ?? false, carryLocks, fds, ...loneEnds, smaps}
}

/**
 * A clone's file descriptors, each at its own number with its flags:
 * regular files, directories and devices reopened by path (never created or
 * truncated), pipes recreated with their size and buffered bytes (both ends
 * when both were open, else the clone's other end is closed: EOF for a
 * reader, EPIPE for a writer), eventfds with their counter, epoll instances
 * with their whole interest list, and fds that shared one open file
 * description (dup, inheritance) sharing one again.
 *
 * Every object is created at the lowest free fd and moved at once above the
 * highest fd the image uses ("staged"), so creating one never lands on a
 * number another still needs; it is then dup3'ed to its own number. Epoll
 * registrations come last, when every target fd is in place.
 */
import {dirname} from 'node:path'
import {chmodSync, lchownSync, lstatSync, readdirSync, rmSync, statSync} from 'node:fs'

import {type FdImage, type ProcessImage, timerfdFirstExpiry} from '../image/process-image.js'
import {ConflictError, NotFoundError, SyscallError, UnsupportedError} from '../errors.js'
import {O, SYS} from '../sys/syscall.js'
import {AF, describeAddress, portHolders, unixAddressLive, unixName} from '../sys/sockets.js'
import {type Tracee} from '../inject/tracee.js'
import {type Injector} from './injector.js'
import {type SharedMemoryBuilder} from './shared-memory.js'
import {timerSpec} from './timers.js'

const O_ACCMODE = 3

const F_DUPFD_CLOEXEC = 1030
const F_SETFD = 2
const F_SETFL = 4
const F_SETPIPE_SZ = 1031
const EFD_SEMAPHORE = 1
/** _IOW('T', 0, u64): sets a timerfd's count of unread expirations (CONFIG_CHECKPOINT_RESTORE). */
const TFD_IOC_SET_TICKS = 0x40085400
const EPOLL_CTL_ADD = 1
/** Largest piece of pipe data written per call (it goes through the restore's scratch area). */
const WRITE_PIECE = 256 * 1024

/** In a tree: the host pid of a member known by its original pid (for /proc paths). */
export type HostPidOf = (originalPid: number) => number

/**
 * Socketpairs split across members of a tree (nginx's master and its workers,
 * multiprocessing.Pipe): the member built first creates the pair and keeps
 * the other end at a spare fd, which the member holding it takes with
 * pidfd_getfd; once every member is built, the spares are closed.
 */
export class CrossMemberPairs {
  private readonly spares = new Map<string, {tracee: Tracee; fd: number}>()

  /** Member `pid` (its original pid) created the pair of its fd `fd`, keeping the other end at `spare`. */
  keep(pid: number, fd: number, tracee: Tracee, spare: number): void {
    this.spares.set(`${pid}:${fd}`, {tracee, fd: spare})
  }

  spareFor(pid: number, fd: number): number | undefined {
    return this.spares.get(`${pid}:${fd}`)?.fd
  }

  /** Every member holds its ends now: the creators let go of the spares. */
  closeSpares(): void {
    for (const {tracee, fd} of this.spares.values()) tracee.syscall(SYS.close, fd)
    this.spares.clear()
  }
}

export function restoreFds(inject: Injector, image: ProcessImage, hostPidOf?: HostPidOf, shared?: SharedMemoryBuilder, crossPairs?: CrossMemberPairs): void {
  const fds = [...image.fds].sort((a, b) => a.fd - b.fd)
  const base = Math.max(3, ...fds.map((fd) => fd.fd + 1))
  const staged: number[] = []
  /** Move a fresh fd above every number the image uses; returns the new number. */
  const stage = (fd: number): number => {
    const high = Number(inject.call('fcntl(F_DUPFD_CLOEXEC)', SYS.fcntl, fd, F_DUPFD_CLOEXEC, base))
    inject.call('close', SYS.close, fd)
    staged.push(high)
    return high
  }
  const place = (from: number, fd: FdImage): void => {
    inject.call(`dup3(fd ${fd.fd})`, SYS.dup3, from, fd.fd, fd.cloexec ? O.CLOEXEC : 0)
  }
  const pipes = new Map<string, {read: number; write: number}>()
  const pairs = new Map<number, number>() // fd of a pair's second end -> its staged end
  const pipeFor = (fd: FdImage): {read: number; write: number} => {
    const known = pipes.get(fd.pipe!.id)
    if (known) return known
    const pair = inject.reserve(8)
    inject.call('pipe2', SYS.pipe2, pair, O.CLOEXEC)
    const view = new DataView(inject.tracee.readMemory(pair, 8).buffer)
    const ends = {read: stage(view.getInt32(0, true)), write: stage(view.getInt32(4, true))}
    // A size the kernel refuses (above fs.pipe-max-size without CAP_SYS_RESOURCE) leaves the default.
    inject.tracee.syscall(SYS.fcntl, ends.write, F_SETPIPE_SZ, fd.pipe!.size)
    pipes.set(fd.pipe!.id, ends)
    return ends
  }
  for (const fd of fds) {
    if (fd.sharedWith !== undefined) continue // after its group's first fd
    if (fd.sharedFrom && hostPidOf) {
      place(handOver(inject, fd, hostPidOf, stage, crossPairs), fd)
      if (!fd.sharedFrom.description) inject.call('fcntl(F_SETFL)', SYS.fcntl, fd.fd, F_SETFL, fd.flags & (O.NONBLOCK | O.APPEND))
      // The other end of a pair another member created: this end's own options.
      if (!fd.sharedFrom.description && fd.socket) setOptions(inject, fd.fd, fd.socket.options)
      inject.reset()
      continue
    }
    if (fd.kind === 'pipe' && !fd.pipe && fd.fd > 2) {
      // A pipe above stdio whose state (size, ends, bytes) the image does not carry. Never drop an fd silently.
      throw new UnsupportedError('CRIU_FD_TYPE', `fd ${fd.fd} is a pipe whose state this image does not carry`,
        'Dump or checkpoint the process again: cxlfork records every pipe above stdio with its bytes.')
    }
    if ((fd.kind === 'tty' || fd.kind === 'pipe') && !fd.pipe) continue // fds 0-2 already point where BuildOptions.stdio says
    if (fd.pipe) {
      const ends = pipeFor(fd)
      place(fd.pipe.end === 'read' ? ends.read : ends.write, fd)
      if (fd.pipe.data && fd.pipe.data.length > 0) writeAll(inject, ends.write, fd.pipe.data)
    } else if (fd.fifo) {
      place(openFifo(inject, fd, stage), fd)
    } else if (fd.inotify) {
      place(createInotify(inject, fd, stage), fd)
    } else if (fd.ghost) {
      place(createGhost(inject, fd, stage), fd)
    } else if (fd.eventfd) {
      const flags = O.CLOEXEC | (fd.flags & O.NONBLOCK) | (fd.eventfd.semaphore ? EFD_SEMAPHORE : 0)
      const created = stage(Number(inject.call('eventfd2', SYS.eventfd2, 0, flags)))
      if (fd.eventfd.count > 0n) {
        const word = new Uint8Array(8)
        new DataView(word.buffer).setBigUint64(0, fd.eventfd.count, true)
        inject.call('write(eventfd)', SYS.write, created, inject.put(word), 8)
      }
      place(created, fd)
    } else if (fd.epoll) {
      place(stage(Number(inject.call('epoll_create1', SYS.epoll_create1, O.CLOEXEC))), fd)
    } else if (fd.timerfd) {
      const timer = stage(Number(inject.call('timerfd_create', SYS.timerfd_create, fd.timerfd.clockid, O.CLOEXEC | (fd.flags & O.NONBLOCK))))
      const first = timerfdFirstExpiry(fd.timerfd)
      if (first[0] !== 0 || first[1] !== 0) {
        // Relative to now: what was left of it at the checkpoint, then its interval.
        inject.call('timerfd_settime', SYS.timerfd_settime, timer, 0, inject.put(timerSpec(fd.timerfd.interval, first)), 0)
      }
      if ((fd.timerfd.ticks ?? 0) > 0) {
        // The expirations the program had not read yet: read(2) returns them at once, as it would have.
        const count = new Uint8Array(8)
        new DataView(count.buffer).setBigUint64(0, BigInt(fd.timerfd.ticks!), true)
        inject.call('ioctl(TFD_IOC_SET_TICKS)', SYS.ioctl, timer, TFD_IOC_SET_TICKS, inject.put(count))
      }
      place(timer, fd)
    } else if (fd.signalfd) {
      const mask = new Uint8Array(8)
      new DataView(mask.buffer).setBigUint64(0, fd.signalfd.mask, true)
      place(stage(Number(inject.call('signalfd4', SYS.signalfd4, -1, inject.put(mask), 8, O.CLOEXEC | (fd.flags & O.NONBLOCK)))), fd)
    } else if (fd.socket?.pair?.peerClosed) {
      // Its peer was closed: a new pair whose other end, once it has sent what waited here, is closed too.
      const {mine, theirs} = createPair(inject, fd, stage)
      inject.call('close(peer)', SYS.close, theirs)
      staged.splice(staged.indexOf(theirs), 1)
      place(mine, fd)
      if ((fd.flags & O.NONBLOCK) !== 0) inject.call('fcntl(F_SETFL)', SYS.fcntl, fd.fd, F_SETFL, O.NONBLOCK)
    } else if (fd.socket?.pair && fd.socket.pair.peerFd < 0) {
      if (!crossPairs) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${fd.fd} is a Unix socketpair end whose other end is in another process of a tree, and this restore builds one process`, 'Restore the checkpoint as a whole.')
      const {mine, theirs} = createPair(inject, fd, stage)
      // The spare stays open (not staged) until the member holding the other end has taken it.
      staged.splice(staged.indexOf(theirs), 1)
      crossPairs.keep(image.task.pid, fd.fd, inject.tracee, theirs)
      place(mine, fd)
      if ((fd.flags & O.NONBLOCK) !== 0) inject.call('fcntl(F_SETFL)', SYS.fcntl, fd.fd, F_SETFL, O.NONBLOCK)
    } else if (fd.socket?.pair) {
      place(pairEnd(inject, fd, fds, pairs, stage), fd)
      if ((fd.flags & O.NONBLOCK) !== 0) inject.call('fcntl(F_SETFL)', SYS.fcntl, fd.fd, F_SETFL, O.NONBLOCK)
    } else if (fd.socket) {
      place(createSocket(inject, fd, stage), fd)
    } else if (fd.kind === 'shmem') {
      // A memfd or an unlinked tmpfs file: the restored shared object, at the offset the original had.
      if (!shared || fd.sharedId === undefined) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${fd.fd} is a shared memory object this restore has no contents for`, 'Take a new checkpoint with `cxlfork checkpoint`.')
      const opened = stage(shared.openObject(inject, fd.sharedId, fd.flags & O_ACCMODE))
      place(opened, fd)
      shared.placedFd(fd.sharedId, inject.tracee.pid, fd.fd)
      if (fd.offset > 0n) inject.call('lseek', SYS.lseek, fd.fd, fd.offset, 0)
      if ((fd.flags & (O.APPEND | O.NONBLOCK)) !== 0) inject.call('fcntl(F_SETFL)', SYS.fcntl, fd.fd, F_SETFL, fd.flags & (O.NONBLOCK | O.APPEND))
    } else {
      // Reopen without creating or truncating: the file must be the one the checkpoint saw.
      const flags = fd.flags & ~(O.CREAT | O.TRUNC | 0o200 /* O_EXCL */)
      const path = fd.fileIndex === undefined ? fd.path : image.files[fd.fileIndex]!.path
      const opened = inject.open(path, flags)
      if (opened !== fd.fd) {
        place(opened, fd)
        inject.call('close', SYS.close, opened)
      } else if (!fd.cloexec) {
        inject.call('fcntl(F_SETFD)', SYS.fcntl, fd.fd, F_SETFD, 0)
      }
      if ((fd.flags & O.APPEND) === 0 && fd.offset > 0n && fd.kind !== 'chardev') inject.call('lseek', SYS.lseek, fd.fd, fd.offset, 0)
    }
    // Status flags live on the open file description: pipes and epoll get theirs here (eventfd2 took them).
    if ((fd.pipe || fd.epoll) && (fd.flags & O.NONBLOCK) !== 0) inject.call('fcntl(F_SETFL)', SYS.fcntl, fd.fd, F_SETFL, fd.flags & (O.NONBLOCK | O.APPEND))
    inject.reset()
  }
  for (const fd of fds) {
    // fds 0-2 on a terminal are one open file description, dup'd: each keeps what BuildOptions.stdio gave it
    // (stdin's /dev/null is read-only: dup'd onto stdout, every write failed with EBADF).
    if (fd.sharedWith !== undefined && !isOutsideStdio(fd)) inject.call(`dup3(fd ${fd.fd} = fd ${fd.sharedWith})`, SYS.dup3, fd.sharedWith, fd.fd, fd.cloexec ? O.CLOEXEC : 0)
  }
  for (const fd of fds) {
    if (!fd.epoll || fd.sharedWith !== undefined || (fd.sharedFrom && hostPidOf)) continue // an inherited epoll came with its registrations
    for (const target of fd.epoll.targets) {
      const event = new Uint8Array(12) // struct epoll_event is packed on x86_64
      const view = new DataView(event.buffer)
      view.setUint32(0, target.events >>> 0, true)
      view.setBigUint64(4, target.data, true)
      inject.call(`epoll_ctl(fd ${fd.fd}, ADD, ${target.fd})`, SYS.epoll_ctl, fd.fd, EPOLL_CTL_ADD, target.fd, inject.put(event))
      inject.reset()
    }
  }
  for (const high of staged) inject.call('close', SYS.close, high)
}

/** The integer socket options the original had, set on `fd`. */
function setOptions(inject: Injector, fd: number, options: NonNullable<FdImage['socket']>['options']): void {
  for (const option of options) {
    const value = new Uint8Array(4)
    new DataView(value.buffer).setInt32(0, option.value, true)
    inject.call(`setsockopt(${option.level}, ${option.name})`, SYS.setsockopt, fd, option.level, option.name, inject.put(value), 4)
  }
}

/** listen(2) backlog when the checkpoint does not say (older ones): the kernel caps it at the namespace's net.core.somaxconn. */
const LISTEN_BACKLOG = 4096
const EADDRINUSE = 98

/** A socket as the original had it: family, type, options, bound to its address, listening if it did. */
function createSocket(inject: Injector, fd: FdImage, stage: (fd: number) => number): number {
  const socket = fd.socket!
  const flags = O.CLOEXEC | (fd.flags & O.NONBLOCK) // SOCK_CLOEXEC, SOCK_NONBLOCK share O_'s values
  const created = stage(Number(inject.call('socket', SYS.socket, socket.family, socket.type | flags, socket.protocol)))
  setOptions(inject, created, socket.options)
  // A connection taken with --tcp-close stays a fresh, unconnected socket: reads fail, epoll reports a hang-up.
  if (socket.closed) return created
  if (socket.family === AF.UNIX) {
    bindUnix(inject, created, fd)
    if (socket.listening) inject.call('listen', SYS.listen, created, socket.backlog ?? LISTEN_BACKLOG)
    if (socket.peer) connectAgain(inject, created, fd)
    return created
  }
  const port = socket.local.length >= 4 ? new DataView(socket.local.buffer, socket.local.byteOffset).getUint16(2, false) : 0
  if (port !== 0) {
    const r = inject.tracee.syscall(SYS.bind, created, inject.put(socket.local), socket.local.length)
    if (r === -BigInt(EADDRINUSE)) {
      const holders = portHolders(port, socket.type)
      const by = holders.length > 0 ? `held by ${holders.map((h) => `process ${h.pid} (${h.comm})`).join(', ')}` : 'by the original, most likely'
      throw new ConflictError('ADDRESS_IN_USE', `fd ${fd.fd} must ${socket.listening ? 'listen on' : 'be bound to'} ${describeAddress(socket.local)}, which is in use here (${by})`,
        'Restore with --netns new (a network namespace of the clone\'s own), stop the original first (checkpoint --kill), or let the program set SO_REUSEPORT to share the port.')
    }
    if (r < 0n) throw new SyscallError(`bind(${describeAddress(socket.local)}) in the new process`, Number(-r))
  }
  if (socket.listening) inject.call('listen', SYS.listen, created, socket.backlog ?? LISTEN_BACKLOG)
  if (socket.peer) connectAgain(inject, created, fd)
  return created
}

/** A datagram socket's default destination, set again (no handshake: it fails only where the address cannot be reached). */
function connectAgain(inject: Injector, created: number, fd: FdImage): void {
  const peer = fd.socket!.peer!
  const r = inject.tracee.syscall(SYS.connect, created, inject.put(peer), peer.length)
  if (r < 0n) {
    throw new NotFoundError('PEER_UNREACHABLE', `fd ${fd.fd} was connected to ${describeAddress(peer)}, which cannot be reached here (errno ${-r})`,
      'Start what listens there first (for a Unix name), or restore where the address is reachable (a --netns new clone reaches only its own loopback).')
  }
}

/**
 * A Unix listener or datagram socket at its name. A path left by a process
 * that is gone (a socket file whose connect is refused) is removed first,
 * as a restarted daemon does; one a live socket holds is ADDRESS_IN_USE. The
 * new file gets the original's mode and owner.
 */
function bindUnix(inject: Injector, created: number, fd: FdImage): void {
  const socket = fd.socket!
  const name = unixName(socket.local)
  if (name === '') return
  const bind = (): bigint => inject.tracee.syscall(SYS.bind, created, inject.put(socket.local), socket.local.length)
  let r = bind()
  if (r === -BigInt(EADDRINUSE) && name.startsWith('/') && !unixAddressLive(socket.local, socket.type)) {
    let stale = false
    try {
      stale = lstatSync(name).isSocket()
    } catch {
      stale = false
    }
    if (stale) {
      rmSync(name, {force: true})
      r = bind()
    }
  }
  if (r === -BigInt(EADDRINUSE)) {
    throw new ConflictError('ADDRESS_IN_USE', `fd ${fd.fd} must be a Unix socket at ${name}, which is in use here (by the original, most likely)`,
      name.startsWith('@') ? 'Restore with --netns new (abstract names belong to a network namespace), or stop the original first (checkpoint --kill).'
        : 'A path belongs to the file system, whatever the network namespace: stop the original first (checkpoint --kill), or remove what holds the path.')
  }
  if (r < 0n) throw new SyscallError(`bind(${name}) in the new process`, Number(-r))
  if (socket.file && name.startsWith('/')) {
    // Ours, just made (a root-owned file in the original's directory); never through a link planted since.
    if (lstatSync(name).isSocket()) {
      chmodSync(name, socket.file.mode)
      lchownSync(name, socket.file.uid, socket.file.gid)
    }
  }
}

/**
 * The object an earlier member of the tree holds (already built, stopped):
 * the same open file description through pidfd_getfd (ids inside the clone's
 * PID namespace are the original ones), or the other end of the same pipe
 * opened through /proc (which names processes as the host sees them).
 */
function handOver(inject: Injector, fd: FdImage, hostPidOf: HostPidOf, stage: (fd: number) => number, crossPairs?: CrossMemberPairs): number {
  const from = fd.sharedFrom!
  if (fd.socket?.pair && !from.description) {
    // The other end of a socketpair the earlier member created: the spare it kept for us.
    const spare = crossPairs?.spareFor(from.pid, from.fd)
    if (spare === undefined) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${fd.fd} is a Unix socketpair end whose other end (fd ${from.fd} of member ${from.pid}) was not created`, 'Take a new checkpoint of the tree.')
    const pidfd = Number(inject.call(`pidfd_open(${from.pid})`, SYS.pidfd_open, from.pid, 0))
    try {
      return stage(Number(inject.call(`pidfd_getfd(${from.pid}, ${spare})`, SYS.pidfd_getfd, pidfd, spare, 0)))
    } finally {
      inject.call('close', SYS.close, pidfd)
    }
  }
  if (from.description || from.sameEnd) {
    const pidfd = Number(inject.call(`pidfd_open(${from.pid})`, SYS.pidfd_open, from.pid, 0))
    try {
      return stage(Number(inject.call(`pidfd_getfd(${from.pid}, ${from.fd})`, SYS.pidfd_getfd, pidfd, from.fd, 0)))
    } finally {
      inject.call('close', SYS.close, pidfd)
    }
  }
  // The other end: a FIFO open, non-blocking so that a write end never waits for a reader (the earlier member holds one).
  const access = fd.pipe?.end === 'write' ? O.WRONLY : O.RDONLY
  return stage(inject.open(`/proc/${hostPidOf(from.pid)}/fd/${from.fd}`, access | O.NONBLOCK))
}

/**
 * One end of a Unix socketpair: the first end met creates the pair (both
 * ends staged, each end's queued bytes written by its peer), the second takes
 * the end kept for it.
 */
function pairEnd(inject: Injector, fd: FdImage, fds: readonly FdImage[], pairs: Map<number, number>, stage: (fd: number) => number): number {
  const kept = pairs.get(fd.fd)
  if (kept !== undefined) return kept
  const peer = fds.find((other) => other.fd === fd.socket!.pair!.peerFd)
  const {mine, theirs} = createPair(inject, fd, stage, peer?.socket?.pair)
  pairs.set(fd.socket!.pair!.peerFd, theirs)
  return mine
}

/**
 * A socketpair for `fd` (both ends staged) with this end's options; what was
 * queued for each end to read, its peer sends again. The other end's queue is
 * in its own record (`peer`), or in this one when another member holds it.
 */
function createPair(inject: Injector, fd: FdImage, stage: (fd: number) => number, peer?: NonNullable<FdImage['socket']>['pair']): {mine: number; theirs: number} {
  const socket = fd.socket!
  const slot = inject.reserve(8)
  inject.call('socketpair(AF_UNIX)', SYS.socketpair, socket.family, socket.type | O.CLOEXEC, 0, slot)
  const view = new DataView(inject.tracee.readMemory(slot, 8).buffer)
  const mine = stage(view.getInt32(0, true))
  const theirs = stage(view.getInt32(4, true))
  setOptions(inject, mine, socket.options)
  const pair = socket.pair!
  if (pair.queued) writeAll(inject, theirs, pair.queued)
  const peerQueued = peer?.queued ?? pair.peerQueued
  if (peerQueued) writeAll(inject, mine, peerQueued)
  for (const message of pair.messages ?? []) sendMessage(inject, theirs, message)
  for (const message of peer?.messages ?? pair.peerMessages ?? []) sendMessage(inject, mine, message)
  return {mine, theirs}
}

/**
 * A FIFO, opened again at its path (it must be one there: NOT_A_FIFO or
 * BACKING_FILE_MISSING otherwise). A FIFO is a named object like a file: the
 * clone shares it with whoever holds it. Its checkpointed bytes are written
 * back only when no other process has it open, else they are the holders' (a
 * clone beside its original would duplicate them). A read-write open of our
 * own keeps the open from blocking (or failing with ENXIO for a writer)
 * without the other end, and writes the bytes.
 */
function openFifo(inject: Injector, fd: FdImage, stage: (fd: number) => number): number {
  let st
  try {
    st = statSync(fd.path)
  } catch {
    throw new NotFoundError('BACKING_FILE_MISSING', `${fd.path}, the FIFO the checkpoint has open as fd ${fd.fd}, does not exist on this host`, 'Create it again (mkfifo), then restore.')
  }
  if (!st.isFIFO()) throw new UnsupportedError('BACKING_FILE_CHANGED', `${fd.path}, which fd ${fd.fd} had open as a FIFO, is not a FIFO now`, 'Put the FIFO back at its path (mkfifo), then restore.')
  const refill = fd.fifo!.data !== undefined && fd.fifo!.data.length > 0 && !heldByAnyone(st.dev, st.ino)
  const keep = inject.open(fd.path, O.RDWR | O.NONBLOCK)
  try {
    const opened = stage(inject.open(fd.path, (fd.flags & ~(O.CREAT | O.TRUNC)) | O.NONBLOCK))
    if ((fd.flags & O.NONBLOCK) === 0) inject.call('fcntl(F_SETFL)', SYS.fcntl, opened, F_SETFL, fd.flags & O.APPEND)
    inject.tracee.syscall(SYS.fcntl, keep, F_SETPIPE_SZ, fd.fifo!.size)
    if (refill) writeAll(inject, keep, fd.fifo!.data!)
    return opened
  } finally {
    inject.call('close', SYS.close, keep)
  }
}

const O_TMPFILE = 0o20200000
const SYS_FCHMOD = 91
const SYS_FCHOWN = 93
const SYS_LINKAT = 265
const SYS_UNLINK = 87
const AT_FDCWD = -100
const AT_SYMLINK_FOLLOW = 0x400

/**
 * A deleted file, made again as one: an unnamed file (O_TMPFILE) in the
 * directory it was deleted from (else /tmp, else /dev/shm) with its contents,
 * mode and owner, opened with the original's flags and offset. It is opened
 * through a link at its old path, unlinked at once, so that /proc names it as
 * the program saw it ("PATH (deleted)", as CRIU's restore makes it too); if
 * something else holds that path now, through /proc (named "/DIR/#INODE").
 */
function createGhost(inject: Injector, fd: FdImage, stage: (fd: number) => number): number {
  const ghost = fd.ghost!
  let tmp = -1n
  for (const dir of [dirname(ghost.path), '/tmp', '/dev/shm']) {
    tmp = inject.tracee.syscall(SYS.open, inject.putString(dir), O_TMPFILE | O.RDWR | O.CLOEXEC, ghost.mode & 0o777)
    if (tmp >= 0n) break
  }
  if (tmp < 0n) throw new SyscallError(`open(O_TMPFILE) for the deleted file ${ghost.path} in the new process`, Number(-tmp))
  try {
    writeAll(inject, Number(tmp), ghost.data)
    inject.tracee.syscall(SYS_FCHMOD, tmp, ghost.mode)
    inject.tracee.syscall(SYS_FCHOWN, tmp, ghost.uid, ghost.gid) // a restorer that may not: the restorer's
    const flags = fd.flags & ~(O.CREAT | O.TRUNC | 0o200 /* O_EXCL */)
    const named = inject.tracee.syscall(SYS_LINKAT, AT_FDCWD, inject.putString(`/proc/self/fd/${tmp}`), AT_FDCWD, inject.putString(ghost.path), AT_SYMLINK_FOLLOW) === 0n
    let opened: number
    try {
      // Else through the /proc link, which O_NOFOLLOW (Python's mkstemp sets it) would refuse; it only matters at open time.
      opened = stage(named ? inject.open(ghost.path, flags) : inject.open(`/proc/self/fd/${tmp}`, flags & ~0o400000 /* O_NOFOLLOW */))
    } finally {
      if (named) inject.call(`unlink(${ghost.path})`, SYS_UNLINK, inject.putString(ghost.path))
    }
    // Appends go to the end whatever the offset, but reads start at it.
    if (fd.offset > 0n) inject.call('lseek', SYS.lseek, opened, fd.offset, 0)
    return opened
  } finally {
    inject.call('close', SYS.close, tmp)
  }
}

const SYS_INOTIFY_INIT1 = 294
const SYS_INOTIFY_ADD_WATCH = 254
const SYS_INOTIFY_RM_WATCH = 255
const IN_ACCESS = 1
/** Watch descriptors skipped at most to reach the one a watch had (the kernel hands them out in turn). */
const MAX_WD_SKIP = 65_536

/**
 * An inotify instance with its watches, each at the watch descriptor the
 * program knows it by. The kernel hands out wds in turn from 1, so a gap is
 * skipped by adding and removing a watch on "/"; the IN_IGNORED events those
 * removals queue are read away before the flags are set as they were.
 */
function createInotify(inject: Injector, fd: FdImage, stage: (fd: number) => number): number {
  const created = stage(Number(inject.call('inotify_init1', SYS_INOTIFY_INIT1, O.CLOEXEC | O.NONBLOCK)))
  const root = inject.putString('/')
  let next = 1
  for (const watch of [...fd.inotify!.watches].sort((a, b) => a.wd - b.wd)) {
    if (watch.wd - next > MAX_WD_SKIP) throw new UnsupportedError('UNSUPPORTED_FD', `inotify fd ${fd.fd} has watch descriptor ${watch.wd}, more than ${MAX_WD_SKIP} past the one before`, 'Take the checkpoint after the program re-creates its inotify instance.')
    while (next < watch.wd) {
      const dummy = inject.call('inotify_add_watch(/)', SYS_INOTIFY_ADD_WATCH, created, root, IN_ACCESS)
      inject.call('inotify_rm_watch', SYS_INOTIFY_RM_WATCH, created, dummy)
      next = Number(dummy) + 1
    }
    const path = inject.putString(watch.path)
    const r = inject.tracee.syscall(SYS_INOTIFY_ADD_WATCH, created, path, watch.mask)
    if (r === -2n) throw new NotFoundError('BACKING_FILE_MISSING', `${watch.path}, which inotify fd ${fd.fd} watches (watch ${watch.wd}), does not exist on this host`, 'Create it again, then restore.')
    if (r < 0n) throw new SyscallError(`inotify_add_watch(${watch.path}) in the new process`, Number(-r))
    if (Number(r) !== watch.wd) throw new SyscallError(`inotify_add_watch(${watch.path}) in the new process`, 17, `watch descriptor ${r}, not ${watch.wd} (another watch on the same file?)`)
    next = Number(r) + 1
  }
  // The IN_IGNORED events of the skipped watches.
  const buffer = inject.reserve(4096)
  let drained = 1n
  while (drained > 0n) drained = inject.tracee.syscall(SYS.read, created, buffer, 4096)
  if ((fd.flags & O.NONBLOCK) === 0) inject.call('fcntl(F_SETFL)', SYS.fcntl, created, F_SETFL, 0)
  return created
}

/** Whether any process has the file `dev:ino` open (a scan of /proc/PID/fd: what fuser does). */
function heldByAnyone(dev: number, ino: number): boolean {
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue
    let fds: string[]
    try {
      fds = readdirSync(`/proc/${pid}/fd`)
    } catch {
      continue
    }
    for (const fd of fds) {
      try {
        const st = statSync(`/proc/${pid}/fd/${fd}`)
        if (st.ino === ino && st.dev === dev) return true
      } catch {
        // closed meanwhile
      }
    }
  }
  return false
}

/** One datagram, whole (a short send would split it: refused). */
function sendMessage(inject: Injector, fd: number, message: Uint8Array): void {
  const n = Number(inject.call('send(socketpair)', SYS.sendto, fd, inject.put(message), message.length, 0, 0, 0))
  inject.reset()
  if (n !== message.length) throw new SyscallError('send(socketpair) in the new process', 5, `${n} of ${message.length} bytes of a queued message`)
}

function writeAll(inject: Injector, fd: number, data: Uint8Array): void {
  for (let done = 0; done < data.length;) {
    const piece = data.subarray(done, done + WRITE_PIECE)
    const n = Number(inject.call('write(pipe)', SYS.write, fd, inject.put(piece), piece.length))
    inject.reset()
    done += n
  }
}

/** fds 0-2 on a terminal or a pipe to outside the checkpoint: not carried, the clone's come from BuildOptions.stdio. */
export function isOutsideStdio(fd: FdImage): boolean {
  return fd.fd <= 2 && (fd.kind === 'tty' || fd.kind === 'pipe') && !fd.pipe
}

/** A clone's fd 0-2 left on /dev/null where the original had a terminal or a pipe to a process outside the checkpoint. */
export interface StdioOnDevNull {
  /** The member's pid in the checkpoint (the original's). */
  originalPid: number
  fd: number
  was: 'tty' | 'pipe'
  /** As /proc/PID/fd showed it in the original. */
  path: string
}

/**
 * Which fds 0-2 of the members end on /dev/null: a terminal or a pipe to outside is not
 * carried (BuildOptions.stdio says what the clone gets), and a program reading its stdin then
 * sees end of input at once. `stdio`: our fds given for 0-2 (null: /dev/null).
 */
export function stdioOnDevNull(members: readonly {pid: number; image?: ProcessImage}[], stdio: readonly (number | null)[]): StdioOnDevNull[] {
  return members.flatMap((member) => (member.image?.fds ?? [])
    .filter((fd) => isOutsideStdio(fd) && stdio[fd.fd] === null && fd.sharedFrom === undefined)
    .map((fd) => ({originalPid: member.pid, fd: fd.fd, was: fd.kind as 'tty' | 'pipe', path: fd.path})))
}

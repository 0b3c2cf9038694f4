/**
 * What the kernel keeps behind the descriptors that servers and runtimes
 * hold, read from outside while the target is stopped (nothing is
 * injected): bytes buffered in a pipe (duplicated with tee(2) from a read
 * end opened through /proc, so nothing is consumed) and its size, an
 * eventfd's counter, an epoll instance's interest list (fdinfo), and which
 * fds share one open file description (kcmp).
 */
import {fstatSync, lstatSync, readFileSync, readSync, statSync} from 'node:fs'

import {SyscallError, UnsupportedError} from '../errors.js'
import {type EpollTargetImage, type FdImage, type FdKind} from '../image/process-image.js'
import {close, fcntl, open, pipe2, read} from '../sys/file-io.js'
import {O, SYS, syscallRaw} from '../sys/syscall.js'
import {type FdInfo} from '../sys/proc.js'
import {AF, SOCK, describeAddress, peekMessages, peekQueued, readSocket, unixAddress, unixName, unixPeer, unixSocketFile} from '../sys/sockets.js'
import {pathOfHandle} from '../sys/file-handle.js'
import {GHOST_LIMIT, type TreeSocket} from './preflight.js'

const F_SETPIPE_SZ = 1031
const F_GETPIPE_SZ = 1032
const SPLICE_F_NONBLOCK = 2
const KCMP_FILE = 0

/** The descriptor-specific part of an FdImage. */
export type FdExtras = Pick<FdImage, 'pipe' | 'fifo' | 'inotify' | 'ghost' | 'eventfd' | 'epoll' | 'socket' | 'timerfd' | 'signalfd' | 'sharedWith'>

function pipeId(target: string): string | undefined {
  return /^pipe:\[(\d+)\]$/.exec(target)?.[1]
}

/** Bytes buffered in the pipe behind `/proc/PID/fd/N`, without consuming them, and the pipe's size. */
function readPipe(pid: number, fd: number): {size: number; data: Uint8Array} {
  const reader = open(`/proc/${pid}/fd/${fd}`, O.RDONLY | O.NONBLOCK | O.CLOEXEC)
  let copy: [number, number] | undefined
  try {
    const size = fcntl(reader, F_GETPIPE_SZ)
    copy = pipe2(O.CLOEXEC | O.NONBLOCK)
    fcntl(copy[1], F_SETPIPE_SZ, size)
    const n = syscallRaw(SYS.tee, reader, copy[1], size, SPLICE_F_NONBLOCK)
    if (n === -11n) return {size, data: new Uint8Array(0)} // EAGAIN: empty
    if (n < 0n) throw new SyscallError('tee', Number(-n), `pipe of fd ${fd} of process ${pid}`)
    const data = new Uint8Array(Number(n))
    let got = 0
    while (got < data.length) got += read(copy[0], data.subarray(got))
    return {size, data}
  } finally {
    close(reader)
    if (copy) for (const end of copy) close(end)
  }
}

const TFD_LINE = /tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*\d+\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)/g

/** The interest list of an epoll fd, each registration checked to still name the file it was added with. */
function readEpoll(pid: number, fd: number): EpollTargetImage[] {
  const text = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8')
  const targets: EpollTargetImage[] = []
  for (const match of text.matchAll(TFD_LINE)) {
    const target = Number(match[1])
    const ino = BigInt('0x' + match[4])
    let now: bigint | undefined
    try {
      now = BigInt(/^ino:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${target}`, 'utf8'))?.[1] ?? '-1')
    } catch {
      now = undefined
    }
    if (now !== ino) {
      throw new UnsupportedError('UNSUPPORTED_FD', `epoll fd ${fd} of process ${pid} watches a file that was registered as fd ${target} and is no longer open there`,
        'cxlfork re-registers epoll targets by fd number; close the epoll registration of closed fds (EPOLL_CTL_DEL) first.')
    }
    targets.push({fd: target, events: parseInt(match[2]!, 16), data: BigInt('0x' + match[3])})
  }
  return targets
}

/** A deleted file's contents and attributes, read through /proc while the process is stopped. */
function readGhost(pid: number, fd: number, target: string): NonNullable<FdImage['ghost']> {
  const reader = open(`/proc/${pid}/fd/${fd}`, O.RDONLY)
  try {
    const st = fstatSync(reader)
    if (st.size > GHOST_LIMIT) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${fd} of process ${pid} is a deleted file of ${st.size} bytes (${target}); cxlfork carries deleted files up to ${GHOST_LIMIT} bytes`, 'Close it, or keep it under a name, before checkpointing.')
    const data = new Uint8Array(st.size)
    let got = 0
    while (got < data.length) {
      const n = readSync(reader, data, got, data.length - got, got)
      if (n === 0) break
      got += n
    }
    return {path: target.replace(/ \(deleted\)$/, ''), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, data: data.subarray(0, got)}
  } finally {
    close(reader)
  }
}

const INOTIFY_LINE = /inotify wd:([0-9a-f]+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+) ignored_mask:[0-9a-f]+(?: fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]+))?/g

/**
 * The watches of an inotify instance, from fdinfo: each names its file by a
 * file handle, turned back into a path (checked to be that inode still).
 * Queued events are not carried (nor does CRIU carry them).
 */
function readInotify(pid: number, fd: number): {wd: number; path: string; mask: number}[] {
  const text = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8')
  const watches: {wd: number; path: string; mask: number}[] = []
  for (const match of text.matchAll(INOTIFY_LINE)) {
    const wd = Number.parseInt(match[1]!, 16)
    const ino = BigInt('0x' + match[2])
    const path = match[7] === undefined ? undefined : pathOfHandle(Number.parseInt(match[3]!, 16), Number.parseInt(match[6]!, 16), Buffer.from(match[7], 'hex'))
    let same = false
    try {
      same = path !== undefined && statSync(path, {bigint: true}).ino === ino
    } catch {
      same = false
    }
    if (!same) {
      throw new UnsupportedError('UNSUPPORTED_FD', `inotify fd ${fd} of process ${pid} watches inode ${ino} (watch ${wd}), which has no path here (deleted, or on a file system this mount namespace does not reach)`,
        'cxlfork re-adds inotify watches by path; remove the watch on the deleted file (inotify_rm_watch) first.')
    }
    watches.push({wd, path: path!, mask: Number.parseInt(match[4]!, 16)})
  }
  return watches
}

function sameDescription(pid: number, a: number, b: number): boolean {
  return syscallRaw(SYS.kcmp, pid, pid, KCMP_FILE, a, b) === 0n
}

/**
 * The extras of every fd of a stopped process. Pipes and eventfds are read
 * here because the process (stopped) can change neither.
 */
export function describeFds(pid: number, fds: readonly {info: FdInfo; kind: FdKind}[], internalPipes: ReadonlySet<string> = new Set(), treeSockets: ReadonlyMap<string, TreeSocket> = new Map()): Map<number, FdExtras> {
  const out = new Map<number, FdExtras>()
  const set = (fd: number, extras: FdExtras): void => {
    out.set(fd, {...out.get(fd), ...extras})
  }
  // Open file descriptions shared between fds: the lowest fd names the group.
  const leaders: number[] = []
  for (const {info} of fds) {
    const leader = leaders.find((other) => sameDescription(pid, other, info.fd))
    if (leader === undefined) leaders.push(info.fd)
    else set(info.fd, {sharedWith: leader})
  }
  const pipeEnds = new Map<string, {read: boolean; write: boolean}>()
  for (const {info, kind} of fds) {
    const id = pipeId(info.target)
    if (kind !== 'pipe' || id === undefined || (info.fd <= 2 && !internalPipes.has(info.target))) continue
    const ends = pipeEnds.get(id) ?? {read: false, write: false}
    if ((info.flags & 3) === O.WRONLY) ends.write = true
    else ends.read = true
    pipeEnds.set(id, ends)
  }
  const pipesRead = new Set<string>()
  const fifosRead = new Set<string>()
  for (const {info, kind} of fds) {
    // fds 0-2 that are pipes are the restorer's stdio, unless another member of the tree holds the pipe too.
    if (kind === 'pipe' && (info.fd > 2 || internalPipes.has(info.target))) {
      const id = pipeId(info.target)!
      const end = (info.flags & 3) === O.WRONLY ? 'write' : 'read'
      const ends = pipeEnds.get(id)!
      const first = !pipesRead.has(id)
      pipesRead.add(id)
      const {size, data} = readPipe(pid, info.fd)
      set(info.fd, {pipe: {id, end, size, peerInProcess: end === 'read' ? ends.write : ends.read, ...(first && data.length > 0 ? {data} : {})}})
    } else if (kind === 'fifo') {
      // Its buffered bytes once per FIFO (several fds may open it); read without consuming them.
      const {size, data} = readPipe(pid, info.fd)
      const first = !fifosRead.has(info.target)
      fifosRead.add(info.target)
      set(info.fd, {fifo: {size, ...(first && data.length > 0 ? {data} : {})}})
    } else if (kind === 'ghost') {
      set(info.fd, {ghost: readGhost(pid, info.fd, info.target)})
    } else if (kind === 'inotify') {
      set(info.fd, {inotify: {watches: readInotify(pid, info.fd)}})
    } else if (kind === 'eventfd') {
      set(info.fd, {eventfd: {count: BigInt('0x' + (info.raw['eventfd-count'] ?? '0')), semaphore: (info.raw['eventfd-semaphore'] ?? '0') !== '0'}})
    } else if (kind === 'epoll') {
      set(info.fd, {epoll: {targets: readEpoll(pid, info.fd)}})
    } else if (kind === 'timerfd') {
      const pair = (text: string | undefined): [number, number] => {
        const m = /\((\d+),\s*(\d+)\)/.exec(text ?? '')
        return m ? [Number(m[1]), Number(m[2])] : [0, 0]
      }
      const ticks = Number(info.raw['ticks'] ?? 0)
      set(info.fd, {timerfd: {clockid: Number(info.raw['clockid'] ?? 1), value: pair(info.raw['it_value']), interval: pair(info.raw['it_interval']), ...(ticks > 0 ? {ticks} : {})}})
    } else if (kind === 'signalfd') {
      set(info.fd, {signalfd: {mask: BigInt('0x' + (info.raw['sigmask'] ?? '0'))}})
    } else if (kind === 'socket') {
      // One read of the socket (a pidfd_getfd copy): this runs while the target is stopped.
      const socket = readSocket(pid, info.fd)
      if (socket.family === AF.UNIX && !socket.connected) {
        // A listener or a datagram socket: re-created at its name. Connections waiting in a listener's
        // backlog are not carried (their clients are outside the checkpoint), nor could datagrams be.
        if (socket.type === SOCK.DGRAM && peekQueued(pid, info.fd).length > 0) {
          throw new UnsupportedError('UNSUPPORTED_FD', `fd ${info.fd} of process ${pid} is a Unix datagram socket at ${describeAddress(socket.local)} with messages queued`, 'Checkpoint it once its messages are read.')
        }
        // Bound to a path: re-created where its file is now (renamed into place since its bind, as supervisord does), else refused.
        let local = socket.local
        const name = unixName(socket.local)
        if (name.startsWith('/')) {
          const now = unixSocketFile(Number(/^socket:\[(\d+)\]$/.exec(info.target)?.[1] ?? -1), name)
          if (now === undefined) {
            throw new UnsupportedError('UNSUPPORTED_FD', `fd ${info.fd} of process ${pid} is a Unix socket bound to ${name}, whose socket file is gone (removed, or moved out of its directory, since the bind): no client can reach it by name`,
              'Checkpoint it with its socket file in place.')
          }
          if (now !== name) local = unixAddress(now)
        }
        set(info.fd, {socket: {family: socket.family, type: socket.type, protocol: socket.protocol, listening: socket.listening, local,
          ...(socket.backlog === undefined ? {} : {backlog: socket.backlog}), options: socket.options.filter((o) => o.level === 1), ...unixFile(local)}})
      } else if (socket.family === AF.UNIX && socket.type === SOCK.DGRAM && (socket.peer?.length ?? 0) > 2) {
        // A client of a named datagram socket: connected again at restore; a datagram waiting for it would be lost.
        if (peekQueued(pid, info.fd).length > 0) {
          throw new UnsupportedError('UNSUPPORTED_FD', `fd ${info.fd} of process ${pid} is a Unix datagram socket connected to ${describeAddress(socket.peer!)} with messages queued`, 'Checkpoint it once its messages are read.')
        }
        set(info.fd, {socket: {family: socket.family, type: socket.type, protocol: socket.protocol, listening: false, local: socket.local, peer: socket.peer!,
          options: socket.options.filter((o) => o.level === 1)}})
      } else if (socket.family === AF.UNIX) {
        const peerInode = unixPeer(Number(/^socket:\[(\d+)\]$/.exec(info.target)?.[1] ?? -1))
        const base = {family: socket.family, type: socket.type, protocol: socket.protocol, listening: false, local: new Uint8Array(0), options: socket.options.filter((o) => o.level === 1)}
        if (peerInode === 0) {
          // Its peer was closed: only what waits in this end is left (then EOF).
          if (socket.type === SOCK.STREAM) {
            const queued = peekQueued(pid, info.fd)
            set(info.fd, {socket: {...base, pair: {peerFd: -1, peerClosed: true, ...(queued.length > 0 ? {queued} : {})}}})
          } else {
            const messages = peekMessages(pid, info.fd)
            if (messages === undefined) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${info.fd} of process ${pid} is a Unix datagram socketpair end whose queue cannot be read (SO_PEEK_OFF)`, 'Checkpoint it once its messages are read.')
            set(info.fd, {socket: {...base, pair: {peerFd: -1, peerClosed: true, ...(messages.length > 0 ? {messages} : {})}}})
          }
          continue
        }
        const peer = `socket:[${peerInode}]`
        const localPeer = fds.find((other) => other.info.target === peer)?.info.fd
        // In a tree the other end may be another member's: the pair is created by the end whose first holder comes first.
        const holder = localPeer === undefined ? treeSockets.get(peer) : undefined
        if (localPeer === undefined && holder === undefined) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${info.fd} of process ${pid} is a Unix socket whose other end it no longer holds`, 'Checkpoint it again.')
        const mine = treeSockets.get(info.target)
        // The creator also carries what waits for the other end (its holder is stopped now); the other member's end is handed over.
        const peerQueue = holder && mine?.pid === pid && mine.rank < holder.rank ? holder : undefined
        const peerFd = localPeer ?? -1
        if (socket.type === SOCK.STREAM) {
          const queued = peekQueued(pid, info.fd)
          const peerQueued = peerQueue ? peekQueued(peerQueue.pid, peerQueue.fd) : undefined
          set(info.fd, {socket: {...base, pair: {peerFd, ...(queued.length > 0 ? {queued} : {}), ...(peerQueued && peerQueued.length > 0 ? {peerQueued} : {})}}})
        } else {
          // Datagrams (and seqpacket records) keep their boundaries: each is sent again on its own.
          const messages = peekMessages(pid, info.fd)
          const peerMessages = peerQueue ? peekMessages(peerQueue.pid, peerQueue.fd) : []
          if (messages === undefined || peerMessages === undefined) {
            throw new UnsupportedError('UNSUPPORTED_FD', `fd ${info.fd} of process ${pid} is a Unix datagram socketpair end whose queue cannot be read (SO_PEEK_OFF)`, 'Checkpoint it once its messages are read.')
          }
          set(info.fd, {socket: {...base, pair: {peerFd, ...(messages.length > 0 ? {messages} : {}), ...(peerMessages.length > 0 ? {peerMessages} : {})}}})
        }
      } else {
        // A connected UDP socket is connected again to its peer; a TCP connection (--tcp-close) is restored closed.
        const connectedTo = socket.connected && socket.type === SOCK.DGRAM ? {peer: socket.peer!} : socket.connected ? {closed: true} : {}
        set(info.fd, {socket: {family: socket.family, type: socket.type, protocol: socket.protocol, listening: socket.listening, ...connectedTo, local: socket.local,
          ...(socket.backlog === undefined ? {} : {backlog: socket.backlog}), options: socket.options}})
      }
    }
  }
  return out
}

/** The socket file of a Unix socket bound to a path: its mode and owner, which a restore gives the new file. */
function unixFile(local: Uint8Array): {file?: {mode: number; uid: number; gid: number}} {
  const name = unixName(local)
  if (!name.startsWith('/')) return {}
  try {
    const st = lstatSync(name)
    return st.isSocket() ? {file: {mode: st.mode & 0o7777, uid: st.uid, gid: st.gid}} : {}
  } catch {
    return {} // removed meanwhile: the restore binds it with its default mode
  }
}

/**
 * One line on what a checkpointed descriptor is and carries, for `inspect`: a
 * socket's kind and address, what waits in a pipe or a socketpair, an epoll
 * instance's targets, a timer's clock. `fd 4 socket socket:[220358]` tells a user
 * nothing; `TCP listening on 127.0.0.1:8000, backlog 16` does.
 */
import {type FdImage, type SocketImage} from './process-image.js'
import {AF, SOCK, describeAddress} from '../sys/sockets.js'

const bytes = (n: number): string => `${n} byte${n === 1 ? '' : 's'}`

function socketDetail(socket: SocketImage): string {
  const type = socket.type === SOCK.STREAM ? 'stream' : socket.type === SOCK.DGRAM ? 'datagram' : socket.type === SOCK.SEQPACKET ? 'seqpacket' : `type ${socket.type}`
  if (socket.family === AF.UNIX) {
    const pair = socket.pair
    if (pair) {
      const waiting = (pair.queued?.length ?? 0) + (pair.messages ?? []).reduce((sum, m) => sum + m.length, 0)
      const peer = pair.peerClosed ? 'its peer closed' : pair.peerFd >= 0 ? `paired with fd ${pair.peerFd}` : 'paired with another process of the tree'
      return `Unix ${type} pair, ${peer}${waiting > 0 ? `, ${bytes(waiting)} waiting to be read` : ''}`
    }
    const name = socket.local.length > 2 ? describeAddress(socket.local) : '(unbound)'
    if (socket.listening) return `Unix ${type} listening at ${name}${socket.backlog === undefined ? '' : `, backlog ${socket.backlog}`}`
    if (socket.peer) return `Unix ${type} connected to ${describeAddress(socket.peer)}`
    return `Unix ${type} at ${name}`
  }
  const proto = socket.type === SOCK.STREAM ? 'TCP' : socket.type === SOCK.DGRAM ? 'UDP' : `${type}`
  const family = socket.family === AF.INET6 ? 'IPv6' : 'IPv4'
  if (socket.listening) return `${proto}/${family} listening on ${describeAddress(socket.local)}${socket.backlog === undefined ? '' : `, backlog ${socket.backlog}`}`
  if (socket.closed) return `${proto}/${family} connection from ${describeAddress(socket.local)}, restored closed (--tcp-close)`
  if (socket.peer) return `${proto}/${family} ${describeAddress(socket.local)} connected to ${describeAddress(socket.peer)}`
  return `${proto}/${family} bound to ${describeAddress(socket.local)}`
}

/** What `fd` is beyond its kind and path, or '' when the path says it all (a regular file, a device). */
export function describeFdImage(fd: FdImage): string {
  const parts: string[] = []
  if (fd.sharedWith !== undefined) parts.push(`shares its open file description with fd ${fd.sharedWith}`)
  if (fd.sharedFrom) parts.push(`${fd.sharedFrom.description ? 'the open file description' : 'the object'} of fd ${fd.sharedFrom.fd} of process ${fd.sharedFrom.pid}`)
  if (fd.socket) parts.push(socketDetail(fd.socket))
  if (fd.pipe) {
    const data = fd.pipe.data?.length ?? 0
    parts.push(`${fd.pipe.end} end${fd.pipe.peerInProcess ? '' : ' (the other end is not in the process)'}, pipe of ${bytes(fd.pipe.size)}${data > 0 ? `, ${bytes(data)} buffered` : ''}`)
  }
  if (fd.fifo) parts.push(`FIFO of ${bytes(fd.fifo.size)}${fd.fifo.data?.length ? `, ${bytes(fd.fifo.data.length)} buffered` : ''}`)
  if (fd.eventfd) parts.push(`counter ${fd.eventfd.count}${fd.eventfd.semaphore ? ', semaphore' : ''}`)
  if (fd.epoll) parts.push(`watches ${fd.epoll.targets.length === 0 ? 'nothing' : `fd${fd.epoll.targets.length === 1 ? '' : 's'} ${fd.epoll.targets.map((target) => target.fd).join(', ')}`}`)
  if (fd.timerfd) {
    const [sec, nsec] = fd.timerfd.value
    const [isec, insec] = fd.timerfd.interval
    const ticks = fd.timerfd.ticks ?? 0
    const every = isec === 0 && insec === 0 ? '' : `, every ${(isec + insec / 1e9).toFixed(3)} s`
    const unread = ticks > 0 ? `${ticks} expiration(s) unread` : ''
    if (sec !== 0 || nsec !== 0) parts.push(`fires in ${(sec + nsec / 1e9).toFixed(3)} s${every}${unread ? `; ${unread}` : ''} (clock ${fd.timerfd.clockid})`)
    else if (ticks > 0) parts.push(`${unread}${every ? `, fires again${every}` : ''} (clock ${fd.timerfd.clockid})`)
    else parts.push('disarmed')
  }
  if (fd.signalfd) parts.push(`signals 0x${fd.signalfd.mask.toString(16)}`)
  if (fd.inotify) parts.push(`${fd.inotify.watches.length} watch${fd.inotify.watches.length === 1 ? '' : 'es'}${fd.inotify.watches.length > 0 ? `: ${fd.inotify.watches.map((watch) => watch.path).join(', ')}` : ''}`)
  if (fd.ghost) parts.push(`deleted file ${fd.ghost.path}, ${bytes(fd.ghost.data.length)} carried`)
  for (const lock of fd.locks ?? []) parts.push(`holds a ${lock.kind === 'flock' ? 'flock()' : lock.kind === 'ofd' ? 'OFD' : 'POSIX'} ${lock.write ? 'write' : 'read'} lock on bytes ${lock.start} to ${lock.end ?? 'EOF'}`)
  return parts.join('; ')
}

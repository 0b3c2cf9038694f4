/**
 * file_entry.usk (unix_sk_entry, CRIU's unixsk): a Unix socket the model carries: a
 * listener or a datagram socket at its name (a path, with its socket file's permissions,
 * or an abstract name, which begins with a zero byte), a client of a named datagram socket,
 * or an end of a socketpair, whose other end it names by inode (peer), in the same process
 * or in another member of the tree. cxlfork's extension keeps the model's sockaddr bytes
 * and options exactly; a set CRIU wrote gets them from CRIU's fields.
 */
import {UnsupportedError} from '../../errors.js'
import type {FdImage, SocketImage} from '../../image/process-image.js'
import {AF, SO, SOCK} from '../../sys/sockets.js'
import {str64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

const SOL_SOCKET = 1
const TCP_ESTABLISHED = 1
const TCP_CLOSE = 7
const TCP_LISTEN = 10
const DEFAULT_BUFFER = 212_992

/** The socket inode of an fd (/proc/PID/fd names it socket:[INO]). */
export function socketIno(fd: FdImage): number {
  return Number(/^socket:\[(\d+)\]$/.exec(fd.path)?.[1] ?? 0) >>> 0
}

/** unix_sk_entry of `fd`; `peer`: the inode of its other end (0: none, or unknown yet). */
export function unixSocketEntry(fd: FdImage, id: number, peer: number): Obj {
  const socket = fd.socket!
  const option = (name: number): number | undefined => socket.options.find((o) => o.level === SOL_SOCKET && o.name === name)?.value
  const buffer = (name: number) => {
    const half = option(name)
    return half === undefined ? DEFAULT_BUFFER : half * 2
  }
  const entry: Obj = {
    id, ino: socketIno(fd), type: socket.type, state: socket.listening ? TCP_LISTEN : socket.pair || socket.peer ? TCP_ESTABLISHED : TCP_CLOSE,
    flags: fd.flags >>> 0, uflags: 0, backlog: (socket.backlog ?? 0) >>> 0, peer, fown: fown(),
    opts: {
      so_sndbuf: buffer(SO.SNDBUF), so_rcvbuf: buffer(SO.RCVBUF), so_snd_tmo_sec: str64(0n), so_snd_tmo_usec: str64(0n), so_rcv_tmo_sec: str64(0n), so_rcv_tmo_usec: str64(0n),
      reuseaddr: Boolean(option(SO.REUSEADDR)), so_reuseport: Boolean(option(SO.REUSEPORT)), so_keepalive: Boolean(option(SO.KEEPALIVE)),
    },
    // sockaddr_un without its family: the path, or the abstract name with its leading zero byte.
    name: socket.local.subarray(Math.min(2, socket.local.length)),
    cxlfork: {
      local: socket.local, ...(socket.peer ? {peer: socket.peer} : {}), options: socket.options.map((o) => ({level: o.level, name: o.name, value: o.value})),
      ...(socket.backlog === undefined ? {} : {backlog: socket.backlog}),
    },
  }
  if (socket.file) entry['file_perms'] = {mode: socket.file.mode >>> 0, uid: socket.file.uid >>> 0, gid: socket.file.gid >>> 0}
  return entry
}

/** A connected socket (a pair's end, or a connection), its peer there or closed. */
export function unixConnected(entry: Msg): boolean {
  return entry['state'] === TCP_ESTABLISHED
}

function sockaddrUn(name: Uint8Array): Uint8Array {
  const bytes = new Uint8Array(2 + name.length)
  new DataView(bytes.buffer).setUint16(0, AF.UNIX, true)
  bytes.set(name, 2)
  return bytes
}

/**
 * The model's socket of a unix_sk_entry, without its pair (linkDescriptors ties the ends
 * together and gives each its queue). `paired`: the peer inode is a socket of the set.
 */
export function unixSocketOf(entry: Msg, what: string, paired: boolean): Pick<FdImage, 'flags' | 'socket'> {
  const type = entry['type'] as number
  const state = entry['state'] as number
  const ext = entry['cxlfork'] as Msg | null
  if (type !== SOCK.STREAM && type !== SOCK.DGRAM && type !== SOCK.SEQPACKET) throw new UnsupportedError('CRIU_FD_TYPE', `${what} is a Unix socket of type ${type}`, 'Dump the process without it.')
  const listening = state === TCP_LISTEN
  const peerIno = entry['peer'] as number
  if (!listening && peerIno !== 0 && !paired && !ext) {
    throw new UnsupportedError('CRIU_FD_TYPE', `${what} is a Unix socket connected to socket inode ${peerIno}, which is not in the image set`,
      'cxlfork restores Unix listeners, datagram sockets and socketpairs whose both ends are in the set.')
  }
  if (ext) {
    const socket: SocketImage = {
      family: AF.UNIX, type, protocol: 0, listening, local: Uint8Array.from(ext['local'] as Uint8Array),
      options: (ext['options'] as Msg[]).map((o) => ({level: o['level'], name: o['name'], value: o['value']})),
      ...(ext['peer'] && (ext['peer'] as Uint8Array).length > 0 ? {peer: Uint8Array.from(ext['peer'] as Uint8Array)} : {}),
    }
    if (Object.prototype.hasOwnProperty.call(ext, 'backlog')) socket.backlog = ext['backlog']
    if (entry['file_perms']) socket.file = {mode: entry['file_perms']['mode'], uid: entry['file_perms']['uid'], gid: entry['file_perms']['gid']}
    return {flags: entry['flags'], socket}
  }
  const opts = entry['opts'] as Msg
  const socket: SocketImage = {
    family: AF.UNIX, type, protocol: 0, listening, local: paired ? new Uint8Array(0) : sockaddrUn(Uint8Array.from(entry['name'] as Uint8Array)),
    options: [
      {level: SOL_SOCKET, name: SO.REUSEADDR, value: opts['reuseaddr'] ? 1 : 0},
      {level: SOL_SOCKET, name: SO.REUSEPORT, value: opts['so_reuseport'] ? 1 : 0},
      {level: SOL_SOCKET, name: SO.KEEPALIVE, value: opts['so_keepalive'] ? 1 : 0},
      {level: SOL_SOCKET, name: SO.RCVBUF, value: Math.floor((opts['so_rcvbuf'] as number) / 2)},
      {level: SOL_SOCKET, name: SO.SNDBUF, value: Math.floor((opts['so_sndbuf'] as number) / 2)},
    ],
  }
  if (listening) socket.backlog = entry['backlog']
  if (entry['file_perms'] && !paired) socket.file = {mode: entry['file_perms']['mode'] & 0o7777, uid: entry['file_perms']['uid'], gid: entry['file_perms']['gid']}
  return {flags: entry['flags'], socket}
}

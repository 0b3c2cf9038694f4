/**
 * file_entry.isk (inet_sk_entry, CRIU's inetsk): an IPv4 or IPv6 socket the model carries,
 * a TCP listener or a UDP socket (bound, or connected to a peer), with its address, backlog
 * and the options programs set (SO_REUSEADDR, SO_REUSEPORT, SO_KEEPALIVE, buffer sizes in
 * sk_opts; TCP_NODELAY in tcp_opts; IPV6_V6ONLY). cxlfork's extension keeps the model's
 * sockaddr bytes and options exactly; a set CRIU wrote gets them from CRIU's fields.
 */
import {UnsupportedError} from '../../errors.js'
import type {FdImage, SocketImage} from '../../image/process-image.js'
import {AF, IPV6_V6ONLY, SO, SOCK, TCP_NODELAY} from '../../sys/sockets.js'
import {str64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

const SOL_SOCKET = 1
const IPPROTO_TCP = 6
const IPPROTO_IPV6 = 41
/** The kernel's TCP states CRIU records (include/net/tcp_states.h). */
const TCP_ESTABLISHED = 1
const TCP_CLOSE = 7
const TCP_LISTEN = 10
/** What the kernel gives a socket that never set its buffers (net.core.[rw]mem_default, doubled as getsockopt reports it). */
const DEFAULT_BUFFER = 212_992

/** Address words (network byte order, read as CRIU's u32s: memory order) and host-order port of a sockaddr_in/_in6. */
function addressOf(family: number, sockaddr: Uint8Array | undefined): {port: number; words: number[]} {
  if (!sockaddr || sockaddr.length < 8) return {port: 0, words: []}
  const view = new DataView(sockaddr.buffer, sockaddr.byteOffset, sockaddr.byteLength)
  const port = view.getUint16(2, false)
  if (family === AF.INET) return {port, words: [view.getUint32(4, true)]}
  if (sockaddr.length < 24) return {port, words: []}
  return {port, words: [0, 1, 2, 3].map((i) => view.getUint32(8 + 4 * i, true))}
}

/** A sockaddr_in / sockaddr_in6 from CRIU's fields. */
function sockaddrOf(family: number, port: number, words: readonly number[]): Uint8Array {
  const bytes = new Uint8Array(family === AF.INET ? 16 : 28)
  const view = new DataView(bytes.buffer)
  view.setUint16(0, family, true)
  view.setUint16(2, port, false)
  if (family === AF.INET) view.setUint32(4, words[0] ?? 0, true)
  else for (let i = 0; i < 4; i++) view.setUint32(8 + 4 * i, words[i] ?? 0, true)
  return bytes
}

export function inetSocketEntry(fd: FdImage, id: number): Obj {
  const socket = fd.socket!
  const option = (level: number, name: number): number | undefined => socket.options.find((o) => o.level === level && o.name === name)?.value
  const local = addressOf(socket.family, socket.local)
  const peer = addressOf(socket.family, socket.peer)
  const buffer = (name: number) => {
    const half = option(SOL_SOCKET, name)
    return half === undefined ? DEFAULT_BUFFER : half * 2
  }
  const entry: Obj = {
    id, ino: Number(/^socket:\[(\d+)\]$/.exec(fd.path)?.[1] ?? 0) >>> 0, family: socket.family, type: socket.type, proto: socket.protocol,
    state: socket.listening ? TCP_LISTEN : socket.peer ? TCP_ESTABLISHED : TCP_CLOSE,
    src_port: local.port, dst_port: peer.port, flags: fd.flags >>> 0, backlog: (socket.backlog ?? 0) >>> 0,
    // CRIU's restore wants both addresses of the family's length: an unconnected socket's peer is all zeros.
    src_addr: local.words, dst_addr: peer.words.length > 0 ? peer.words : local.words.map(() => 0), fown: fown(),
    opts: {
      so_sndbuf: buffer(SO.SNDBUF), so_rcvbuf: buffer(SO.RCVBUF), so_snd_tmo_sec: str64(0n), so_snd_tmo_usec: str64(0n), so_rcv_tmo_sec: str64(0n), so_rcv_tmo_usec: str64(0n),
      reuseaddr: Boolean(option(SOL_SOCKET, SO.REUSEADDR)), so_reuseport: Boolean(option(SOL_SOCKET, SO.REUSEPORT)), so_keepalive: Boolean(option(SOL_SOCKET, SO.KEEPALIVE)),
    },
    cxlfork: {
      local: socket.local, ...(socket.peer ? {peer: socket.peer} : {}), options: socket.options.map((o) => ({level: o.level, name: o.name, value: o.value})),
      ...(socket.backlog === undefined ? {} : {backlog: socket.backlog}), ...(socket.closed ? {closed: true} : {}),
    },
  }
  if (socket.family === AF.INET6) entry['v6only'] = Boolean(option(IPPROTO_IPV6, IPV6_V6ONLY))
  if (socket.type === SOCK.STREAM) entry['tcp_opts'] = {nodelay: Boolean(option(IPPROTO_TCP, TCP_NODELAY))}
  return entry
}

/** The model's socket of an inet_sk_entry: cxlfork's exactly; CRIU's for a listener or a UDP socket, others refused by name. */
export function inetSocketOf(entry: Msg, what: string): Pick<FdImage, 'flags' | 'socket'> {
  const family = entry['family'] as number
  const type = entry['type'] as number
  const ext = entry['cxlfork'] as Msg | null
  if (ext) {
    const socket: SocketImage = {
      family, type, protocol: entry['proto'], listening: entry['state'] === TCP_LISTEN, local: Uint8Array.from(ext['local'] as Uint8Array),
      options: (ext['options'] as Msg[]).map((o) => ({level: o['level'], name: o['name'], value: o['value']})),
      ...(ext['peer'] && (ext['peer'] as Uint8Array).length > 0 ? {peer: Uint8Array.from(ext['peer'] as Uint8Array)} : {}),
    }
    if (Object.prototype.hasOwnProperty.call(ext, 'backlog')) socket.backlog = ext['backlog']
    if (ext['closed']) socket.closed = true
    return {flags: entry['flags'], socket}
  }
  const state = entry['state'] as number
  const listening = state === TCP_LISTEN
  const connectedUdp = type === SOCK.DGRAM && state === TCP_ESTABLISHED
  if ((family !== AF.INET && family !== AF.INET6) || (type !== SOCK.STREAM && type !== SOCK.DGRAM) || (!listening && state !== TCP_CLOSE && !connectedUdp)) {
    throw new UnsupportedError('CRIU_FD_TYPE', `${what} is an inet socket (family ${family}, type ${type}) in state ${state}; the CRIU-format path restores TCP listeners and UDP sockets, not connections`,
      'Dump the process without established TCP connections (CRIU itself needs --tcp-established for them).')
  }
  const opts = entry['opts'] as Msg
  const options: SocketImage['options'] = [
    {level: SOL_SOCKET, name: SO.REUSEADDR, value: opts['reuseaddr'] ? 1 : 0},
    {level: SOL_SOCKET, name: SO.REUSEPORT, value: opts['so_reuseport'] ? 1 : 0},
    {level: SOL_SOCKET, name: SO.KEEPALIVE, value: opts['so_keepalive'] ? 1 : 0},
    {level: SOL_SOCKET, name: SO.RCVBUF, value: Math.floor((opts['so_rcvbuf'] as number) / 2)},
    {level: SOL_SOCKET, name: SO.SNDBUF, value: Math.floor((opts['so_sndbuf'] as number) / 2)},
  ]
  if (type === SOCK.STREAM) options.push({level: IPPROTO_TCP, name: TCP_NODELAY, value: entry['tcp_opts']?.['nodelay'] ? 1 : 0})
  if (family === AF.INET6) options.push({level: IPPROTO_IPV6, name: IPV6_V6ONLY, value: entry['v6only'] ? 1 : 0})
  const socket: SocketImage = {
    family, type, protocol: entry['proto'], listening, local: sockaddrOf(family, entry['src_port'], entry['src_addr'] ?? []), options,
    ...(connectedUdp ? {peer: sockaddrOf(family, entry['dst_port'], entry['dst_addr'] ?? [])} : {}),
  }
  if (listening) socket.backlog = entry['backlog']
  return {flags: entry['flags'], socket}
}

/**
 * What a process's socket is, read from a copy of its descriptor taken with
 * pidfd_getfd (the same socket, no injection, the process may even be
 * stopped): family, type, listening or connected, local address, the
 * options programs set. Addresses are kept as the raw sockaddr bytes.
 */
import {UnsupportedError} from '../errors.js'
import {SYS, close, syscallRaw} from './libc.js'

export const AF = {UNIX: 1, INET: 2, INET6: 10} as const
export const SOCK = {STREAM: 1, DGRAM: 2, SEQPACKET: 5} as const
const SOL_SOCKET = 1
const IPPROTO_TCP = 6
const IPPROTO_IPV6 = 41
export const SO = {REUSEADDR: 2, TYPE: 3, SNDBUF: 7, RCVBUF: 8, KEEPALIVE: 9, REUSEPORT: 15, ACCEPTCONN: 30, PROTOCOL: 38, DOMAIN: 39} as const
export const TCP_NODELAY = 1
export const IPV6_V6ONLY = 26

/** A socket option to set again: level, name, int value. */
export interface SocketOption {
  level: number
  name: number
  value: number
}

export interface SocketState {
  family: number
  type: number
  protocol: number
  listening: boolean
  /** Connected to a peer (a TCP connection, a connected datagram socket). */
  connected: boolean
  /** getsockname(2) bytes; empty when unbound. */
  local: Uint8Array
  options: SocketOption[]
}

function getInt(fd: number, level: number, name: number): number | undefined {
  const value = new Int32Array(1)
  const length = new Uint32Array([4])
  return syscallRaw(SYS.getsockopt, fd, level, name, value, length) < 0n ? undefined : value[0]!
}

function sockaddr(nr: number, fd: number): Uint8Array | undefined {
  const buffer = new Uint8Array(128)
  const length = new Uint32Array([128])
  const r = syscallRaw(nr, fd, buffer, length)
  return r < 0n ? undefined : buffer.slice(0, Math.min(128, length[0]!))
}

/** The socket behind fd `fd` of process `pid`, read through a descriptor copy. */
export function readSocket(pid: number, fd: number): SocketState {
  const pidfd = Number(syscallRaw(SYS.pidfd_open, pid, 0))
  if (pidfd < 0) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${fd} of process ${pid} is a socket that cannot be inspected (pidfd_open: ${-pidfd})`, 'Run as root or with CAP_SYS_PTRACE.')
  let copy = -1
  try {
    copy = Number(syscallRaw(SYS.pidfd_getfd, pidfd, fd, 0))
    if (copy < 0) throw new UnsupportedError('UNSUPPORTED_FD', `fd ${fd} of process ${pid} is a socket that cannot be inspected (pidfd_getfd: ${-copy})`, 'Run as root or with CAP_SYS_PTRACE.')
    const family = getInt(copy, SOL_SOCKET, SO.DOMAIN) ?? -1
    const type = getInt(copy, SOL_SOCKET, SO.TYPE) ?? -1
    const protocol = getInt(copy, SOL_SOCKET, SO.PROTOCOL) ?? 0
    const listening = (getInt(copy, SOL_SOCKET, SO.ACCEPTCONN) ?? 0) !== 0
    const connected = sockaddr(SYS.getpeername, copy) !== undefined
    const local = sockaddr(SYS.getsockname, copy) ?? new Uint8Array(0)
    const options: SocketOption[] = []
    const keep = (level: number, name: number, transform = (v: number) => v): void => {
      const value = getInt(copy, level, name)
      if (value !== undefined) options.push({level, name, value: transform(value)})
    }
    keep(SOL_SOCKET, SO.REUSEADDR)
    keep(SOL_SOCKET, SO.REUSEPORT)
    keep(SOL_SOCKET, SO.KEEPALIVE)
    // The kernel doubles what was set (bookkeeping overhead); setting half gives the same back.
    keep(SOL_SOCKET, SO.RCVBUF, (v) => Math.floor(v / 2))
    keep(SOL_SOCKET, SO.SNDBUF, (v) => Math.floor(v / 2))
    if (family !== AF.UNIX && type === SOCK.STREAM) keep(IPPROTO_TCP, TCP_NODELAY)
    if (family === AF.INET6) keep(IPPROTO_IPV6, IPV6_V6ONLY)
    return {family, type, protocol, listening, connected, local, options}
  } finally {
    if (copy >= 0) close(copy)
    close(pidfd)
  }
}

/** "127.0.0.1:8000", "[::1]:8000", "@abstract" or a path, for messages. */
export function describeAddress(bytes: Uint8Array): string {
  if (bytes.length < 2) return '(unbound)'
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const family = view.getUint16(0, true)
  if (family === AF.INET && bytes.length >= 8) return `${bytes.slice(4, 8).join('.')}:${view.getUint16(2, false)}`
  if (family === AF.INET6 && bytes.length >= 24) {
    const words: string[] = []
    for (let i = 0; i < 8; i++) words.push(view.getUint16(8 + 2 * i, false).toString(16))
    return `[${words.join(':').replace(/(^|:)0(:0)+(:|$)/, '::')}]:${view.getUint16(2, false)}`
  }
  if (family === AF.UNIX) return bytes[2] === 0 ? `@${Buffer.from(bytes.slice(3)).toString('latin1').replace(/\0+$/, '')}` : Buffer.from(bytes.slice(2)).toString('latin1').replace(/\0.*$/, '')
  return `(family ${family})`
}

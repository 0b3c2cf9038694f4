/**
 * What a process's socket is, read from a copy of its descriptor taken with
 * pidfd_getfd (the same socket, no injection, the process may even be
 * stopped): family, type, listening or connected, local address, the
 * options programs set. Addresses are kept as the raw sockaddr bytes.
 */
import {lstatSync, readFileSync, readdirSync, readlinkSync} from 'node:fs'
import {dirname, join} from 'node:path'

import {UnsupportedError} from '../errors.js'
import {close} from './file-io.js'
import {SYS, syscallRaw} from './syscall.js'

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
  /** getpeername(2) bytes when connected. */
  peer?: Uint8Array
  /** A listener's backlog as the kernel keeps it (listen(2)'s argument capped at somaxconn), when it says. */
  backlog?: number
  /** A TCP socket's state (tcp_info's tcpi_state: 1 established, 2 SYN sent, 7 closed, 10 listening, ...). */
  tcpState?: number
  options: SocketOption[]
}

/** tcpi_state of a socket that was created, and perhaps bound, but never connected nor listening (or whose connection was reset). */
export const TCP_CLOSE = 7

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

/**
 * `use` run on a copy of fd `fd` of process `pid` (pidfd_getfd: the same
 * socket, nothing injected), closed afterwards; `unavailable` gives the
 * result when no copy can be had, from the call that failed and its errno.
 */
function withDescriptorCopy<T>(pid: number, fd: number, use: (copy: number) => T, unavailable: (call: string, errno: number) => T): T {
  const pidfd = Number(syscallRaw(SYS.pidfd_open, pid, 0))
  if (pidfd < 0) return unavailable('pidfd_open', -pidfd)
  try {
    const copy = Number(syscallRaw(SYS.pidfd_getfd, pidfd, fd, 0))
    if (copy < 0) return unavailable('pidfd_getfd', -copy)
    try {
      return use(copy)
    } finally {
      close(copy)
    }
  } finally {
    close(pidfd)
  }
}

/** The socket behind fd `fd` of process `pid`, read through a descriptor copy. */
export function readSocket(pid: number, fd: number): SocketState {
  return withDescriptorCopy(pid, fd, (copy) => socketState(copy), (call, errno) => {
    throw new UnsupportedError('UNSUPPORTED_FD', `fd ${fd} of process ${pid} is a socket that cannot be inspected (${call}: ${errno})`, 'Run as root or with CAP_SYS_PTRACE.')
  })
}

function socketState(copy: number): SocketState {
  const family = getInt(copy, SOL_SOCKET, SO.DOMAIN) ?? -1
  const type = getInt(copy, SOL_SOCKET, SO.TYPE) ?? -1
  const protocol = getInt(copy, SOL_SOCKET, SO.PROTOCOL) ?? 0
  const listening = (getInt(copy, SOL_SOCKET, SO.ACCEPTCONN) ?? 0) !== 0
  const peer = sockaddr(SYS.getpeername, copy)
  const connected = peer !== undefined
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
  const backlog = listening ? listenBacklog(copy, family, type) : undefined
  const tcpState = (family === AF.INET || family === AF.INET6) && type === SOCK.STREAM ? tcpInfoState(copy) : undefined
  return {family, type, protocol, listening, connected, local, ...(peer ? {peer} : {}), ...(backlog === undefined ? {} : {backlog}), ...(tcpState === undefined ? {} : {tcpState}), options}
}

/** tcp_info's first byte, the TCP state. */
function tcpInfoState(fd: number): number | undefined {
  const info = new Uint8Array(104)
  const length = new Uint32Array([info.length])
  return syscallRaw(SYS.getsockopt, fd, IPPROTO_TCP, TCP_INFO, info, length) < 0n || length[0]! < 1 ? undefined : info[0]!
}

/**
 * A listener's sk_max_ack_backlog: for TCP it is tcp_info's tcpi_sacked (a
 * listener reports its backlog there); for a Unix listener, sock_diag's
 * UNIX_DIAG_RQLEN write-queue figure, by the socket's inode.
 */
function listenBacklog(fd: number, family: number, type: number): number | undefined {
  if ((family === AF.INET || family === AF.INET6) && type === SOCK.STREAM) {
    const info = new Uint8Array(104)
    const length = new Uint32Array([info.length])
    if (syscallRaw(SYS.getsockopt, fd, IPPROTO_TCP, TCP_INFO, info, length) < 0n || length[0]! < 32) return undefined
    return new DataView(info.buffer).getUint32(28, true)
  }
  if (family === AF.UNIX) {
    const stat = new BigUint64Array(18)
    if (syscallRaw(SYS.fstat, fd, stat) < 0n) return undefined
    const attribute = unixDiag(Number(stat[1]!), UDIAG_SHOW_RQLEN, UNIX_DIAG_RQLEN)
    return attribute && attribute.byteLength >= 8 ? attribute.getUint32(4, true) : undefined
  }
  return undefined
}

const ECONNREFUSED = -111n

/**
 * Whether a live socket answers at the Unix address `address` (sockaddr_un
 * bytes): a connect of the same type that is refused means the file is stale
 * (its socket is gone). Any other outcome, including errors, counts as live:
 * a file that may be live is never to be removed. Works across network
 * namespaces, which /proc/net/unix does not.
 */
export function unixAddressLive(address: Uint8Array, type: number): boolean {
  const fd = Number(syscallRaw(SYS.socket, AF.UNIX, type | 0o4000 /* SOCK_NONBLOCK */ | 0o2000000 /* SOCK_CLOEXEC */, 0))
  if (fd < 0) return true
  try {
    return syscallRaw(SYS.connect, fd, address, address.length) !== ECONNREFUSED
  } finally {
    close(fd)
  }
}

/** A Unix address: '' unbound (or autobound never), '@name' abstract, else its path (maybe relative). */
export function unixName(bytes: Uint8Array): string {
  if (bytes.length <= 2) return ''
  return describeAddress(bytes)
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

const NETLINK_SOCK_DIAG = 4
const SOCK_DIAG_BY_FAMILY = 20
const NLM_F_REQUEST = 1
const NLMSG_ERROR = 2
const UDIAG_SHOW_PEER = 4
const UNIX_DIAG_PEER = 2
const UDIAG_SHOW_RQLEN = 0x10
const UNIX_DIAG_RQLEN = 4
const TCP_INFO = 11

/**
 * The inode of the peer of Unix socket `inode` (sock_diag, as `ss -x` asks
 * it), or undefined when it has none or the kernel does not say.
 */
export function unixPeer(inode: number): number | undefined {
  const attribute = unixDiag(inode, UDIAG_SHOW_PEER, UNIX_DIAG_PEER)
  return attribute && attribute.byteLength >= 4 ? attribute.getUint32(0, true) : undefined
}

const UDIAG_SHOW_NAME = 0x1
const UNIX_DIAG_NAME = 0
const UDIAG_SHOW_VFS = 0x2
const UNIX_DIAG_VFS = 1

/**
 * Where the file of Unix socket `inode` (bound to path `name`) is now: `name` itself, or the entry of
 * its directory that is the same inode (a daemon that binds a temporary name and renames it into
 * place, as supervisord does), or undefined when it is in neither (removed). The kernel keeps the
 * bind-time name, which getsockname still returns; sock_diag's UNIX_DIAG_VFS gives the file's inode.
 */
export function unixSocketFile(inode: number, name: string): string | undefined {
  const attribute = unixDiag(inode, UDIAG_SHOW_VFS, UNIX_DIAG_VFS)
  if (!attribute || attribute.byteLength < 8) return name
  // struct unix_diag_vfs keeps the inode number in 32 bits: compare the low 32 bits of the file's.
  const fileInode = BigInt(attribute.getUint32(0, true))
  const sameFile = (path: string): boolean => {
    try {
      const st = lstatSync(path, {bigint: true})
      return st.isSocket() && (st.ino & 0xffffffffn) === fileInode
    } catch {
      return false
    }
  }
  if (sameFile(name)) return name
  const directory = dirname(name)
  try {
    return readdirSync(directory).map((entry) => join(directory, entry)).find(sameFile)
  } catch {
    return undefined
  }
}

/** sockaddr_un bytes for a path. */
export function unixAddress(path: string): Uint8Array {
  const bytes = Buffer.from(path, 'utf8')
  const address = new Uint8Array(2 + bytes.length + 1)
  new DataView(address.buffer).setUint16(0, AF.UNIX, true)
  address.set(bytes, 2)
  return address
}

/** The address Unix socket `inode` is bound to (an accepted connection has its listener's), as unixName shows it; undefined when unbound. */
export function unixSocketName(inode: number): string | undefined {
  const attribute = unixDiag(inode, UDIAG_SHOW_NAME, UNIX_DIAG_NAME)
  if (!attribute || attribute.byteLength === 0) return undefined
  // sock_diag gives sun_path alone: put sockaddr_un's family in front of it.
  const address = new Uint8Array(2 + attribute.byteLength)
  new DataView(address.buffer).setUint16(0, AF.UNIX, true)
  address.set(new Uint8Array(attribute.buffer, attribute.byteOffset, attribute.byteLength), 2)
  return unixName(address)
}

/**
 * Processes holding socket `inode` (found through /proc/PID/fd, as `ss -p` finds them), at most
 * `limit`, this process left out: for naming the other end of a connection in an error.
 */
export function socketHolders(inode: number, limit = 3): {pid: number; comm: string}[] {
  const link = `socket:[${inode}]`
  const holders: {pid: number; comm: string}[] = []
  for (const entry of readdirSync('/proc')) {
    if (holders.length >= limit) break
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue
    try {
      if (readdirSync(`/proc/${entry}/fd`).some((fd) => readlinkSync(`/proc/${entry}/fd/${fd}`) === link)) {
        holders.push({pid: Number(entry), comm: readFileSync(`/proc/${entry}/comm`, 'utf8').trim()})
      }
    } catch {
      // gone, or not ours to read
    }
  }
  return holders
}

/**
 * Processes holding a TCP listener or a UDP socket on `port` in this network namespace (from
 * /proc/net/{tcp,tcp6,udp,udp6}, then their fds): for naming who has the port in an error.
 */
export function portHolders(port: number, type: number, limit = 3): {pid: number; comm: string}[] {
  const inodes = new Set<number>()
  for (const table of type === SOCK.DGRAM ? ['udp', 'udp6'] : ['tcp', 'tcp6']) {
    let text: string
    try {
      text = readFileSync(`/proc/net/${table}`, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      // sl local_address rem_address st ... inode: the port is the local address's hex after ':'; st 0A is LISTEN.
      const fields = line.trim().split(/\s+/)
      if (fields.length < 10 || Number.parseInt(fields[1]!.split(':')[1] ?? '', 16) !== port) continue
      if (type !== SOCK.DGRAM && fields[3] !== '0A') continue
      inodes.add(Number(fields[9]))
    }
  }
  const holders: {pid: number; comm: string}[] = []
  for (const inode of inodes) {
    for (const holder of socketHolders(inode, limit - holders.length)) if (!holders.some((h) => h.pid === holder.pid)) holders.push(holder)
    if (holders.length >= limit) break
  }
  return holders
}

/** One attribute of sock_diag's answer about Unix socket `inode` (asked with `show`), or undefined. */
function unixDiag(inode: number, show: number, attributeType: number): DataView | undefined {
  const sock = Number(syscallRaw(SYS.socket, 16 /* AF_NETLINK */, 2 /* SOCK_DGRAM */ | 0o2000000, NETLINK_SOCK_DIAG))
  if (sock < 0) return undefined
  try {
    // nlmsghdr (16) + unix_diag_req (24): family, protocol, pad, states, ino, show, cookie[2]
    const request = new Uint8Array(40)
    const view = new DataView(request.buffer)
    view.setUint32(0, 40, true)
    view.setUint16(4, SOCK_DIAG_BY_FAMILY, true)
    view.setUint16(6, NLM_F_REQUEST, true)
    view.setUint32(8, 1, true)
    request[16] = AF.UNIX
    view.setUint32(20, 0xffffffff, true) // every state
    view.setUint32(24, inode, true)
    view.setUint32(28, show, true)
    view.setUint32(32, 0xffffffff, true) // no cookie
    view.setUint32(36, 0xffffffff, true)
    if (syscallRaw(SYS.sendto, sock, request, 40, 0, 0, 0) !== 40n) return undefined
    const reply = new Uint8Array(8192)
    const n = Number(syscallRaw(SYS.recvfrom, sock, reply, reply.length, 0, 0, 0))
    if (n < 16) return undefined
    const r = new DataView(reply.buffer, 0, n)
    if (r.getUint16(4, true) === NLMSG_ERROR) return undefined
    // unix_diag_msg (16 bytes) after the header, then attributes (nla_len, nla_type, value), 4-aligned.
    for (let at = 16 + 16; at + 4 <= Math.min(n, r.getUint32(0, true));) {
      const length = r.getUint16(at, true)
      const type = r.getUint16(at + 2, true)
      if (length < 4) break
      if (type === attributeType) return new DataView(reply.buffer, at + 4, length - 4)
      at += (length + 3) & ~3
    }
    return undefined
  } finally {
    close(sock)
  }
}

const SO_PEEK_OFF = 42
/** Largest datagram peeked (a Unix datagram is at most about the socket's send buffer). */
const MESSAGE_BYTES = 1 << 20

/**
 * Messages queued on a datagram socket, in order, without consuming them:
 * MSG_PEEK with SO_PEEK_OFF set, so each peek moves past one message (as
 * CRIU reads queues). The offset is shared with the target's socket (a
 * descriptor copy): it is set back as it was before returning. Undefined
 * when the kernel cannot peek this way.
 */
export function peekMessages(pid: number, fd: number): Uint8Array[] | undefined {
  return withDescriptorCopy(pid, fd, (copy) => {
    const before = getInt(copy, SOL_SOCKET, SO_PEEK_OFF) ?? -1
    if (syscallRaw(SYS.setsockopt, copy, SOL_SOCKET, SO_PEEK_OFF, new Int32Array([0]), 4) < 0n) return undefined
    try {
      const messages: Uint8Array[] = []
      const buffer = new Uint8Array(MESSAGE_BYTES)
      for (;;) {
        const n = syscallRaw(SYS.recvfrom, copy, buffer, buffer.length, 0x2 /* MSG_PEEK */ | 0x40 /* MSG_DONTWAIT */, 0, 0)
        if (n < 0n) break // EAGAIN: no more
        messages.push(buffer.slice(0, Number(n)))
        if (messages.length > 100_000) return undefined
      }
      return messages
    } finally {
      syscallRaw(SYS.setsockopt, copy, SOL_SOCKET, SO_PEEK_OFF, new Int32Array([before]), 4)
    }
  }, () => undefined)
}

/** Bytes queued for reading on a stream socket, without consuming them (MSG_PEEK on a descriptor copy). */
export function peekQueued(pid: number, fd: number): Uint8Array {
  return withDescriptorCopy(pid, fd, (copy) => {
    const buffer = new Uint8Array(1 << 20)
    const n = syscallRaw(SYS.recvfrom, copy, buffer, buffer.length, 0x2 /* MSG_PEEK */ | 0x40 /* MSG_DONTWAIT */, 0, 0)
    return n > 0n ? buffer.slice(0, Number(n)) : new Uint8Array(0)
  }, () => new Uint8Array(0))
}

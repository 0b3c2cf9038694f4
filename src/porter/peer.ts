/**
 * Who is on the other end of an accepted Unix socket: SO_PEERCRED (pid, uid,
 * gid as of connect(2), set by the kernel, not claimed by the client) and
 * SO_PEERGROUPS (its supplementary groups), read with getsockopt on the
 * socket's descriptor.
 */
import {SYS, syscallRaw} from '../sys/syscall.js'

const SOL_SOCKET = 1
const SO_PEERCRED = 17
const SO_PEERGROUPS = 59
const ERANGE = 34

export interface PeerCredentials {
  pid: number
  uid: number
  gid: number
  /** Primary and supplementary groups. */
  groups: number[]
}

/** The peer of connected Unix socket `fd`, or undefined if the kernel will not say (not a Unix socket). */
export function peerCredentials(fd: number): PeerCredentials | undefined {
  const cred = new Int32Array(3)
  const length = new Uint32Array([12])
  if (syscallRaw(SYS.getsockopt, fd, SOL_SOCKET, SO_PEERCRED, cred, length) < 0n || length[0] !== 12) return undefined
  const [pid, uid, gid] = [cred[0]!, cred[1]! >>> 0, cred[2]! >>> 0]
  return {pid, uid, gid, groups: [gid, ...peerGroups(fd)]}
}

function peerGroups(fd: number): number[] {
  let count = 64
  for (let attempt = 0; attempt < 4; attempt++) {
    const groups = new Uint32Array(count)
    const length = new Uint32Array([count * 4])
    const r = syscallRaw(SYS.getsockopt, fd, SOL_SOCKET, SO_PEERGROUPS, groups, length)
    if (r === 0n) return [...groups.subarray(0, length[0]! / 4)]
    // ERANGE: the kernel says how many bytes it needs.
    if (r !== BigInt(-ERANGE)) return []
    count = Math.ceil(length[0]! / 4)
  }
  return []
}

/**
 * Where a clone's sockets live. `new`: a network namespace of the clone's
 * own with only loopback, up; a listener then takes its original address
 * without meeting the original's, and the clone has no way out (no other
 * interface, no route): it is reachable only from inside that namespace
 * (nsenter, or ip netns for a named one). A path (/var/run/netns/NAME, or
 * /proc/PID/ns/net) joins an existing namespace. Entered by the clone's root
 * stub before any member or socket exists, so every member is born in it.
 */
import {UsageError} from '../errors.js'
import {type Tracee} from '../inject/tracee.js'
import {O, SYS} from '../sys/syscall.js'

const CLONE_NEWNET = 0x40000000
const SIOCGIFFLAGS = 0x8913
const SIOCSIFFLAGS = 0x8914
const IFF_UP = 1
const AF_INET = 2
const SOCK_DGRAM = 2

export type NetworkMode = 'host' | 'new' | string

/** Move the stopped stub `tracee` (still a bare stub: its stack is free to use) into the clone's network namespace. */
export function enterNetwork(tracee: Tracee, network: NetworkMode): void {
  if (network === 'host') return
  if (network === 'new') {
    tracee.syscallChecked('unshare(CLONE_NEWNET)', SYS.unshare, CLONE_NEWNET)
    loopbackUp(tracee)
    return
  }
  const path = Buffer.from(network + '\0', 'utf8')
  if (path.length > 256) throw new UsageError('INVALID_NETNS', `--netns path is too long (${path.length - 1} bytes)`, 'Give a path under 255 bytes, e.g. /var/run/netns/NAME.')
  const slot = tracee.stackSlot(path.length)
  tracee.writeMemory(slot, path)
  const fd = tracee.syscall(SYS.open, slot, O.RDONLY | O.CLOEXEC, 0)
  if (fd < 0n) throw new UsageError('INVALID_NETNS', `--netns ${network} cannot be opened (errno ${-fd})`, 'Give a network namespace file: /var/run/netns/NAME (ip netns add NAME) or /proc/PID/ns/net.')
  try {
    const r = tracee.syscall(SYS.setns, fd, CLONE_NEWNET)
    if (r < 0n) throw new UsageError('INVALID_NETNS', `--netns ${network} is not a network namespace (setns: errno ${-r})`, 'Give a network namespace file: /var/run/netns/NAME (ip netns add NAME) or /proc/PID/ns/net.')
  } finally {
    tracee.syscall(SYS.close, fd)
  }
}

/** ifconfig lo up, from inside the stub: SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP. */
function loopbackUp(tracee: Tracee): void {
  const sock = tracee.syscallChecked('socket(AF_INET)', SYS.socket, AF_INET, SOCK_DGRAM | O.CLOEXEC, 0)
  try {
    const ifreq = new Uint8Array(40)
    ifreq.set(Buffer.from('lo', 'latin1'))
    const slot = tracee.stackSlot(40)
    tracee.writeMemory(slot, ifreq)
    tracee.syscallChecked('ioctl(SIOCGIFFLAGS, lo)', SYS.ioctl, sock, SIOCGIFFLAGS, slot)
    const flags = new DataView(tracee.readMemory(slot + 16n, 2).buffer).getUint16(0, true) | IFF_UP
    const bytes = new Uint8Array(2)
    new DataView(bytes.buffer).setUint16(0, flags, true)
    tracee.writeMemory(slot + 16n, bytes)
    tracee.syscallChecked('ioctl(SIOCSIFFLAGS, lo up)', SYS.ioctl, sock, SIOCSIFFLAGS, slot)
  } finally {
    tracee.syscall(SYS.close, sock)
  }
}

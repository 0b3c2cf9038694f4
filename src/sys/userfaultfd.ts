/**
 * userfaultfd(2) from Node: the ioctl numbers and structures of
 * linux/userfaultfd.h (x86-64), written from the header's field layout, and
 * the two calls a fault server needs besides ioctl: poll and read.
 */
import {libc} from './ffi.js'
import {SYS, syscallRaw} from './syscall.js'

/** UFFD_API: the only API version. */
export const UFFD_API = 0xaan

/** Features asked for with UFFDIO_API (UFFD_FEATURE_*). */
export const UFFD_FEATURE = {
  EVENT_FORK: 1n << 1n,
  EVENT_REMAP: 1n << 2n,
  EVENT_REMOVE: 1n << 3n,
  EVENT_UNMAP: 1n << 6n,
  THREAD_ID: 1n << 8n,
  WP_HUGETLBFS_SHMEM: 1n << 12n,
} as const

/** _IOWR/_IOR(0xAA, nr, struct) for x86-64. */
export const UFFDIO = {
  API: 0xc018aa3f, // _IOWR(0xAA, 0x3F, struct uffdio_api: 24 bytes)
  REGISTER: 0xc020aa00, // _IOWR(0xAA, 0x00, struct uffdio_register: 32 bytes)
  UNREGISTER: 0x8010aa01, // _IOR(0xAA, 0x01, struct uffdio_range: 16 bytes)
  WAKE: 0x8010aa02, // _IOR(0xAA, 0x02, struct uffdio_range)
  COPY: 0xc028aa03, // _IOWR(0xAA, 0x03, struct uffdio_copy: 40 bytes)
  ZEROPAGE: 0xc020aa04, // _IOWR(0xAA, 0x04, struct uffdio_zeropage: 32 bytes)
} as const

export const UFFDIO_REGISTER_MODE_MISSING = 1n
export const UFFDIO_REGISTER_MODE_WP = 2n

/** uffd_msg.event values. */
export const UFFD_EVENT = {PAGEFAULT: 0x12, FORK: 0x13, REMAP: 0x14, REMOVE: 0x15, UNMAP: 0x16} as const

export const UFFD_MSG_SIZE = 32
export const UFFDIO_API_SIZE = 24
export const UFFDIO_REGISTER_SIZE = 32

export type UffdMessage =
  | {event: typeof UFFD_EVENT.PAGEFAULT; address: bigint; write: boolean}
  | {event: typeof UFFD_EVENT.FORK; ufd: number}
  | {event: typeof UFFD_EVENT.REMAP; from: bigint; to: bigint; length: bigint}
  | {event: typeof UFFD_EVENT.REMOVE | typeof UFFD_EVENT.UNMAP; start: bigint; end: bigint}
  | {event: number}

/** Decode the uffd_msg at `offset` of `bytes`. */
export function decodeUffdMessage(bytes: Uint8Array, offset: number): UffdMessage {
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, UFFD_MSG_SIZE)
  const event = view.getUint8(0)
  switch (event) {
    case UFFD_EVENT.PAGEFAULT:
      // arg.pagefault: u64 flags (bit 0: write), u64 address, u32 ptid.
      return {event, address: view.getBigUint64(16, true), write: (view.getBigUint64(8, true) & 1n) !== 0n}
    case UFFD_EVENT.FORK:
      return {event, ufd: view.getUint32(8, true)}
    case UFFD_EVENT.REMAP:
      return {event, from: view.getBigUint64(8, true), to: view.getBigUint64(16, true), length: view.getBigUint64(24, true)}
    case UFFD_EVENT.REMOVE:
    case UFFD_EVENT.UNMAP:
      return {event, start: view.getBigUint64(8, true), end: view.getBigUint64(16, true)}
    default:
      return {event}
  }
}

/** struct uffdio_api {u64 api; u64 features; u64 ioctls}. */
export function encodeUffdioApi(features: bigint): Uint8Array {
  const bytes = new Uint8Array(UFFDIO_API_SIZE)
  const view = new DataView(bytes.buffer)
  view.setBigUint64(0, UFFD_API, true)
  view.setBigUint64(8, features, true)
  return bytes
}

/** struct uffdio_register {struct uffdio_range {u64 start; u64 len}; u64 mode; u64 ioctls}. */
export function encodeUffdioRegister(start: bigint, length: bigint, mode: bigint): Uint8Array {
  const bytes = new Uint8Array(UFFDIO_REGISTER_SIZE)
  const view = new DataView(bytes.buffer)
  view.setBigUint64(0, start, true)
  view.setBigUint64(8, length, true)
  view.setBigUint64(16, mode, true)
  return bytes
}

/**
 * The three ioctls a server answers with, on buffers allocated once. Each
 * returns 0 or -errno; `done` is how many bytes the kernel filled before an
 * error (UFFDIO_COPY stops at the first page already present: EEXIST).
 */
export class UffdIoctls {
  private readonly copyArg = new BigInt64Array(5) // dst, src, len, mode, copy
  private readonly zeroArg = new BigInt64Array(4) // start, len, mode, zeropage
  private readonly rangeArg = new BigInt64Array(2) // start, len

  copy(fd: number, dst: bigint, src: bigint, length: bigint): {ret: number; done: bigint} {
    const arg = this.copyArg
    arg[0] = dst
    arg[1] = src
    arg[2] = length
    arg[3] = 0n
    arg[4] = 0n
    const ret = Number(syscallRaw(SYS.ioctl, fd, UFFDIO.COPY, arg))
    return {ret, done: arg[4]! > 0n ? arg[4]! : 0n}
  }

  zeropage(fd: number, start: bigint, length: bigint): {ret: number; done: bigint} {
    const arg = this.zeroArg
    arg[0] = start
    arg[1] = length
    arg[2] = 0n
    arg[3] = 0n
    const ret = Number(syscallRaw(SYS.ioctl, fd, UFFDIO.ZEROPAGE, arg))
    return {ret, done: arg[3]! > 0n ? arg[3]! : 0n}
  }

  wake(fd: number, start: bigint, length: bigint): number {
    this.rangeArg[0] = start
    this.rangeArg[1] = length
    return Number(syscallRaw(SYS.ioctl, fd, UFFDIO.WAKE, this.rangeArg))
  }
}

export const POLLIN = 0x1
export const POLLERR = 0x8
export const POLLHUP = 0x10

const cPoll = libc.func('poll', 'int', ['void *', 'uint64', 'int'])

/** poll(2) over `fds`; returns each fd's revents (0 for none), or throws nothing: EINTR reads as a timeout. */
export function pollFds(fds: readonly number[], timeoutMs: number): number[] {
  const buffer = new Int32Array(fds.length * 2) // struct pollfd {int fd; short events; short revents}
  fds.forEach((fd, i) => {
    buffer[i * 2] = fd
    buffer[i * 2 + 1] = POLLIN
  })
  const n = cPoll(buffer, fds.length, timeoutMs) as number
  if (n <= 0) return fds.map(() => 0)
  return fds.map((_, i) => (buffer[i * 2 + 1]! >>> 16) & 0xffff)
}

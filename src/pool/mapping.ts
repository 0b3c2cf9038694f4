/**
 * The pool file mapped once, whole, MAP_SHARED. Only the control area is
 * wrapped in one ArrayBuffer (its words are used with Atomics); the metadata
 * region is reached through windows of a record's size (see MetadataRegion)
 * and data segments are addressed as `baseAddress + poolOffset`.
 */
import {errno, koffi, libc} from '../sys/ffi.js'
import {SyscallError} from '../errors.js'

const PROT_READ = 0x1
const PROT_WRITE = 0x2
const MAP_SHARED = 0x01
const MAP_FAILED = 0xffffffffffffffffn
const FALLOC_FL_KEEP_SIZE = 0x01
const FALLOC_FL_PUNCH_HOLE = 0x02

const mmap = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)')
const munmap = libc.func('int munmap(void *addr, size_t length)')
const fallocate = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)')

export class PoolMapping {
  private mapped = true

  private constructor(
    readonly fd: number,
    readonly baseAddress: bigint,
    readonly length: bigint,
    /** Bytes [0, controlLength) of the pool: the control area. */
    readonly control: ArrayBuffer,
  ) {}

  static map(fd: number, length: bigint, controlLength: number): PoolMapping {
    const address = BigInt(koffi.address(mmap(null, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)))
    if (address === MAP_FAILED || address === 0n) throw new SyscallError('mmap', errno(), `pool of ${length} bytes`)
    return new PoolMapping(fd, address, length, koffi.view(address, controlLength))
  }

  /** Give the pages of a freed range back to the file system; a hint, failures are ignored (DAX, hugetlbfs granularity). */
  punchHole(poolOffset: bigint, length: bigint): void {
    fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, poolOffset, length)
  }

  /** Zero-copy bytes at `poolOffset` (bounds checked by the caller). */
  window(poolOffset: bigint, length: number): Uint8Array {
    return new Uint8Array(koffi.view(this.baseAddress + poolOffset, length))
  }

  /** Copy `bytes` into the pool at `poolOffset` (any region, bounds checked by the caller). */
  write(poolOffset: bigint, bytes: Uint8Array): void {
    if (bytes.length === 0) return
    const target = new Uint8Array(koffi.view(this.baseAddress + poolOffset, bytes.length))
    target.set(bytes)
  }

  /** A copy of `length` bytes at `poolOffset`. */
  read(poolOffset: bigint, length: number): Uint8Array {
    if (length === 0) return new Uint8Array(0)
    return new Uint8Array(koffi.view(this.baseAddress + poolOffset, length)).slice()
  }

  get isMapped(): boolean {
    return this.mapped
  }

  unmap(): void {
    if (!this.mapped) return
    this.mapped = false
    munmap(this.baseAddress, this.length)
  }
}

/**
 * The pool file mapped once, whole, MAP_SHARED. Only the control area is
 * wrapped in one ArrayBuffer (its words are used with Atomics); the metadata
 * region is reached through windows of a record's size (see MetadataRegion)
 * and data segments are addressed as `baseAddress + poolOffset`.
 */
import {MAP, mmap, munmap, PROT, SYS, syscallRaw, view} from '../sys/libc.js'

const FALLOC_FL_KEEP_SIZE = 0x01
const FALLOC_FL_PUNCH_HOLE = 0x02

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
    const address = mmap(null, length, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0)
    return new PoolMapping(fd, address, length, view(address, controlLength).buffer as ArrayBuffer)
  }

  /** Give the pages of a freed range back to the file system; a hint, failures are ignored (DAX, hugetlbfs granularity). */
  punchHole(poolOffset: bigint, length: bigint): void {
    syscallRaw(SYS.fallocate, this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, poolOffset, length)
  }

  /** Allocate the memory of [poolOffset, +length) now (mode 0 fallocate); returns 0 or -errno. */
  static provision(fd: number, poolOffset: bigint, length: bigint): number {
    return Number(syscallRaw(SYS.fallocate, fd, 0, poolOffset, length))
  }

  /** Zero-copy bytes at `poolOffset` (bounds checked by the caller). */
  window(poolOffset: bigint, length: number): Uint8Array {
    return view(this.baseAddress + poolOffset, length)
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

/**
 * The pool file mapped once, whole, MAP_SHARED. Only the control area is
 * wrapped in one ArrayBuffer (its words are used with Atomics); the metadata
 * region is reached through windows of a record's size (see MetadataRegion)
 * and data segments are addressed as `baseAddress + poolOffset`.
 */
import {FALLOC, fallocateRaw} from '../sys/file-io.js'
import {MAP, PROT} from '../sys/syscall.js'
import {mmap, munmap, view} from '../sys/vm-io.js'

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
    fallocateRaw(this.fd, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, poolOffset, length)
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

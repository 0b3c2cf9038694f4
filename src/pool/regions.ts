/**
 * Typed views over the mapped control area and metadata region. Every word
 * another process may change concurrently is read and written with Atomics.
 */
import type {PoolLayout} from './layout.js'
import {BUILD_SLOT_SIZE, HOST_SLOT_SIZE, REF_SLOT_SIZE} from './layout.js'

/**
 * The metadata region, reached through small windows of the pool mapping.
 * One ArrayBuffer over all of it (a quarter GiB in an 8 GiB pool) counts as
 * external memory to V8 and sets off a full garbage collection in every
 * command that opens the pool (about 10 ms measured); windows of a record's
 * size do not. Bounds are checked: a window never reaches past the region.
 */
export class MetadataRegion {
  constructor(
    /** Zero-copy bytes [offset, offset + length) of the region; only called within bounds. */
    private readonly window: (offset: number, length: number) => Uint8Array,
    readonly length: number,
  ) {}

  /** Zero-copy window on bytes [start, end). */
  subarray(start: number, end: number): Uint8Array {
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > this.length || start > end) {
      throw new RangeError(`metadata window ${start}..${end} outside the region of ${this.length} bytes`)
    }
    return end === start ? new Uint8Array(0) : this.window(start, end - start)
  }

  /** A copy of bytes [start, end). */
  slice(start: number, end: number): Uint8Array {
    return this.subarray(start, end).slice()
  }

  /** Copy `bytes` in at byte `at`. */
  set(bytes: Uint8Array, at: number): void {
    this.subarray(at, at + bytes.length).set(bytes)
  }
}

export class PoolRegions {
  /** Host table bytes (identity fields). */
  readonly hostBytes: Uint8Array
  /** Host table as u32 words: word 0 of each slot is its claim word (identity hash). */
  readonly hostWords: Uint32Array
  /** Host table as i64: lease expiry and first-seen times. */
  readonly hostTimes: BigInt64Array
  /** Two u64 per build slot: owner word, owner start time. */
  readonly buildSlots: BigUint64Array
  /** Two u64 per reference slot: owner word, owner start time. */
  readonly refSlots: BigUint64Array
  readonly directory: BigUint64Array
  /** One word per data segment: 0 free, else the owning serial. */
  readonly segmentStates: Uint32Array
  /** One word per metadata page: 0 free, else the owning serial. */
  readonly pageStates: Uint32Array
  readonly metadata: MetadataRegion
  /** The directory lock's holder word, its start time and next in line (counters page, see directory-lock.ts). */
  readonly lockWords: BigUint64Array

  /** `control` spans the pool from offset 0 up to the metadata region; `metadataWindow` reaches into that region. */
  constructor(readonly layout: PoolLayout, control: ArrayBuffer, metadataWindow: (offset: number, length: number) => Uint8Array) {
    this.hostBytes = new Uint8Array(control, layout.hostTableOffset, layout.hostSlots * HOST_SLOT_SIZE)
    this.hostWords = new Uint32Array(control, layout.hostTableOffset, layout.hostSlots * HOST_SLOT_SIZE / 4)
    this.hostTimes = new BigInt64Array(control, layout.hostTableOffset, layout.hostSlots * HOST_SLOT_SIZE / 8)
    this.buildSlots = new BigUint64Array(control, layout.buildTableOffset, layout.buildSlots * BUILD_SLOT_SIZE / 8)
    this.refSlots = new BigUint64Array(control, layout.refTableOffset, layout.refSlots * REF_SLOT_SIZE / 8)
    this.directory = new BigUint64Array(control, layout.directoryOffset, layout.directorySlots)
    this.segmentStates = new Uint32Array(control, layout.segmentStateOffset, layout.segmentCount)
    this.pageStates = new Uint32Array(control, layout.pageStateOffset, layout.metadataPageCount)
    this.metadata = new MetadataRegion(metadataWindow, layout.metadataSize)
    this.lockWords = new BigUint64Array(control, layout.countersOffset, 3)
  }
}

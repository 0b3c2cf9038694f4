/**
 * Typed views over the mapped control area and metadata region. Every word
 * another process may change concurrently is read and written with Atomics.
 */
import type {PoolLayout} from './layout.js'
import {BUILD_SLOT_SIZE, HOST_SLOT_SIZE, REF_SLOT_SIZE} from './layout.js'

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
  readonly metadata: Uint8Array

  constructor(readonly layout: PoolLayout, control: ArrayBuffer) {
    this.hostBytes = new Uint8Array(control, layout.hostTableOffset, layout.hostSlots * HOST_SLOT_SIZE)
    this.hostWords = new Uint32Array(control, layout.hostTableOffset, layout.hostSlots * HOST_SLOT_SIZE / 4)
    this.hostTimes = new BigInt64Array(control, layout.hostTableOffset, layout.hostSlots * HOST_SLOT_SIZE / 8)
    this.buildSlots = new BigUint64Array(control, layout.buildTableOffset, layout.buildSlots * BUILD_SLOT_SIZE / 8)
    this.refSlots = new BigUint64Array(control, layout.refTableOffset, layout.refSlots * REF_SLOT_SIZE / 8)
    this.directory = new BigUint64Array(control, layout.directoryOffset, layout.directorySlots)
    this.segmentStates = new Uint32Array(control, layout.segmentStateOffset, layout.segmentCount)
    this.pageStates = new Uint32Array(control, layout.pageStateOffset, layout.metadataPageCount)
    this.metadata = new Uint8Array(control, layout.metadataOffset, layout.metadataSize)
  }
}

/**
 * A checkpoint's access record: which of its stored pages clones touched and
 * wrote, recorded by `cxlfork record` and read by the `mow` and `hybrid`
 * policies. One per process of the checkpoint, beside its page map, in a
 * mutable pool section (pool/descriptor.ts MUTABLE_SECTION): the page map is
 * checksummed and write-once, and these bits change for the checkpoint's whole
 * life, from several hosts at once, so every update is an atomic OR (bits
 * only ever accumulate until a reset) and every counter an atomic add.
 *
 *   0  magic u32 'ACCR'      4 version u16, reserved u16
 *   8  pages u32 (the page map's)     12 recordings u32
 *  16  first recorded, ms since epoch (i64)   24 last recorded (i64)
 *  32  reset at (i64)       40..63 reserved
 *  64  one flag byte per page (PAGE_FLAG_*), in page-map order, padded to 4
 *
 * The bits are hints: a damaged record changes which pages a restore copies,
 * never what the clone's memory holds.
 */
import {PAGE_FLAG_ACCESSED, PAGE_FLAG_DIRTY, PageMapView} from './page-map.js'

export const ACCESS_RECORD_MAGIC = 0x52434341 // 'ACCR'
const VERSION = 1
const HEADER = 64

export function accessRecordSize(pages: number): number {
  return HEADER + Math.ceil(pages / 4) * 4
}

/** A fresh record: nothing recorded yet. */
export function encodeAccessRecord(pages: number): Uint8Array {
  const bytes = new Uint8Array(accessRecordSize(pages))
  const view = new DataView(bytes.buffer)
  view.setUint32(0, ACCESS_RECORD_MAGIC, true)
  view.setUint16(4, VERSION, true)
  view.setUint32(8, pages, true)
  return bytes
}

export interface AccessSummary {
  pages: number
  accessed: number
  dirty: number
  recordings: number
  firstRecordedMs: number | null
  lastRecordedMs: number | null
  resetAtMs: number | null
}

/** The fresh record that goes beside an encoded page map. */
export function accessRecordFor(pageMap: Uint8Array): Uint8Array {
  return encodeAccessRecord(new PageMapView(pageMap).totalPages)
}

/** A live view of one record in the pool; undefined from `open` when the bytes are not a record for `pages` pages. */
export class AccessRecord {
  private readonly words: Int32Array
  private readonly times: BigInt64Array
  private readonly flagWords: Int32Array

  private constructor(private readonly bytes: Uint8Array, readonly pages: number) {
    this.words = new Int32Array(bytes.buffer, bytes.byteOffset, HEADER / 4)
    this.times = new BigInt64Array(bytes.buffer, bytes.byteOffset, HEADER / 8)
    this.flagWords = new Int32Array(bytes.buffer, bytes.byteOffset + HEADER, Math.ceil(pages / 4))
  }

  static open(bytes: Uint8Array, pages: number): AccessRecord | undefined {
    if (bytes.byteLength < accessRecordSize(pages) || bytes.byteOffset % 8 !== 0) return undefined
    const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER)
    if (view.getUint32(0, true) !== ACCESS_RECORD_MAGIC || view.getUint16(4, true) !== VERSION || view.getUint32(8, true) !== pages) return undefined
    return new AccessRecord(bytes, pages)
  }

  /** How many recordings were merged since the record was made or reset: 0 means every flag is clear, without reading them. */
  get recordings(): number {
    return Atomics.load(this.words, 3)
  }

  /** A copy of the flag bytes, one per page. */
  flags(): Uint8Array {
    const copy = new Uint8Array(this.pages)
    for (let i = 0; i < this.flagWords.length; i++) {
      const word = Atomics.load(this.flagWords, i)
      for (let b = 0; b < 4 && i * 4 + b < this.pages; b++) copy[i * 4 + b] = (word >>> (b * 8)) & 0xff
    }
    return copy
  }

  /** OR `flags` (one byte per page) in, a word at a time, and count the recording. */
  merge(flags: Uint8Array, nowMs: number): void {
    for (let i = 0; i < this.flagWords.length; i++) {
      let word = 0
      for (let b = 0; b < 4 && i * 4 + b < this.pages; b++) word |= (flags[i * 4 + b] ?? 0) << (b * 8)
      if (word !== 0) Atomics.or(this.flagWords, i, word)
    }
    Atomics.add(this.words, 3, 1)
    Atomics.compareExchange(this.times, 2, 0n, BigInt(nowMs))
    for (;;) {
      const last = Atomics.load(this.times, 3)
      if (last >= BigInt(nowMs) || Atomics.compareExchange(this.times, 3, last, BigInt(nowMs)) === last) break
    }
  }

  /** Forget everything recorded. */
  reset(nowMs: number): void {
    for (let i = 0; i < this.flagWords.length; i++) Atomics.store(this.flagWords, i, 0)
    Atomics.store(this.words, 3, 0)
    Atomics.store(this.times, 2, 0n)
    Atomics.store(this.times, 3, 0n)
    Atomics.store(this.times, 4, BigInt(nowMs))
  }

  summary(): AccessSummary {
    const flags = this.flags()
    let accessed = 0
    let dirty = 0
    for (const flag of flags) {
      if (flag & PAGE_FLAG_ACCESSED) accessed++
      if (flag & PAGE_FLAG_DIRTY) dirty++
    }
    const time = (index: number): number | null => {
      const value = Number(Atomics.load(this.times, index))
      return value === 0 ? null : value
    }
    return {pages: this.pages, accessed, dirty, recordings: Atomics.load(this.words, 3), firstRecordedMs: time(2), lastRecordedMs: time(3), resetAtMs: time(4)}
  }
}

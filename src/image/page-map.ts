/**
 * The page map of a checkpoint: fixed little-endian binary structures a
 * restorer reads in place through its pool mapping, with no parsing.
 *
 *   header   16 bytes: magic u32 'PMAP', version u16, entry size u16, entry count u32, flag bytes offset u32
 *   entries  32 bytes each: vaddr u64, pool offset u64, nr_pages u32, vma index u32, first page index u32, reserved u32
 *   flags    one byte per page, in entry order (PAGE_FLAG_*), filled by tiering
 */
import {CorruptError} from '../errors.js'
import {PAGE_SIZE} from '../sys/page.js'

export const PAGE_MAP_MAGIC = 0x50414d50 // 'PMAP'
export const PAGE_MAP_VERSION = 1
const HEADER_SIZE = 16
const ENTRY_SIZE = 32

export const PAGE_FLAG_ACCESSED = 1
export const PAGE_FLAG_DIRTY = 2
export const PAGE_FLAG_HOT = 4

export interface PageMapEntry {
  vaddr: bigint
  poolOffset: bigint
  nrPages: number
  vmaIndex: number
  firstPage: number
}

export function pageMapSize(entries: number, pages: number): number {
  return HEADER_SIZE + entries * ENTRY_SIZE + pages
}

export function encodePageMap(entries: readonly Omit<PageMapEntry, 'firstPage'>[], pageFlags?: Uint8Array): Uint8Array {
  let pages = 0
  for (const entry of entries) pages += entry.nrPages
  const bytes = new Uint8Array(pageMapSize(entries.length, pages))
  const view = new DataView(bytes.buffer)
  const flagsOffset = HEADER_SIZE + entries.length * ENTRY_SIZE
  view.setUint32(0, PAGE_MAP_MAGIC, true)
  view.setUint16(4, PAGE_MAP_VERSION, true)
  view.setUint16(6, ENTRY_SIZE, true)
  view.setUint32(8, entries.length, true)
  view.setUint32(12, flagsOffset, true)
  let firstPage = 0
  entries.forEach((entry, i) => {
    const at = HEADER_SIZE + i * ENTRY_SIZE
    view.setBigUint64(at, entry.vaddr, true)
    view.setBigUint64(at + 8, entry.poolOffset, true)
    view.setUint32(at + 16, entry.nrPages, true)
    view.setUint32(at + 20, entry.vmaIndex, true)
    view.setUint32(at + 24, firstPage, true)
    firstPage += entry.nrPages
  })
  if (pageFlags) bytes.set(pageFlags.subarray(0, pages), flagsOffset)
  return bytes
}

/** A read-only view of an encoded page map; validates structure once, then reads in place. */
export class PageMapView {
  private readonly view: DataView
  readonly entryCount: number
  readonly flagsOffset: number
  readonly totalPages: number

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const bad = (why: string) => new CorruptError('PAGE_MAP_CORRUPT', `page map is corrupt: ${why}`, 'Run `cxlfork pool fsck`; take a new checkpoint.')
    if (bytes.byteLength < HEADER_SIZE) throw bad('too short')
    if (this.view.getUint32(0, true) !== PAGE_MAP_MAGIC) throw bad('bad magic')
    if (this.view.getUint16(4, true) !== PAGE_MAP_VERSION || this.view.getUint16(6, true) !== ENTRY_SIZE) throw bad('unknown version')
    this.entryCount = this.view.getUint32(8, true)
    this.flagsOffset = this.view.getUint32(12, true)
    if (this.flagsOffset !== HEADER_SIZE + this.entryCount * ENTRY_SIZE || this.flagsOffset > bytes.byteLength) throw bad('entry table out of bounds')
    let pages = 0
    let previousEnd = 0n
    for (let i = 0; i < this.entryCount; i++) {
      const entry = this.entry(i)
      if (entry.firstPage !== pages) throw bad(`entry ${i} page index`)
      if (entry.vaddr < previousEnd || entry.vaddr % BigInt(PAGE_SIZE) !== 0n || entry.nrPages === 0) throw bad(`entry ${i} out of order`)
      previousEnd = entry.vaddr + BigInt(entry.nrPages * PAGE_SIZE)
      pages += entry.nrPages
    }
    if (this.flagsOffset + pages !== bytes.byteLength) throw bad('flag bytes do not match the page count')
    this.totalPages = pages
  }

  entry(index: number): PageMapEntry {
    const at = HEADER_SIZE + index * ENTRY_SIZE
    return {
      vaddr: this.view.getBigUint64(at, true),
      poolOffset: this.view.getBigUint64(at + 8, true),
      nrPages: this.view.getUint32(at + 16, true),
      vmaIndex: this.view.getUint32(at + 20, true),
      firstPage: this.view.getUint32(at + 24, true),
    }
  }

  *entries(): Generator<PageMapEntry> {
    for (let i = 0; i < this.entryCount; i++) yield this.entry(i)
  }

  pageFlags(): Uint8Array {
    return this.bytes.subarray(this.flagsOffset, this.flagsOffset + this.totalPages)
  }
}

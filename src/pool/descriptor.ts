/**
 * A checkpoint descriptor: the one metadata record the directory points at.
 * It lives in metadata pages owned by the checkpoint's serial and lists
 * everything else the checkpoint owns. Layout (little endian):
 *
 *   0  magic "CXLFDESC"   8 u32 version    12 u32 total length
 *  16  u32 serial        20 u32 owner uid  24 u64 created (ms since epoch)
 *  32  u16 name length   34 u16 reserved   36 u32 extent count
 *  40  u32 section count 44 u32 summary length
 *  48  name (UTF-8, padded to 8), extents (u64 pool offset, u64 length),
 *      sections (u32 type, u32 CRC-32, u64 pool offset, u64 length),
 *      summary (JSON, padded to 4), u32 CRC-32 of everything before it.
 */
import {CorruptError} from '../errors.js'
import {crc32} from './checksum.js'
import type {MetadataRegion} from './regions.js'
import type {PoolLayout} from './layout.js'

export const DESCRIPTOR_MAGIC = 'CXLFDESC'
const DESCRIPTOR_VERSION = 1
const FIXED_BYTES = 48
const EXTENT_BYTES = 16
const SECTION_BYTES = 24

export interface DataExtent {
  poolOffset: bigint
  length: bigint
}

/**
 * Section types with this bit set are mutable areas: written by the checkpoint
 * like any section, then updated in place by whoever may (access bits that
 * clones record); they carry no CRC. Readers treat their contents as hints that
 * can never change what a restore produces, only how.
 */
export const MUTABLE_SECTION = 0x80000000

export function isMutableSection(type: number): boolean {
  return (type & MUTABLE_SECTION) !== 0
}

export interface SectionRecord {
  type: number
  crc: number
  poolOffset: bigint
  length: number
}

export interface Descriptor {
  name: string
  serial: number
  uid: number
  createdAtMs: number
  extents: DataExtent[]
  sections: SectionRecord[]
  summary?: Record<string, unknown>
}

const pad = (value: number, alignment: number): number => Math.ceil(value / alignment) * alignment

export function encodeDescriptor(descriptor: Descriptor): Uint8Array {
  const name = new TextEncoder().encode(descriptor.name)
  const summary = descriptor.summary === undefined ? new Uint8Array(0) : new TextEncoder().encode(JSON.stringify(descriptor.summary))
  const sectionsAt = FIXED_BYTES + pad(name.length, 8) + descriptor.extents.length * EXTENT_BYTES
  const summaryAt = sectionsAt + descriptor.sections.length * SECTION_BYTES
  const crcAt = pad(summaryAt + summary.length, 4)
  const bytes = new Uint8Array(crcAt + 4)
  const view = new DataView(bytes.buffer)
  bytes.set(new TextEncoder().encode(DESCRIPTOR_MAGIC), 0)
  view.setUint32(8, DESCRIPTOR_VERSION, true)
  view.setUint32(12, bytes.length, true)
  view.setUint32(16, descriptor.serial, true)
  view.setUint32(20, descriptor.uid, true)
  view.setBigUint64(24, BigInt(descriptor.createdAtMs), true)
  view.setUint16(32, name.length, true)
  view.setUint32(36, descriptor.extents.length, true)
  view.setUint32(40, descriptor.sections.length, true)
  view.setUint32(44, summary.length, true)
  bytes.set(name, FIXED_BYTES)
  descriptor.extents.forEach((extent, i) => {
    const at = FIXED_BYTES + pad(name.length, 8) + i * EXTENT_BYTES
    view.setBigUint64(at, extent.poolOffset, true)
    view.setBigUint64(at + 8, extent.length, true)
  })
  descriptor.sections.forEach((section, i) => {
    const at = sectionsAt + i * SECTION_BYTES
    view.setUint32(at, section.type, true)
    view.setUint32(at + 4, section.crc, true)
    view.setBigUint64(at + 8, section.poolOffset, true)
    view.setBigUint64(at + 16, BigInt(section.length), true)
  })
  bytes.set(summary, summaryAt)
  view.setUint32(crcAt, crc32(bytes.subarray(0, crcAt)), true)
  return bytes
}

/**
 * The name recorded at the start of a descriptor, read without trusting the
 * CRC: lets a reader tell "this corrupt record is the checkpoint you asked
 * for" from "some other record". Undefined if even the name is out of bounds.
 */
export function peekDescriptorName(metadata: MetadataRegion, at: number): string | undefined {
  if (at < 0 || at + FIXED_BYTES > metadata.length) return undefined
  const fixed = metadata.subarray(at, at + FIXED_BYTES)
  const view = new DataView(fixed.buffer, fixed.byteOffset, FIXED_BYTES)
  const nameLength = view.getUint16(32, true)
  if (at + FIXED_BYTES + nameLength > metadata.length) return undefined
  return new TextDecoder().decode(metadata.subarray(at + FIXED_BYTES, at + FIXED_BYTES + nameLength))
}

/**
 * Decode and fully validate the descriptor at byte `at` of the metadata
 * region: magic, CRC, internal sizes, the expected serial, and every extent
 * and section against the pool's regions. Any failure is a CorruptError.
 */
export function decodeDescriptor(metadata: MetadataRegion, at: number, layout: PoolLayout, expectedSerial: number): Descriptor {
  const where = `descriptor at metadata page ${Math.floor(at / layout.pageSize)}`
  const corrupt = (what: string): CorruptError =>
    new CorruptError('CHECKPOINT_CORRUPT', `${where}: ${what}`, 'Run `cxlfork pool fsck`; `--repair` removes unusable checkpoints.')
  if (at < 0 || at + FIXED_BYTES + 4 > metadata.length) throw corrupt('out of the metadata region')
  const fixed = metadata.subarray(at, at + FIXED_BYTES)
  const head = new DataView(fixed.buffer, fixed.byteOffset, FIXED_BYTES)
  if (new TextDecoder('latin1').decode(metadata.subarray(at, at + 8)) !== DESCRIPTOR_MAGIC) throw corrupt('bad magic')
  const totalLength = head.getUint32(12, true)
  if (totalLength < FIXED_BYTES + 4 || at + totalLength > metadata.length) throw corrupt(`length ${totalLength} out of bounds`)
  // Copy first: the CRC and the fields are then checked on the same bytes.
  const bytes = metadata.slice(at, at + totalLength)
  const view = new DataView(bytes.buffer)
  if (view.getUint32(totalLength - 4, true) !== crc32(bytes.subarray(0, totalLength - 4))) throw corrupt('CRC-32 mismatch')
  if (view.getUint32(8, true) !== DESCRIPTOR_VERSION) throw corrupt(`unknown version ${view.getUint32(8, true)}`)
  const serial = view.getUint32(16, true)
  if (serial !== expectedSerial) throw corrupt(`serial ${serial} does not match its directory entry (${expectedSerial})`)
  const nameLength = view.getUint16(32, true)
  const extentCount = view.getUint32(36, true)
  const sectionCount = view.getUint32(40, true)
  const summaryLength = view.getUint32(44, true)
  const sectionsAt = FIXED_BYTES + pad(nameLength, 8) + extentCount * EXTENT_BYTES
  const summaryAt = sectionsAt + sectionCount * SECTION_BYTES
  if (pad(summaryAt + summaryLength, 4) + 4 !== totalLength) throw corrupt('field counts disagree with its length')

  const dataEnd = layout.dataOffset + layout.dataSize
  const segment = BigInt(layout.segmentSize)
  const extents: DataExtent[] = []
  for (let i = 0; i < extentCount; i++) {
    const offset = FIXED_BYTES + pad(nameLength, 8) + i * EXTENT_BYTES
    const poolOffset = view.getBigUint64(offset, true)
    const length = view.getBigUint64(offset + 8, true)
    if (poolOffset < layout.dataOffset || length === 0n || poolOffset + length > dataEnd ||
        (poolOffset - layout.dataOffset) % segment !== 0n || length % segment !== 0n) {
      throw corrupt(`data extent ${i} (${poolOffset}+${length}) outside the data region or unaligned`)
    }
    extents.push({poolOffset, length})
  }
  const metadataStart = BigInt(layout.metadataOffset)
  const metadataEnd = metadataStart + BigInt(layout.metadataSize)
  const sections: SectionRecord[] = []
  for (let i = 0; i < sectionCount; i++) {
    const offset = sectionsAt + i * SECTION_BYTES
    const poolOffset = view.getBigUint64(offset + 8, true)
    const length = view.getBigUint64(offset + 16, true)
    if (length > 0n && (poolOffset < metadataStart || poolOffset + length > metadataEnd ||
        (poolOffset - metadataStart) % BigInt(layout.pageSize) !== 0n)) {
      throw corrupt(`section ${i} (${poolOffset}+${length}) outside the metadata region or unaligned`)
    }
    sections.push({type: view.getUint32(offset, true), crc: view.getUint32(offset + 4, true), poolOffset, length: Number(length)})
  }
  let summary: Record<string, unknown> | undefined
  if (summaryLength > 0) {
    try {
      summary = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(bytes.subarray(summaryAt, summaryAt + summaryLength))) as Record<string, unknown>
    } catch {
      throw corrupt('summary is not valid JSON')
    }
  }
  let name: string
  try {
    name = new TextDecoder('utf-8', {fatal: true}).decode(bytes.subarray(FIXED_BYTES, FIXED_BYTES + nameLength))
  } catch {
    throw corrupt('name is not valid UTF-8')
  }
  return {name, serial, uid: view.getUint32(20, true), createdAtMs: Number(view.getBigUint64(24, true)), extents, sections,
    ...(summary === undefined ? {} : {summary})}
}

/** Metadata pages a descriptor occupies, from its stored length (bounds already validated by decodeDescriptor). */
export function descriptorPageCount(metadata: MetadataRegion, at: number, pageSize: number): number {
  const head = metadata.subarray(at, at + 16)
  const totalLength = new DataView(head.buffer, head.byteOffset, 16).getUint32(12, true)
  return Math.ceil(totalLength / pageSize)
}

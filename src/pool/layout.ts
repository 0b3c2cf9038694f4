/**
 * On-disk layout of a pool file. Everything is little endian and addressed by
 * pool offset (bytes from the start of the file), never by a host address.
 *
 *   0        header page: magic, version, uuid, sizes, region table, flags,
 *            CRC-32 (immutable after init)
 *   4 KiB    counters page (atomic, not covered by the CRC): the directory
 *            lock's three words (directory-lock.ts), the rest reserved
 *   8 KiB    host table, build-slot table, reference table, directory,
 *            segment-state table (u32 per 2 MiB data segment),
 *            page-state table (u32 per 4 KiB metadata page)
 *   2 MiB n  metadata region (4 KiB pages)
 *   2 MiB m  data region (2 MiB segments, DAX-aligned)
 *
 * The whole layout is a pure function of the pool size, so a header is valid
 * only if recomputing the layout from its size gives the same region table.
 */
import {CorruptError, UsageError} from '../errors.js'
import {crc32} from './checksum.js'
import {PAGE_SIZE} from '../sys/page.js'

export const POOL_MAGIC = 'CXLFPOOL'
/** 2: CRC-32 (zlib) replaced CRC32C on every record and in directory hashing. */
export const POOL_VERSION = 2

export const SEGMENT_SIZE = 2 * 1024 * 1024
export const DEFAULT_POOL_SIZE = 8n * 1024n * 1024n * 1024n
export const MIN_POOL_SIZE = 16n * 1024n * 1024n
/** Above this the metadata region would not fit in one ArrayBuffer view (Node caps them near 4 GiB). */
export const MAX_METADATA_SIZE = 1024 * 1024 * 1024
const MIN_METADATA_SIZE = 4 * 1024 * 1024
/** 2^30 metadata pages at most fit the directory word's page field. */
export const MAX_POOL_SIZE = 1n << 50n

export const HOST_SLOTS = 256
export const HOST_SLOT_SIZE = 128
export const BUILD_SLOTS = 256
export const BUILD_SLOT_SIZE = 16
export const REF_SLOTS = 16384
export const REF_SLOT_SIZE = 16

export const HEADER_CRC_OFFSET = PAGE_SIZE - 4

/**
 * Header flag: the pool's memory was allocated at init and is kept. Freed
 * units are not punched out, so a checkpoint writes into memory that is
 * already there, as on a CXL device. Pools made before the flag read 0.
 */
export const POOL_FLAG_PROVISIONED = 1
/**
 * Header flag: `pool init --shared-group G` made the pool group-writable on
 * purpose, for the group whose gid is at H_SHARED_GID. A group-writable pool
 * without it (or whose file group is not that gid) is refused as POOL_UNSAFE:
 * the mode alone could have been set by anyone who owned the file once.
 * Pools made before the flag read 0 and stay private (mode 0600).
 */
export const POOL_FLAG_SHARED_GROUP = 2
const KNOWN_POOL_FLAGS = POOL_FLAG_PROVISIONED | POOL_FLAG_SHARED_GROUP

export interface PoolLayout {
  totalSize: bigint
  pageSize: number
  segmentSize: number
  hostSlots: number
  buildSlots: number
  refSlots: number
  directorySlots: number
  segmentCount: number
  metadataPageCount: number
  countersOffset: number
  hostTableOffset: number
  buildTableOffset: number
  refTableOffset: number
  directoryOffset: number
  segmentStateOffset: number
  pageStateOffset: number
  metadataOffset: number
  metadataSize: number
  dataOffset: bigint
  dataSize: bigint
}

export interface PoolHeader extends PoolLayout {
  version: number
  uuid: string
  createdAtMs: number
  /** POOL_FLAG_PROVISIONED: freed units keep their memory. */
  provisioned: boolean
  /** POOL_FLAG_SHARED_GROUP: the gid the pool is deliberately shared with (mode 0660), else undefined. */
  sharedGid: number | undefined
}

const alignUp = (value: number, alignment: number): number => Math.ceil(value / alignment) * alignment

/** Layout of a pool of `totalSize` bytes; UsageError if it cannot hold one segment of data. */
export function computeLayout(totalSize: bigint): PoolLayout {
  if (totalSize < MIN_POOL_SIZE) {
    throw new UsageError('POOL_TOO_SMALL', `pool size ${totalSize} bytes is below the minimum of ${MIN_POOL_SIZE} bytes (16M)`,
      'Pass --size 16M or more; the default is 8G.')
  }
  if (totalSize > MAX_POOL_SIZE) throw new UsageError('POOL_TOO_LARGE', `pool size ${totalSize} bytes exceeds the maximum of 1P`)
  if (totalSize % BigInt(SEGMENT_SIZE) !== 0n) {
    throw new UsageError('POOL_SIZE_UNALIGNED', `pool size ${totalSize} is not a multiple of 2 MiB`, 'Sizes such as 512M or 8G are aligned.')
  }
  const total = Number(totalSize)
  // Upper bound on the segment count sizes the segment-state table; the real count is known once the data region starts.
  const maxSegments = total / SEGMENT_SIZE
  const metadataSize = Math.min(MAX_METADATA_SIZE, Math.max(MIN_METADATA_SIZE, alignUp(Math.floor(total / 32), SEGMENT_SIZE)))
  const metadataPageCount = metadataSize / PAGE_SIZE
  // One directory word per two segments: a checkpoint owns at least one segment or is tiny; deleted names leave tombstones.
  const directorySlots = Math.min(1 << 20, Math.max(4096, 2 ** Math.ceil(Math.log2(maxSegments * 2))))

  const countersOffset = PAGE_SIZE
  const hostTableOffset = 2 * PAGE_SIZE
  const buildTableOffset = hostTableOffset + HOST_SLOTS * HOST_SLOT_SIZE
  const refTableOffset = buildTableOffset + BUILD_SLOTS * BUILD_SLOT_SIZE
  const directoryOffset = refTableOffset + REF_SLOTS * REF_SLOT_SIZE
  const segmentStateOffset = directoryOffset + directorySlots * 8
  const pageStateOffset = alignUp(segmentStateOffset + maxSegments * 4, 8)
  const metadataOffset = alignUp(pageStateOffset + metadataPageCount * 4, SEGMENT_SIZE)
  const dataOffset = metadataOffset + metadataSize
  const segmentCount = Math.floor((total - dataOffset) / SEGMENT_SIZE)
  if (segmentCount < 1) {
    throw new UsageError('POOL_TOO_SMALL', `pool size ${totalSize} bytes leaves no room for data`, 'Pass a larger --size.')
  }
  return {
    totalSize, pageSize: PAGE_SIZE, segmentSize: SEGMENT_SIZE,
    hostSlots: HOST_SLOTS, buildSlots: BUILD_SLOTS, refSlots: REF_SLOTS, directorySlots,
    segmentCount, metadataPageCount,
    countersOffset, hostTableOffset, buildTableOffset, refTableOffset, directoryOffset,
    segmentStateOffset, pageStateOffset, metadataOffset, metadataSize,
    dataOffset: BigInt(dataOffset), dataSize: BigInt(segmentCount) * BigInt(SEGMENT_SIZE),
  }
}

// Header field offsets.
const H_MAGIC = 0
const H_VERSION = 8
const H_UUID = 16
const H_TOTAL_SIZE = 32
const H_PAGE_SIZE = 40
const H_SEGMENT_SIZE = 44
const H_HOST_SLOTS = 48
const H_BUILD_SLOTS = 52
const H_REF_SLOTS = 56
const H_DIRECTORY_SLOTS = 60
const H_SEGMENT_COUNT = 64
const H_METADATA_PAGES = 68
const H_REGIONS = 72 // ten u64 region offsets/sizes
const H_CREATED_AT = 152
const H_FLAGS = 160
const H_SHARED_GID = 164

const REGION_FIELDS = ['hostTableOffset', 'buildTableOffset', 'refTableOffset', 'directoryOffset', 'segmentStateOffset',
  'pageStateOffset', 'metadataOffset', 'metadataSize', 'dataOffset', 'dataSize'] as const

/** The header page for a new pool. */
export function encodeHeader(layout: PoolLayout, uuid: Uint8Array, createdAtMs: number, flags = 0, sharedGid = 0): Uint8Array {
  const page = new Uint8Array(PAGE_SIZE)
  const view = new DataView(page.buffer)
  page.set(new TextEncoder().encode(POOL_MAGIC), H_MAGIC)
  view.setUint32(H_VERSION, POOL_VERSION, true)
  page.set(uuid.subarray(0, 16), H_UUID)
  view.setBigUint64(H_TOTAL_SIZE, layout.totalSize, true)
  view.setUint32(H_PAGE_SIZE, layout.pageSize, true)
  view.setUint32(H_SEGMENT_SIZE, layout.segmentSize, true)
  view.setUint32(H_HOST_SLOTS, layout.hostSlots, true)
  view.setUint32(H_BUILD_SLOTS, layout.buildSlots, true)
  view.setUint32(H_REF_SLOTS, layout.refSlots, true)
  view.setUint32(H_DIRECTORY_SLOTS, layout.directorySlots, true)
  view.setUint32(H_SEGMENT_COUNT, layout.segmentCount, true)
  view.setUint32(H_METADATA_PAGES, layout.metadataPageCount, true)
  REGION_FIELDS.forEach((field, i) => view.setBigUint64(H_REGIONS + 8 * i, BigInt(layout[field]), true))
  view.setBigUint64(H_CREATED_AT, BigInt(createdAtMs), true)
  view.setUint32(H_FLAGS, flags, true)
  view.setUint32(H_SHARED_GID, (flags & POOL_FLAG_SHARED_GROUP) === 0 ? 0 : sharedGid, true)
  view.setUint32(HEADER_CRC_OFFSET, crc32(page.subarray(0, HEADER_CRC_OFFSET)), true)
  return page
}

/**
 * Parse and validate a header page read from `path` whose file is `fileSize`
 * bytes long. Every failure is a CorruptError naming what is wrong.
 */
export function decodeHeader(page: Uint8Array, fileSize: bigint, path: string): PoolHeader {
  const hint = `Check that ${path} is a cxlfork pool; \`cxlfork pool init --force\` recreates it (destroying its checkpoints).`
  if (page.length < PAGE_SIZE) {
    throw new CorruptError('POOL_TRUNCATED', `${path} is ${fileSize} bytes long, too short to hold a pool header`, hint)
  }
  const view = new DataView(page.buffer, page.byteOffset, PAGE_SIZE)
  const magic = new TextDecoder('latin1').decode(page.subarray(H_MAGIC, H_MAGIC + 8))
  if (magic !== POOL_MAGIC) throw new CorruptError('POOL_FOREIGN', `${path} is not a cxlfork pool (bad magic)`, hint)
  const version = view.getUint32(H_VERSION, true)
  const wrongVersion = (): CorruptError => new CorruptError('POOL_VERSION', `pool ${path} has format version ${version}; this cxlfork reads version ${POOL_VERSION}`, hint)
  // A pool of an earlier format: its checksums use another algorithm, so say so before checking them.
  if (version >= 1 && version < POOL_VERSION) throw wrongVersion()
  if (view.getUint32(HEADER_CRC_OFFSET, true) !== crc32(page.subarray(0, HEADER_CRC_OFFSET))) {
    throw new CorruptError('POOL_HEADER_CORRUPT', `header of pool ${path} fails its CRC-32 check`, hint)
  }
  if (version !== POOL_VERSION) throw wrongVersion()
  const totalSize = view.getBigUint64(H_TOTAL_SIZE, true)
  let expected: PoolLayout
  try {
    expected = computeLayout(totalSize)
  } catch {
    throw new CorruptError('POOL_HEADER_CORRUPT', `header of pool ${path} records an impossible size (${totalSize})`, hint)
  }
  const stored: Record<string, number | bigint> = {
    pageSize: view.getUint32(H_PAGE_SIZE, true), segmentSize: view.getUint32(H_SEGMENT_SIZE, true),
    hostSlots: view.getUint32(H_HOST_SLOTS, true), buildSlots: view.getUint32(H_BUILD_SLOTS, true),
    refSlots: view.getUint32(H_REF_SLOTS, true), directorySlots: view.getUint32(H_DIRECTORY_SLOTS, true),
    segmentCount: view.getUint32(H_SEGMENT_COUNT, true), metadataPageCount: view.getUint32(H_METADATA_PAGES, true),
  }
  REGION_FIELDS.forEach((field, i) => {
    stored[field] = view.getBigUint64(H_REGIONS + 8 * i, true)
  })
  for (const [field, value] of Object.entries(stored)) {
    if (BigInt(value) !== BigInt(expected[field as keyof PoolLayout] as number | bigint)) {
      throw new CorruptError('POOL_HEADER_CORRUPT', `header of pool ${path}: field ${field} is ${value}, expected ${expected[field as keyof PoolLayout]}`, hint)
    }
  }
  const flags = view.getUint32(H_FLAGS, true)
  if ((flags & ~KNOWN_POOL_FLAGS) !== 0) {
    throw new CorruptError('POOL_HEADER_CORRUPT', `header of pool ${path} sets unknown flags 0x${flags.toString(16)}`, hint)
  }
  if (fileSize < totalSize) {
    throw new CorruptError('POOL_TRUNCATED', `pool ${path} is ${fileSize} bytes long but its header says ${totalSize}`, hint)
  }
  if (fileSize > totalSize) {
    throw new CorruptError('POOL_SIZE_MISMATCH', `pool ${path} is ${fileSize} bytes long but its header says ${totalSize}`, hint)
  }
  return {...expected, version, uuid: formatUuid(page.subarray(H_UUID, H_UUID + 16)),
    createdAtMs: Number(view.getBigUint64(H_CREATED_AT, true)), provisioned: (flags & POOL_FLAG_PROVISIONED) !== 0,
    sharedGid: (flags & POOL_FLAG_SHARED_GROUP) === 0 ? undefined : view.getUint32(H_SHARED_GID, true)}
}

export function formatUuid(bytes: Uint8Array): string {
  const hex = Buffer.from(bytes).toString('hex')
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

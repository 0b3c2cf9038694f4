/**
 * Checksums over a checkpoint's page data: CRC-32C of every 64 KiB chunk of
 * each data range a checkpoint writes, stored as one metadata section
 * (PAGE_CHECKSUMS_SECTION; the section itself has its CRC-32 like every
 * section). The page map's format is left alone: checksums are addressed by
 * pool offset, so they cover the data of every member of a tree, and of a
 * CRIU import, whatever page maps say about it.
 *
 * Why 64 KiB: a damaged byte is located to 16 pages; a GiB of data needs 64 KiB
 * of checksums (16 metadata pages); the chunk divides the 1 MiB pieces the
 * snapshot writes and the 2 MiB segments, so chunks never straddle either; and
 * 4 chunks per native call keep koffi's call cost (~1 us) under 1% of the CRC.
 *
 * Data is read with pread(2) into a small reused buffer, never through the
 * pool mapping: the first touch of a fresh MAP_SHARED tmpfs mapping costs
 * 0.6-1.2 s per GiB here (a page-table entry per page), pread 85 ms, and a
 * read past the end of a truncated file is a short count, not SIGBUS.
 */
import {CorruptError} from '../errors.js'
import {crc32cBlocks} from '../sys/crc32c.js'
import {MAP, PROT, syscallRaw, SYS} from '../sys/syscall.js'
import {mmap} from '../sys/vm-io.js'

/** Section type of the page checksums (image/sections.ts lists it as Section.pageChecksums). */
export const PAGE_CHECKSUMS_SECTION = 4
export const PAGE_CHECKSUM_CHUNK = 64 * 1024

const MAGIC = 0x43505843 // 'CXPC'
const VERSION = 1
/** Algorithm 1: CRC-32C (Castagnoli), initial and final value ~0. */
const ALGORITHM_CRC32C = 1
const HEADER_BYTES = 16
const RANGE_HEADER_BYTES = 16

/** The checksums of `length` bytes of data from `poolOffset`, one per chunk. */
export interface ChecksumRange {
  poolOffset: bigint
  length: bigint
  crcs: Uint32Array
}

export function encodePageChecksums(ranges: readonly ChecksumRange[], chunkSize = PAGE_CHECKSUM_CHUNK): Uint8Array {
  const bytes = HEADER_BYTES + ranges.reduce((sum, range) => sum + RANGE_HEADER_BYTES + 4 * range.crcs.length, 0)
  const out = new Uint8Array(bytes)
  const view = new DataView(out.buffer)
  view.setUint32(0, MAGIC, true)
  view.setUint16(4, VERSION, true)
  view.setUint16(6, ALGORITHM_CRC32C, true)
  view.setUint32(8, chunkSize, true)
  view.setUint32(12, ranges.length, true)
  let at = HEADER_BYTES
  for (const range of ranges) {
    view.setBigUint64(at, range.poolOffset, true)
    view.setBigUint64(at + 8, range.length, true)
    at += RANGE_HEADER_BYTES
    for (const crc of range.crcs) {
      view.setUint32(at, crc, true)
      at += 4
    }
  }
  return out
}

export function decodePageChecksums(bytes: Uint8Array, what: string): {chunkSize: number; ranges: ChecksumRange[]} {
  const bad = (why: string): CorruptError => new CorruptError('CHECKPOINT_CORRUPT', `${what}: page checksums unreadable: ${why}`,
    'Run `cxlfork pool fsck`; `--repair` removes unusable checkpoints.')
  if (bytes.length < HEADER_BYTES) throw bad(`${bytes.length} bytes`)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (view.getUint32(0, true) !== MAGIC) throw bad('bad magic')
  if (view.getUint16(4, true) !== VERSION || view.getUint16(6, true) !== ALGORITHM_CRC32C) {
    throw bad(`version ${view.getUint16(4, true)} algorithm ${view.getUint16(6, true)} (this cxlfork knows version 1, CRC-32C)`)
  }
  const chunkSize = view.getUint32(8, true)
  if (chunkSize === 0 || chunkSize % 4096 !== 0) throw bad(`chunk size ${chunkSize}`)
  const count = view.getUint32(12, true)
  const ranges: ChecksumRange[] = []
  let at = HEADER_BYTES
  for (let i = 0; i < count; i++) {
    if (at + RANGE_HEADER_BYTES > bytes.length) throw bad(`range ${i} is cut short`)
    const poolOffset = view.getBigUint64(at, true)
    const length = view.getBigUint64(at + 8, true)
    at += RANGE_HEADER_BYTES
    if (length % 4096n !== 0n) throw bad(`range ${i} of ${length} bytes`)
    const chunks = Number((length + BigInt(chunkSize) - 1n) / BigInt(chunkSize))
    if (at + 4 * chunks > bytes.length) throw bad(`range ${i} is cut short`)
    const crcs = new Uint32Array(chunks)
    for (let k = 0; k < chunks; k++) crcs[k] = view.getUint32(at + 4 * k, true)
    at += 4 * chunks
    ranges.push({poolOffset, length, crcs})
  }
  return {chunkSize, ranges}
}

/** Bytes read per pread: 16 chunks, in cache while they are checksummed. */
const READ_BYTES = 1 << 20
let readBuffer: bigint | undefined

function buffer(): bigint {
  readBuffer ??= mmap(null, READ_BYTES, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
  return readBuffer
}

/** pread exactly `length` bytes of the pool at `offset` into the read buffer; a short file is POOL_TRUNCATED. */
function readPool(fd: number, offset: bigint, length: number, path: string): void {
  const base = buffer()
  let done = 0
  while (done < length) {
    const r = syscallRaw(SYS.pread64, fd, base + BigInt(done), length - done, offset + BigInt(done))
    if (r === -4n) continue
    if (r <= 0n) {
      throw new CorruptError('POOL_TRUNCATED', `pool ${path}: cannot read ${length} bytes at offset ${offset}${r === 0n ? ' (the file ends before)' : ` (errno ${-r})`}`,
        'The pool file was truncated or damaged; run `cxlfork pool fsck`.')
    }
    done += Number(r)
  }
}

/**
 * CRC-32C of `length` bytes of the pool file from `poolOffset`, in chunks,
 * computed as the bytes become final: advance(n) checksums every whole chunk
 * below byte n of the range, finish() the rest. The checkpoint calls
 * advance() while its snapshot is still writing the pages that follow.
 */
export class PageChecksummer {
  private done = 0n
  private readonly crcs: Uint32Array

  constructor(private readonly fd: number, private readonly path: string, readonly poolOffset: bigint, readonly length: bigint,
    private readonly chunkSize = PAGE_CHECKSUM_CHUNK) {
    this.crcs = new Uint32Array(Number((length + BigInt(chunkSize) - 1n) / BigInt(chunkSize)))
  }

  /** Checksum every whole chunk below byte `upTo` of the range (clamped to it). */
  advance(upTo: bigint): void {
    const chunk = BigInt(this.chunkSize)
    const end = upTo >= this.length ? this.length : (upTo / chunk) * chunk
    while (this.done < end) {
      const n = Number(end - this.done > BigInt(READ_BYTES) ? BigInt(READ_BYTES) : end - this.done)
      readPool(this.fd, this.poolOffset + this.done, n, this.path)
      const first = Number(this.done / chunk)
      crc32cBlocks(buffer(), n, this.chunkSize, this.crcs.subarray(first))
      this.done += BigInt(n)
    }
  }

  finish(): ChecksumRange {
    this.advance(this.length)
    return {poolOffset: this.poolOffset, length: this.length, crcs: this.crcs}
  }
}

/** Checksums of `length` bytes of the pool at `poolOffset`, computed now. */
export function checksumRange(fd: number, path: string, poolOffset: bigint, length: bigint): ChecksumRange {
  return new PageChecksummer(fd, path, poolOffset, length).finish()
}

export interface PageDataDamage {
  /** Pool offset and length of a chunk whose data fails its checksum. */
  poolOffset: number
  length: number
}

export interface PageDataVerdict {
  /** verified: every chunk matches; damaged: some do not; absent: the checkpoint has no page checksums (written before they existed). */
  state: 'verified' | 'damaged' | 'absent'
  /** Bytes checked. */
  bytes: number
  chunks: number
  /** The damaged chunks (at most 16 listed) and how many there are. */
  damaged: PageDataDamage[]
  damagedChunks: number
  /** Checksumming time, µs. */
  timeUs: number
}

const MAX_LISTED = 16

/** Check `ranges` against the pool file's bytes now. */
export function verifyRanges(fd: number, path: string, chunkSize: number, ranges: readonly ChecksumRange[]): PageDataVerdict {
  const t0 = performance.now()
  const damaged: PageDataDamage[] = []
  let damagedChunks = 0
  let bytes = 0
  let chunks = 0
  for (const range of ranges) {
    const actual = checksumRangeWith(fd, path, range, chunkSize)
    for (let i = 0; i < range.crcs.length; i++) {
      chunks++
      if (actual[i] === range.crcs[i]) continue
      damagedChunks++
      const start = BigInt(i) * BigInt(chunkSize)
      const length = Number(range.length - start < BigInt(chunkSize) ? range.length - start : BigInt(chunkSize))
      if (damaged.length < MAX_LISTED) damaged.push({poolOffset: Number(range.poolOffset + start), length})
    }
    bytes += Number(range.length)
  }
  return {state: damagedChunks === 0 ? 'verified' : 'damaged', bytes, chunks, damaged, damagedChunks, timeUs: Math.round((performance.now() - t0) * 1000)}
}

function checksumRangeWith(fd: number, path: string, range: ChecksumRange, chunkSize: number): Uint32Array {
  return new PageChecksummer(fd, path, range.poolOffset, range.length, chunkSize).finish().crcs
}

export const NO_PAGE_CHECKSUMS: PageDataVerdict = {state: 'absent', bytes: 0, chunks: 0, damaged: [], damagedChunks: 0, timeUs: 0}

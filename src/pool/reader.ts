/**
 * Read access to one published checkpoint. Sections come back as copies,
 * checked against their CRC-32; data is addressed in this process's mapping.
 */
import {CorruptError, NotFoundError, UsageError} from '../errors.js'
import {crc32} from './checksum.js'
import {type DataExtent, type SectionRecord, isMutableSection} from './descriptor.js'
import {NO_PAGE_CHECKSUMS, PAGE_CHECKSUMS_SECTION, type PageDataVerdict, decodePageChecksums, verifyRanges} from './page-checksums.js'
import type {PoolCatalog, ResolvedEntry} from './catalog.js'
import type {CheckpointInfo} from './types.js'

export class CheckpointReader {
  /** Sections already copied out and verified: metadata is write-once, so one check per reader suffices. */
  private readonly verified = new Map<SectionRecord, Uint8Array>()

  constructor(private readonly pool: PoolCatalog, private readonly resolved: ResolvedEntry, readonly info: CheckpointInfo) {}

  /** The directory word this reader was opened from (addReference binds to exactly it). */
  get entry(): ResolvedEntry {
    return this.resolved
  }

  get serial(): number {
    return this.resolved.entry.serial
  }

  get dataExtents(): DataExtent[] {
    return this.resolved.descriptor.extents.map((extent) => ({...extent}))
  }

  get sectionRecords(): SectionRecord[] {
    return this.resolved.descriptor.sections.map((section) => ({...section}))
  }

  sectionTypes(): number[] {
    return this.resolved.descriptor.sections.map((section) => section.type)
  }

  hasSection(type: number): boolean {
    return this.resolved.descriptor.sections.some((section) => section.type === type)
  }

  /** The first section of `type`, CRC verified (NotFoundError SECTION_NOT_FOUND if absent). */
  section(type: number): Uint8Array {
    const record = this.resolved.descriptor.sections.find((section) => section.type === type)
    if (!record) throw new NotFoundError('SECTION_NOT_FOUND', `checkpoint ${this.info.name} has no section of type ${type}`)
    return this.readSection(record)
  }

  /** Every section of `type`, in the order they were added. */
  sectionsOfType(type: number): Uint8Array[] {
    return this.resolved.descriptor.sections.filter((section) => section.type === type).map((section) => this.readSection(section))
  }

  /**
   * A zero-copy window on the first mutable section of `type` (see
   * MUTABLE_SECTION), for updates in place with Atomics; undefined if absent.
   */
  mutableSection(type: number): Uint8Array | undefined {
    if (!isMutableSection(type)) throw new UsageError('INVALID_SECTION', `section type ${type} is not a mutable one`)
    const record = this.resolved.descriptor.sections.find((section) => section.type === type)
    if (!record) return undefined
    return this.mutableWindow(record)
  }

  /** Windows on every mutable section of `type`, in the order they were added. */
  mutableSections(type: number): Uint8Array[] {
    if (!isMutableSection(type)) throw new UsageError('INVALID_SECTION', `section type ${type} is not a mutable one`)
    return this.resolved.descriptor.sections.filter((section) => section.type === type).map((record) => this.mutableWindow(record))
  }

  private mutableWindow(record: SectionRecord): Uint8Array {
    const start = Number(record.poolOffset) - this.pool.header.metadataOffset
    return this.pool.regions.metadata.subarray(start, start + record.length)
  }

  private readSection(record: SectionRecord): Uint8Array {
    if (isMutableSection(record.type)) return this.mutableWindow(record).slice()
    const cached = this.verified.get(record)
    if (cached) return cached
    const bytes = this.copyAndVerify(record)
    this.verified.set(record, bytes)
    return bytes
  }

  private copyAndVerify(record: SectionRecord): Uint8Array {
    const start = Number(record.poolOffset) - this.pool.header.metadataOffset
    const bytes = record.length === 0 ? new Uint8Array(0) : this.pool.regions.metadata.slice(start, start + record.length)
    if (crc32(bytes) !== record.crc) {
      if (this.pool.directory.load(this.resolved.index) !== this.resolved.word) {
        throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${this.info.name} was deleted while being read`)
      }
      throw new CorruptError('CHECKPOINT_CORRUPT', `checkpoint ${this.info.name}: section of type ${record.type} at pool offset ${record.poolOffset} fails its CRC-32 check`,
        'Run `cxlfork pool fsck`; `--repair` removes unusable checkpoints.')
    }
    return bytes
  }

  /** Check every section's checksum (open and inspect refuse a damaged checkpoint up front). */
  verifyAll(): void {
    for (const record of this.resolved.descriptor.sections) this.readSection(record)
  }

  /** Whether the checkpoint carries page checksums (checkpoints taken before they existed do not). */
  get hasPageChecksums(): boolean {
    return this.hasSection(PAGE_CHECKSUMS_SECTION)
  }

  /**
   * Read every byte of the checkpoint's page data and compare it with the
   * checksums written with it: O(data), unlike a restore, so only on request
   * (restore --verify, inspect --verify, pool fsck). A range outside the
   * checkpoint's own extents is corruption of the checksum record.
   */
  verifyPageData(): PageDataVerdict {
    const sections = this.sectionsOfType(PAGE_CHECKSUMS_SECTION)
    if (sections.length === 0) return {...NO_PAGE_CHECKSUMS}
    const verdicts = sections.map((bytes) => {
      const {chunkSize, ranges} = decodePageChecksums(bytes, `checkpoint ${this.info.name}`)
      for (const range of ranges) {
        const inside = this.resolved.descriptor.extents.some((extent) => range.poolOffset >= extent.poolOffset && range.poolOffset + range.length <= extent.poolOffset + extent.length)
        if (!inside) {
          throw new CorruptError('CHECKPOINT_CORRUPT', `checkpoint ${this.info.name}: page checksums cover pool offset ${range.poolOffset} (+${range.length}), outside its data`,
            'Run `cxlfork pool fsck`; `--repair` removes unusable checkpoints.')
        }
      }
      return verifyRanges(this.pool.fd, this.pool.path, chunkSize, ranges)
    })
    const damaged = verdicts.flatMap((verdict) => verdict.damaged).slice(0, 16)
    const damagedChunks = verdicts.reduce((sum, verdict) => sum + verdict.damagedChunks, 0)
    // The data may have been freed and reused by a delete meanwhile: that is not damage.
    if (damagedChunks > 0 && this.pool.directory.load(this.resolved.index) !== this.resolved.word) {
      throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${this.info.name} was deleted while being read`)
    }
    return {
      state: damagedChunks === 0 ? 'verified' : 'damaged',
      bytes: verdicts.reduce((sum, verdict) => sum + verdict.bytes, 0),
      chunks: verdicts.reduce((sum, verdict) => sum + verdict.chunks, 0),
      damaged,
      damagedChunks,
      timeUs: verdicts.reduce((sum, verdict) => sum + verdict.timeUs, 0),
    }
  }

  /** This process's address of `poolOffset`, which must lie inside one of the checkpoint's data extents. */
  /** Bytes of this checkpoint's data from `poolOffset` to the end of the extent holding it. */
  bytesFrom(poolOffset: bigint): bigint {
    const extent = this.resolved.descriptor.extents.find((e) => poolOffset >= e.poolOffset && poolOffset < e.poolOffset + e.length)
    if (!extent) throw new UsageError('OFFSET_OUTSIDE_CHECKPOINT', `pool offset ${poolOffset} is not in checkpoint ${this.info.name}'s data`)
    return extent.poolOffset + extent.length - poolOffset
  }

  address(poolOffset: bigint): bigint {
    const inside = this.resolved.descriptor.extents.some((extent) => poolOffset >= extent.poolOffset && poolOffset < extent.poolOffset + extent.length)
    if (!inside) throw new UsageError('OFFSET_OUTSIDE_CHECKPOINT', `pool offset ${poolOffset} is not in checkpoint ${this.info.name}'s data`)
    return this.pool.baseAddress + poolOffset
  }
}

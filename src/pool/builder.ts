/**
 * Building one checkpoint: allocate write-once data segments, add checksummed
 * metadata sections, then publish under a name in one CAS. Until publish
 * nothing is visible; if the builder dies, gc finds its build slot's owner
 * gone and frees every unit carrying its serial.
 */
import {ConflictError, UsageError} from '../errors.js'
import {allocateRun, freeUnitsOf, poolFull} from './allocator.js'
import {crc32} from './checksum.js'
import type {DataExtent, Descriptor, SectionRecord} from './descriptor.js'
import {encodeDescriptor, isMutableSection} from './descriptor.js'
import {EntryState, decodeEntry, encodeEntry} from './directory.js'
import {validateCheckpointName} from './names.js'
import {runGc} from './gc.js'
import {processStartTime} from './owners.js'
import type {PoolCatalog} from './catalog.js'
import type {CheckpointInfo} from './types.js'

export interface AllocatedData {
  poolOffset: bigint
  length: bigint
  /** Where the extent is mapped in this process: baseAddress + poolOffset. */
  address: bigint
}

export interface PublishInfo {
  uid: number
  summary?: Record<string, unknown>
}

type BuilderState = 'building' | 'published' | 'aborted'

export class CheckpointBuilder {
  private state: BuilderState = 'building'
  private readonly extents: DataExtent[] = []
  private readonly sections: SectionRecord[] = []
  private segmentHint = 0
  private pageHint = 0
  private lastRenewalMs = Date.now()

  private constructor(
    private readonly pool: PoolCatalog,
    /** The build slot this builder owns. */
    readonly slot: number,
    private readonly slotWord: bigint,
    /** Owns every unit this build allocates; never reused. */
    readonly serial: number,
  ) {}

  static begin(pool: PoolCatalog): CheckpointBuilder {
    const owner = {hostIndex: pool.hostIndex, pid: process.pid}
    const startTime = processStartTime(process.pid) ?? 0
    // Spread builders over the slots so concurrent claims rarely collide.
    const firstSlot = (process.pid * 7 + Math.floor(Math.random() * pool.buildSlots.count)) % pool.buildSlots.count
    let claimed = pool.buildSlots.claim(owner, startTime, firstSlot)
    if (!claimed) {
      pool.renewLease()
      runGc(pool) // slots held by dead builders come back
      claimed = pool.buildSlots.claim(owner, startTime, firstSlot)
    }
    if (!claimed) {
      throw new ConflictError('BUILD_SLOTS_FULL', `all ${pool.buildSlots.count} build slots of pool ${pool.path} are in use`,
        'Too many checkpoints are being taken at once; retry when some finish.')
    }
    return new CheckpointBuilder(pool, claimed.slot, claimed.word, claimed.serial)
  }

  private requireBuilding(action: string): void {
    if (this.state !== 'building') throw new UsageError('BUILDER_FINISHED', `cannot ${action}: checkpoint build ${this.serial} is ${this.state}`)
  }

  /** Long builds keep the host lease fresh so other hosts do not take them for dead. */
  private keepLeaseFresh(): void {
    const now = Date.now()
    if (now - this.lastRenewalMs > this.pool.leaseMs / 4) {
      this.pool.renewLease()
      this.lastRenewalMs = now
    }
  }

  /**
   * Claim a contiguous, 2 MiB aligned data extent of at least `bytes`. The
   * caller writes it once, before publish; clones map it copy-on-write. With
   * `reserve`, the file's memory for the first `bytes` is allocated now
   * (POOL_NO_SPACE if it cannot be): needed before writing it through the
   * mapping, where a full file system would be SIGBUS.
   */
  allocateData(bytes: bigint, options: {reserve?: boolean} = {}): AllocatedData {
    this.requireBuilding('allocate data')
    if (bytes <= 0n) throw new UsageError('INVALID_SIZE', `cannot allocate ${bytes} bytes`)
    this.keepLeaseFresh()
    const segmentSize = BigInt(this.pool.header.segmentSize)
    const count = (bytes + segmentSize - 1n) / segmentSize
    if (count > BigInt(this.pool.header.segmentCount)) throw poolFull(`${bytes} bytes of data`)
    const first = allocateRun(this.pool.regions.segmentStates, Number(count), this.serial, this.segmentHint)
    if (first === undefined) throw poolFull(`${bytes} bytes of data (${count} contiguous 2 MiB segments)`)
    this.segmentHint = first + Number(count)
    const poolOffset = this.pool.header.dataOffset + BigInt(first) * segmentSize
    const length = count * segmentSize
    this.extents.push({poolOffset, length})
    // Written through the mapping (reserve) or by write(2)/splice(2), whose ENOSPC the writer reports.
    if (options.reserve) this.pool.reserve(poolOffset, bytes, `${bytes} bytes of page data`)
    return {poolOffset, length, address: this.pool.baseAddress + poolOffset}
  }

  /** Allocate metadata pages for `bytes` and copy them in; returns the pool offset. */
  private storeMetadata(bytes: Uint8Array, what: string): {poolOffset: bigint; firstPage: number; pages: number} {
    const pageSize = this.pool.header.pageSize
    const pages = Math.ceil(bytes.length / pageSize)
    const firstPage = allocateRun(this.pool.regions.pageStates, pages, this.serial, this.pageHint)
    if (firstPage === undefined) throw poolFull(`${what} (${bytes.length} bytes of metadata)`)
    this.pageHint = firstPage + pages
    try {
      this.pool.reserve(BigInt(this.pool.header.metadataOffset + firstPage * pageSize), BigInt(pages * pageSize), what)
    } catch (error) {
      for (let page = firstPage; page < firstPage + pages; page++) Atomics.compareExchange(this.pool.regions.pageStates, page, this.serial, 0)
      throw error
    }
    this.pool.regions.metadata.set(bytes, firstPage * pageSize)
    return {poolOffset: BigInt(this.pool.header.metadataOffset + firstPage * pageSize), firstPage, pages}
  }

  /** Store a metadata record of caller-defined `type`; its CRC-32 is checked whenever it is read (a mutable section: none, see MUTABLE_SECTION). */
  addSection(type: number, bytes: Uint8Array): void {
    this.requireBuilding('add a section')
    if (!Number.isInteger(type) || type < 0 || type > 0xffffffff) throw new UsageError('INVALID_SECTION', `section type ${type} is not a u32`)
    this.keepLeaseFresh()
    const poolOffset = bytes.length === 0 ? BigInt(this.pool.header.metadataOffset) : this.storeMetadata(bytes, `section ${type}`).poolOffset
    this.sections.push({type, crc: isMutableSection(type) ? 0 : crc32(bytes), poolOffset, length: bytes.length})
  }

  /**
   * Make the checkpoint visible as `name`: the single commit point is the CAS
   * of a free directory word (PoolCatalog.insertEntry). ConflictError NAME_TAKEN
   * leaves the builder usable (publish under another name, or abort).
   */
  publish(name: string, info: PublishInfo): CheckpointInfo {
    this.requireBuilding('publish')
    validateCheckpointName(name)
    this.pool.renewLease()
    const descriptor: Descriptor = {name, serial: this.serial, uid: info.uid, createdAtMs: Date.now(),
      extents: this.extents, sections: this.sections, ...(info.summary === undefined ? {} : {summary: info.summary})}
    const descriptorBytes = encodeDescriptor(descriptor)
    const {firstPage, pages} = this.storeMetadata(descriptorBytes, 'the checkpoint descriptor')
    const published = encodeEntry({state: EntryState.published, descriptorPage: firstPage, serial: this.serial})
    try {
      const index = this.pool.insertEntry(name, published)
      this.state = 'published'
      this.pool.buildSlots.release(this.slot, this.slotWord)
      return this.pool.checkpointInfo({index, word: published, entry: decodeEntry(published), descriptor}, 0)
    } finally {
      if (this.state !== 'published') {
        // Give back the descriptor pages so another publish attempt starts clean.
        for (let page = firstPage; page < firstPage + pages; page++) {
          this.pool.punchPage(page)
          Atomics.compareExchange(this.pool.regions.pageStates, page, this.serial, 0)
        }
      }
    }
  }

  /** Free everything this build allocated and its slot. A no-op after publish or a previous abort. */
  abort(): void {
    if (this.state !== 'building') return
    this.state = 'aborted'
    freeUnitsOf(this.pool.regions.segmentStates, this.serial, (unit) => this.pool.punchSegment(unit))
    freeUnitsOf(this.pool.regions.pageStates, this.serial, (unit) => this.pool.punchPage(unit))
    this.pool.buildSlots.release(this.slot, this.slotWord)
  }
}

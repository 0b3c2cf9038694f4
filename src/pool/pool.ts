/**
 * A mapped pool: open/create, and the entry points for building, reading,
 * referencing, removing, collecting and checking checkpoints. Every piece of
 * shared state lives in the mapping; the parts that work on it (builder,
 * reader, references, gc, fsck) share one PoolCatalog (catalog.ts), which a
 * Pool holds and does not expose.
 */
import {closeSync, readSync} from 'node:fs'
import {resolve} from 'node:path'

import {ConflictError, NotFoundError, UsageError} from '../errors.js'
import {CheckpointBuilder} from './builder.js'
import {PoolCatalog, controlAreaEnd, reserveRange} from './catalog.js'
import {checkCreatable, createPoolFile} from './create.js'
import {EntryState, isLive, withState} from './directory.js'
import {requireShareableFileSystem} from './filesystem.js'
import {runFsck} from './fsck.js'
import {runGc} from './gc.js'
import {leaseMsFromEnvironment} from './hosts.js'
import {poolInfo} from './info.js'
import type {PoolHeader} from './layout.js'
import {DEFAULT_POOL_SIZE, decodeHeader} from './layout.js'
import {PAGE_SIZE} from '../sys/page.js'
import {PoolMapping} from './mapping.js'
import {openExistingPool, refuseForeignOwner, trustPool} from './pool-file.js'
import {processStartTime} from './owners.js'
import {CheckpointReader} from './reader.js'
import type {ReferenceHandle} from './references.js'
import {PoolRegions} from './regions.js'
import type {CheckpointDetails, CheckpointInfo, FsckReport, GcReport, PoolInfo, RemoveResult} from './types.js'

export type {ResolvedEntry} from './catalog.js'

export interface PoolOpenOptions {
  /** Create the pool when the file does not exist (first use). */
  create?: boolean
  /** Size for a pool created here; default 8 GiB, sparse. */
  size?: bigint
  /** Lease of this host in ms; default $CXLFORK_LEASE_MS or 10 minutes. */
  leaseMs?: number
}

export interface PoolCreateOptions {
  size?: bigint
  /** Replace an existing file. Clones of the old pool keep their mapping of the old (unlinked) file. */
  force?: boolean
  /** Accept a size larger than the whole file system (a sparse pool that can never be filled). */
  oversize?: boolean
  /** Share the pool with this group: file group and header record it, mode 0660 (see trustPool). */
  sharedGid?: number
  /** Allocate all of the pool's memory now and keep it when checkpoints are removed (POOL_FLAG_PROVISIONED). */
  provision?: boolean
}

function missingPool(path: string): NotFoundError {
  return new NotFoundError('POOL_NOT_FOUND', `no pool at ${path}`,
    `Create it with \`cxlfork pool init --pool ${path}\` (or a checkpoint creates it on first use); --pool and $CXLFORK_POOL choose another, the default is /dev/shm/cxlfork.pool.`)
}

export class Pool {
  private closed = false

  private constructor(private readonly catalog: PoolCatalog, readonly fileSystem: string) {}

  get path(): string {
    return this.catalog.path
  }

  /** The pool file's descriptor, for writing page data with sendfile/splice and reading it back. */
  get fd(): number {
    return this.catalog.fd
  }

  /** The immutable header: sizes, offsets, flags. */
  get header(): PoolHeader {
    return this.catalog.header
  }

  get leaseMs(): number {
    return this.catalog.leaseMs
  }

  get size(): bigint {
    return this.catalog.header.totalSize
  }

  get baseAddress(): bigint {
    return this.catalog.baseAddress
  }

  get uuid(): string {
    return this.catalog.header.uuid
  }

  /**
   * Map the pool at `path`, creating it first if `create` is set and it does
   * not exist. Validates the file system, the header and the file size.
   */
  static open(path: string, options: PoolOpenOptions = {}): Pool {
    const absolute = resolve(path)
    let opened = openExistingPool(absolute)
    if (!opened) {
      if (!options.create) throw missingPool(absolute)
      createPoolFile(absolute, {size: options.size ?? DEFAULT_POOL_SIZE, force: false}, true)
      opened = openExistingPool(absolute)
      if (!opened) throw missingPool(absolute)
    }
    const {fd, stat} = opened
    try {
      const verdict = requireShareableFileSystem(absolute, true, fd)
      const page = new Uint8Array(PAGE_SIZE)
      const length = stat.size < BigInt(PAGE_SIZE) ? Number(stat.size) : PAGE_SIZE
      const got = length === 0 ? 0 : readSync(fd, page, 0, length, 0)
      let header: PoolHeader
      try {
        header = decodeHeader(page.subarray(0, got), stat.size, absolute)
      } catch (error) {
        // Another user's file: say that rather than what is wrong inside it.
        refuseForeignOwner(absolute, stat)
        throw error
      }
      // Before anything is written (this host's lease) or mapped.
      trustPool(absolute, stat, header.sharedGid)
      // Every shared word is written through the mapping, where a page the file
      // system cannot allocate is SIGBUS: allocate the control area first (a no-op once done).
      if (!header.provisioned) reserveRange(fd, absolute, 0n, BigInt(controlAreaEnd(header)), 'the pool\'s control area')
      const mapping = PoolMapping.map(fd, header.totalSize, header.metadataOffset)
      const metadataStart = BigInt(header.metadataOffset)
      const regions = new PoolRegions(header, mapping.control, (offset, length) => mapping.window(metadataStart + BigInt(offset), length))
      return new Pool(new PoolCatalog(absolute, fd, header, mapping, regions, options.leaseMs ?? leaseMsFromEnvironment()), verdict.kind)
    } catch (error) {
      closeSync(fd)
      throw error
    }
  }

  /**
   * Everything about creating a pool at `path` that can be checked without
   * creating it: no planted symbolic link on the way, the directory exists,
   * the file system shares memory. Commands that create the pool late (a
   * checkpoint, after its target passed every check) call it first.
   */
  static checkCreatable(path: string): void {
    checkCreatable(resolve(path))
  }

  /** `pool init`: create a new pool (ConflictError POOL_EXISTS unless `force`) and open it. */
  static create(path: string, options: PoolCreateOptions = {}): Pool {
    const absolute = resolve(path)
    createPoolFile(absolute, {size: options.size ?? DEFAULT_POOL_SIZE, force: options.force ?? false, oversize: options.oversize ?? false,
      provision: options.provision ?? false, ...(options.sharedGid === undefined ? {} : {sharedGid: options.sharedGid})}, false)
    return Pool.open(absolute)
  }

  private ensureOpen(): void {
    if (this.closed) throw new UsageError('POOL_CLOSED', `pool ${this.path} is closed`)
  }

  /** Push this host's lease forward; long operations call it as they go. */
  renewLease(): void {
    this.catalog.renewLease()
  }

  /** Allocate the file's memory behind [poolOffset, +length) before it is written (see PoolCatalog.reserve). */
  reserve(poolOffset: bigint, length: bigint, what: string): void {
    this.catalog.reserve(poolOffset, length, what)
  }

  /** POOL_NO_SPACE for `what` needing `needed` bytes, with what the file system has free now (and had, `freeBefore`). */
  noSpace(what: string, needed: bigint, freeBefore?: bigint): ConflictError {
    return this.catalog.noSpace(what, needed, freeBefore)
  }

  /** Bytes the pool's file system has free now. */
  fileSystemFree(): bigint {
    return this.catalog.fileSystemFree()
  }

  /** Start a checkpoint: claims a build slot and thereby a fresh serial. */
  beginCheckpoint(): CheckpointBuilder {
    this.ensureOpen()
    this.catalog.renewLease()
    return CheckpointBuilder.begin(this.catalog)
  }

  /** Whether a live checkpoint is named `name` (a corrupt record of that name is a CorruptError). */
  has(name: string): boolean {
    this.ensureOpen()
    return this.catalog.lookup(name) !== undefined
  }

  /** Every checkpoint, published or being deleted; corrupt records are listed as such. */
  list(): CheckpointInfo[] {
    this.ensureOpen()
    const liveRefs = this.catalog.references.liveCounts()
    const checkpoints: CheckpointInfo[] = []
    for (const {index, word, entry} of this.catalog.directory.occupied()) {
      if (!isLive(entry)) continue
      const read = this.catalog.readEntry(index, word)
      if (read.kind === 'changed') continue
      if (read.kind === 'corrupt') {
        checkpoints.push({name: read.name ?? `<corrupt directory slot ${index}>`, serial: entry.serial, uid: -1, createdAt: new Date(0).toISOString(),
          dataBytes: 0, metadataBytes: 0, state: 'corrupt', liveRefs: liveRefs.get(entry.serial) ?? 0})
        continue
      }
      checkpoints.push(this.catalog.checkpointInfo({index, word, entry, descriptor: read.descriptor}, liveRefs.get(entry.serial) ?? 0))
    }
    return checkpoints.sort((a, b) => a.name.localeCompare(b.name))
  }

  /** Open a published checkpoint for restore or inspection: descriptor and every section checksum verified. */
  openCheckpoint(name: string, options: {uid?: number} = {}): CheckpointReader {
    this.ensureOpen()
    const resolved = this.catalog.lookup(name)
    if (!resolved) throw this.catalog.checkpointNotFound(name)
    this.catalog.requireAccess(resolved.descriptor, options.uid ?? process.getuid?.() ?? 0, 'open')
    if (resolved.entry.state !== EntryState.published) {
      throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} is being deleted`, 'It stays until its last clone exits; pick another checkpoint.')
    }
    const reader = new CheckpointReader(this.catalog, resolved, this.catalog.checkpointInfo(resolved, this.catalog.references.liveCount(resolved.entry.serial)))
    reader.verifyAll()
    return reader
  }

  /** What the pool knows about one checkpoint, checksums verified; with `verifyData`, its page data too. */
  inspect(name: string, options: {uid?: number; verifyData?: boolean} = {}): CheckpointDetails {
    this.ensureOpen()
    const resolved = this.catalog.lookup(name)
    if (!resolved) throw this.catalog.checkpointNotFound(name)
    this.catalog.requireAccess(resolved.descriptor, options.uid ?? process.getuid?.() ?? 0, 'inspect')
    const reader = new CheckpointReader(this.catalog, resolved, this.catalog.checkpointInfo(resolved, 0))
    reader.verifyAll()
    const references = this.catalog.references.describe(resolved.entry.serial)
    return {
      ...this.catalog.checkpointInfo(resolved, references.filter((reference) => reference.alive).length),
      directorySlot: resolved.index,
      descriptorPoolOffset: this.catalog.header.metadataOffset + this.catalog.metadataByteOffset(resolved.entry.descriptorPage),
      dataExtents: resolved.descriptor.extents.map((extent) => ({poolOffset: Number(extent.poolOffset), length: Number(extent.length)})),
      sections: resolved.descriptor.sections.map((section) => ({type: section.type, poolOffset: Number(section.poolOffset),
        length: section.length, crc32: section.crc.toString(16).padStart(8, '0')})),
      references,
      pageChecksums: reader.hasPageChecksums,
      ...(options.verifyData ? {pageData: reader.verifyPageData()} : {}),
    }
  }

  // ---- references -------------------------------------------------------

  /**
   * Record that process `pid` (with its /proc start time) maps a checkpoint:
   * the one a reader opened (the same directory word, so never a checkpoint
   * published later in a reused word or under the same name), or by name.
   * Under the directory lock, so rm either sees this reference or has
   * already marked the checkpoint deleting.
   */
  addReference(target: string | CheckpointReader, clone: {pid: number; startTime?: number}): ReferenceHandle {
    this.ensureOpen()
    this.catalog.renewLease()
    const startTime = clone.startTime ?? processStartTime(clone.pid) ?? 0
    const name = typeof target === 'string' ? target : target.info.name
    return this.catalog.directoryLock.with(() => {
      const resolved = typeof target === 'string' ? this.catalog.lookup(name) : target.entry
      if (!resolved) throw this.catalog.checkpointNotFound(name)
      if (this.catalog.directory.load(resolved.index) !== resolved.word) {
        throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} was deleted after it was opened`, 'Restore it again if it was replaced.')
      }
      if (resolved.entry.state !== EntryState.published) {
        throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} is being deleted`, 'It stays until its last clone exits; pick another checkpoint.')
      }
      const handle = this.catalog.references.claim(resolved.entry.serial, name, clone.pid, startTime)
      // Only a process outside the lock (fsck --repair) changes the word; after this check rm sees the reference.
      if (this.catalog.directory.load(resolved.index) === resolved.word) return handle
      this.catalog.references.release(handle)
      throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} was deleted while being referenced`)
    })
  }

  releaseReference(handle: ReferenceHandle): void {
    this.ensureOpen()
    this.catalog.references.release(handle)
  }

  // ---- removal ----------------------------------------------------------

  /**
   * Delete `name`. Refused (CHECKPOINT_IN_USE) while a live clone holds a
   * reference; with `force` it is hidden from new restores and gc frees it
   * after its last clone exits.
   */
  remove(name: string, options: {force?: boolean; uid?: number} = {}): RemoveResult {
    this.ensureOpen()
    this.catalog.renewLease()
    const uid = options.uid ?? process.getuid?.() ?? 0
    // Decided under the directory lock, where no reference can be added: a refused rm changes nothing, not even for an instant.
    const decided = this.catalog.directoryLock.with(() => {
      for (;;) {
        const resolved = this.catalog.lookup(name)
        if (!resolved) throw this.catalog.checkpointNotFound(name)
        this.catalog.requireAccess(resolved.descriptor, uid, 'delete')
        const liveRefs = this.catalog.references.collect(resolved.entry.serial)
        if (liveRefs > 0 && !options.force) {
          throw new ConflictError('CHECKPOINT_IN_USE', `checkpoint ${name} is in use by ${liveRefs} running clone${liveRefs === 1 ? '' : 's'} (mapping its pages, or holding its reference until it exits)`,
            'Stop the clones first, or pass --force to delete it once the last clone exits (`cxlfork pool gc` finishes it).')
        }
        let deletingWord = resolved.word
        if (resolved.entry.state === EntryState.published) {
          deletingWord = withState(resolved.word, EntryState.deleting)
          if (!this.catalog.directory.swap(resolved.index, resolved.word, deletingWord)) continue
        }
        return {index: resolved.index, serial: resolved.entry.serial, deletingWord, liveRefs}
      }
    })
    // DELETING: no reference can be added any more, so none of its units is needed once the live ones are gone.
    if (decided.liveRefs > 0) return {name, serial: decided.serial, state: 'deleting', liveRefs: decided.liveRefs, bytesFreed: 0}
    const bytesFreed = this.catalog.finishDeletion(decided.index, decided.deletingWord)
    return {name, serial: decided.serial, state: 'removed', liveRefs: 0, bytesFreed}
  }

  // ---- maintenance ------------------------------------------------------

  /** Release the references of clones that are gone (gc's step for references alone); returns how many. */
  releaseDeadReferences(): number {
    this.ensureOpen()
    return this.catalog.references.collectAll().released
  }

  gc(): GcReport {
    this.ensureOpen()
    this.catalog.renewLease()
    return runGc(this.catalog)
  }

  fsck(options: {repair?: boolean} = {}): FsckReport {
    this.ensureOpen()
    this.catalog.renewLease()
    return runFsck(this.catalog, options.repair ?? false)
  }

  info(): PoolInfo {
    this.ensureOpen()
    return poolInfo(this.catalog)
  }

  /** Unmap and close. Data addresses and readers obtained from this pool become invalid. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.catalog.mapping.unmap()
    closeSync(this.catalog.fd)
  }
}

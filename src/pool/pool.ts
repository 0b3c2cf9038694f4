/**
 * A mapped pool: open/create, the checkpoint directory, and entry points for
 * building, reading, referencing, removing, collecting and checking. Every
 * piece of shared state lives in the mapping; a Pool object caches only the
 * immutable header and this process's host index.
 */
import {randomBytes} from 'node:crypto'
import {closeSync, constants, fchmodSync, fchownSync, fstatSync, ftruncateSync, linkSync, lstatSync, openSync, readSync, renameSync, statfsSync, unlinkSync} from 'node:fs'
import {basename, dirname, join, resolve} from 'node:path'

import {ConflictError, CorruptError, NotFoundError, PermissionError, SyscallError, UnsupportedError, UsageError} from '../errors.js'
import {fallocateRaw} from '../sys/file-io.js'
import {BuildSlots, freeUnitsOf} from './allocator.js'
import {CheckpointBuilder} from './builder.js'
import {CheckpointReader} from './reader.js'
import type {Descriptor} from './descriptor.js'
import {decodeDescriptor, descriptorPageCount, peekDescriptorName} from './descriptor.js'
import type {DirectoryEntry} from './directory.js'
import {Directory, EntryState, decodeEntry, isLive, withState} from './directory.js'
import {DirectoryLock} from './directory-lock.js'
import {classifyFileSystem, requireShareableFileSystem} from './filesystem.js'
import {runFsck} from './fsck.js'
import {runGc} from './gc.js'
import {HostTable, leaseMsFromEnvironment, localHostIdentity} from './hosts.js'
import type {PoolHeader} from './layout.js'
import {DEFAULT_POOL_SIZE, PAGE_SIZE, POOL_FLAG_PROVISIONED, POOL_FLAG_SHARED_GROUP, computeLayout, decodeHeader, encodeHeader} from './layout.js'
import {PoolMapping} from './mapping.js'
import {callerUid, openExistingPool, openFailure, refuseForeignOwner, refuseNotAFile, refusePlantedSymlinks, requireDirectory, trustPool} from './pool-file.js'
import {formatSize} from './size.js'
import {Liveness, processStartTime} from './owners.js'
import type {ReferenceHandle} from './references.js'
import {References} from './references.js'
import {PoolRegions} from './regions.js'
import type {CheckpointDetails, CheckpointInfo, FsckReport, GcReport, HostInfo, PoolInfo, RemoveResult} from './types.js'

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

/** A directory entry together with its decoded, validated descriptor. */
export interface ResolvedEntry {
  index: number
  word: bigint
  entry: DirectoryEntry
  descriptor: Descriptor
}

type EntryRead = {kind: 'ok'; descriptor: Descriptor} | {kind: 'changed'} | {kind: 'corrupt'; error: CorruptError; name: string | undefined}

function missingPool(path: string): NotFoundError {
  return new NotFoundError('POOL_NOT_FOUND', `no pool at ${path}`,
    `Create it with \`cxlfork pool init --pool ${path}\` (or a checkpoint creates it on first use); --pool and $CXLFORK_POOL choose another, the default is /dev/shm/cxlfork.pool.`)
}

export class Pool {
  readonly hosts: HostTable
  readonly hostIndex: number
  readonly liveness: Liveness
  readonly directory: Directory
  readonly directoryLock: DirectoryLock
  readonly buildSlots: BuildSlots
  readonly references: References
  private closed = false

  private constructor(
    readonly path: string,
    readonly fd: number,
    readonly header: PoolHeader,
    readonly mapping: PoolMapping,
    readonly regions: PoolRegions,
    readonly fileSystem: string,
    readonly leaseMs: number,
  ) {
    this.hosts = new HostTable(regions)
    this.hostIndex = this.hosts.register(localHostIdentity(), leaseMs, Date.now())
    this.liveness = new Liveness(this.hosts, this.hostIndex)
    this.directory = new Directory(regions)
    this.directoryLock = new DirectoryLock(this)
    this.buildSlots = new BuildSlots(regions)
    this.references = new References(this)
  }

  get size(): bigint {
    return this.header.totalSize
  }

  get baseAddress(): bigint {
    return this.mapping.baseAddress
  }

  get uuid(): string {
    return this.header.uuid
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
      Pool.createFile(absolute, {size: options.size ?? DEFAULT_POOL_SIZE, force: false}, true)
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
      return new Pool(absolute, fd, header, mapping, regions, verdict.kind,
        options.leaseMs ?? leaseMsFromEnvironment())
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
    const absolute = resolve(path)
    refusePlantedSymlinks(absolute)
    requireDirectory(absolute)
    requireShareableFileSystem(absolute, false)
  }

  /** `pool init`: create a new pool (ConflictError POOL_EXISTS unless `force`) and open it. */
  static create(path: string, options: PoolCreateOptions = {}): Pool {
    const absolute = resolve(path)
    Pool.createFile(absolute, {size: options.size ?? DEFAULT_POOL_SIZE, force: options.force ?? false, oversize: options.oversize ?? false,
      provision: options.provision ?? false, ...(options.sharedGid === undefined ? {} : {sharedGid: options.sharedGid})}, false)
    return Pool.open(absolute)
  }

  /**
   * Build the pool under a temporary name, then link it into place: the pool
   * appears complete or not at all, and two first users racing to create it
   * end up sharing whichever won. The temporary file is created O_EXCL and
   * O_NOFOLLOW (never through a planted link), and link(2) and rename(2)
   * replace a name without following it.
   */
  private static createFile(path: string, options: {size: bigint; force: boolean; oversize?: boolean; provision?: boolean; sharedGid?: number},
    tolerateExisting: boolean): void {
    Pool.checkCreatable(path)
    const layout = computeLayout(options.size)
    if (!options.oversize) refuseOversize(path, layout.totalSize)
    if (options.force) refuseForeignReplacement(path)
    const temporary = join(dirname(path), `.${basename(path)}.init-${process.pid}-${randomBytes(4).toString('hex')}`)
    let fd: number
    try {
      fd = openSync(temporary, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
    } catch (error) {
      throw openFailure(temporary, error as NodeJS.ErrnoException)
    }
    try {
      if (options.sharedGid !== undefined) shareWithGroup(fd, path, options.sharedGid)
      else fchmodSync(fd, 0o600)
      try {
        ftruncateSync(fd, Number(layout.totalSize))
      } catch (error) {
        throw new SyscallError('ftruncate', -((error as NodeJS.ErrnoException).errno ?? 0), `${temporary} to ${layout.totalSize} bytes`)
      }
      if (options.provision) provisionFile(fd, temporary, layout.totalSize)
      else reserveRange(fd, temporary, 0n, BigInt(controlAreaEnd(layout)), 'the pool\'s control area')
      // Written through a mapping: hugetlbfs files do not support write(2).
      const mapping = PoolMapping.map(fd, layout.totalSize, PAGE_SIZE)
      const flags = (options.provision ? POOL_FLAG_PROVISIONED : 0) | (options.sharedGid === undefined ? 0 : POOL_FLAG_SHARED_GROUP)
      new Uint8Array(mapping.control).set(encodeHeader(layout, randomBytes(16), Date.now(), flags, options.sharedGid ?? 0))
      mapping.unmap()
      if (options.force) {
        try {
          renameSync(temporary, path)
        } catch (error) {
          throw replaceFailure(path, error as NodeJS.ErrnoException)
        }
        return
      }
      try {
        linkSync(temporary, path)
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw openFailure(path, error as NodeJS.ErrnoException)
        if (!tolerateExisting) {
          refuseNotAFile(path) // a directory is no pool that exists (it said POOL_EXISTS)
          if (lstatSync(path, {throwIfNoEntry: false})?.isSymbolicLink()) throw openFailure(path, Object.assign(new Error('symbolic link'), {code: 'ELOOP'}))
          throw new ConflictError('POOL_EXISTS', `a pool already exists at ${path}`, 'Pass --force to replace it (its checkpoints are lost; running clones are unaffected).')
        }
      }
      unlinkSync(temporary)
    } catch (error) {
      try {
        unlinkSync(temporary)
      } catch {
        // already renamed or unlinked
      }
      throw error
    } finally {
      closeSync(fd)
    }
  }

  private ensureOpen(): void {
    if (this.closed) throw new UsageError('POOL_CLOSED', `pool ${this.path} is closed`)
  }

  /** Push this host's lease forward; long operations call it as they go. */
  renewLease(): void {
    this.hosts.renew(this.hostIndex, this.leaseMs, Date.now())
  }

  // ---- building ---------------------------------------------------------

  /**
   * Allocate the file's memory behind [poolOffset, +length) before it is
   * written through the mapping: on a full file system a store into an
   * unallocated page of a sparse file is SIGBUS, fallocate(2) is ENOSPC, which
   * becomes POOL_NO_SPACE (exit 7) with the numbers. A provisioned pool is
   * allocated whole already.
   */
  reserve(poolOffset: bigint, length: bigint, what: string): void {
    if (this.header.provisioned || length <= 0n) return
    reserveRange(this.fd, this.path, poolOffset, length, what)
  }

  /** POOL_NO_SPACE for `what` needing `needed` bytes, with what the file system has free now (and had, `freeBefore`). */
  noSpace(what: string, needed: bigint, freeBefore?: bigint): ConflictError {
    return noSpaceError(this.path, what, needed, freeBefore)
  }

  /** Bytes the pool's file system has free now. */
  fileSystemFree(): bigint {
    const fs = statfsSync(dirname(this.path), {bigint: true})
    return fs.bavail * fs.bsize
  }


  /** Start a checkpoint: claims a build slot and thereby a fresh serial. */
  beginCheckpoint(): CheckpointBuilder {
    this.ensureOpen()
    this.renewLease()
    return CheckpointBuilder.begin(this)
  }

  // ---- reading the directory --------------------------------------------

  /** Byte offset of a metadata page inside the metadata view. */
  metadataByteOffset(page: number): number {
    return page * this.header.pageSize
  }

  /**
   * Read and validate the descriptor of directory word `word` at `index`.
   * A failed check is re-examined against the word: if the entry changed
   * meanwhile (deleted, pages reused) the read was merely stale.
   */
  readEntry(index: number, word: bigint): EntryRead {
    const entry = decodeEntry(word)
    const at = this.metadataByteOffset(entry.descriptorPage)
    try {
      if (entry.descriptorPage >= this.header.metadataPageCount) {
        throw new CorruptError('CHECKPOINT_CORRUPT', `directory slot ${index}: descriptor page ${entry.descriptorPage} outside the metadata region`)
      }
      return {kind: 'ok', descriptor: decodeDescriptor(this.regions.metadata, at, this.header, entry.serial)}
    } catch (error) {
      if (!(error instanceof CorruptError)) throw error
      if (this.directory.load(index) !== word) return {kind: 'changed'}
      return {kind: 'corrupt', error, name: peekDescriptorName(this.regions.metadata, at)}
    }
  }

  /**
   * Find the live entry named `name`. A corrupt record that carries this name
   * is a CorruptError, not "not found".
   */
  lookup(name: string): ResolvedEntry | undefined {
    for (const index of this.directory.probe(name)) {
      for (;;) {
        const word = this.directory.load(index)
        if (word === 0n) return undefined
        const entry = decodeEntry(word)
        if (!isLive(entry)) break
        const read = this.readEntry(index, word)
        if (read.kind === 'changed') continue
        if (read.kind === 'corrupt') {
          if (read.name === name) throw read.error
          break
        }
        if (read.descriptor.name === name) return {index, word, entry, descriptor: read.descriptor}
        break
      }
    }
    return undefined
  }

  /**
   * The commit of a publish, under the directory lock: refuse `name` if a
   * live entry carries it, else CAS `published` into the first free word of
   * its probe chain (a tombstone is reused in place) and sweep the tombstones
   * before the chain's first empty word. Returns the directory index.
   */
  insertEntry(name: string, published: bigint): number {
    return this.directoryLock.with(() => {
      for (;;) {
        let free: {index: number; word: bigint} | undefined
        let empty: number | undefined
        for (const index of this.directory.probe(name)) {
          let word = this.directory.load(index)
          if (word === 0n) {
            free ??= {index, word}
            empty = index
            break
          }
          for (;;) {
            if (!isLive(decodeEntry(word))) {
              free ??= {index, word}
              break
            }
            const read = this.readEntry(index, word)
            if (read.kind === 'changed') {
              word = this.directory.load(index)
              continue
            }
            if ((read.kind === 'ok' ? read.descriptor.name : read.name) === name) {
              throw new ConflictError('NAME_TAKEN', `a checkpoint named ${JSON.stringify(name)} already exists in pool ${this.path}`,
                'Choose another name, or remove the old one with `cxlfork rm`.')
            }
            break
          }
        }
        if (!free) {
          throw new ConflictError('DIRECTORY_FULL', `every one of the ${this.directory.slots} directory words of pool ${this.path} holds a live checkpoint`,
            'Remove checkpoints with `cxlfork rm` (deleted ones free their word), or use a larger pool.')
        }
        // Only a process outside the lock (fsck --repair) changes a free word meanwhile: look again.
        if (!this.directory.swap(free.index, free.word, published)) continue
        if (empty !== undefined) this.directory.sweepBefore(empty)
        return free.index
      }
    })
  }

  private checkpointNotFound(name: string): NotFoundError {
    return new NotFoundError('CHECKPOINT_NOT_FOUND', `no checkpoint named ${JSON.stringify(name)} in pool ${this.path}`,
      'List checkpoints with `cxlfork ls`.')
  }

  private requireAccess(descriptor: Descriptor, uid: number, action: string): void {
    if (uid !== 0 && uid !== descriptor.uid) {
      throw new PermissionError('CHECKPOINT_ACCESS', `checkpoint ${descriptor.name} belongs to uid ${descriptor.uid}; uid ${uid} may not ${action} it`,
        'Run as its owner or as root.')
    }
  }

  /** Bytes of metadata pages a descriptor and its sections occupy. */
  private metadataBytesOf(descriptor: Descriptor, descriptorPage: number): number {
    const pageSize = this.header.pageSize
    let pages = descriptorPageCount(this.regions.metadata, this.metadataByteOffset(descriptorPage), pageSize)
    for (const section of descriptor.sections) pages += Math.ceil(section.length / pageSize)
    return pages * pageSize
  }

  checkpointInfo(resolved: ResolvedEntry, liveRefs: number): CheckpointInfo {
    const {descriptor, entry} = resolved
    return {
      name: descriptor.name,
      serial: descriptor.serial,
      uid: descriptor.uid,
      createdAt: new Date(descriptor.createdAtMs).toISOString(),
      dataBytes: Number(descriptor.extents.reduce((sum, extent) => sum + extent.length, 0n)),
      metadataBytes: this.metadataBytesOf(descriptor, entry.descriptorPage),
      state: entry.state === EntryState.deleting ? 'deleting' : 'published',
      liveRefs,
      ...(descriptor.summary === undefined ? {} : {summary: descriptor.summary}),
    }
  }

  /** Every checkpoint, published or being deleted; corrupt records are listed as such. */
  list(): CheckpointInfo[] {
    this.ensureOpen()
    const liveRefs = this.references.liveCounts()
    const checkpoints: CheckpointInfo[] = []
    for (const {index, word, entry} of this.directory.occupied()) {
      if (!isLive(entry)) continue
      const read = this.readEntry(index, word)
      if (read.kind === 'changed') continue
      if (read.kind === 'corrupt') {
        checkpoints.push({name: read.name ?? `<corrupt directory slot ${index}>`, serial: entry.serial, uid: -1, createdAt: new Date(0).toISOString(),
          dataBytes: 0, metadataBytes: 0, state: 'corrupt', liveRefs: liveRefs.get(entry.serial) ?? 0})
        continue
      }
      checkpoints.push(this.checkpointInfo({index, word, entry, descriptor: read.descriptor}, liveRefs.get(entry.serial) ?? 0))
    }
    return checkpoints.sort((a, b) => a.name.localeCompare(b.name))
  }

  /** Open a published checkpoint for restore or inspection: descriptor and every section checksum verified. */
  openCheckpoint(name: string, options: {uid?: number} = {}): CheckpointReader {
    this.ensureOpen()
    const resolved = this.lookup(name)
    if (!resolved) throw this.checkpointNotFound(name)
    this.requireAccess(resolved.descriptor, options.uid ?? process.getuid?.() ?? 0, 'open')
    if (resolved.entry.state !== EntryState.published) {
      throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} is being deleted`, 'It stays until its last clone exits; pick another checkpoint.')
    }
    const reader = new CheckpointReader(this, resolved, this.checkpointInfo(resolved, this.references.liveCounts().get(resolved.entry.serial) ?? 0))
    reader.verifyAll()
    return reader
  }

  /** What the pool knows about one checkpoint, checksums verified; with `verifyData`, its page data too. */
  inspect(name: string, options: {uid?: number; verifyData?: boolean} = {}): CheckpointDetails {
    this.ensureOpen()
    const resolved = this.lookup(name)
    if (!resolved) throw this.checkpointNotFound(name)
    this.requireAccess(resolved.descriptor, options.uid ?? process.getuid?.() ?? 0, 'inspect')
    const reader = new CheckpointReader(this, resolved, this.checkpointInfo(resolved, 0))
    reader.verifyAll()
    const references = this.references.describe(resolved.entry.serial)
    return {
      ...this.checkpointInfo(resolved, references.filter((reference) => reference.alive).length),
      directorySlot: resolved.index,
      descriptorPoolOffset: this.header.metadataOffset + this.metadataByteOffset(resolved.entry.descriptorPage),
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
    this.renewLease()
    const startTime = clone.startTime ?? processStartTime(clone.pid) ?? 0
    const name = typeof target === 'string' ? target : target.info.name
    return this.directoryLock.with(() => {
      const resolved = typeof target === 'string' ? this.lookup(name) : target.entry
      if (!resolved) throw this.checkpointNotFound(name)
      if (this.directory.load(resolved.index) !== resolved.word) {
        throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} was deleted after it was opened`, 'Restore it again if it was replaced.')
      }
      if (resolved.entry.state !== EntryState.published) {
        throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} is being deleted`, 'It stays until its last clone exits; pick another checkpoint.')
      }
      const handle = this.references.claim(resolved.entry.serial, name, clone.pid, startTime)
      // Only a process outside the lock (fsck --repair) changes the word; after this check rm sees the reference.
      if (this.directory.load(resolved.index) === resolved.word) return handle
      this.references.release(handle)
      throw new NotFoundError('CHECKPOINT_DELETING', `checkpoint ${name} was deleted while being referenced`)
    })
  }

  releaseReference(handle: ReferenceHandle): void {
    this.ensureOpen()
    this.references.release(handle)
  }

  // ---- removal ----------------------------------------------------------

  /**
   * Delete `name`. Refused (CHECKPOINT_IN_USE) while a live clone holds a
   * reference; with `force` it is hidden from new restores and gc frees it
   * after its last clone exits.
   */
  remove(name: string, options: {force?: boolean; uid?: number} = {}): RemoveResult {
    this.ensureOpen()
    this.renewLease()
    const uid = options.uid ?? process.getuid?.() ?? 0
    // Decided under the directory lock, where no reference can be added: a refused rm changes nothing, not even for an instant.
    const decided = this.directoryLock.with(() => {
      for (;;) {
        const resolved = this.lookup(name)
        if (!resolved) throw this.checkpointNotFound(name)
        this.requireAccess(resolved.descriptor, uid, 'delete')
        const liveRefs = this.references.collect(resolved.entry.serial)
        if (liveRefs > 0 && !options.force) {
          throw new ConflictError('CHECKPOINT_IN_USE', `checkpoint ${name} is mapped by ${liveRefs} running clone${liveRefs === 1 ? '' : 's'}`,
            'Stop the clones first, or pass --force to delete it once the last clone exits (`cxlfork pool gc` finishes it).')
        }
        let deletingWord = resolved.word
        if (resolved.entry.state === EntryState.published) {
          deletingWord = withState(resolved.word, EntryState.deleting)
          if (!this.directory.swap(resolved.index, resolved.word, deletingWord)) continue
        }
        return {index: resolved.index, serial: resolved.entry.serial, deletingWord, liveRefs}
      }
    })
    // DELETING: no reference can be added any more, so none of its units is needed once the live ones are gone.
    if (decided.liveRefs > 0) return {name, serial: decided.serial, state: 'deleting', liveRefs: decided.liveRefs, bytesFreed: 0}
    const bytesFreed = this.finishDeletion(decided.index, decided.deletingWord)
    return {name, serial: decided.serial, state: 'removed', liveRefs: 0, bytesFreed}
  }

  /**
   * Tombstone a DELETING entry, then free its serial's units. Tombstoning
   * first means the descriptor is never read after its pages could be reused;
   * a crash between the two leaves garbage units that gc frees. Returns the
   * bytes freed (0 if another process finished it).
   */
  finishDeletion(index: number, deletingWord: bigint): number {
    if (!this.directory.swap(index, deletingWord, withState(deletingWord, EntryState.tombstone))) return 0
    const {segments, pages} = this.freeSerial(decodeEntry(deletingWord).serial)
    return segments * this.header.segmentSize + pages * this.header.pageSize
  }

  /** Free every unit of `serial`, punching holes so tmpfs returns the memory. */
  freeSerial(serial: number): {segments: number; pages: number} {
    const segments = freeUnitsOf(this.regions.segmentStates, serial, (unit) => this.punchSegment(unit))
    const pages = freeUnitsOf(this.regions.pageStates, serial, (unit) => this.punchPage(unit))
    return {segments, pages}
  }

  /** Give a freed data segment's memory back, unless the pool is provisioned (then it stays for the next checkpoint). */
  punchSegment(unit: number): void {
    if (this.header.provisioned) return
    this.mapping.punchHole(this.header.dataOffset + BigInt(unit) * BigInt(this.header.segmentSize), BigInt(this.header.segmentSize))
  }

  punchPage(unit: number): void {
    if (this.header.provisioned) return
    this.mapping.punchHole(BigInt(this.header.metadataOffset + unit * this.header.pageSize), BigInt(this.header.pageSize))
  }

  // ---- maintenance ------------------------------------------------------

  gc(): GcReport {
    this.ensureOpen()
    this.renewLease()
    return runGc(this)
  }

  fsck(options: {repair?: boolean} = {}): FsckReport {
    this.ensureOpen()
    this.renewLease()
    return runFsck(this, options.repair ?? false)
  }

  info(): PoolInfo {
    this.ensureOpen()
    const header = this.header
    const countUsed = (states: Uint32Array): number => {
      let used = 0
      for (let unit = 0; unit < states.length; unit++) if (Atomics.load(states, unit) !== 0) used++
      return used
    }
    const segmentsUsed = countUsed(this.regions.segmentStates)
    const pagesUsed = countUsed(this.regions.pageStates)
    let checkpoints = 0
    let deleting = 0
    let tombstones = 0
    let directoryUsed = 0
    for (const {entry} of this.directory.occupied()) {
      directoryUsed++
      if (entry.state === EntryState.published) checkpoints++
      else if (entry.state === EntryState.deleting) deleting++
      else if (entry.state === EntryState.tombstone) tombstones++
    }
    let buildsInProgress = 0
    for (let slot = 0; slot < this.buildSlots.count; slot++) {
      const state = this.buildSlots.read(slot)
      if (state.owner && this.liveness.isAlive(state.owner, state.startTime)) buildsInProgress++
    }
    let liveClones = 0
    for (const count of this.references.liveCounts().values()) liveClones += count
    const now = Date.now()
    const hostsSeen: HostInfo[] = this.hosts.list().map((host) => ({
      index: host.index, hostname: host.hostname, bootId: host.bootId,
      leaseExpiresAt: new Date(host.leaseExpiresAtMs).toISOString(), leaseLive: host.leaseExpiresAtMs > now,
      firstSeenAt: new Date(host.firstSeenAtMs).toISOString(), self: host.index === this.hostIndex,
    }))
    const dataBytes = Number(header.dataSize)
    const dataUsed = segmentsUsed * header.segmentSize
    const metadataUsed = pagesUsed * header.pageSize
    return {
      path: this.path,
      uuid: header.uuid,
      version: header.version,
      createdAt: new Date(header.createdAtMs).toISOString(),
      fileSystem: classifyFileSystem(this.path, true, this.fd).kind,
      size: Number(header.totalSize),
      provisioned: header.provisioned,
      sharedGid: header.sharedGid ?? null,
      residentBytes: Number(fstatSync(this.fd, {bigint: true}).blocks) * 512,
      used: dataUsed + metadataUsed,
      free: dataBytes - dataUsed + header.metadataSize - metadataUsed,
      overhead: header.metadataOffset,
      data: {bytes: dataBytes, used: dataUsed, free: dataBytes - dataUsed, segmentSize: header.segmentSize,
        segments: header.segmentCount, segmentsUsed},
      metadata: {bytes: header.metadataSize, used: metadataUsed, free: header.metadataSize - metadataUsed, pageSize: header.pageSize,
        pages: header.metadataPageCount, pagesUsed},
      checkpoints,
      deleting,
      buildsInProgress,
      liveClones,
      directory: {slots: header.directorySlots, used: directoryUsed, tombstones},
      hostsSeen,
    }
  }

  /** Unmap and close. Data addresses and readers obtained from this pool become invalid. */
  close(): void {
    if (this.closed) return
    this.closed = true
    this.mapping.unmap()
    closeSync(this.fd)
  }
}

const EINTR = 4
const EINVAL = 22
const ENOSPC = 28
const EOPNOTSUPP = 95

/** End of the pool's control area (header, counters, tables, unit states), page aligned. */
function controlAreaEnd(layout: {pageStateOffset: number; metadataPageCount: number}): number {
  return Math.ceil((layout.pageStateOffset + layout.metadataPageCount * 4) / PAGE_SIZE) * PAGE_SIZE
}

function noSpaceError(path: string, what: string, needed: bigint, freeBefore?: bigint): ConflictError {
  let free = ''
  try {
    const fs = statfsSync(dirname(path), {bigint: true})
    const available = fs.bavail * fs.bsize
    free = `, the file system of ${dirname(path)} has ${formatSize(available)} (${available} bytes) free of ${formatSize(fs.blocks * fs.bsize)}`
    if (freeBefore !== undefined) free += ` (${formatSize(freeBefore)}, ${freeBefore} bytes, when it began)`
  } catch {
    // the numbers are a courtesy
  }
  return new ConflictError('POOL_NO_SPACE', `no space in pool ${path} for ${what}: it needs ${formatSize(needed)} (${needed} bytes)${free}`,
    'Free memory on that file system (remove checkpoints with `cxlfork rm`, or other files), or use a provisioned pool (`pool init --provision`), whose memory is allocated up front.')
}

/**
 * fallocate(2) mode 0 of [offset, +length), repeated on EINTR; ENOSPC is
 * POOL_NO_SPACE. A file system that cannot allocate ahead (EOPNOTSUPP, or
 * EINVAL for a range it cannot take) is left as it is: writes there fault as before.
 */
function reserveRange(fd: number, path: string, offset: bigint, length: bigint, what: string): void {
  let r: number
  do r = fallocateRaw(fd, 0, offset, length)
  while (r === -EINTR)
  if (r === 0 || r === -EOPNOTSUPP || r === -EINVAL) return
  if (r === -ENOSPC) throw noSpaceError(path, what, length)
  throw new SyscallError('fallocate', -r, `${path}: ${length} bytes at ${offset} for ${what}`)
}

/**
 * A sparse pool larger than its whole file system is accepted by ftruncate
 * and fails later, in the middle of a checkpoint: refuse it here (pool init
 * --force accepts it). A file system that reports no size limit is not judged.
 */
function refuseOversize(path: string, size: bigint): void {
  const fs = statfsSync(dirname(path), {bigint: true})
  const total = fs.blocks * fs.bsize
  if (total === 0n || size <= total) return
  throw new ConflictError('POOL_NO_SPACE',
    `a pool of ${formatSize(size)} (${size} bytes) does not fit the file system of ${dirname(path)}: ${formatSize(total)} in all (${total} bytes), ${formatSize(fs.bavail * fs.bsize)} free`,
    `Pass a smaller --size (at most ${formatSize(total)}), or \`pool init --force\` to create it sparse anyway (checkpoints fail once the file system is full).`)
}

/** `pool init --force` replaces only the caller's own pool (or anything, for root): a sticky directory would refuse the rename anyway. */
function refuseForeignReplacement(path: string): void {
  const existing = lstatSync(path, {bigint: true, throwIfNoEntry: false})
  if (existing === undefined) return
  if (existing.isDirectory()) throw new UsageError('POOL_NOT_A_FILE', `${path} is a directory, not a pool file`, 'Pass --pool the path of a pool file, e.g. /dev/shm/cxlfork.pool.')
  const caller = BigInt(callerUid())
  if (caller !== 0n && existing.uid !== caller) {
    throw new PermissionError('POOL_NOT_OWNER', `${path} belongs to uid ${existing.uid}; uid ${caller} may not replace it`,
      'Only its owner or root may replace a pool; pass another --pool for a pool of your own.')
  }
}

function replaceFailure(path: string, error: NodeJS.ErrnoException): Error {
  if (error.code === 'EPERM' || error.code === 'EACCES') {
    return new PermissionError('POOL_NOT_OWNER', `no permission to replace ${path}`, 'Only its owner or root may replace a pool; pass another --pool for a pool of your own.')
  }
  if (error.code === 'EISDIR') return new UsageError('POOL_NOT_A_FILE', `${path} is a directory, not a pool file`, 'Pass --pool the path of a pool file.')
  return new SyscallError('rename', Math.abs(error.errno ?? 0), path)
}

/** Give the new pool file to group `gid`, mode 0660. chown(2) lets a user give a file only to a group they are in. */
function shareWithGroup(fd: number, path: string, gid: number): void {
  try {
    fchownSync(fd, -1, gid)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EPERM' || code === 'EINVAL') {
      throw new PermissionError('NOT_PERMITTED', `cannot share ${path} with gid ${gid}: you are not a member of that group`,
        'Share a pool only with a group you belong to (see `id`), or create it as root.')
    }
    throw new SyscallError('fchown', Math.abs((error as NodeJS.ErrnoException).errno ?? 0), `${path} to gid ${gid}`)
  }
  fchmodSync(fd, 0o660)
}

/**
 * Allocate every byte of a new pool file. tmpfs gives up on a pending signal
 * with EINTR, keeping what it allocated: the call is repeated.
 */
function provisionFile(fd: number, path: string, size: bigint): void {
  let r: number
  do r = fallocateRaw(fd, 0, 0n, size)
  while (r === -EINTR)
  if (r === 0) return
  if (r === -ENOSPC) {
    throw new ConflictError('POOL_NO_SPACE', `the file system of ${dirname(path)} has no room to provision ${size} bytes`,
      'Free memory there or pass a smaller --size; without --provision the pool is sparse and takes memory as checkpoints are written.')
  }
  if (r === -EOPNOTSUPP) {
    throw new UnsupportedError('PROVISION_UNSUPPORTED', `the file system of ${dirname(path)} cannot allocate a file ahead (fallocate)`, 'Create the pool without --provision.')
  }
  throw new SyscallError('fallocate', -r, `${path}, ${size} bytes`)
}

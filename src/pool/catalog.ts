/**
 * What the parts of a pool share once it is open: the file, its immutable
 * header, the mapped regions, this host's slot, and the directory, slot and
 * reference tables over them, with the directory operations the builder,
 * reader, gc and fsck need. `Pool` (pool.ts) holds one and keeps it off its
 * own surface; nothing outside src/pool sees it.
 */
import {statfsSync} from 'node:fs'
import {dirname} from 'node:path'

import {ConflictError, CorruptError, NotFoundError, PermissionError, SyscallError} from '../errors.js'
import {fallocateRaw} from '../sys/file-io.js'
import {BuildSlots, freeUnitsOf} from './allocator.js'
import type {Descriptor} from './descriptor.js'
import {decodeDescriptor, descriptorPageCount, peekDescriptorName} from './descriptor.js'
import type {DirectoryEntry} from './directory.js'
import {Directory, EntryState, decodeEntry, isLive, withState} from './directory.js'
import {DirectoryLock} from './directory-lock.js'
import {HostTable, localHostIdentity} from './hosts.js'
import type {PoolHeader} from './layout.js'
import {PAGE_SIZE} from '../sys/page.js'
import type {PoolMapping} from './mapping.js'
import {formatSize} from './size.js'
import {Liveness} from './owners.js'
import {References} from './references.js'
import type {PoolRegions} from './regions.js'
import type {CheckpointInfo} from './types.js'

/** A directory entry together with its decoded, validated descriptor. */
export interface ResolvedEntry {
  index: number
  word: bigint
  entry: DirectoryEntry
  descriptor: Descriptor
}

type EntryRead = {kind: 'ok'; descriptor: Descriptor} | {kind: 'changed'} | {kind: 'corrupt'; error: CorruptError; name: string | undefined}

export class PoolCatalog {
  readonly hosts: HostTable
  readonly hostIndex: number
  readonly liveness: Liveness
  readonly directory: Directory
  readonly directoryLock: DirectoryLock
  readonly buildSlots: BuildSlots
  readonly references: References

  constructor(
    readonly path: string,
    readonly fd: number,
    readonly header: PoolHeader,
    readonly mapping: PoolMapping,
    readonly regions: PoolRegions,
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

  get baseAddress(): bigint {
    return this.mapping.baseAddress
  }

  /** Push this host's lease forward; long operations call it as they go. */
  renewLease(): void {
    this.hosts.renew(this.hostIndex, this.leaseMs, Date.now())
  }

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

  checkpointNotFound(name: string): NotFoundError {
    return new NotFoundError('CHECKPOINT_NOT_FOUND', `no checkpoint named ${JSON.stringify(name)} in pool ${this.path}`,
      'List checkpoints with `cxlfork ls`.')
  }

  requireAccess(descriptor: Descriptor, uid: number, action: string): void {
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
}

const EINTR = 4
const EINVAL = 22
const ENOSPC = 28
const EOPNOTSUPP = 95

/** End of the pool's control area (header, counters, tables, unit states), page aligned. */
export function controlAreaEnd(layout: {pageStateOffset: number; metadataPageCount: number}): number {
  return Math.ceil((layout.pageStateOffset + layout.metadataPageCount * 4) / PAGE_SIZE) * PAGE_SIZE
}

export function noSpaceError(path: string, what: string, needed: bigint, freeBefore?: bigint): ConflictError {
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
export function reserveRange(fd: number, path: string, offset: bigint, length: bigint, what: string): void {
  let r: number
  do r = fallocateRaw(fd, 0, offset, length)
  while (r === -EINTR)
  if (r === 0 || r === -EOPNOTSUPP || r === -EINVAL) return
  if (r === -ENOSPC) throw noSpaceError(path, what, length)
  throw new SyscallError('fallocate', -r, `${path}: ${length} bytes at ${offset} for ${what}`)
}

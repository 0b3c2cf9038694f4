/**
 * file_entry.memfd (memfd_file_entry) and memfd.img (memfd_inode_entry): an fd of a memfd or
 * of an unlinked tmpfs file (the model's kind 'shmem', a shared memory object held open).
 * As CRIU 4.x writes them: each inode once, its shmid the object's inode number, which also
 * names its pages (pagemap-shmem-SHMID.img) and every shared mapping of the same object, so
 * that an fd and a MAP_SHARED mapping of it are one object again at restore.
 */
import type {FdImage} from '../../image/process-image.js'
import {KNOWN_SEALS, type MemfdFacts} from '../../image/shared-memory.js'
import {PAGE_SIZE} from '../../sys/page.js'
import {encodeMessage, readImage} from '../image-file.js'
import {big, has, str64, u64} from '../values.js'
import {type ImagePath, type Msg, type Obj, type PutImage, corrupt, fown, optionalImage} from './common.js'
import {shmemId} from './mm.js'

/** What the dumping host knows of a held object beyond the model (fstat and F_GET_SEALS of the fd): WriteOptions.shmemFdOf. */
export interface ShmemFdFacts {
  uid: number
  gid: number
  mode: number
  size: bigint
  seals: number
}

/** F_SEAL_SEAL: what the kernel reports for an object that takes no seals (CRIU records the same when F_GET_SEALS fails). */
const F_SEAL_SEAL = 1

/** The memfd's own name as memfd_create was given it ("/memfd:NAME (deleted)" in /proc); an unlinked file keeps its path. */
export function memfdName(path: string): string {
  const bare = path.endsWith(' (deleted)') ? path.slice(0, -' (deleted)'.length) : path
  return bare.startsWith('/memfd:') ? bare.slice('/memfd:'.length) : bare
}

export class MemfdWriter {
  private readonly inodes = new Map<number, Obj>()

  /**
   * The memfd_file_entry of `fd`, its inode added once. `objectSize`: the captured object's
   * size, when the host gives no facts; `owner`: the process's uid and gid.
   */
  entry(fd: FdImage, id: number, facts: ShmemFdFacts | undefined, objectSize: bigint | undefined, owner: {uid: number; gid: number}): Obj {
    const shmid = fd.sharedId === undefined ? undefined : shmemId(fd.sharedId)
    if (shmid === undefined) throw corrupt(`fd ${fd.fd} is a shared memory object whose object the image does not identify`, 'Checkpoint the process again; this is a cxlfork bug.')
    if (!this.inodes.has(shmid)) {
      const inode: Obj = {
        name: memfdName(fd.path), uid: facts?.uid ?? owner.uid, gid: facts?.gid ?? owner.gid, size: str64(facts?.size ?? objectSize ?? 0n),
        shmid, seals: facts?.seals ?? F_SEAL_SEAL, inode_id: str64(BigInt(shmid)),
      }
      if (facts) inode['mode'] = facts.mode >>> 0
      this.inodes.set(shmid, inode)
    }
    return {id, flags: fd.flags >>> 0, pos: str64(u64(fd.offset)), fown: fown(), inode_id: shmid}
  }

  /** The inode of a memfd only mapped (no fd holds it): what the capture read of it, the mapping process's ids as owner. */
  addMapped(sharedId: string, facts: MemfdFacts, owner: {uid: number; gid: number}): void {
    const shmid = shmemId(sharedId)
    if (shmid === undefined || this.inodes.has(shmid)) return
    const inode: Obj = {name: facts.name, uid: facts.owner?.uid ?? owner.uid, gid: facts.owner?.gid ?? owner.gid, size: str64(facts.size), shmid, seals: facts.seals, inode_id: str64(BigInt(shmid))}
    // The whole st_mode, as CRIU records it (a memfd is a regular file).
    if (facts.owner) inode['mode'] = (0o100000 | facts.owner.mode) >>> 0
    this.inodes.set(shmid, inode)
  }

  /** The memfd_file_entry a mapping of object `sharedId` names (its inode is added by the fd that holds it open). */
  mappingEntry(sharedId: string, id: number): Obj {
    const shmid = shmemId(sharedId)
    if (shmid === undefined) throw corrupt(`a mapping names shared memory object ${sharedId}, which has no inode number`, 'Checkpoint the process again; this is a cxlfork bug.')
    return {id, flags: 0, pos: str64(0n), fown: fown(), inode_id: shmid}
  }

  write(put: PutImage): void {
    if (this.inodes.size === 0) return
    put('memfd.img', 'memfd', [...this.inodes.values()].map((inode) => encodeMessage('memfd_inode_entry', inode, 'memfd.img')))
  }
}

/** memfd.img of a set read: its inodes by inode_id (none when the set has no memfd.img). */
export function readMemfdInodes(at: ImagePath): Map<bigint, Msg> {
  const inodes = new Map<bigint, Msg>()
  for (const inode of optionalImage(at('memfd.img'), () => readImage<Msg>(at('memfd.img'), 'memfd')) ?? []) inodes.set(big(inode['inode_id']), inode)
  return inodes
}

/** A memfd fd as the model's 'shmem' fd: its object is the inode's shmid. */
export function memfdOf(entry: Msg, inodes: ReadonlyMap<bigint, Msg>, what: string): {fd: Pick<FdImage, 'flags' | 'offset' | 'sharedId'>; name: string} {
  const inode = inodes.get(big(entry['inode_id']))
  if (!inode) throw corrupt(`${what} is a memfd of inode ${String(entry['inode_id'])}, which memfd.img does not hold`)
  return {fd: {flags: entry['flags'] as number, offset: has(entry, 'pos') ? u64(big(entry['pos'])) : 0n, sharedId: String(inode['shmid'])}, name: inode['name'] as string}
}

/** The size of the object `shmid` as its memfd inode records it, in whole pages (mappings see whole pages). */
export function memfdSizeOf(inodes: ReadonlyMap<bigint, Msg>, shmid: string): bigint {
  const inode = [...inodes.values()].find((candidate) => String(candidate['shmid']) === shmid)
  const size = inode && has(inode, 'size') ? u64(big(inode['size'])) : 0n
  const page = BigInt(PAGE_SIZE)
  return ((size + page - 1n) / page) * page
}

/**
 * The memfd facts of object `shmid` (name, exact size, seals) when memfd.img holds it as a
 * memfd: an unlinked tmpfs file keeps its path as its name (a leading '/'), and so does the
 * /dev/zero of CRIU's own shared anonymous memory; those stay plain shared memory.
 */
export function memfdFactsOf(inodes: ReadonlyMap<bigint, Msg>, shmid: string): MemfdFacts | undefined {
  const inode = [...inodes.values()].find((candidate) => String(candidate['shmid']) === shmid)
  if (!inode || typeof inode['name'] !== 'string' || inode['name'].startsWith('/')) return undefined
  const facts: MemfdFacts = {name: inode['name'], size: has(inode, 'size') ? u64(big(inode['size'])) : 0n, seals: (inode['seals'] as number) & KNOWN_SEALS}
  // CRIU restores the owner always, the mode when recorded; without one, the mode memfd_create gives.
  if (has(inode, 'mode')) facts.owner = {uid: inode['uid'] as number, gid: inode['gid'] as number, mode: (inode['mode'] as number) & 0o7777}
  return facts
}

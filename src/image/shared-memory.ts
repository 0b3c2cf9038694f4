/**
 * Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS, what maps shows as
 * "/dev/zero (deleted)"): one object per shmem inode, however many VMAs and
 * processes of a tree map it. Its contents are stored once per checkpoint
 * in page data of their own, described by this record (a section of the
 * checkpoint, JSON like the process state): the object's size and the
 * populated byte ranges with where they are in the store. Each VMA that maps
 * an object names it by `VmaImage.sharedId`. An object that was a memfd also
 * records what memfd_create, ftruncate and F_ADD_SEALS gave it (its name,
 * exact size and seals), so that a restore makes it a memfd again; records
 * written before that field existed read as plain shared memory.
 */
import {CorruptError} from '../errors.js'
import {PAGE_SIZE} from '../sys/page.js'

/** A populated range of a shared object: `bytes` at object offset `offset`, stored at `storeOffset`. */
export interface SharedObjectRun {
  offset: bigint
  bytes: bigint
  storeOffset: bigint
}

/** A memfd's identity beyond its pages: the name it was created with, its exact size (fstat) and its seals (F_GET_SEALS). */
export interface MemfdFacts {
  name: string
  size: bigint
  seals: number
  /** Its owner and permission bits (fstat), when recorded (checkpoints since owners were kept). */
  owner?: {uid: number; gid: number; mode: number}
}

/** The seals a restore can put back (F_SEAL_SEAL, SHRINK, GROW, WRITE, FUTURE_WRITE, EXEC). */
export const KNOWN_SEALS = 0x3f

export interface SharedObject {
  /** The shmem inode number as the checkpointed host saw it (an identity within the checkpoint only). */
  id: string
  /** Size of the object in bytes (a multiple of the page size: mappings see whole pages). */
  size: bigint
  runs: SharedObjectRun[]
  /** Set when the object was a memfd. */
  memfd?: MemfdFacts
}

export interface SharedMemoryRecord {
  objects: SharedObject[]
}

export function encodeSharedMemory(record: SharedMemoryRecord): Uint8Array {
  return new TextEncoder().encode(JSON.stringify({
    objects: record.objects.map((object) => ({
      id: object.id, size: String(object.size),
      runs: object.runs.map((run) => [String(run.offset), String(run.bytes), String(run.storeOffset)]),
      ...(object.memfd ? {memfd: {name: object.memfd.name, size: String(object.memfd.size), seals: object.memfd.seals,
        ...(object.memfd.owner ? {owner: [object.memfd.owner.uid, object.memfd.owner.gid, object.memfd.owner.mode]} : {})}} : {}),
    })),
  }))
}

const damaged = (why: string): CorruptError =>
  new CorruptError('CHECKPOINT_CORRUPT', `the shared memory record of the checkpoint is damaged: ${why}`, 'Run `cxlfork pool fsck`; take a new checkpoint.')

/**
 * Decode and check the record: every run inside its object, page aligned,
 * in order; `inStore` checks that a stored range lies in the checkpoint's own data.
 */
export function decodeSharedMemory(bytes: Uint8Array, inStore: (offset: bigint, bytes: bigint) => void): Map<string, SharedObject> {
  let parsed: {objects?: {id?: unknown; size?: unknown; runs?: unknown; memfd?: unknown}[]}
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(bytes)) as typeof parsed
  } catch (error) {
    throw damaged((error as Error).message)
  }
  if (!Array.isArray(parsed.objects)) throw damaged('no object list')
  const page = BigInt(PAGE_SIZE)
  const objects = new Map<string, SharedObject>()
  for (const raw of parsed.objects) {
    if (typeof raw.id !== 'string' || typeof raw.size !== 'string' || !Array.isArray(raw.runs) || !/^\d+$/.test(raw.size)) throw damaged('an object without id, size or runs')
    const size = BigInt(raw.size)
    const memfd = raw.memfd === undefined ? undefined : decodeMemfd(raw.id, raw.memfd, size)
    // A memfd may be empty (nothing maps it); other objects exist only as mappings.
    if ((size === 0n && !memfd) || size % page !== 0n || objects.has(raw.id)) throw damaged(`object ${raw.id}: size ${size} or a duplicate id`)
    let end = 0n
    const runs = (raw.runs as unknown[]).map((entry): SharedObjectRun => {
      if (!Array.isArray(entry) || entry.length !== 3 || !entry.every((v) => typeof v === 'string' && /^\d+$/.test(v))) throw damaged(`object ${raw.id}: a malformed run`)
      const [offset, length, storeOffset] = (entry as string[]).map((v) => BigInt(v)) as [bigint, bigint, bigint]
      if (offset < end || length === 0n || offset % page !== 0n || length % page !== 0n || offset + length > size) throw damaged(`object ${raw.id}: run at ${offset} (${length} bytes) outside the object or out of order`)
      inStore(storeOffset, length)
      end = offset + length
      return {offset, bytes: length, storeOffset}
    })
    objects.set(raw.id, {id: raw.id, size, runs, ...(memfd ? {memfd} : {})})
  }
  return objects
}

function decodeMemfd(id: string, raw: unknown, objectSize: bigint): MemfdFacts {
  const facts = raw as {name?: unknown; size?: unknown; seals?: unknown; owner?: unknown}
  if (typeof facts !== 'object' || facts === null || typeof facts.name !== 'string' || typeof facts.size !== 'string' || !/^\d+$/.test(facts.size)
    || typeof facts.seals !== 'number' || !Number.isInteger(facts.seals) || (facts.seals & ~KNOWN_SEALS) !== 0) throw damaged(`object ${id}: a malformed memfd record`)
  const size = BigInt(facts.size)
  const page = BigInt(PAGE_SIZE)
  // A mapping may reach past the memfd's end (those pages fault SIGBUS), so the object may be larger.
  if ((size + page - 1n) / page * page > objectSize) throw damaged(`object ${id}: memfd size ${size} does not fit the object's ${objectSize} bytes`)
  if (facts.owner === undefined) return {name: facts.name, size, seals: facts.seals}
  const owner = facts.owner as unknown[]
  if (!Array.isArray(owner) || owner.length !== 3 || !owner.every((v) => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff)
    || (owner[2] as number) > 0o7777) throw damaged(`object ${id}: a malformed memfd owner`)
  const [uid, gid, mode] = owner as [number, number, number]
  return {name: facts.name, size, seals: facts.seals, owner: {uid, gid, mode}}
}

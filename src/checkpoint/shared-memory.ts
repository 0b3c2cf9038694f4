/**
 * Shared anonymous memory, read while its writers are stopped. A fork
 * snapshot does not freeze it (the snapshot shares it with the running
 * target), so each object's populated pages are copied during the downtime,
 * from the object itself through /proc/PID/map_files (the whole object, not
 * just the part one VMA shows), skipping holes with SEEK_DATA/SEEK_HOLE, into
 * a memfd of ours by sendfile; the pool write comes later, off the downtime.
 * This costs downtime in proportion to the populated shared memory.
 */
import {closeSync, fstatSync, openSync} from 'node:fs'

import {SyscallError} from '../errors.js'
import {PAGE_SIZE} from '../image/process-image.js'
import {SYS, sendfileAt, syscallRaw} from '../sys/libc.js'
import type {Vma} from '../sys/proc.js'

/**
 * A shared object's populated bytes as of one instant, staged in a memfd of
 * ours at the object's own offsets (holes stay holes) until the pool write.
 */
export interface SharedObjectCapture {
  id: string
  size: bigint
  /** Our memfd holding the staged bytes; closed by release(). */
  fd: number
  /** Populated, page-aligned ranges of the object (and of the memfd). */
  runs: {offset: bigint; bytes: bigint}[]
}

/** MAP_SHARED|MAP_ANONYMOUS memory (and MAP_SHARED of /dev/zero, the same thing): a shmem object with no name. */
export function isSharedAnonymous(vma: Pick<Vma, 'shared' | 'kind' | 'path' | 'deleted'>): boolean {
  if (!vma.shared) return false
  return (vma.kind === 'anon' && (vma.path === '' || vma.path.startsWith('[anon_shmem:'))) || (vma.path === '/dev/zero' && vma.deleted)
}

const SEEK_DATA = 3
const SEEK_HOLE = 4
const ENXIO = -6n
const MFD_CLOEXEC = 1

/** Close the staging memfds of captured objects. Idempotent per object. */
export function releaseSharedObjects(objects: readonly SharedObjectCapture[]): void {
  for (const object of objects) {
    if (object.fd >= 0) closeSync(object.fd)
    object.fd = -1
  }
}

/**
 * Populated contents of every shared anonymous object `pid` maps, except those
 * in `known` (already read from another member of a tree); the ids read are added to it.
 */
export function readSharedObjects(pid: number, maps: readonly Vma[], known: Set<string>): SharedObjectCapture[] {
  const objects: SharedObjectCapture[] = []
  try {
    for (const vma of maps) {
      if (!isSharedAnonymous(vma)) continue
      const id = String(vma.inode)
      if (known.has(id)) continue
      known.add(id)
      objects.push(readSharedObject(pid, vma, id))
    }
    return objects
  } catch (error) {
    releaseSharedObjects(objects)
    throw error
  }
}

function readSharedObject(pid: number, vma: Vma, id: string): SharedObjectCapture {
  const path = `/proc/${pid}/map_files/${vma.start.toString(16)}-${vma.end.toString(16)}`
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new SyscallError(`open(${path})`, code === 'EPERM' ? 1 : code === 'EACCES' ? 13 : 2, 'reading shared anonymous memory',
      code === 'EPERM' || code === 'EACCES' ? 'Reading shared memory through /proc/PID/map_files needs CAP_CHECKPOINT_RESTORE (or root).' : undefined)
  }
  let staging = -1
  try {
    const size = fstatSync(fd, {bigint: true}).size
    const name = Buffer.from('cxlfork-shared\0')
    staging = Number(syscallRaw(SYS.memfd_create, name, MFD_CLOEXEC))
    if (staging < 0) throw new SyscallError('memfd_create (staging shared memory)', -staging)
    const runs: SharedObjectCapture['runs'] = []
    const page = BigInt(PAGE_SIZE)
    let at = 0n
    while (at < size) {
      const data = syscallRaw(SYS.lseek, fd, at, SEEK_DATA)
      if (data === ENXIO) break
      if (data < 0n) throw new SyscallError(`lseek(SEEK_DATA) on ${path}`, Number(-data))
      const hole = syscallRaw(SYS.lseek, fd, data, SEEK_HOLE)
      const end = hole < 0n || hole > size ? size : hole
      // shmem is page granular; the stored runs are pages.
      const from = (data / page) * page
      const to = ((end + page - 1n) / page) * page
      sendfileAt(staging, fd, from, from, to - from, `staging shared memory ${id}`)
      runs.push({offset: from, bytes: to - from})
      at = to
    }
    return {id, size, fd: staging, runs}
  } catch (error) {
    if (staging >= 0) closeSync(staging)
    throw error
  } finally {
    closeSync(fd)
  }
}

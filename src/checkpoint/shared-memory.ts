/**
 * Shared anonymous memory, read while its writers are stopped. A fork
 * snapshot does not freeze it (the snapshot shares it with the running
 * target), so each object's populated pages are copied during the downtime,
 * from the object itself through /proc/PID/map_files (the whole object, not
 * just the part one VMA shows), skipping holes with SEEK_DATA/SEEK_HOLE, into
 * a memfd of ours by sendfile; the pool write comes later, off the downtime.
 * This costs downtime in proportion to the populated shared memory.
 */
import {closeSync, fstatSync, openSync, readlinkSync, statSync} from 'node:fs'

import {SyscallError} from '../errors.js'
import {KNOWN_SEALS, type MemfdFacts} from '../image/shared-memory.js'
import {PAGE_SIZE} from '../sys/page.js'
import {sendfileAt} from '../sys/file-io.js'
import {SYS, syscallRaw} from '../sys/syscall.js'
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
  /** Name, exact size and seals, when the object is a memfd. */
  memfd?: MemfdFacts
}

/** MAP_SHARED|MAP_ANONYMOUS memory (and MAP_SHARED of /dev/zero, the same thing): a shmem object with no name. */
export function isSharedAnonymous(vma: Pick<Vma, 'shared' | 'kind' | 'path' | 'deleted'>): boolean {
  if (!vma.shared) return false
  return (vma.kind === 'anon' && (vma.path === '' || vma.path.startsWith('[anon_shmem:'))) || (vma.path === '/dev/zero' && vma.deleted)
}

const TMPFS_MAGIC = 0x01021994n

/**
 * Shared memory with no name left: shared anonymous memory, or a MAP_SHARED
 * mapping of a tmpfs file that was deleted (a POSIX semaphore or shm_open
 * object unlinked once mapped, as Python's multiprocessing does with its
 * locks; a memfd whose fd is closed). Nothing can open such an object again,
 * so it is carried as shared anonymous memory: one object, whichever
 * processes map it. (A process still holding an fd of it is refused for the
 * fd.) System V segments have an IPC id and stay refused.
 */
export function isSharedMemoryObject(pid: number, vma: Vma): boolean {
  if (isSharedAnonymous(vma)) return true
  if (!vma.shared || !vma.deleted || vma.kind !== 'file' || vma.path.startsWith('/SYSV')) return false
  return onTmpfs(`/proc/${pid}/map_files/${vma.start.toString(16)}-${vma.end.toString(16)}`)
}

/** An fd of a deleted tmpfs file or of a memfd (`target` as /proc/PID/fd shows it): the same kind of object, held open. */
export function isSharedMemoryFd(pid: number, fd: number, target: string): boolean {
  if (!target.endsWith(' (deleted)') && !target.startsWith('/memfd:')) return false
  return onTmpfs(`/proc/${pid}/fd/${fd}`)
}

function onTmpfs(path: string): boolean {
  let fd: number
  try {
    fd = openSync(path, 'r')
  } catch {
    return false
  }
  try {
    const statfs = new BigInt64Array(15)
    return syscallRaw(SYS.fstatfs, fd, statfs) === 0n && BigInt.asUintN(32, statfs[0]!) === TMPFS_MAGIC
  } finally {
    closeSync(fd)
  }
}

/** The id of the object behind fd `fd` of `pid` (as sharedObjectId names a VMA's). */
export function sharedObjectIdOfFd(pid: number, fd: number): string {
  const st = statSync(`/proc/${pid}/fd/${fd}`, {bigint: true})
  const major = ((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn)
  const minor = (st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn)
  return `${major}:${minor}:${st.ino}`
}

/** The identity of a shared object within a checkpoint: device and inode (anonymous shmem and /dev/shm are different file systems). */
export function sharedObjectId(vma: Pick<Vma, 'devMajor' | 'devMinor' | 'inode'>): string {
  return `${vma.devMajor}:${vma.devMinor}:${vma.inode}`
}

const SEEK_DATA = 3
const SEEK_HOLE = 4
const ENXIO = -6n
const MFD_CLOEXEC = 1
const F_GET_SEALS = 1034

/** The name memfd_create was given, from a /proc link (`/memfd:NAME (deleted)`); undefined for anything else. */
export function memfdNameOf(link: string): string | undefined {
  if (!link.startsWith('/memfd:')) return undefined
  const bare = link.slice('/memfd:'.length)
  return bare.endsWith(' (deleted)') ? bare.slice(0, -' (deleted)'.length) : bare
}

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
export function readSharedObjects(pid: number, maps: readonly Vma[], known: Set<string>, fds: readonly {info: {fd: number}; kind: string}[] = []): SharedObjectCapture[] {
  const objects: SharedObjectCapture[] = []
  try {
    for (const vma of maps) {
      if (!isSharedMemoryObject(pid, vma)) continue
      const id = sharedObjectId(vma)
      if (known.has(id)) continue
      known.add(id)
      objects.push(readSharedObject(`/proc/${pid}/map_files/${vma.start.toString(16)}-${vma.end.toString(16)}`, id))
    }
    // Objects only held open (a memfd or an unlinked /dev/shm file not mapped, or mapped by no one stopped here).
    for (const {info, kind} of fds) {
      if (kind !== 'shmem') continue
      const id = sharedObjectIdOfFd(pid, info.fd)
      if (known.has(id)) continue
      known.add(id)
      objects.push(readSharedObject(`/proc/${pid}/fd/${info.fd}`, id))
    }
    return objects
  } catch (error) {
    releaseSharedObjects(objects)
    throw error
  }
}

function readSharedObject(path: string, id: string): SharedObjectCapture {
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
    const page = BigInt(PAGE_SIZE)
    // A deleted tmpfs file may end inside a page (a POSIX semaphore is 32 bytes): mappings see whole pages, zero-filled.
    const st = fstatSync(fd, {bigint: true})
    const fileSize = st.size
    let memfd: MemfdFacts | undefined
    const name = memfdNameOf(readlinkSync(path))
    if (name !== undefined) {
      // Seals are the inode's: a read-only open of it gives them (the kernel reports F_SEAL_SEAL for a memfd made without MFD_ALLOW_SEALING).
      const seals = syscallRaw(SYS.fcntl, fd, F_GET_SEALS)
      if (seals < 0n) throw new SyscallError(`fcntl(F_GET_SEALS) on ${path}`, Number(-seals))
      memfd = {name, size: fileSize, seals: Number(seals) & KNOWN_SEALS, owner: {uid: Number(st.uid), gid: Number(st.gid), mode: Number(st.mode) & 0o7777}}
    }
    const size = ((fileSize + page - 1n) / page) * page
    staging = Number(syscallRaw(SYS.memfd_create, Buffer.from('cxlfork-shared\0'), MFD_CLOEXEC))
    if (staging < 0) throw new SyscallError('memfd_create (staging shared memory)', -staging)
    const runs: SharedObjectCapture['runs'] = []
    let at = 0n
    while (at < size) {
      const data = syscallRaw(SYS.lseek, fd, at, SEEK_DATA)
      if (data === ENXIO) break
      if (data < 0n) throw new SyscallError(`lseek(SEEK_DATA) on ${path}`, Number(-data))
      const hole = syscallRaw(SYS.lseek, fd, data, SEEK_HOLE)
      const end = hole < 0n || hole > fileSize ? fileSize : hole
      // shmem is page granular; the stored runs are pages.
      const from = (data / page) * page
      const to = ((end + page - 1n) / page) * page
      sendfileAt(staging, fd, from, from, (end < to ? end : to) - from, `staging shared memory ${id}`)
      runs.push({offset: from, bytes: to - from})
      at = to
    }
    // Whole pages in the staging file too (the tail of the last one reads as zeros).
    if (syscallRaw(SYS.ftruncate, staging, size) < 0n) throw new SyscallError('ftruncate (staging shared memory)', 5)
    return {id, size, fd: staging, runs, ...(memfd ? {memfd} : {})}
  } catch (error) {
    if (staging >= 0) closeSync(staging)
    throw error
  } finally {
    closeSync(fd)
  }
}

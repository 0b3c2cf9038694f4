/**
 * Shared anonymous memory of a clone: each object of the checkpoint is made
 * once per restore, in the first member that maps it, as real shared
 * anonymous memory (mmap MAP_SHARED|MAP_ANONYMOUS of the object's full size),
 * filled from the store with sendfile, and reopened as a file
 * through /proc/PID/map_files, so that every VMA of every member maps it at
 * its own offset (MAP_SHARED from that fd). Later members reopen it through
 * the first member's mapping. Writes of one member are seen by all, as in the
 * original tree; the clone shares nothing with the pool or the original.
 *
 * An object that was a memfd is made as one again (memfd_create with its
 * name, in the process under construction), truncated to its exact size and
 * filled the same way; its seals are added by seal() once every member has
 * mapped it and holds its fds (F_SEAL_WRITE is refused while a writable
 * shared mapping exists, and SHRINK/GROW/WRITE would stop the fill). Read-only
 * mappings of a write-sealed memfd are made from a read-only fd, as the
 * kernel leaves such a mapping no way to become writable (VM_MAYWRITE off),
 * which is also what lets F_SEAL_WRITE be added after them.
 */
import {fchmodSync, fchownSync} from 'node:fs'

import {CorruptError, CxlforkError, SyscallError} from '../errors.js'
import {type SharedObject} from '../image/shared-memory.js'
import {close, fcntl, ftruncate, open, sendfileAt} from '../sys/file-io.js'
import {MAP, O, PROT, SYS} from '../sys/syscall.js'
import {type Injector} from './injector.js'
import {type MapOp} from './plan.js'

type SharedOp = Extract<MapOp, {kind: 'shared'}>


const hex = (value: bigint): string => value.toString(16)

const MFD_CLOEXEC = 1
const MFD_ALLOW_SEALING = 2
const MFD_NOEXEC_SEAL = 8
const MFD_EXEC = 16
const F_ADD_SEALS = 1033
const F_SEAL_WRITE = 8
const F_SEAL_FUTURE_WRITE = 16
const F_SEAL_EXEC = 32

/** Seals that forbid writable shared mappings made after them. */
const writeSealed = (object: SharedObject): boolean => ((object.memfd?.seals ?? 0) & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) !== 0

export class SharedMemoryBuilder {
  /** Where each object made so far can be opened again: a member's mapping of it, or its fd. */
  private readonly made = new Map<string, string>()

  /**
   * `storeFd` is a readable fd of the store (the pool file): objects are
   * filled from it by sendfile, in the kernel (a fresh shared mapping filled
   * by process_vm_writev faults every page in: 5x slower at 64 MiB here).
   * Only pool checkpoints hold shared objects, and a pool restore gives it.
   */
  constructor(private readonly objects: ReadonlyMap<string, SharedObject>, private readonly storeFd?: number) {}

  /** Which fd of open()'s answer maps `op`: a read-only one for a read-only mapping of a write-sealed memfd. */
  keyOf(op: SharedOp): string {
    const object = this.objects.get(op.sharedId)
    return object && writeSealed(object) && (op.prot & PROT.WRITE) === 0 ? `${op.sharedId} ro` : op.sharedId
  }

  /**
   * An fd in the process under construction for each object its `ops` map
   * (by keyOf), the object made (and filled) here if no member made it yet.
   * The caller maps the ops from these fds, closes them, and calls placed().
   */
  open(inject: Injector, ops: readonly SharedOp[]): Map<string, number> {
    const fds = new Map<string, number>()
    try {
      // Every VMA is checked against its object; each object is opened once.
      for (const op of ops) {
        const object = this.objects.get(op.sharedId)
        if (!object) throw new CorruptError('IMAGE_INCONSISTENT', `the shared memory at 0x${hex(op.start)} maps object ${op.sharedId}, which the checkpoint does not hold`, 'The checkpoint is inconsistent; take a new one.')
        if (op.offset + (op.end - op.start) > object.size) {
          throw new CorruptError('IMAGE_INCONSISTENT', `the shared memory at 0x${hex(op.start)} reaches past the end of its object (${object.size} bytes)`, 'The checkpoint is inconsistent; take a new one.')
        }
        const key = this.keyOf(op)
        if (!fds.has(key)) fds.set(key, this.openObject(inject, op.sharedId, key === op.sharedId ? O.RDWR : O.RDONLY))
      }
      return fds
    } catch (error) {
      for (const fd of fds.values()) inject.tracee.syscall(SYS.close, fd)
      throw error
    }
  }

  /**
   * An fd for object `id` in the process under construction, opened with
   * `access` (O_RDONLY, O_WRONLY or O_RDWR): reopened where an earlier member
   * holds it, else made here. The caller places or closes it.
   */
  openObject(inject: Injector, id: string, access: number): number {
    const object = this.objects.get(id)
    if (!object) throw new CorruptError('IMAGE_INCONSISTENT', `the checkpoint names shared memory object ${id}, which it does not hold`, 'The checkpoint is inconsistent; take a new one.')
    const where = this.made.get(id)
    if (where) return inject.open(where, access)
    const fd = this.make(inject, inject.tracee.pid, object)
    if (access === O.RDWR) return fd
    try {
      return inject.open(`/proc/${inject.tracee.pid}/fd/${fd}`, access)
    } finally {
      inject.tracee.syscall(SYS.close, fd)
    }
  }

  /** The object `id` is now mapped at [start, end) of process `hostPid`: later members reopen it there. */
  placed(id: string, hostPid: number, start: bigint, end: bigint): void {
    if (!this.made.has(id)) this.made.set(id, `/proc/${hostPid}/map_files/${hex(start)}-${hex(end)}`)
  }

  /** The object `id` is now fd `fd` of process `hostPid`: later members reopen it there. */
  placedFd(id: string, hostPid: number, fd: number): void {
    if (!this.made.has(id)) this.made.set(id, `/proc/${hostPid}/fd/${fd}`)
  }

  /**
   * Put back the seals of every memfd made: called once the whole tree is
   * built (every mapping and fd in place), before any member runs. Seals
   * belong to the inode, so they are added here through one of its /proc links.
   */
  seal(): void {
    for (const [id, where] of this.made) {
      const seals = (this.objects.get(id)?.memfd?.seals ?? 0) & ~F_SEAL_EXEC
      if (seals === 0) continue
      const fd = open(where, O.RDWR)
      try {
        fcntl(fd, F_ADD_SEALS, seals)
      } catch (error) {
        const errno = error instanceof SyscallError ? error.errno : 5
        throw new SyscallError(`fcntl(F_ADD_SEALS, 0x${seals.toString(16)}) on memfd ${this.objects.get(id)!.memfd!.name}`, errno, 'restoring its seals')
      } finally {
        close(fd)
      }
    }
  }

  private make(inject: Injector, pid: number, object: SharedObject): number {
    const storeFd = this.storeFd
    if (storeFd === undefined) throw new CxlforkError('STORE_NOT_MAPPABLE', 'this page store gives no file to fill shared memory from', 'Restore the checkpoint from its pool.')
    if (object.memfd) return this.makeMemfd(inject, pid, object, storeFd)
    const at = inject.call(`mmap(shared object ${object.id})`, SYS.mmap, 0, object.size, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.ANONYMOUS, -1, 0)
    const path = `/proc/${pid}/map_files/${hex(at)}-${hex(at + object.size)}`
    try {
      const fd = open(path, O.WRONLY)
      try {
        for (const run of object.runs) sendfileAt(fd, storeFd, run.storeOffset, run.offset, run.bytes, `shared memory ${object.id} into the new process`)
      } finally {
        close(fd)
      }
      return inject.open(path, O.RDWR)
    } finally {
      // The fd (or the VMAs mapped from it) keeps the object.
      inject.call(`munmap(shared object ${object.id})`, SYS.munmap, at, object.size)
    }
  }

  /** A memfd with the object's name and exact size, filled (only bytes below its size: the stored runs are whole pages). */
  private makeMemfd(inject: Injector, pid: number, object: SharedObject, storeFd: number): number {
    const memfd = object.memfd!
    // MFD_NOEXEC_SEAL is how F_SEAL_EXEC comes (and it allows sealing); the other seals are added by seal().
    // Without it, MFD_EXEC keeps a host whose vm.memfd_noexec defaults to no-exec from adding F_SEAL_EXEC
    // (a kernel before 6.3 does not know the flag: EINVAL; one that enforces no-exec: EACCES; then without).
    const name = inject.putString(memfd.name)
    const flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | ((memfd.seals & F_SEAL_EXEC) === 0 ? 0 : MFD_NOEXEC_SEAL)
    let made = (memfd.seals & F_SEAL_EXEC) === 0 ? inject.tracee.syscall(SYS.memfd_create, name, flags | MFD_EXEC) : -22n
    if (made === -22n || made === -13n) made = inject.call(`memfd_create(${memfd.name})`, SYS.memfd_create, name, flags)
    if (made < 0n) throw new SyscallError(`memfd_create(${memfd.name}) in the new process`, Number(-made))
    const fd = Number(made)
    try {
      const local = open(`/proc/${pid}/fd/${fd}`, O.WRONLY)
      try {
        ftruncate(local, memfd.size)
        // Made here by a root stub: its owner and mode as the original's, so that the clone can still fchmod it.
        if (memfd.owner) setOwner(local, memfd.name, memfd.owner)
        for (const run of object.runs) {
          const bytes = run.offset + run.bytes > memfd.size ? memfd.size - run.offset : run.bytes
          if (bytes > 0n) sendfileAt(local, storeFd, run.storeOffset, run.offset, bytes, `memfd ${memfd.name} into the new process`)
        }
      } finally {
        close(local)
      }
      return fd
    } catch (error) {
      inject.tracee.syscall(SYS.close, fd)
      throw error
    }
  }
}

function setOwner(fd: number, name: string, owner: {uid: number; gid: number; mode: number}): void {
  try {
    fchownSync(fd, owner.uid, owner.gid)
    fchmodSync(fd, owner.mode)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    throw new SyscallError(`fchown/fchmod(memfd ${name})`, code === 'EPERM' ? 1 : code === 'EINVAL' ? 22 : 5, `owner ${owner.uid}:${owner.gid}, mode ${owner.mode.toString(8)}`)
  }
}

/**
 * Shared anonymous memory of a clone: each object of the checkpoint is made
 * once per restore, in the first member that maps it, as real shared
 * anonymous memory (mmap MAP_SHARED|MAP_ANONYMOUS of the object's full size),
 * filled from the store with sendfile, and reopened as a file
 * through /proc/PID/map_files, so that every VMA of every member maps it at
 * its own offset (MAP_SHARED from that fd). Later members reopen it through
 * the first member's mapping. Writes of one member are seen by all, as in the
 * original tree; the clone shares nothing with the pool or the original.
 */
import {CorruptError, CxlforkError} from '../errors.js'
import {type SharedObject} from '../image/shared-memory.js'
import {close, open, sendfileAt} from '../sys/file-io.js'
import {MAP, O, PROT, SYS} from '../sys/syscall.js'
import {type Injector} from './injector.js'
import {type MapOp} from './plan.js'

type SharedOp = Extract<MapOp, {kind: 'shared'}>


const hex = (value: bigint): string => value.toString(16)

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

  /**
   * An fd in the process under construction for each object its `ops` map,
   * the object made (and filled) here if no member made it yet. The caller
   * maps the ops from these fds, closes them, and calls placed().
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
        if (!fds.has(op.sharedId)) fds.set(op.sharedId, this.openObject(inject, op.sharedId, O.RDWR))
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

  private make(inject: Injector, pid: number, object: SharedObject): number {
    const storeFd = this.storeFd
    if (storeFd === undefined) throw new CxlforkError('STORE_NOT_MAPPABLE', 'this page store gives no file to fill shared memory from', 'Restore the checkpoint from its pool.')
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
}

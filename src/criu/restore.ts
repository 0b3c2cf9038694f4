/**
 * `criu restore`: deserialize an image set and build the process (or the process
 * tree, zombies included) with every page copied from its pages-N.img into local
 * anonymous memory, the full CRIU restore cost profile. The building machinery
 * is the pool path's: the set is read back into ProcessImages and handed to
 * the same buildTree as a pool checkpoint.
 */
import {openSync, closeSync, fstatSync} from 'node:fs'
import {resolve} from 'node:path'

import {CorruptError} from '../errors.js'
import {MAP, PROT} from '../sys/syscall.js'
import {mmap, munmap} from '../sys/vm-io.js'
import {type CloneExit, type MemberPlan, type PidNamespaceMode, buildTree} from '../restore/build-process.js'
import {type StoredRun, planRestore} from '../restore/plan.js'
import {criuSchema} from './image-file.js'
import {type CriuShmem, readCriuImages, writeRestoreStats} from './images.js'
import {type SharedObject} from '../image/shared-memory.js'
import {memfdCreate, sendfileAt} from '../sys/file-io.js'
import {type StoreFileSpan} from '../restore/page-copy.js'
import {type StdioOnDevNull} from '../restore/descriptors.js'

export interface CriuRestoreResult {
  pid: number
  threads: number
  /** Processes built: the tree's tasks (zombies too), 1 for a single process. */
  processes: number
  /** The clone's network namespace: 'host' (ours), 'new' (its own, loopback only) or the path it joined. */
  netns: string
  /** The clone's own PID namespace, when it has one: its pid there and its init's pid here. */
  pidNamespace: {pid: number; initPid: number} | null
  images: string
  /** fds 0-2 the original had on a terminal or a pipe to outside, which the clone has on /dev/null (restore.ts, RestoreResult). */
  stdioOnDevNull: StdioOnDevNull[]
  exit?: CloneExit
  stats: {
    restore_time: number
    forking_time: number
    /** Reading and decoding the protobuf images. */
    deserialize_time: number
    /** Parsing the .proto schemas (once per process), not part of restore_time. */
    schema_load_time: number
    memory_time: number
    state_time: number
    pages_restored: number
    /** Of pages_restored, those the new process read from its pages image itself while cxlfork wrote the rest into it (large copies, two CPUs). */
    pages_read_by_clone: number
  }
}

/** Each live member's pages file mapped read-only here, at its own base in one offset space (a store offset names one member's file). */
class MappedPages {
  private readonly files: {path: string; first: bigint; size: bigint; address: bigint; dev: bigint; ino: bigint}[] = []
  private next = 0n

  /** Map `path`; returns the store offset of its byte 0. */
  add(path: string): bigint {
    const fd = openSync(path, 'r')
    let size = 0
    let address = 0n
    let identity: {dev: bigint; ino: bigint}
    try {
      const st = fstatSync(fd, {bigint: true})
      identity = {dev: st.dev, ino: st.ino}
      size = Number(st.size)
      if (size > 0) address = mmap(null, size, PROT.READ, MAP.PRIVATE, fd, 0)
    } finally {
      closeSync(fd)
    }
    const first = this.next
    // Absolute: the new process, with a cwd of its own, opens it too.
    this.files.push({path: resolve(path), first, size: BigInt(size), address, ...identity})
    this.next += BigInt(size) + 4096n
    return first
  }

  localAddress(offset: bigint): bigint {
    const file = this.fileAt(offset)
    return file.address + (offset - file.first)
  }

  /** The pages file holding `offset`: the new process reads its share of the pages from it itself (restore/page-copy.ts). */
  fileSpan(offset: bigint): StoreFileSpan {
    const file = this.fileAt(offset)
    return {path: file.path, offset: offset - file.first, available: file.first + file.size - offset, dev: file.dev, ino: file.ino}
  }

  private fileAt(offset: bigint): MappedPages['files'][number] {
    const file = this.files.find((f) => offset >= f.first && offset < f.first + f.size + 4096n)
    if (!file || offset >= file.first + file.size) throw new CorruptError('IMAGE_CORRUPT', `pagemap points at offset ${file ? offset - file.first : offset} beyond ${file?.path ?? 'the pages images'}`)
    return file
  }

  release(): void {
    for (const file of this.files) if (file.size > 0n) munmap(file.address, Number(file.size))
    this.files.length = 0
  }
}

/**
 * The set's shared anonymous objects, their stored pages copied (in the kernel) into one
 * memfd of ours back to back: the store the restore fills each object from, as it fills
 * them from the pool file.
 */
function stageSharedObjects(objects: readonly CriuShmem[]): {fd: number; objects: Map<string, SharedObject>} | undefined {
  if (objects.length === 0) return undefined
  const fd = memfdCreate('cxlfork-criu-shmem')
  try {
    const out = new Map<string, SharedObject>()
    let at = 0n
    for (const object of objects) {
      const runs: SharedObject['runs'] = []
      const source = object.runs.length > 0 ? openSync(object.pagesPath, 'r') : -1
      try {
        for (const run of object.runs) {
          sendfileAt(fd, source, BigInt(run.fileOffset), at, run.bytes, `shared memory ${object.id} from ${object.pagesPath}`)
          runs.push({offset: run.offset, bytes: run.bytes, storeOffset: at})
          at += run.bytes
        }
      } finally {
        if (source >= 0) closeSync(source)
      }
      out.set(object.id, {id: object.id, size: object.size, runs, ...(object.memfd ? {memfd: object.memfd} : {})})
    }
    return {fd, objects: out}
  } catch (error) {
    closeSync(fd)
    throw error
  }
}

export function criuRestore(request: {images: string; wait: boolean; pidns?: PidNamespaceMode; netns?: string
  /** fds of ours to become the clone's fds 0-2 (a porter's function clone talks over pipes); default /dev/null, or our stdio with `wait`. */
  stdio?: readonly [number | null, number | null, number | null]
  /** The clone gets SIGKILL when this process dies (a porter's function clone dies with the porter). */
  dieWithParent?: boolean
  /**
   * When our own clean-up runs (unmapping our view of the pages images: a page table entry per
   * page, ~30 ms at 256 MiB), once the clone runs: at once by default; a porter runs it after its reply.
   */
  cleanUp?: (work: () => void) => void}): CriuRestoreResult {
  // Parsing the .proto schemas is cxlfork's start-up cost, not deserialization (CRIU's
  // are compiled C): keep it out of restore_time and report it on its own.
  const tSchema = performance.now()
  criuSchema()
  const schemaLoadUs = Math.round((performance.now() - tSchema) * 1000)
  const t0 = performance.now()
  const set = readCriuImages(request.images)
  // The pages files are mapped read-only here and copied into the new processes with process_vm_writev.
  const pages = new MappedPages()
  let built
  let tDone: number
  let tDecoded: number
  let pagesRestored = 0
  let sharedFd: number | undefined
  try {
    const plans: MemberPlan[] = set.members.map((member) => {
      const shape = {pid: member.pid, ppid: member.ppid, pgid: member.pgid, sid: member.sid}
      if (!member.image) return {...shape, zombieStatus: member.zombieStatus ?? 0, ...(member.comm === undefined ? {} : {comm: member.comm})}
      const base = pages.add(member.pagesPath!)
      const runs: StoredRun[] = member.image.pageRuns.map((run, i) => ({...run, storeOffset: base + BigInt(member.runOffsets![i]!)}))
      const plan = planRestore(member.image, runs, 'local')
      pagesRestored += plan.pagesCopied
      return {...shape, image: member.image, plan}
    })
    const shared = stageSharedObjects(set.sharedObjects)
    sharedFd = shared?.fd
    tDecoded = performance.now()
    built = buildTree(plans, {localAddress: (offset) => pages.localAddress(offset), fileSpan: (offset) => pages.fileSpan(offset), ...(shared ? {fd: shared.fd, sharedObjects: shared.objects} : {})},
      {stdio: request.stdio ?? (request.wait ? 'inherit' : 'null'), ...(request.dieWithParent || request.wait ? {dieWithParent: true} : {}), setsid: !request.wait, wait: request.wait, ...(request.pidns === undefined ? {} : {pidns: request.pidns}), ...(request.netns === undefined ? {} : {network: request.netns})})
    // The clone runs from here on. Unmapping our view of the pages images (tearing down a page
    // table entry per page: ~30 ms at 256 MiB) is this process's own clean-up, after it.
    tDone = performance.now()
  } catch (error) {
    pages.release()
    throw error
  } finally {
    if (sharedFd !== undefined) closeSync(sharedFd)
  }
  const cleanUp = request.cleanUp ?? ((work: () => void): void => work())
  cleanUp(() => pages.release())
  const stats = {
    restore_time: Math.round((tDone - t0) * 1000), forking_time: built.timings.spawnUs, deserialize_time: Math.round((tDecoded - t0) * 1000), schema_load_time: schemaLoadUs,
    memory_time: built.timings.memoryUs, state_time: built.timings.stateUs, pages_restored: pagesRestored, pages_read_by_clone: built.timings.pagesReadByProcess,
  }
  writeRestoreStats(request.images, {restoreTime: stats.restore_time, pagesRestored: stats.pages_restored, forkingTime: stats.forking_time})
  const result: CriuRestoreResult = {pid: built.pid, threads: built.threads, processes: built.members, netns: request.netns ?? 'host', pidNamespace: built.namespace ?? null, images: request.images,
    stdioOnDevNull: built.stdioOnDevNull, stats}
  if (request.wait) {
    result.exit = built.wait()
  }
  return result
}

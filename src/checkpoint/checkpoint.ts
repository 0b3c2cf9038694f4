/**
 * Checkpoint into the pool: live snapshot, then the snapshot writes its own
 * pages once, by vmsplice + splice, straight into a write-once pool extent
 * (process_vm_readv into our mapping where it cannot open the pool), while
 * the state record and page map become metadata sections; publish is the
 * commit point.
 */
import {accessRecordFor} from '../image/access-record.js'
import {fstatSync} from 'node:fs'
import {type SharedMemoryRecord, type SharedObjectRun, encodeSharedMemory} from '../image/shared-memory.js'
import {type SharedObjectCapture, releaseSharedObjects} from './shared-memory.js'

import {ConflictError, SyscallError} from '../errors.js'
import {encodeImage} from '../image/codec.js'
import {encodePageMap} from '../image/page-map.js'
import {PAGE_SIZE, type PageRun, totalPages} from '../image/process-image.js'
import {Section} from '../image/sections.js'
import {type CheckpointBuilder, type ChecksumRange, PAGE_CHECKSUMS_SECTION, PageChecksummer, type Pool, checksumRange, encodePageChecksums} from '../pool/index.js'
import {BATCH_MAX_CALLS, type BatchCall, type PendingSyscalls} from '../inject/batch.js'
import {validateCheckpointName} from '../pool/names.js'
import {formatSize} from '../pool/size.js'
import {sendfileAt} from '../sys/file-io.js'
import {O, PROT, SYS} from '../sys/syscall.js'
import {type VmSegment, vmReadv} from '../sys/vm-io.js'
import type {CpuPlacement} from '../sys/affinity.js'
import {faultPoint} from '../fault.js'
import {preflight} from './preflight.js'
import {type LiveSnapshot, killTarget, takePlacedSnapshot} from './snapshot.js'
import {type CheckedTree, type FrozenMember, type TreeRecord, captureStoppedMember, freezeDescendants, markInternalPipes, preflightTree, sharedAcrossMembers, thawMembers} from './tree.js'

/** Statistics named as CRIU names them, in microseconds. */
export interface DumpStats {
  freezing_time: number
  frozen_time: number
  memdump_time: number
  memwrite_time: number
  pages_scanned: number
  pages_written: number
  /** µs cxlfork spent computing page checksums (CRC-32C), mostly while the snapshot was still writing. */
  checksum_time?: number
  /** Of which after the last page was written (what checksums add to the checkpoint). */
  checksum_tail_time?: number
}

export interface CheckpointResult {
  name: string
  pid: number
  killed: boolean
  /** With --tree: every member (pid, parent, and whether it is a zombie); the root first. */
  tree?: {pid: number; ppid: number; zombie: boolean}[]
  /** µs the descendants of a tree stayed stopped (the root's is downtimeUs). */
  treeDowntimeUs?: number
  vmas: number
  fds: number
  pages: number
  bytes: number
  /** µs the target was stopped. */
  downtimeUs: number
  totalUs: number
  stats: DumpStats
}

/** Largest single iovec process_vm_readv accepts is MAX_RW_COUNT; stay well below. */
const MAX_SEGMENT_BYTES = 1 << 30

/** Remote page runs paired with consecutive local destinations. */
export function runSegments(runs: readonly PageRun[], localBase: bigint): VmSegment[] {
  const segments: VmSegment[] = []
  let offset = 0n
  for (const run of runs) {
    let vaddr = run.vaddr
    let left = run.nrPages * PAGE_SIZE
    while (left > 0) {
      const len = Math.min(left, MAX_SEGMENT_BYTES)
      segments.push({local: localBase + offset, remote: vaddr, len})
      vaddr += BigInt(len)
      offset += BigInt(len)
      left -= len
    }
  }
  return segments
}

/** Pages scanned = every page of the private mappings whose page tables were walked (both dump paths). */
export function pagesScanned(snapshot: LiveSnapshot): number {
  let pages = 0
  for (const vma of snapshot.memory.vmas) {
    if ((vma.flags & 1) === 0 && vma.kind !== 'vdso' && vma.kind !== 'vvar' && vma.kind !== 'vvar_vclock' && vma.kind !== 'vsyscall') pages += Number((vma.end - vma.start) / BigInt(PAGE_SIZE))
  }
  return pages
}

/** One piece of the page write: `len` bytes at the snapshot's `vaddr` go to pool offset `offset`. */
export interface PageWrite {
  vaddr: bigint
  len: bigint
  offset: bigint
}

/** Largest pipe asked for (fs.pipe-max-size's default): one vmsplice + splice pair per MiB. */
const PIPE_BYTES = 1 << 20
/** fcntl commands. */
const F_SETPIPE_SZ = 1031
const F_GETPIPE_SZ = 1032

/** A page write the snapshot child is busy with; finish() waits for it (and repairs or fails). */
export interface PendingPageWrite {
  /**
   * Wait for the write; meanwhile `progress` is called with the number of
   * bytes from the extent's start that are written for good (the page
   * checksums are computed from them while the rest is written).
   */
  finish(progress?: (finalBytes: bigint) => void): void
}

/**
 * The snapshot writes its own pages into the pool file, from syscalls
 * injected into the throwaway fork child, batched. Each page is copied once,
 * by the kernel, straight into the pool's page cache: no intermediate buffer
 * and no page fault per destination page (what a copy through our MAP_SHARED
 * mapping pays on tmpfs). vmsplice + splice through a 1 MiB pipe, not
 * pwrite64: the child's page table entries start out "old" after fork, and a
 * CPU access sets each one's accessed bit (~0.45 us per page in this VM),
 * which pwrite's copy from user memory pays and vmsplice's page lookup does
 * not. Measured: 13-16% less time in a C test at 64 and 256 MiB, 6% less for
 * the whole page write here (A/B in one process). pwrite64 remains the
 * fallback. The write is started and left running: the caller assembles the
 * rest of the checkpoint meanwhile, on the other CPU. Returns null, having
 * written nothing, when the child cannot open the pool (another mount
 * namespace): the caller then copies with process_vm_readv.
 */
function startPageWrite(pool: Pool, snapshot: LiveSnapshot, poolOffset: bigint, placement: CpuPlacement | undefined): PendingPageWrite | null {
  const memory = snapshot.memory
  const started = startSnapshotFileWrite(snapshot.snapshotTracee, {fd: pool.fd, path: pool.path}, memory.vmas, memory.pageRuns, poolOffset, placement)
  if (!started) return null
  return {
    finish: (progress) => {
      try {
        started.finish(progress)
      } catch (error) {
        throw noSpaceIfFull(pool, error, started.bytes)
      }
    },
  }
}

/**
 * The snapshot child writes the pages of `runs` (in `vmas`, the snapshot's own memory)
 * into the file we hold open as `file.fd`, back to back from `fileOffset`, by vmsplice +
 * splice (pwrite64 where a transfer falls short), as startPageWrite describes. Shared by
 * the pool path and the CRIU-format dump (pages-1.img). Returns null, having written
 * nothing, when the child cannot open that file.
 */
export function startSnapshotFileWrite(child: LiveSnapshot['snapshotTracee'], file: {fd: number; path: string}, vmas: readonly {start: bigint; end: bigint; prot: number}[],
  runs: readonly PageRun[], fileOffset: bigint, placement: CpuPlacement | undefined): (PendingPageWrite & {bytes: bigint}) | null {
  const fd = openInSnapshot(child, file.fd, file.path)
  if (fd < 0n) return null
  let pipe: ReturnType<typeof openPipe> = null
  const closeAll = (): void => {
    if (!child.isStopped) return // killed meanwhile: its fds went with it
    child.syscalls([fd, ...(pipe ? [pipe.readFd, pipe.writeFd] : [])].map((n) => ({nr: SYS.close, args: [n]})))
  }
  try {
    pipe = openPipe(child)
    // The snapshot is thrown away afterwards: unreadable pages may be made readable for the write.
    const unreadable = new Set(runs.map((run) => run.vmaIndex).filter((index) => (vmas[index]!.prot & PROT.READ) === 0))
    const mprotects = [...unreadable].map((index) => {
      const vma = vmas[index]!
      return {nr: SYS.mprotect, args: [vma.start, vma.end - vma.start, BigInt(vma.prot | PROT.READ)]}
    })
    const pieceBytes = pipe ? pipe.size : MAX_SEGMENT_BYTES
    const writes: PageWrite[] = []
    let offset = fileOffset
    for (const segment of runSegments(runs, 0n)) {
      for (let done = 0; done < segment.len!; done += pieceBytes) {
        const len = Math.min(pieceBytes, segment.len! - done)
        writes.push({vaddr: segment.remote + BigInt(done), len: BigInt(len), offset})
        offset += BigInt(len)
      }
    }
    const mprotectResults = child.syscalls(mprotects, {stopOnError: true})
    const failed = mprotectResults.findIndex((r) => r < 0n)
    if (failed >= 0 || mprotectResults.length < mprotects.length) {
      throw new SyscallError('mprotect (in the snapshot)', failed >= 0 ? Number(-mprotectResults[failed]!) : 5)
    }
    // The write runs beside cxlfork's own work (the image, the metadata), on any CPU the target may use.
    placement?.unfollow(child.pid)
    const started = pipe ? startSpliceWrites(child, pipe, fd, writes) : {finish: () => 0}
    return {
      bytes: offset - fileOffset,
      finish: (progress) => {
        try {
          const firstUnwritten = started.finish(progress === undefined ? undefined : (pieces) => {
            if (pieces > 0) progress(writes[pieces - 1]!.offset + writes[pieces - 1]!.len - fileOffset)
          })
          pwriteWrites(child, fd, writes.slice(firstUnwritten))
        } finally {
          closeAll()
        }
      },
    }
  } catch (error) {
    closeAll()
    throw error
  }
}

/**
 * Open for writing, in the snapshot, the file we hold as `ourFd`. The child resolves
 * paths in the target's mount (and pid) namespace, where the same path may name
 * another file: only a file proven to be ours (device and inode) is kept. Returns
 * the fd, or a negative number when neither `path` nor our /proc fd link leads there.
 */
function openInSnapshot(child: LiveSnapshot['snapshotTracee'], ourFd: number, path: string): bigint {
  const ours = fstatSync(ourFd, {bigint: true})
  const statBuffer = child.scratchAlloc(144)
  for (const candidate of [path, `/proc/${process.pid}/fd/${ourFd}`]) {
    const fd = child.syscall(SYS.open, child.scratchWrite(candidate), O.WRONLY | O.CLOEXEC, 0)
    if (fd < 0n) continue
    const view = child.syscall(SYS.fstat, fd, statBuffer) === 0n ? new DataView(child.readMemory(statBuffer, 16).buffer) : undefined
    if (view && view.getBigUint64(0, true) === ours.dev && view.getBigUint64(8, true) === ours.ino) return fd
    child.syscall(SYS.close, fd)
  }
  return -1n
}

/** A pipe in the snapshot, grown to PIPE_BYTES when allowed; null if none can be made. */
export function openPipe(child: LiveSnapshot['snapshotTracee']): {readFd: bigint; writeFd: bigint; size: number} | null {
  const fds = child.scratchAlloc(8)
  if (child.syscall(SYS.pipe2, fds, O.CLOEXEC) !== 0n) return null
  const view = new DataView(child.readMemory(fds, 8).buffer)
  const readFd = BigInt(view.getInt32(0, true))
  const writeFd = BigInt(view.getInt32(4, true))
  const size = child.syscall(SYS.fcntl, writeFd, F_SETPIPE_SZ, PIPE_BYTES)
  // Without the larger pipe the default 64 KiB one works, in more calls.
  const bytes = size > 0n ? Number(size) : Number(child.syscall(SYS.fcntl, writeFd, F_GETPIPE_SZ))
  if (!(bytes >= 4096)) {
    child.syscall(SYS.close, readFd)
    child.syscall(SYS.close, writeFd)
    return null
  }
  return {readFd, writeFd, size: bytes}
}

/**
 * vmsplice each piece into the pipe and splice it to its pool offset, all in
 * batches, left running in the child. finish() returns the index of the
 * first piece not known to be written in full; every piece from there on is
 * rewritten by pwriteWrites (a short transfer can leave bytes in the pipe,
 * which the next splice would put in the next piece's range, never outside
 * it: rewriting from that piece on repairs all of it).
 */
export function startSpliceWrites(child: LiveSnapshot['snapshotTracee'], pipe: {readFd: bigint; writeFd: bigint}, fd: bigint, writes: readonly PageWrite[]): {finish(progress?: (pieces: number) => void): number} {
  if (writes.length === 0) return {finish: () => 0}
  // One scratch block: an iovec (base, len) per piece, then a loff_t per piece.
  const table = new DataView(new ArrayBuffer(writes.length * 24))
  writes.forEach((w, i) => {
    table.setBigUint64(16 * i, w.vaddr, true)
    table.setBigUint64(16 * i + 8, w.len, true)
    table.setBigUint64(16 * writes.length + 8 * i, w.offset, true)
  })
  const base = child.scratchWrite(new Uint8Array(table.buffer))
  const callsOf = (from: number, to: number): BatchCall[] => writes.slice(from, to).flatMap((w, k) => [
    {nr: SYS.vmsplice, args: [pipe.writeFd, base + BigInt(16 * (from + k)), 1n, 0n]},
    {nr: SYS.splice, args: [pipe.readFd, 0n, fd, base + BigInt(16 * writes.length + 8 * (from + k)), w.len, 0n]},
  ])
  // Groups of pieces one launched batch runs whole, so that poll() sees every call complete.
  const group = Math.max(1, Math.floor(BATCH_MAX_CALLS / 2))
  const full = (results: readonly bigint[], k: number, piece: number): boolean => results[2 * k] === writes[piece]!.len && results[2 * k + 1] === writes[piece]!.len
  let groupStart = 0
  let pending = child.startSyscalls(callsOf(0, Math.min(group, writes.length)), {stopOnError: true})
  return {
    finish: (progress) => {
      for (;;) {
        const groupEnd = Math.min(groupStart + group, writes.length)
        if (progress) followBatch(pending, groupStart, groupEnd, full, progress)
        const results = pending.finish()
        for (let piece = groupStart; piece < groupEnd; piece++) {
          if (!full(results, piece - groupStart, piece)) return piece
        }
        progress?.(groupEnd)
        if (groupEnd === writes.length) return writes.length
        groupStart = groupEnd
        pending = child.startSyscalls(callsOf(groupStart, Math.min(groupStart + group, writes.length)), {stopOnError: true})
      }
    },
  }
}

/** How long followBatch waits without seeing a call complete before it leaves the batch to finish() (a stop it cannot see). */
const FOLLOW_PATIENCE_MS = 50

/**
 * While a batch of pieces [first, end) runs, report how many pieces from the
 * extent's start are written in full (progress(pieces)), reading the batch's
 * results without stopping the child. Returns at the batch's end, at a
 * failed or short piece (finish() sorts that out), or when nothing moved for
 * a while.
 */
function followBatch(pending: PendingSyscalls, first: number, end: number, full: (results: readonly bigint[], k: number, piece: number) => boolean,
  progress: (pieces: number) => void): void {
  let piece = first
  let lastMove = performance.now()
  const idle = new Int32Array(new SharedArrayBuffer(4))
  while (piece < end) {
    const results = pending.poll(2 * (piece - first), 64)
    let moved = 0
    for (let k = 0; k + 1 < results.length; k += 2) {
      if (!full(results.slice(k, k + 2), 0, piece + moved)) return
      moved++
    }
    // A vmsplice that failed ends the batch there (stopOnError).
    if (results.length % 2 === 1 && results[results.length - 1]! < 0n) return
    if (moved > 0) {
      piece += moved
      progress(piece)
      lastMove = performance.now()
      continue
    }
    if (performance.now() - lastMove > FOLLOW_PATIENCE_MS) return
    Atomics.wait(idle, 0, 0, 0.2)
  }
}

/** A write that failed with ENOSPC: the pool's file system is full, POOL_NO_SPACE with the numbers. */
function noSpaceIfFull(pool: Pool, error: unknown, bytes: bigint): unknown {
  if (error instanceof SyscallError && error.errno === 28) return pool.noSpace(`${bytes} bytes of page data`, bytes)
  return error
}

/** pwrite64 each piece, batched; finishes short writes; typed errors (ENOSPC: the pool is full). */
export function pwriteWrites(child: LiveSnapshot['snapshotTracee'], fd: bigint, writes: readonly PageWrite[]): void {
  const results = child.syscalls(writes.map((w) => ({nr: SYS.pwrite64, args: [fd, w.vaddr, w.len, w.offset]})), {stopOnError: true})
  results.forEach((result, i) => {
    const write = writes[i]!
    if (result < 0n) {
      throw new SyscallError('pwrite64 (in the snapshot)', Number(-result), `pool offset ${write.offset}`, Number(-result) === 28 ? 'The pool file system is full.' : undefined)
    }
    // tmpfs writes complete in full; finish any short one the slow way.
    if (result < write.len) writeRemainder(child, fd, write, result)
  })
  if (results.length < writes.length) throw new SyscallError('pwrite64 (in the snapshot)', 5, 'batch stopped early')
}

function writeRemainder(child: LiveSnapshot['snapshotTracee'], fd: bigint, write: PageWrite, done: bigint): void {
  while (done < write.len) {
    const r = child.syscallChecked('pwrite64 (in the snapshot)', SYS.pwrite64, fd, write.vaddr + done, write.len - done, write.offset + done)
    if (r === 0n) throw new SyscallError('pwrite64 (in the snapshot)', 5, 'no progress')
    done += r
  }
}

/**
 * Shared objects' contents into one extent of their own, written through the
 * pool file (its memory reserved first: a full file system is POOL_NO_SPACE).
 */
function storeSharedObjects(pool: Pool, builder: CheckpointBuilder, objects: readonly SharedObjectCapture[]): {record: SharedMemoryRecord; poolOffset: bigint; bytes: bigint} {
  let bytes = 0n
  for (const object of objects) for (const run of object.runs) bytes += run.bytes
  const extent = bytes === 0n ? undefined : builder.allocateData(bytes, {reserve: true})
  let at = extent?.poolOffset ?? 0n
  const record: SharedMemoryRecord = {objects: []}
  for (const object of objects) {
    const runs: SharedObjectRun[] = []
    for (const run of object.runs) {
      sendfileAt(pool.fd, object.fd, run.offset, at, run.bytes, `shared memory ${object.id} into the pool`)
      runs.push({offset: run.offset, bytes: run.bytes, storeOffset: at})
      at += run.bytes
    }
    record.objects.push({id: object.id, size: object.size, runs})
  }
  return {record, poolOffset: extent?.poolOffset ?? 0n, bytes}
}

/** The page map of pages stored back to back from `poolOffset`, in page-run order. */
function pageMapAt(runs: readonly PageRun[], poolOffset: bigint): Uint8Array {
  let offset = poolOffset
  return encodePageMap(runs.map((run) => {
    const entry = {vaddr: run.vaddr, poolOffset: offset, nrPages: run.nrPages, vmaIndex: run.vmaIndex}
    offset += BigInt(run.nrPages * PAGE_SIZE)
    return entry
  }))
}

/**
 * `pool` may be a function that opens (or creates) the pool: it is called only
 * once every refusal has been checked, so a checkpoint that cannot be taken
 * creates no pool file. Into a pool already open, the check of the target's
 * memory (a walk of every page table) is made on the snapshot while it
 * writes its pages; a refusal then comes after the target was stopped for
 * its downtime, and leaves it running as it was.
 */
export function checkpointToPool(pool: Pool | (() => Pool), request: {pid: number; name: string; kill: boolean; tree?: boolean; tcpClose?: boolean; stopPoint?: () => void}): CheckpointResult {
  const t0 = performance.now()
  validateCheckpointName(request.name)
  const tree: CheckedTree | undefined = request.tree ? preflightTree(request.pid, request.tcpClose) : undefined
  const checked = tree ? tree.checks.get(request.pid)! : preflight(request.pid, {memory: typeof pool === 'function', tcpClose: request.tcpClose ?? false})
  if (typeof pool === 'function') pool = pool()
  // Refuse a taken name before the target is touched; publish re-checks atomically.
  if (pool.has(request.name)) {
    throw new ConflictError('NAME_TAKEN', `a checkpoint named ${request.name} already exists in ${pool.path}`, 'Pick another --name or remove it with `cxlfork rm`.')
  }
  // Safe point: nothing touched yet. (A signal to stop is honoured at each safe point: stopPoint throws.)
  request.stopPoint?.()
  // A tree: every descendant stops before the root's snapshot, so all members show one instant.
  const tFrozen = performance.now()
  const frozen: FrozenMember[] = tree ? freezeDescendants(tree) : []
  if (tree) faultPoint('tree-frozen')
  // Objects members share, found while the descendants are stopped (the root is seized next).
  if (tree) markInternalPipes(tree.checks)
  const sharing = tree ? sharedAcrossMembers(tree.members, tree.checks) : new Map()
  let thawedAt: number | undefined
  const thaw = (): void => {
    if (thawedAt !== undefined) return
    thawMembers(frozen)
    thawedAt = performance.now()
  }
  let placed: ReturnType<typeof takePlacedSnapshot>
  try {
    placed = takePlacedSnapshot(request.pid, checked)
  } catch (error) {
    thaw()
    throw error
  }
  const {snapshot, placement} = placed
  let builder: CheckpointBuilder | undefined
  const memberShared: SharedObjectCapture[] = []
  const freeBefore = pool.fileSystemFree()
  let neededBytes = 0n
  try {
    builder = pool.beginCheckpoint()
    const tWrite = performance.now()
    const runs = snapshot.memory.pageRuns
    let pages = totalPages(runs)
    const bytes = BigInt(pages) * BigInt(PAGE_SIZE)
    neededBytes = bytes
    const extent = pages === 0 ? undefined : builder.allocateData(bytes)
    const pending = extent ? startPageWrite(pool, snapshot, extent.poolOffset, placement) : null
    // Page checksums, each computed from the pool file once its bytes are final.
    const checksummer = extent ? new PageChecksummer(pool.fd, pool.path, extent.poolOffset, bytes) : undefined
    const checksumRanges: ChecksumRange[] = []
    const memberData: {poolOffset: bigint; bytes: bigint}[] = []
    let checksumMs = 0
    const timed = <T>(work: () => T): T => {
      const t = performance.now()
      try {
        return work()
      } finally {
        checksumMs += performance.now() - t
      }
    }
    // While the snapshot writes its pages: the rest of the image and the metadata sections.
    const image = snapshot.captureImage()
    builder.addSection(Section.processState, encodeImage(image))
    const pageMap = extent ? pageMapAt(runs, extent.poolOffset) : encodePageMap([])
    builder.addSection(Section.pageMap, pageMap)
    builder.addSection(Section.accessRecord, accessRecordFor(pageMap))
    // Shared anonymous memory: each object once, as read while its processes were stopped (the snapshot releases its own).
    const sharedObjects = [...snapshot.sharedMemory]
    const sharedKnown = new Set(sharedObjects.map((object) => object.id))
    // The descendants, each still stopped: state from /proc and injected queries, pages copied straight from it.
    for (const member of frozen) {
      const captured = captureStoppedMember(member, tree!.checks.get(member.pid)!, sharedKnown)
      sharedObjects.push(...captured.sharedMemory)
      memberShared.push(...captured.sharedMemory)
      for (const fd of captured.image.fds) {
        const from = sharing.get(member.pid)?.get(fd.fd)
        if (from) fd.sharedFrom = from
      }
      const memberPages = totalPages(captured.memory.pageRuns)
      const memberBytes = BigInt(memberPages) * BigInt(PAGE_SIZE)
      neededBytes += memberBytes
      // Copied through our mapping: its memory is allocated first (a full file system is POOL_NO_SPACE, not SIGBUS).
      const memberExtent = memberPages === 0 ? undefined : builder.allocateData(memberBytes, {reserve: true})
      if (memberExtent) {
        memberData.push({poolOffset: memberExtent.poolOffset, bytes: memberBytes})
        const copied = vmReadv(member.pid, runSegments(captured.memory.pageRuns, memberExtent.address))
        if (BigInt(copied) !== memberBytes) {
          throw new SyscallError('process_vm_readv', 14, `member ${member.pid}: copied ${copied} of ${memberBytes} bytes`, 'A member lost memory while being dumped; retry the checkpoint.')
        }
      }
      builder.addSection(Section.processState, encodeImage(captured.image))
      const memberPageMap = memberExtent ? pageMapAt(captured.memory.pageRuns, memberExtent.poolOffset) : encodePageMap([])
      builder.addSection(Section.pageMap, memberPageMap)
      builder.addSection(Section.accessRecord, accessRecordFor(memberPageMap))
      pages += memberPages
      faultPoint('tree-member-captured')
      request.stopPoint?.() // safe point: the root runs on, this member is captured
    }
    thaw()
    if (tree) {
      const record: TreeRecord = {members: tree.members}
      builder.addSection(Section.tree, new TextEncoder().encode(JSON.stringify(record)))
    }
    if (sharedObjects.length > 0) {
      const stored = storeSharedObjects(pool, builder, sharedObjects)
      neededBytes += stored.bytes
      pages += Number(stored.bytes / BigInt(PAGE_SIZE))
      if (stored.bytes > 0n) memberData.push({poolOffset: stored.poolOffset, bytes: stored.bytes})
      builder.addSection(Section.sharedMemory, encodeSharedMemory(stored.record))
    }
    // The members' pages are final: checksum them while the snapshot still writes the root's.
    for (const data of memberData) checksumRanges.push(timed(() => checksumRange(pool.fd, pool.path, data.poolOffset, data.bytes)))
    if (pending) pending.finish(checksummer && ((finalBytes) => timed(() => checksummer.advance(finalBytes))))
    else if (extent) {
      pool.reserve(extent.poolOffset, bytes, `${bytes} bytes of page data`)
      const copied = vmReadv(snapshot.snapshotPid, runSegments(runs, extent.address))
      if (BigInt(copied) !== bytes) {
        throw new SyscallError('process_vm_readv', 14, `snapshot ${snapshot.snapshotPid}: copied ${copied} of ${bytes} bytes`, 'The snapshot lost memory while being dumped; retry the checkpoint.')
      }
    }
    const tWritten = performance.now()
    if (checksummer) checksumRanges.unshift(timed(() => checksummer.finish()))
    const tChecksummed = performance.now()
    builder.addSection(PAGE_CHECKSUMS_SECTION, encodePageChecksums(checksumRanges))
    // Safe point: every page written, nothing published; a stop here gives the build back (catch below).
    faultPoint('pages-written')
    request.stopPoint?.()
    builder.publish(request.name, {uid: snapshot.ownerUid, summary: {pid: request.pid, comm: image.task.comm, pages, vmas: image.vmas.length}})
    builder = undefined
    if (request.kill) {
      // Children first, so that no parent sees a child die before it is itself gone.
      for (const member of [...(tree?.members ?? [])].reverse()) if (member.pid !== request.pid && member.zombieStatus === undefined) killTarget(member.pid)
      killTarget(request.pid)
    }
    const stats: DumpStats = {
      freezing_time: snapshot.timings.freezingUs,
      frozen_time: snapshot.timings.frozenUs,
      memdump_time: Math.round((tWritten - t0) * 1000) - snapshot.timings.frozenUs,
      memwrite_time: Math.round((tWritten - tWrite) * 1000),
      pages_scanned: pagesScanned(snapshot),
      pages_written: pages,
      checksum_time: Math.round(checksumMs * 1000),
      checksum_tail_time: Math.round((tChecksummed - tWritten) * 1000),
    }
    const result: CheckpointResult = {
      name: request.name, pid: request.pid, killed: request.kill, vmas: image.vmas.length, fds: image.fds.length,
      pages, bytes: pages * PAGE_SIZE, downtimeUs: snapshot.timings.frozenUs, totalUs: Math.round((performance.now() - t0) * 1000), stats,
    }
    if (tree) {
      result.tree = tree.members.map((member) => ({pid: member.pid, ppid: member.ppid, zombie: member.zombieStatus !== undefined}))
      result.treeDowntimeUs = Math.round(((thawedAt ?? performance.now()) - tFrozen) * 1000)
    }
    return result
  } catch (error) {
    // The child may still be writing: it must be gone before its extent is given back.
    snapshot.release()
    builder?.abort()
    // Whatever piece ran out of space first, the checkpoint as a whole did not fit: say so with its numbers.
    if (error instanceof ConflictError && error.code === 'POOL_NO_SPACE') {
      throw pool.noSpace(`checkpoint ${request.name} (${formatSize(neededBytes)} of page data and its metadata; nothing was kept, the target runs on)`, neededBytes, freeBefore)
    }
    throw error
  } finally {
    thaw()
    snapshot.release()
    releaseSharedObjects(memberShared)
    placement?.release()
  }
}

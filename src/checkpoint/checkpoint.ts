/**
 * Checkpoint into the pool: live snapshot, then the snapshot writes its own
 * pages once, by vmsplice + splice, straight into a write-once pool extent
 * (process_vm_readv into our mapping where it cannot open the pool), while
 * the state record and page map become metadata sections; publish is the
 * commit point.
 */
import {accessRecordFor} from '../image/access-record.js'
import {type SharedMemoryRecord, type SharedObjectRun, encodeSharedMemory} from '../image/shared-memory.js'
import {type SharedObjectCapture, releaseSharedObjects} from './shared-memory.js'

import {ConflictError, SyscallError} from '../errors.js'
import {encodeImage} from '../image/codec.js'
import {encodePageMap} from '../image/page-map.js'
import {type PageRun, totalPages} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import {Section} from '../image/sections.js'
import {type CheckpointBuilder, type ChecksumRange, PAGE_CHECKSUMS_SECTION, PageChecksummer, type Pool, checksumRange, encodePageChecksums} from '../pool/index.js'
import {validateCheckpointName} from '../pool/names.js'
import {formatSize} from '../pool/size.js'
import {sendfileAt} from '../sys/file-io.js'
import {vmReadv} from '../sys/vm-io.js'
import {faultPoint} from '../fault.js'
import {preflight} from './preflight.js'
import {takePlacedSnapshot} from './snapshot.js'
import {type CheckedTree, type FrozenMember, type SharedFrom, type TreeRecord, captureStoppedMember, freezeDescendants, killFrozenMembers, markInternalPipes, preflightTree, sharedAcrossMembers, thawMembers} from './tree.js'

import {pagesScanned, runSegments, startPageWrite} from './page-write.js'

/** Statistics named as CRIU names them, in microseconds. */
export interface CheckpointStats {
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
  stats: CheckpointStats
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
    record.objects.push({id: object.id, size: object.size, runs, ...(object.memfd ? {memfd: object.memfd} : {})})
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
  // File locks are taken again by the clone (restore/locks.ts).
  const tree: CheckedTree | undefined = request.tree ? preflightTree(request.pid, request.tcpClose, true) : undefined
  const checked = tree ? tree.checks.get(request.pid)! : preflight(request.pid, {memory: typeof pool === 'function', tcpClose: request.tcpClose ?? false, carryLocks: true})
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
  let sharing = new Map<number, Map<number, SharedFrom>>()
  if (tree) {
    try {
      markInternalPipes(tree.members, tree.checks)
      sharing = sharedAcrossMembers(tree.members, tree.checks)
    } catch (error) {
      thawMembers(frozen)
      throw error
    }
  }
  let thawedAt: number | undefined
  const thaw = (): void => {
    if (thawedAt !== undefined) return
    thawMembers(frozen)
    thawedAt = performance.now()
  }
  let placed: ReturnType<typeof takePlacedSnapshot>
  try {
    // --kill: the target stays stopped until it is killed, as criu dump leaves it; a failure lets it run on.
    placed = takePlacedSnapshot(request.pid, checked, {hold: request.kill})
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
    // With --kill every member stays stopped until it is killed: what it would do now would happen again in its clone.
    if (!request.kill) thaw()
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
      // Held stopped since the snapshot: killed there, children first, the root last.
      killFrozenMembers(frozen)
      snapshot.killTarget()
    }
    const stats: CheckpointStats = {
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
    snapshot.resumeTarget()
    snapshot.release()
    releaseSharedObjects(memberShared)
    placement?.release()
  }
}

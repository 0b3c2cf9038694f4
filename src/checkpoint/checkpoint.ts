/**
 * Checkpoint into the pool: live snapshot, then the snapshot's pages go once,
 * with process_vm_readv, straight into a write-once pool extent; the state
 * record and page map become metadata sections; publish is the commit point.
 */
import {fstatSync} from 'node:fs'

import {ConflictError, SyscallError} from '../errors.js'
import {encodeImage} from '../image/codec.js'
import {encodePageMap} from '../image/page-map.js'
import {PAGE_SIZE, type PageRun, totalPages} from '../image/process-image.js'
import {Section} from '../image/sections.js'
import {type CheckpointBuilder, type Pool} from '../pool/index.js'
import {validateCheckpointName} from '../pool/names.js'
import {O, PROT, SYS, type VmSegment, vmReadv} from '../sys/libc.js'
import {preflight} from './preflight.js'
import {type LiveSnapshot, killTarget, takeLiveSnapshot} from './snapshot.js'

/** Statistics named as CRIU names them, in microseconds. */
export interface DumpStats {
  freezing_time: number
  frozen_time: number
  memdump_time: number
  memwrite_time: number
  pages_scanned: number
  pages_written: number
}

export interface CheckpointResult {
  name: string
  pid: number
  killed: boolean
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
  for (const vma of snapshot.image.vmas) {
    if ((vma.flags & 1) === 0 && vma.kind !== 'vdso' && vma.kind !== 'vvar' && vma.kind !== 'vvar_vclock' && vma.kind !== 'vsyscall') pages += Number((vma.end - vma.start) / BigInt(PAGE_SIZE))
  }
  return pages
}

/**
 * The snapshot writes its own pages into the pool file: pwrite64 injected into
 * the throwaway fork child, batched. Each page is copied once, from the
 * snapshot's memory straight into the pool's page cache by the kernel's
 * write path, with no intermediate buffer and no page fault per destination
 * page (what a copy through our MAP_SHARED mapping pays on tmpfs). Returns
 * false, having written nothing that matters, when the child cannot open the
 * pool (another mount namespace): the caller then copies with process_vm_readv.
 */
function writeFromSnapshot(pool: Pool, snapshot: LiveSnapshot, poolOffset: bigint): boolean {
  const child = snapshot.snapshotTracee
  const image = snapshot.image
  // The child resolves paths in the target's mount (and pid) namespace, where the
  // same path may name another file: write only into a file proven to be our pool.
  const ours = fstatSync(pool.fd, {bigint: true})
  const statBuffer = child.scratchAlloc(144)
  const openPool = (path: string): bigint => {
    const fd = child.syscall(SYS.open, child.scratchWrite(path), O.WRONLY | O.CLOEXEC, 0)
    if (fd < 0n) return fd
    const view = child.syscall(SYS.fstat, fd, statBuffer) === 0n ? new DataView(child.readMemory(statBuffer, 16).buffer) : undefined
    if (view && view.getBigUint64(0, true) === ours.dev && view.getBigUint64(8, true) === ours.ino) return fd
    child.syscall(SYS.close, fd)
    return -1n
  }
  let fd = openPool(pool.path)
  if (fd < 0n) fd = openPool(`/proc/${process.pid}/fd/${pool.fd}`)
  if (fd < 0n) return false
  try {
    const calls: {nr: number; args: bigint[]}[] = []
    // The snapshot is thrown away afterwards: unreadable pages may be made readable for the write.
    const unreadable = new Set(image.pageRuns.map((run) => run.vmaIndex).filter((index) => (image.vmas[index]!.prot & PROT.READ) === 0))
    for (const index of unreadable) {
      const vma = image.vmas[index]!
      calls.push({nr: SYS.mprotect, args: [vma.start, vma.end - vma.start, BigInt(vma.prot | PROT.READ)]})
    }
    const writes: {vaddr: bigint; len: bigint; offset: bigint}[] = []
    let offset = poolOffset
    for (const segment of runSegments(image.pageRuns, 0n)) {
      writes.push({vaddr: segment.remote, len: BigInt(segment.len!), offset})
      offset += BigInt(segment.len!)
    }
    for (const w of writes) calls.push({nr: SYS.pwrite64, args: [fd, w.vaddr, w.len, w.offset]})
    const results = child.syscalls(calls, {stopOnError: true})
    results.forEach((result, i) => {
      const write = i >= unreadable.size ? writes[i - unreadable.size] : undefined
      if (result < 0n) throw new SyscallError(write ? 'pwrite64 (in the snapshot)' : 'mprotect (in the snapshot)', Number(-result), write ? `pool offset ${write.offset}` : undefined,
        Number(-result) === 28 ? 'The pool file system is full.' : undefined)
      // tmpfs writes complete in full; finish any short one the slow way.
      if (write && result < write.len) writeRemainder(child, fd, write, result)
    })
    if (results.length < calls.length) throw new SyscallError('pwrite64 (in the snapshot)', 5, 'batch stopped early')
    return true
  } finally {
    child.syscall(SYS.close, fd)
  }
}

function writeRemainder(child: LiveSnapshot['snapshotTracee'], fd: bigint, write: {vaddr: bigint; len: bigint; offset: bigint}, done: bigint): void {
  while (done < write.len) {
    const r = child.syscallChecked('pwrite64 (in the snapshot)', SYS.pwrite64, fd, write.vaddr + done, write.len - done, write.offset + done)
    if (r === 0n) throw new SyscallError('pwrite64 (in the snapshot)', 5, 'no progress')
    done += r
  }
}

function writePagesToPool(pool: Pool, builder: CheckpointBuilder, snapshot: LiveSnapshot): Uint8Array {
  const runs = snapshot.image.pageRuns
  const pages = totalPages(runs)
  if (pages === 0) return encodePageMap([])
  const bytes = BigInt(pages) * BigInt(PAGE_SIZE)
  const extent = builder.allocateData(bytes)
  if (!writeFromSnapshot(pool, snapshot, extent.poolOffset)) {
    const copied = vmReadv(snapshot.snapshotPid, runSegments(runs, extent.address))
    if (BigInt(copied) !== bytes) {
      throw new SyscallError('process_vm_readv', 14, `snapshot ${snapshot.snapshotPid}: copied ${copied} of ${bytes} bytes`, 'The snapshot lost memory while being dumped; retry the checkpoint.')
    }
  }
  let offset = extent.poolOffset
  return encodePageMap(runs.map((run) => {
    const entry = {vaddr: run.vaddr, poolOffset: offset, nrPages: run.nrPages, vmaIndex: run.vmaIndex}
    offset += BigInt(run.nrPages * PAGE_SIZE)
    return entry
  }))
}

/**
 * `pool` may be a function that opens (or creates) the pool: it is called only
 * once every refusal has been checked, so a checkpoint that cannot be taken
 * creates no pool file.
 */
export function checkpointToPool(pool: Pool | (() => Pool), request: {pid: number; name: string; kill: boolean}): CheckpointResult {
  const t0 = performance.now()
  validateCheckpointName(request.name)
  const checked = preflight(request.pid)
  if (typeof pool === 'function') pool = pool()
  // Refuse a taken name before the target is touched; publish re-checks atomically.
  if (pool.lookup(request.name)) {
    throw new ConflictError('NAME_TAKEN', `a checkpoint named ${request.name} already exists in ${pool.path}`, 'Pick another --name or remove it with `cxlfork rm`.')
  }
  const snapshot = takeLiveSnapshot(request.pid, checked)
  let builder: CheckpointBuilder | undefined
  try {
    builder = pool.beginCheckpoint()
    const tWrite = performance.now()
    const pageMap = writePagesToPool(pool, builder, snapshot)
    const tWritten = performance.now()
    builder.addSection(Section.processState, encodeImage(snapshot.image))
    builder.addSection(Section.pageMap, pageMap)
    const pages = totalPages(snapshot.image.pageRuns)
    builder.publish(request.name, {uid: snapshot.ownerUid, summary: {pid: request.pid, comm: snapshot.image.task.comm, pages, vmas: snapshot.image.vmas.length}})
    builder = undefined
    if (request.kill) killTarget(request.pid)
    const stats: DumpStats = {
      freezing_time: snapshot.timings.freezingUs,
      frozen_time: snapshot.timings.frozenUs,
      memdump_time: Math.round((tWritten - t0) * 1000) - snapshot.timings.frozenUs,
      memwrite_time: Math.round((tWritten - tWrite) * 1000),
      pages_scanned: pagesScanned(snapshot),
      pages_written: pages,
    }
    return {
      name: request.name, pid: request.pid, killed: request.kill, vmas: snapshot.image.vmas.length, fds: snapshot.image.fds.length,
      pages, bytes: pages * PAGE_SIZE, downtimeUs: snapshot.timings.frozenUs, totalUs: Math.round((performance.now() - t0) * 1000), stats,
    }
  } catch (error) {
    builder?.abort()
    throw error
  } finally {
    snapshot.release()
  }
}

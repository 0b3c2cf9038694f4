/**
 * The snapshot writes its own pages into the pool: vmsplice + splice through a
 * pipe of its own straight into the pool file, or pwrite from its memory
 * where it cannot open the file, run as one batch the caller can follow
 * (page checksums are computed behind it), with process_vm_readv into our
 * mapping as the fallback.
 */
import {fstatSync} from 'node:fs'

import {SyscallError} from '../errors.js'
import {type PageRun} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import {type Pool} from '../pool/index.js'
import {BATCH_MAX_CALLS, type BatchCall, type PendingSyscalls} from '../inject/batch.js'
import {O, PROT, SYS} from '../sys/syscall.js'
import {type VmSegment} from '../sys/vm-io.js'
import type {CpuPlacement} from '../sys/affinity.js'
import {type LiveSnapshot} from './snapshot.js'


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
export function startPageWrite(pool: Pool, snapshot: LiveSnapshot, poolOffset: bigint, placement: CpuPlacement | undefined): PendingPageWrite | null {
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

/** A write that failed with ENOSPC: the pool's file system is full, POOL_NO_SPACE with the numbers. */
function noSpaceIfFull(pool: Pool, error: unknown, bytes: bigint): unknown {
  if (error instanceof SyscallError && error.errno === 28) return pool.noSpace(`${bytes} bytes of page data`, bytes)
  return error
}

/**
 * The stored pages a restore copies into a new process's local memory
 * (`copy` ops: the local policy, hybrid's hot pages, the CRIU-format path).
 *
 * Such a copy is mostly the kernel allocating and zeroing the clone's new
 * pages, one CPU's work. So a large one is done from two sides at once:
 * process_vm_writev from here into one part, and pread64 of the rest run by
 * the new process itself from the same file (the way CRIU's restorer reads
 * its pages), the process moved off our CPU for that time. Measured here in
 * C (2 vCPUs, 64 MiB): 31-33 ms from one side, 17-21 ms from two.
 */
import {statSync} from 'node:fs'

import {SyscallError} from '../errors.js'
import {faultPoint} from '../fault.js'
import {signedErr} from '../inject/regs.js'
import {type CpuPlacement} from '../sys/affinity.js'
import {O, SYS} from '../sys/syscall.js'
import {type VmSegment, vmWritev} from '../sys/vm-io.js'
import {type Injector} from './injector.js'

/** Where a store offset lies in a file the new process can open itself, and which inode that must be. */
export interface StoreFileSpan {
  path: string
  /** Offset of the store offset within `path`. */
  offset: bigint
  /** Bytes of `path` from `offset` on. */
  available: bigint
  dev: bigint
  ino: bigint
}

/** One copy: `len` bytes at `storeOffset` of the store into the new process at `remote`. */
export interface PageCopy {
  storeOffset: bigint
  remote: bigint
  len: number
}

export interface PageCopySource {
  localAddress(storeOffset: bigint): bigint
  fileSpan?(storeOffset: bigint): StoreFileSpan | undefined
}

/** Below this the second side's set-up (an open, a CPU move, one more round trip) is not worth it. */
export const TWO_SIDED_MIN_BYTES = 8 << 20

/** One pread64 may move at most MAX_RW_COUNT (2 GiB - 4 KiB) bytes. */
const READ_CHUNK = 1 << 30

const PAGE = 4096

export interface TheirRead {
  path: string
  span: StoreFileSpan
  remote: bigint
  len: number
}

/** Hand the tail of `copies`, about half their bytes in whole pages, to the new process; the rest stays ours. */
export function splitCopies(copies: readonly PageCopy[], source: Required<PageCopySource>): {ours: PageCopy[]; theirs: TheirRead[]} {
  let total = 0
  for (const copy of copies) total += copy.len
  let wanted = Math.floor(total / 2 / PAGE) * PAGE
  const ours: PageCopy[] = []
  const theirs: TheirRead[] = []
  for (let i = copies.length - 1; i >= 0; i--) {
    const copy = copies[i]!
    const take = Math.min(wanted, copy.len - (copy.len % PAGE))
    const span = take > 0 ? source.fileSpan(copy.storeOffset + BigInt(copy.len - take)) : undefined
    if (take === 0 || !span || span.available < BigInt(take)) {
      ours.unshift(copy)
      continue
    }
    theirs.unshift({path: span.path, span, remote: copy.remote + BigInt(copy.len - take), len: take})
    if (take < copy.len) ours.unshift({storeOffset: copy.storeOffset, remote: copy.remote, len: copy.len - take})
    wanted -= take
  }
  return {ours, theirs}
}

function localSegments(copies: readonly PageCopy[], source: PageCopySource): VmSegment[] {
  return copies.map((copy) => ({local: source.localAddress(copy.storeOffset), remote: copy.remote, len: copy.len}))
}

function writeOurs(pid: number, copies: readonly PageCopy[], source: PageCopySource): void {
  if (copies.length === 0) return
  let expected = 0
  for (const copy of copies) expected += copy.len
  const written = vmWritev(pid, localSegments(copies, source))
  if (written !== expected) throw new SyscallError('process_vm_writev', 14, `copied ${written} of ${expected} bytes into the new process`)
}

/**
 * Open each file in the new process (no symlink followed) and check it is the inode we read:
 * a path in a directory another user can write may have been swapped since. Undefined, with
 * nothing left open, when any open or check fails (the caller copies everything itself).
 */
function openInNewProcess(inject: Injector, reads: readonly TheirRead[]): Map<string, number> | undefined {
  const tracee = inject.tracee
  const paths = [...new Map(reads.map((read) => [read.path, read.span])).entries()]
  // O_NONBLOCK: a FIFO planted at the path must not stop the open (the check below refuses it).
  const results = tracee.syscalls(paths.map(([path]) => ({nr: SYS.open, args: [inject.putString(path), O.RDONLY | O.CLOEXEC | O.NOFOLLOW | O.NONBLOCK, 0]})))
  const fds = new Map<string, number>()
  let ok = results.length === paths.length
  paths.forEach(([path, span], i) => {
    const fd = results[i]
    if (fd === undefined || signedErr(fd)) {
      ok = false
      return
    }
    fds.set(path, Number(fd))
    try {
      const st = statSync(`/proc/${tracee.pid}/fd/${fd}`, {bigint: true})
      if (st.dev !== span.dev || st.ino !== span.ino) ok = false
    } catch {
      ok = false
    }
  })
  if (ok) return fds
  closeInNewProcess(inject, fds)
  return undefined
}

function closeInNewProcess(inject: Injector, fds: ReadonlyMap<string, number>): void {
  if (fds.size > 0) inject.tracee.syscalls([...fds.values()].map((fd) => ({nr: SYS.close, args: [fd]})))
}

/**
 * Copy `copies` into the new process of `inject`. With a store the process can
 * read as files, a placement to move it off our CPU and enough bytes, from two
 * sides at once; otherwise all by process_vm_writev from here.
 */
export function copyPages(inject: Injector, copies: readonly PageCopy[], source: PageCopySource, placement: CpuPlacement | undefined): {bytesReadByProcess: number} {
  const pid = inject.tracee.pid
  let total = 0
  for (const copy of copies) total += copy.len
  if (total < TWO_SIDED_MIN_BYTES || !source.fileSpan || !placement) {
    writeOurs(pid, copies, source)
    return {bytesReadByProcess: 0}
  }
  const {ours, theirs} = splitCopies(copies, {localAddress: (offset) => source.localAddress(offset), fileSpan: source.fileSpan.bind(source)})
  const fds = theirs.length > 0 ? openInNewProcess(inject, theirs) : undefined
  if (!fds) {
    writeOurs(pid, copies, source)
    return {bytesReadByProcess: 0}
  }
  let bytesReadByProcess = 0
  let failure: {error: unknown} | undefined
  try {
    const reads: {nr: number; args: (number | bigint)[]; len: number}[] = []
    for (const read of theirs) {
      for (let done = 0; done < read.len; done += READ_CHUNK) {
        const len = Math.min(READ_CHUNK, read.len - done)
        reads.push({nr: SYS.pread64, args: [fds.get(read.path)!, read.remote + BigInt(done), len, read.span.offset + BigInt(done)], len})
      }
    }
    const back = placement.beside(pid)
    let results: bigint[]
    try {
      const pending = inject.tracee.startSyscalls(reads, {stopOnError: true})
      faultPoint('restore-pages-shared')
      try {
        writeOurs(pid, ours, source)
      } finally {
        results = pending.finish()
      }
    } finally {
      back?.()
    }
    reads.forEach((read, i) => {
      const r = results[i]
      if (r === undefined || r !== BigInt(read.len)) {
        const errno = r !== undefined && signedErr(r) ? Number(-r) : 5
        throw new SyscallError('pread64 of stored pages in the new process', errno, `read ${r === undefined || signedErr(r) ? 0 : r} of ${read.len} bytes at 0x${(read.args[1] as bigint).toString(16)}`)
      }
      bytesReadByProcess += read.len
    })
  } catch (error) {
    failure = {error}
  }
  // After a failure the process may be gone: the first error is the one to report.
  try {
    closeInNewProcess(inject, fds)
  } catch (error) {
    failure ??= {error}
  }
  if (failure) throw failure.error
  return {bytesReadByProcess}
}

/**
 * `criu dump`: the same live fork-snapshot capture as `checkpoint` (with
 * --tree, of a whole process tree, its members frozen together as
 * `checkpoint --tree` freezes them), but the captured ProcessImages are
 * serialized into CRIU protobuf images and every page is copied into the
 * tasks' pages-N.img: the "CRIU over shared memory" baseline.
 */
import {closeSync, existsSync, fstatSync, mkdirSync, openSync, readdirSync, rmSync, statSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'

import {type CheckpointStats as CheckpointDumpStats} from '../checkpoint/checkpoint.js'
import {pagesScanned, runSegments, startSnapshotFileWrite} from '../checkpoint/page-write.js'
import {type LiveSnapshot, takePlacedSnapshot} from '../checkpoint/snapshot.js'
import {preflight} from '../checkpoint/preflight.js'
import {type SharedObjectCapture, releaseSharedObjects} from '../checkpoint/shared-memory.js'
import {type CheckedTree, type FrozenMember, type SharedFrom, captureStoppedMember, freezeDescendants, killFrozenMembers, markInternalPipes, preflightTree, sharedAcrossMembers, thawMembers} from '../checkpoint/tree.js'
import {ConflictError, PermissionError, SyscallError, UsageError} from '../errors.js'
import {type VmaImage, totalPages} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import type {CpuPlacement} from '../sys/affinity.js'
import {handleOf, kernelDev} from '../sys/file-handle.js'
import {SYS, syscallRaw} from '../sys/syscall.js'
import {addressOf, vmReadv} from '../sys/vm-io.js'
import type {WatchFacts} from './kinds/inotify.js'
import {type MemberToWrite, type PageSource, type ShmemFdFacts, type WriteOptions, runsToWrite, writeCriuTree} from './images.js'

export interface CriuDumpResult {
  pid: number
  images: string
  files: string[]
  /** Bytes of all image files, pages included. */
  imageBytes: number
  pages: number
  killed: boolean
  /** With --tree: every member (pid, parent, and whether it is a zombie); the root first. */
  tree?: {pid: number; ppid: number; zombie: boolean}[]
  /** µs the descendants of a tree stayed stopped (the root's is downtimeUs). */
  treeDowntimeUs?: number
  downtimeUs: number
  totalUs: number
  stats: CheckpointDumpStats
}

/** Default image directory: beside the pool, on the same shared-memory mount (CRIU over CXL keeps its images there). */
export function defaultImagesDir(poolPath: string, pid: number): string {
  return join(dirname(resolve(poolPath)), 'cxlfork-images', `${pid}-${Date.now()}`)
}

function refuseExistingImages(dir: string): void {
  // The nearest existing ancestor must be a directory: mkdir would otherwise fail only after the target was stopped.
  for (let probe = dir; ; probe = dirname(probe)) {
    let stat
    try {
      stat = statSync(probe)
    } catch {
      if (dirname(probe) === probe) break
      continue // missing (ENOENT) or below a file (ENOTDIR): look further up
    }
    if (!stat.isDirectory()) {
      throw new UsageError('IMAGES_NOT_A_DIRECTORY', `${probe} is not a directory, so ${dir} cannot hold an image set`,
        'Pass --images a new or empty directory, e.g. /dev/shm/web.img.')
    }
    break
  }
  let names: string[] = []
  try {
    names = existsSync(dir) ? readdirSync(dir) : []
  } catch (error) {
    throw new PermissionError('NOT_PERMITTED', `cannot read ${dir}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`, 'Pass --images a directory you can write.')
  }
  if (names.some((name) => name.endsWith('.img'))) {
    throw new ConflictError('IMAGES_EXIST', `${dir} already holds images`, 'Dump into an empty or new directory.')
  }
}

/** st_mode of `path` on this host (the dumping one), as open() would find it; undefined if it cannot be stat'ed. */
function hostMode(path: string): number | undefined {
  try {
    return statSync(path).mode
  } catch {
    return undefined
  }
}

/**
 * Pages of the frozen snapshot: spliced by the snapshot itself into pages-1.img (one copy,
 * made by the kernel, on the other CPU while the small images are encoded here, as the pool
 * path writes its extents), or, where it cannot open that file, read straight into the
 * writer's buffer.
 */
function snapshotPages(snapshot: LiveSnapshot, vmas: readonly VmaImage[], placement: CpuPlacement | undefined): PageSource {
  return {
    start(file, runs) {
      return startSnapshotFileWrite(snapshot.snapshotTracee, file, vmas, runs, 0n, placement)
    },
    read(run, into) {
      const len = run.nrPages * PAGE_SIZE
      const copied = vmReadv(snapshot.snapshotPid, runSegments([run], addressOf(into)))
      if (copied !== len) throw new SyscallError('process_vm_readv', 14, `snapshot ${snapshot.snapshotPid}: ${copied} of ${len} bytes at 0x${run.vaddr.toString(16)}`)
    },
  }
}

/** Pages of a stopped tree member, read straight from it (it stays stopped until its set is written). */
function memberPages(pid: number): PageSource {
  return {
    read(run, into) {
      const len = run.nrPages * PAGE_SIZE
      const copied = vmReadv(pid, runSegments([run], addressOf(into)))
      if (copied !== len) throw new SyscallError('process_vm_readv', 14, `member ${pid}: ${copied} of ${len} bytes at 0x${run.vaddr.toString(16)}`, 'A member lost memory while being dumped; retry the dump.')
    },
  }
}

/** The inode of the FIFO at `path` on this host (its pipe_id in the images). */
function hostInode(path: string): number | undefined {
  try {
    return Number(statSync(path, {bigint: true}).ino & 0xffff_ffffn)
  } catch {
    return undefined
  }
}

/** What CRIU records of a file an inotify instance watches: inode, kernel dev_t, file handle; undefined if it cannot be stat'ed. */
function watchFacts(path: string): WatchFacts | undefined {
  try {
    const st = statSync(path, {bigint: true})
    const handle = handleOf(path)
    return {sdev: kernelDev(st.dev), ino: st.ino, handleType: handle?.handleType ?? 0, handle: handle?.handle ?? new Uint8Array(0)}
  } catch {
    return undefined
  }
}

const F_GET_SEALS = 1034

/**
 * memfd.img's facts of a held shared memory object (owner, mode, size, seals), read through
 * the fd of `pid` (the root's fork snapshot holds the root's fds as they were); undefined
 * if it cannot be opened any more.
 */
function shmemFacts(pid: number, fd: number): ShmemFdFacts | undefined {
  let opened: number
  try {
    opened = openSync(`/proc/${pid}/fd/${fd}`, 'r')
  } catch {
    return undefined
  }
  try {
    const st = fstatSync(opened, {bigint: true})
    const seals = Number(syscallRaw(SYS.fcntl, opened, F_GET_SEALS))
    // A file that takes no seals (EINVAL): CRIU records F_SEAL_SEAL for it too.
    return {uid: Number(st.uid), gid: Number(st.gid), mode: Number(st.mode), size: st.size, seals: seals < 0 ? 1 : seals}
  } finally {
    closeSync(opened)
  }
}

export async function criuDump(request: {pid: number; images: string; kill: boolean; tree?: boolean; tcpClose?: boolean
  /**
   * When our own clean-up runs after a dump that succeeded (killing and reaping the fork snapshot:
   * its exit tears down a page table entry per page, ~18 ms at 1 GiB): at once by default; a
   * porter runs it after its reply. The target runs on, or is killed, before either.
   */
  cleanUp?: (work: () => void) => void}): Promise<CriuDumpResult> {
  const t0 = performance.now()
  const dir = resolve(request.images)
  refuseExistingImages(dir)
  const tcpClose = request.tcpClose ?? false
  const tree: CheckedTree | undefined = request.tree ? preflightTree(request.pid, tcpClose) : undefined
  const checked = tree ? tree.checks.get(request.pid)! : preflight(request.pid, {tcpClose})
  // A tree: every descendant stops before the root's snapshot, so all members show one instant (as checkpoint --tree).
  const tFrozen = performance.now()
  const frozen: FrozenMember[] = tree ? freezeDescendants(tree) : []
  let thawedAt: number | undefined
  const thaw = (): void => {
    if (thawedAt !== undefined) return
    thawMembers(frozen)
    thawedAt = performance.now()
  }
  let sharing = new Map<number, Map<number, SharedFrom>>()
  let placed: ReturnType<typeof takePlacedSnapshot>
  try {
    if (tree) {
      markInternalPipes(tree.members, tree.checks)
      sharing = sharedAcrossMembers(tree.members, tree.checks)
    }
    // Placed as a pool checkpoint is, so the two downtimes compare.
    // --kill: the target stays stopped until it is killed, as criu dump leaves it; a failure lets it run on.
    placed = takePlacedSnapshot(request.pid, checked, {hold: request.kill})
  } catch (error) {
    thaw()
    throw error
  }
  const {snapshot, placement} = placed
  const memberShared: SharedObjectCapture[] = []
  let dumped = false
  // Created only now, so a refused dump leaves nothing behind; removed again if this dump fails.
  const created = mkdirSync(dir, {recursive: true, mode: 0o700})
  try {
    const image = snapshot.captureImage()
    const toWrite: MemberToWrite[] = [{member: tree?.members[0] ?? {pid: image.task.pid, ppid: image.task.ppid, pgid: image.task.pgid, sid: image.task.sid}, image, pages: snapshotPages(snapshot, image.vmas, placement)}]
    const sharedKnown = new Set(snapshot.sharedMemory.map((object) => object.id))
    // The descendants, each still stopped: state from /proc and injected queries; their pages are read from them while the set is written.
    const byPid = new Map(frozen.map((member) => [member.pid, member]))
    for (const member of tree?.members.slice(1) ?? []) {
      const stopped = byPid.get(member.pid)
      if (!stopped) {
        toWrite.push({member})
        continue
      }
      const captured = captureStoppedMember(stopped, tree!.checks.get(member.pid)!, sharedKnown)
      memberShared.push(...captured.sharedMemory)
      for (const fd of captured.image.fds) {
        const from = sharing.get(member.pid)?.get(fd.fd)
        if (from) fd.sharedFrom = from
      }
      toWrite.push({member, image: captured.image, pages: memberPages(member.pid)})
    }
    let pages = 0
    for (const entry of toWrite) if (entry.image) pages += totalPages(entry.image.pageRuns)
    const tWrite = performance.now()
    const scanned = pagesScanned(snapshot)
    const timings = snapshot.timings
    // stats-dump.img is encoded after the pages are written: getters read the clock at that moment.
    const options: WriteOptions = {modeOf: hostMode, inodeOf: hostInode, watchOf: watchFacts, vdsoPages: true,
      shmemFdOf: (pid, fd) => (pid === request.pid ? shmemFacts(snapshot.snapshotPid, fd) : undefined) ?? shmemFacts(pid, fd)}
    let pagesWritten = 0
    for (const entry of toWrite) if (entry.image) pagesWritten += totalPages(runsToWrite(entry.image, options))
    const written = await writeCriuTree(dir, toWrite, {
      freezingTime: timings.freezingUs, frozenTime: timings.frozenUs,
      get memdumpTime() {
        return Math.round((performance.now() - t0) * 1000) - timings.frozenUs
      },
      get memwriteTime() {
        return Math.round((performance.now() - tWrite) * 1000)
      },
      pagesScanned: scanned, pagesWritten,
    }, options, [...snapshot.sharedMemory, ...memberShared])
    // With --kill every member stays stopped until it is killed: what it would do now would happen again in its clone.
    if (!request.kill) thaw()
    const tWritten = performance.now()
    if (request.kill) {
      // Held stopped since the snapshot: killed there, children first, the root last.
      killFrozenMembers(frozen)
      snapshot.killTarget()
    }
    const result: CriuDumpResult = {
      pid: request.pid, images: dir, files: written.files, imageBytes: written.bytes, pages, killed: request.kill,
      downtimeUs: timings.frozenUs, totalUs: Math.round((performance.now() - t0) * 1000),
      stats: {
        freezing_time: timings.freezingUs, frozen_time: timings.frozenUs, memdump_time: Math.round((tWritten - t0) * 1000) - timings.frozenUs,
        memwrite_time: Math.round((tWritten - tWrite) * 1000), pages_scanned: scanned, pages_written: pagesWritten,
      },
    }
    if (tree) {
      result.tree = tree.members.map((member) => ({pid: member.pid, ppid: member.ppid, zombie: member.zombieStatus !== undefined}))
      result.treeDowntimeUs = Math.round(((thawedAt ?? performance.now()) - tFrozen) * 1000)
    }
    dumped = true
    return result
  } catch (error) {
    if (created !== undefined) rmSync(created, {recursive: true, force: true})
    else for (const name of readdirSync(dir)) if (name.endsWith('.img')) rmSync(join(dir, name), {force: true})
    throw error
  } finally {
    thaw()
    snapshot.resumeTarget()
    const release = (): void => {
      snapshot.release()
      releaseSharedObjects(memberShared)
      placement?.release()
    }
    if (dumped && request.cleanUp) request.cleanUp(release)
    else release()
  }
}

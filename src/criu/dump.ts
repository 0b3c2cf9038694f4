/**
 * `criu dump`: the same live fork-snapshot capture as `checkpoint`, but the
 * state is serialized into CRIU protobuf images and every page is copied into
 * pages-1.img: the "CRIU over shared memory" baseline.
 */
import {existsSync, mkdirSync, readdirSync, rmSync, statSync} from 'node:fs'
import {dirname, join, resolve} from 'node:path'

import {type CheckpointStats as CheckpointDumpStats} from '../checkpoint/checkpoint.js'
import {pagesScanned, runSegments, startSnapshotFileWrite} from '../checkpoint/page-write.js'
import {type LiveSnapshot, killTarget, takePlacedSnapshot} from '../checkpoint/snapshot.js'
import {preflight} from '../checkpoint/preflight.js'
import {ConflictError, PermissionError, SyscallError, UnsupportedError, UsageError} from '../errors.js'
import {type VmaImage, totalPages} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import type {CpuPlacement} from '../sys/affinity.js'
import {addressOf, vmReadv} from '../sys/vm-io.js'
import {type PageSource, runsToWrite, writeCriuImages} from './images.js'

export interface CriuDumpResult {
  pid: number
  images: string
  files: string[]
  /** Bytes of all image files, pages included. */
  imageBytes: number
  pages: number
  killed: boolean
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

export async function criuDump(request: {pid: number; images: string; kill: boolean}): Promise<CriuDumpResult> {
  const t0 = performance.now()
  const dir = resolve(request.images)
  refuseExistingImages(dir)
  const checked = preflight(request.pid)
  // The CRIU images cxlfork writes carry regular files, devices and stdio; refuse the rest by name before the target is touched.
  const beyond = checked.fds.find(({info, kind}) => kind === 'fifo' || kind === 'inotify' || kind === 'ghost' || kind === 'eventfd' || kind === 'epoll' || kind === 'socket' || kind === 'timerfd' || kind === 'signalfd' || kind === 'shmem' || (kind === 'pipe' && info.fd > 2))
  if (beyond) {
    throw new UnsupportedError('CRIU_FD_TYPE', `fd ${beyond.info.fd} of process ${request.pid} is ${beyond.kind === 'pipe' ? 'a pipe above stderr' : beyond.kind === 'socket' ? 'a socket' : beyond.kind === 'shmem' ? 'a memfd or a deleted tmpfs file' : beyond.kind === 'fifo' ? 'a FIFO' : beyond.kind === 'ghost' ? 'a deleted file' : `an ${beyond.kind}`}, which cxlfork's CRIU-format dump does not write yet`,
      'Checkpoint it into the pool with `cxlfork checkpoint`, which restores pipes, eventfds, epoll instances and listening sockets.')
  }
  // Placed as a pool checkpoint is, so the two downtimes compare.
  const {snapshot, placement} = takePlacedSnapshot(request.pid, checked)
  // Created only now, so a refused dump leaves nothing behind; removed again if this dump fails.
  const created = mkdirSync(dir, {recursive: true, mode: 0o700})
  try {
    const image = snapshot.captureImage()
    const pages = totalPages(image.pageRuns)
    const tWrite = performance.now()
    const scanned = pagesScanned(snapshot)
    const timings = snapshot.timings
    // stats-dump.img is encoded after pages-1.img is written: getters read the clock at that moment.
    const options = {modeOf: hostMode, vdsoPages: true}
    const pagesWritten = totalPages(runsToWrite(image, options))
    const written = await writeCriuImages(dir, image, snapshotPages(snapshot, image.vmas, placement), {
      freezingTime: timings.freezingUs, frozenTime: timings.frozenUs,
      get memdumpTime() {
        return Math.round((performance.now() - t0) * 1000) - timings.frozenUs
      },
      get memwriteTime() {
        return Math.round((performance.now() - tWrite) * 1000)
      },
      pagesScanned: scanned, pagesWritten,
    }, options)
    const tWritten = performance.now()
    if (request.kill) killTarget(request.pid)
    return {
      pid: request.pid, images: dir, files: written.files, imageBytes: written.bytes, pages, killed: request.kill,
      downtimeUs: timings.frozenUs, totalUs: Math.round((performance.now() - t0) * 1000),
      stats: {
        freezing_time: timings.freezingUs, frozen_time: timings.frozenUs, memdump_time: Math.round((tWritten - t0) * 1000) - timings.frozenUs,
        memwrite_time: Math.round((tWritten - tWrite) * 1000), pages_scanned: scanned, pages_written: pagesWritten,
      },
    }
  } catch (error) {
    if (created !== undefined) rmSync(created, {recursive: true, force: true})
    else for (const name of readdirSync(dir)) if (name.endsWith('.img')) rmSync(join(dir, name), {force: true})
    throw error
  } finally {
    snapshot.release()
    placement?.release()
  }
}

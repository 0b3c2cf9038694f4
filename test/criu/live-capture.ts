/**
 * Test helper: the process image of a live process as `checkpoint` and `criu dump` take
 * it (preflight, the fork snapshot, captureImage), and a page source over the snapshot's
 * memory. The CRIU codec tests write and read what the real capture produces, so the two
 * cannot drift apart. close() ends the snapshot; the target runs on (or stays stopped).
 */
import {closeSync, openSync, readSync} from 'node:fs'

import {preflight} from '../../src/checkpoint/preflight.js'
import {takePlacedSnapshot} from '../../src/checkpoint/snapshot.js'
import type {PageRun, ProcessImage} from '../../src/image/process-image.js'
import {PAGE_SIZE} from '../../src/sys/page.js'

export interface LiveCapture {
  image: ProcessImage
  /** Pages of the snapshot (the target's at the instant of the capture). */
  pages: {read(run: PageRun, into: Uint8Array): void}
  close(): void
}

export function captureLive(pid: number): LiveCapture {
  const {snapshot, placement} = takePlacedSnapshot(pid, preflight(pid))
  let mem: number | undefined
  try {
    const image = snapshot.captureImage()
    mem = openSync(`/proc/${snapshot.snapshotPid}/mem`, 'r')
    const fd = mem
    return {
      image,
      pages: {
        read(run, into) {
          const got = readSync(fd, into, 0, run.nrPages * PAGE_SIZE, run.vaddr)
          if (got !== run.nrPages * PAGE_SIZE) throw new Error(`short read of the snapshot at 0x${run.vaddr.toString(16)}`)
        },
      },
      close() {
        closeSync(fd)
        snapshot.release()
        placement?.release()
      },
    }
  } catch (error) {
    if (mem !== undefined) closeSync(mem)
    snapshot.release()
    placement?.release()
    throw error
  }
}

/**
 * `criu restore`: deserialize an image set and build the process with every
 * page copied from pages-1.img into local anonymous memory, the full CRIU
 * restore cost profile. The building machinery is the pool path's.
 */
import {openSync, closeSync, fstatSync} from 'node:fs'

import {CorruptError} from '../errors.js'
import {MAP, PROT} from '../sys/syscall.js'
import {mmap, munmap} from '../sys/vm-io.js'
import {type CloneExit, type PidNamespaceMode, buildProcess} from '../restore/build-process.js'
import {type StoredRun, planRestore} from '../restore/plan.js'
import {criuSchema} from './image-file.js'
import {readCriuImages, writeRestoreStats} from './images.js'

export interface CriuRestoreResult {
  pid: number
  threads: number
  /** The clone's own PID namespace, when it has one: its pid there and its init's pid here. */
  pidNamespace: {pid: number; initPid: number} | null
  images: string
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
  }
}

export function criuRestore(request: {images: string; wait: boolean; pidns?: PidNamespaceMode}): CriuRestoreResult {
  // Parsing the .proto schemas is cxlfork's start-up cost, not deserialization (CRIU's
  // are compiled C): keep it out of restore_time and report it on its own.
  const tSchema = performance.now()
  criuSchema()
  const schemaLoadUs = Math.round((performance.now() - tSchema) * 1000)
  const t0 = performance.now()
  const set = readCriuImages(request.images)
  const runs: StoredRun[] = set.image.pageRuns.map((run, i) => ({...run, storeOffset: BigInt(set.runOffsets[i]!)}))
  const plan = planRestore(set.image, runs, 'local')
  const tDecoded = performance.now()
  // The pages file is mapped read-only here and copied into the new process with process_vm_writev.
  const fd = openSync(set.pagesPath, 'r')
  let base = 0n
  let size = 0
  try {
    size = Number(fstatSync(fd).size)
    if (size > 0) base = mmap(null, size, PROT.READ, MAP.PRIVATE, fd, 0)
  } finally {
    closeSync(fd)
  }
  let built
  let tDone: number
  try {
    built = buildProcess(set.image, plan, {
      localAddress: (offset) => {
        if (offset < 0n || offset >= BigInt(size)) throw new CorruptError('IMAGE_CORRUPT', `pagemap points at offset ${offset} beyond ${set.pagesPath}`)
        return base + offset
      },
    }, {stdio: request.wait ? 'inherit' : 'null', setsid: !request.wait, wait: request.wait, ...(request.pidns === undefined ? {} : {pidns: request.pidns})})
    // The clone runs from here on. Unmapping our view of pages-1.img (tearing down a page
    // table entry per page: ~30 ms at 256 MiB) is this process's own clean-up, after it.
    tDone = performance.now()
  } finally {
    if (size > 0) munmap(base, size)
  }
  const stats = {
    restore_time: Math.round((tDone - t0) * 1000), forking_time: built.timings.spawnUs, deserialize_time: Math.round((tDecoded - t0) * 1000), schema_load_time: schemaLoadUs,
    memory_time: built.timings.memoryUs, state_time: built.timings.stateUs, pages_restored: plan.pagesCopied,
  }
  writeRestoreStats(request.images, {restoreTime: stats.restore_time, pagesRestored: stats.pages_restored, forkingTime: stats.forking_time})
  const result: CriuRestoreResult = {pid: built.pid, threads: built.threads, pidNamespace: built.namespace ?? null, images: request.images, stats}
  if (request.wait) {
    result.exit = built.wait()
  }
  return result
}

/**
 * Restore from the pool: open the checkpoint (owner checked, checksums
 * verified), read the page map in place, plan by policy, take a pool
 * reference for the new pid before anything is mapped, and build the process.
 */
import {decodeImage} from '../image/codec.js'
import {PageMapView} from '../image/page-map.js'
import {type ProcessImage} from '../image/process-image.js'
import {Section} from '../image/sections.js'
import {type Pool, type ReferenceHandle} from '../pool/index.js'
import {getuid} from '../sys/libc.js'
import {type CloneExit, type PidNamespaceMode, buildProcess} from './build-process.js'
import {type Policy, type StoredRun, planRestore} from './plan.js'

/** Restore statistics; names follow CRIU's where they mean the same (µs). */
export interface RestoreStats {
  /** Whole engine restore: open checkpoint to running clone. */
  restore_time: number
  /** Spawning and seizing the stub (CRIU: forking_time). */
  forking_time: number
  /** Reading the checkpoint: descriptor, state record, page map. */
  open_time: number
  /** Mapping and copying memory. */
  memory_time: number
  /** fds, mm, signals, registers. */
  state_time: number
  /** Pages copied into local memory (CRIU: pages_restored). */
  pages_restored: number
  /** Pages mapped zero-copy from the pool. */
  pages_mapped: number
  injected_syscalls: number
}

export interface RestoreResult {
  name: string
  /** The clone's pid on this host. */
  pid: number
  policy: Policy
  /** Threads the clone was built with. */
  threads: number
  /** The clone's own PID namespace, when it has one: its pid there (the original's) and its init's pid here. */
  pidNamespace: {pid: number; initPid: number} | null
  /** Present with --wait: how the clone ended. */
  exit?: CloneExit
  stats: RestoreStats
}

export interface RestoreRequest {
  name: string
  policy: Policy
  wait: boolean
  /** Default: a new PID namespace for a multi-threaded checkpoint (see build-process.ts). */
  pidns?: PidNamespaceMode
}

/** Page runs of the checkpoint, each checked to lie inside the checkpoint's own data. */
function storedRuns(pageMap: PageMapView, addressOf: (offset: bigint) => bigint): StoredRun[] {
  const runs: StoredRun[] = []
  for (const entry of pageMap.entries()) {
    addressOf(entry.poolOffset)
    addressOf(entry.poolOffset + BigInt(entry.nrPages * 4096) - 1n)
    runs.push({vaddr: entry.vaddr, nrPages: entry.nrPages, vmaIndex: entry.vmaIndex, storeOffset: entry.poolOffset})
  }
  return runs
}

export function loadCheckpoint(pool: Pool, name: string): {image: ProcessImage; runs: StoredRun[]; address: (offset: bigint) => bigint} {
  const reader = pool.openCheckpoint(name, {uid: getuid()})
  const image = decodeImage(reader.section(Section.processState))
  const pageMap = new PageMapView(reader.section(Section.pageMap))
  const address = (offset: bigint): bigint => reader.address(offset)
  return {image, runs: storedRuns(pageMap, address), address}
}

export function restoreFromPool(pool: Pool, request: RestoreRequest): RestoreResult {
  const t0 = performance.now()
  const {image, runs, address} = loadCheckpoint(pool, request.name)
  const plan = planRestore(image, runs, request.policy)
  const tOpened = performance.now()
  let reference: ReferenceHandle | undefined
  let built
  try {
    built = buildProcess(image, plan, {mapPath: pool.path, localAddress: address}, {
      stdio: request.wait ? 'inherit' : 'null',
      setsid: !request.wait,
      wait: request.wait,
      ...(request.pidns === undefined ? {} : {pidns: request.pidns}),
      onSpawn: (pid) => {
        reference = pool.addReference(request.name, {pid})
      },
    })
  } catch (error) {
    if (reference) pool.releaseReference(reference)
    throw error
  }
  const tDone = performance.now()
  const result: RestoreResult = {
    name: request.name, pid: built.pid, policy: request.policy, threads: built.threads, pidNamespace: built.namespace ?? null,
    stats: {
      restore_time: Math.round((tDone - t0) * 1000), forking_time: built.timings.spawnUs, open_time: Math.round((tOpened - t0) * 1000),
      memory_time: built.timings.memoryUs, state_time: built.timings.stateUs, pages_restored: plan.pagesCopied, pages_mapped: plan.pagesMapped,
      injected_syscalls: built.timings.injectedSyscalls,
    },
  }
  if (request.wait) {
    result.exit = built.wait()
    if (reference) pool.releaseReference(reference)
  }
  return result
}

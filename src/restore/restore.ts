/**
 * Restore from the pool: open the checkpoint (owner checked, checksums
 * verified), read the page map in place, plan by policy, take a pool
 * reference for the new pid before anything is mapped, and build the process.
 */
import {fstatSync} from 'node:fs'

import {decodeImage} from '../image/codec.js'
import {AccessRecord} from '../image/access-record.js'
import {PageMapView} from '../image/page-map.js'
import {type ProcessImage} from '../image/process-image.js'
import {Section} from '../image/sections.js'
import {type SharedObject, decodeSharedMemory} from '../image/shared-memory.js'
import {type CheckpointReader, type Pool, type ReferenceHandle} from '../pool/index.js'
import {getuid} from '../sys/syscall.js'
import {type BuildOptions, type CloneExit, type MemberPlan, type PidNamespaceMode, buildTree} from './build-process.js'
import {type TreeRecord} from '../checkpoint/tree.js'
import {CorruptError, UnsupportedError, UsageError} from '../errors.js'
import {faultPoint} from '../fault.js'
import {type Policy, type StoredRun, planRestore} from './plan.js'
import {type StoreFileSpan} from './page-copy.js'
import {type StdioOnDevNull} from './descriptors.js'

/** Restore statistics; names follow CRIU's where they mean the same (µs). */
export interface PoolRestoreStats {
  /** Whole engine restore: open checkpoint to running clone. */
  restore_time: number
  /** Spawning and seizing the stub (CRIU: forking_time). */
  forking_time: number
  /** Reading the checkpoint: descriptor, state record, page map (and with --verify the page data). */
  open_time: number
  /** With --verify: reading and checksumming the page data, part of open_time. */
  verify_time?: number
  /** Mapping and copying memory. */
  memory_time: number
  /** fds, mm, signals, registers. */
  state_time: number
  /** Pages copied into local memory (CRIU: pages_restored). */
  pages_restored: number
  /** Of pages_restored, those the new process read from the pool itself while cxlfork wrote the rest into it (large copies, two CPUs). */
  pages_read_by_clone: number
  /** Pages mapped zero-copy from the pool. */
  pages_mapped: number
  /** Pages left to the fault server, copied on first touch (`moa`). */
  pages_lazy: number
  injected_syscalls: number
}

export interface RestoreResult {
  name: string
  /** The clone's pid on this host. */
  pid: number
  policy: Policy
  /** Threads the clone (its root process) was built with. */
  threads: number
  /** Processes built: the tree's members, 1 for a single process. */
  processes: number
  /** The clone's network namespace: 'host' (ours), 'new' (its own, loopback only) or the path it joined. */
  netns: string
  /** The clone's own PID namespace, when it has one: its pid there (the original's) and its init's pid here. */
  pidNamespace: {pid: number; initPid: number} | null
  /** The fault server of a `moa` clone (it serves first touches; it ends with the clone, or once every page is in with --fill-after). */
  faultServerPid?: number
  /** What recorded access bits the restore found and used: `mow` copies the dirty pages, `hybrid` the accessed ones; a `hybrid` restore without any behaves as `mow` (effectivePolicy). */
  tiering: {recordedBy: number; pagesDirty: number; pagesAccessed: number; effectivePolicy: Policy; recording?: {exact: boolean}}
  /** Whether the page data was read and checked against its checksums before anything was mapped (restore --verify). */
  verified: boolean
  /**
   * fds 0-2 the original had on a terminal or on a pipe to a process outside the checkpoint,
   * which the clone has on /dev/null instead (no --wait): a program that reads its stdin then
   * sees end of input at once, and what it writes there is dropped. Empty with --wait.
   */
  stdioOnDevNull: StdioOnDevNull[]
  /** Present with --wait: how the clone ended. */
  exit?: CloneExit
  stats: PoolRestoreStats
}

export interface RestoreRequest {
  name: string
  policy: Policy
  wait: boolean
  /** Default: a new PID namespace for a multi-threaded checkpoint (see build-process.ts). */
  pidns?: PidNamespaceMode
  /** The clone's network namespace (restore/network.ts); default: ours. */
  netns?: string
  /** `moa`: copy the pages not yet touched in the background after this many quiet ms (default: never). */
  fillAfterMs?: number
  /** `moa`: pages copied per fault (an aligned block around the faulting page; default 1). */
  faultPages?: number
  /** Record the clone's accesses into the checkpoint when it exits (`mow`, `hybrid`). */
  record?: boolean
  /** Check every page against its checksum before mapping (O(data); the default restore is O(mappings)). */
  verify?: boolean
  /** fds of ours to become the clone's fds 0-2 (null: /dev/null), for a clone that talks to us over pipes; default: /dev/null, or our stdio with `wait`. */
  stdio?: readonly [number | null, number | null, number | null]
  /** The clone is killed when this process (its parent) dies: a porter's function instance. */
  dieWithParent?: boolean
  /** Where the root's stub comes from when it fits (the porter's ghosts); default: spawned here. */
  stubSource?: BuildOptions['stubSource']
}

/** Page runs of the checkpoint, each checked to lie inside the checkpoint's own data, with their recorded flags if any. */
function storedRuns(pageMap: PageMapView, addressOf: (offset: bigint) => bigint, flags?: Uint8Array): StoredRun[] {
  const runs: StoredRun[] = []
  for (const entry of pageMap.entries()) {
    addressOf(entry.poolOffset)
    addressOf(entry.poolOffset + BigInt(entry.nrPages * 4096) - 1n)
    runs.push({vaddr: entry.vaddr, nrPages: entry.nrPages, vmaIndex: entry.vmaIndex, storeOffset: entry.poolOffset,
      ...(flags ? {flags: flags.subarray(entry.firstPage, entry.firstPage + entry.nrPages)} : {})})
  }
  return runs
}

/** One process of a checkpoint: its image and stored page runs. */
export interface LoadedProcess {
  image: ProcessImage
  runs: StoredRun[]
  pageMap: PageMapView
  /** Its access record in the pool (absent in checkpoints older than access recording). */
  record?: AccessRecord
}

export interface LoadedCheckpoint {
  /** The root process (the only one without --tree). */
  image: ProcessImage
  runs: StoredRun[]
  /** Every member with its image (none for a zombie), the root first; one entry for a single process. */
  members: (TreeRecord['members'][number] & {loaded?: LoadedProcess})[]
  address: (offset: bigint) => bigint
  /** What it was read through: a clone's reference binds to exactly this checkpoint (Pool.addReference). */
  reader: CheckpointReader
  /** µs spent verifying the page data, when asked to. */
  verifyUs?: number
  /** Shared anonymous memory objects, when its processes had any. */
  sharedObjects?: Map<string, SharedObject>
}

/**
 * restore --verify: every byte of the checkpoint's page data against the
 * checksums written with it, before a stub exists. A checkpoint without
 * checksums cannot be verified and is refused rather than restored unchecked.
 */
function verifyPageData(reader: CheckpointReader, name: string): number {
  if (!reader.hasPageChecksums) {
    throw new UnsupportedError('PAGE_CHECKSUMS_MISSING', `checkpoint ${name} has no page checksums (it was taken before cxlfork wrote them), so it cannot be verified`,
      'Restore it without --verify, or take a new checkpoint.')
  }
  const verdict = reader.verifyPageData()
  if (verdict.state === 'damaged') {
    const first = verdict.damaged[0]!
    throw new CorruptError('PAGE_DATA_CORRUPT', `checkpoint ${name}: ${verdict.damagedChunks} of ${verdict.chunks} chunks of its page data fail their CRC-32C check, the first at pool offset ${first.poolOffset} (${first.length} bytes); nothing was restored`,
      'The pool\'s memory was changed or damaged. `cxlfork pool fsck` lists every damaged checkpoint, `--repair` removes them.')
  }
  return verdict.timeUs
}

export function loadCheckpoint(pool: Pool, name: string, options: {verify?: boolean} = {}): LoadedCheckpoint {
  const reader = pool.openCheckpoint(name, {uid: getuid()})
  const verifyUs = options.verify ? verifyPageData(reader, name) : undefined
  const address = (offset: bigint): bigint => reader.address(offset)
  const states = reader.sectionsOfType(Section.processState)
  const maps = reader.sectionsOfType(Section.pageMap)
  if (states.length === 0 || states.length !== maps.length) {
    throw new CorruptError('CHECKPOINT_CORRUPT', `checkpoint ${name} has ${states.length} process records and ${maps.length} page maps`, 'Take a new checkpoint.')
  }
  const records = reader.mutableSections(Section.accessRecord)
  const processes = states.map((state, i): LoadedProcess => {
    const pageMap = new PageMapView(maps[i]!)
    const record = records.length === maps.length ? AccessRecord.open(records[i]!, pageMap.totalPages) : undefined
    // Only a record something was merged into is read: a restore stays O(mappings), not O(pages), until then.
    const flags = record && record.recordings > 0 ? record.flags() : undefined
    const recorded = flags?.some((flag) => flag !== 0) ? flags : undefined
    return {image: decodeImage(state), runs: storedRuns(pageMap, address, recorded), pageMap, ...(record ? {record} : {})}
  })
  const root = processes[0]!
  let members: LoadedCheckpoint['members']
  if (reader.hasSection(Section.tree)) {
    let record: TreeRecord
    try {
      record = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(reader.section(Section.tree))) as TreeRecord
    } catch {
      throw new CorruptError('CHECKPOINT_CORRUPT', `the process tree of checkpoint ${name} is unreadable`, 'Take a new checkpoint.')
    }
    let next = 0
    members = record.members.map((member) => (member.zombieStatus === undefined ? {...member, loaded: processes[next++]} : {...member}))
    if (next !== processes.length || members[0]?.loaded !== root || members.some((m) => m.zombieStatus === undefined && m.loaded?.image.task.pid !== m.pid)) {
      throw new CorruptError('CHECKPOINT_CORRUPT', `the process tree of checkpoint ${name} does not match its ${processes.length} process records`, 'Take a new checkpoint.')
    }
  } else {
    const task = root.image.task
    members = [{pid: task.pid, ppid: task.ppid, pgid: task.pgid, sid: task.sid, loaded: root}]
  }
  const sharedObjects = reader.hasSection(Section.sharedMemory)
    ? decodeSharedMemory(reader.section(Section.sharedMemory), (offset, bytes) => {
      address(offset)
      address(offset + bytes - 1n)
    })
    : undefined
  return {image: root.image, runs: root.runs, members, address, reader, ...(verifyUs === undefined ? {} : {verifyUs}), ...(sharedObjects ? {sharedObjects} : {})}
}

export function restoreFromPool(pool: Pool, request: RestoreRequest): RestoreResult {
  const t0 = performance.now()
  const loaded = loadCheckpoint(pool, request.name, {verify: request.verify ?? false})
  const {address} = loaded
  if (request.record && request.policy !== 'mow' && request.policy !== 'hybrid') {
    throw new UsageError('RECORD_POLICY', `--record reads a clone's pool mappings, and --policy ${request.policy} maps nothing from the pool`, 'Record a mow or hybrid clone.')
  }
  const rootRecord = loaded.members[0]?.loaded?.record
  const recorded = rootRecord && rootRecord.recordings > 0 ? rootRecord.summary() : undefined
  // hybrid without recorded pages has no hot set: it is mow, and says so.
  const effectivePolicy: Policy = request.policy === 'hybrid' && !(recorded && recorded.recordings > 0 && recorded.accessed > 0) ? 'mow' : request.policy
  const plans: MemberPlan[] = loaded.members.map((member) => ({
    pid: member.pid, ppid: member.ppid, pgid: member.pgid, sid: member.sid,
    ...(member.zombieStatus === undefined ? {} : {zombieStatus: member.zombieStatus, ...(member.comm === undefined ? {} : {comm: member.comm})}),
    ...(member.loaded ? {image: member.loaded.image, plan: planRestore(member.loaded.image, member.loaded.runs, effectivePolicy)} : {}),
  }))
  let pagesMapped = 0
  let pagesCopied = 0
  let pagesLazy = 0
  for (const plan of plans) {
    pagesMapped += plan.plan?.pagesMapped ?? 0
    pagesCopied += plan.plan?.pagesCopied ?? 0
    pagesLazy += plan.plan?.pagesLazy ?? 0
  }
  const tOpened = performance.now()
  let reference: ReferenceHandle | undefined
  let built
  try {
    const poolFile = fstatSync(pool.fd, {bigint: true})
    const fileSpan = (offset: bigint): StoreFileSpan => ({path: pool.path, offset, available: loaded.reader.bytesFrom(offset), dev: poolFile.dev, ino: poolFile.ino})
    built = buildTree(plans, {mapPath: pool.path, localAddress: address, fileSpan, fd: pool.fd, ...(loaded.sharedObjects ? {sharedObjects: loaded.sharedObjects} : {})}, {
      stdio: request.stdio ?? (request.wait ? 'inherit' : 'null'),
      // --wait: the clone is this command's foreground job and lives no longer than the command (SIGKILLed at its death).
      ...(request.dieWithParent || request.wait ? {dieWithParent: true} : {}),
      setsid: !request.wait,
      wait: request.wait,
      ...(request.pidns === undefined ? {} : {pidns: request.pidns}),
      ...(request.netns === undefined ? {} : {network: request.netns}),
      lazy: {fillAfterMs: request.fillAfterMs ?? null, ...(request.faultPages === undefined ? {} : {faultPages: request.faultPages})},
      ...(request.record ? {record: {name: request.name, pool: pool.path}} : {}),
      ...(request.stubSource ? {stubSource: request.stubSource} : {}),
      onSpawn: (pid) => {
        reference = pool.addReference(loaded.reader, {pid})
        // Killed here: a reference for a stub that dies with us (EXITKILL); gc releases it.
        faultPoint('restore-referenced')
      },
    })
  } catch (error) {
    if (reference) pool.releaseReference(reference)
    throw error
  }
  const tDone = performance.now()
  const result: RestoreResult = {
    name: request.name, pid: built.pid, policy: request.policy, threads: built.threads, processes: built.members, netns: request.netns ?? 'host', pidNamespace: built.namespace ?? null,
    verified: loaded.verifyUs !== undefined, stdioOnDevNull: built.stdioOnDevNull,
    ...(built.faultServerPid === undefined ? {} : {faultServerPid: built.faultServerPid}),
    tiering: {recordedBy: recorded?.recordings ?? 0, pagesDirty: recorded?.dirty ?? 0, pagesAccessed: recorded?.accessed ?? 0, effectivePolicy,
      ...(built.recordingExact === undefined ? {} : {recording: {exact: built.recordingExact}})},
    stats: {
      restore_time: Math.round((tDone - t0) * 1000), forking_time: built.timings.spawnUs, open_time: Math.round((tOpened - t0) * 1000),
      ...(loaded.verifyUs === undefined ? {} : {verify_time: loaded.verifyUs}),
      memory_time: built.timings.memoryUs, state_time: built.timings.stateUs, pages_restored: pagesCopied, pages_read_by_clone: built.timings.pagesReadByProcess, pages_mapped: pagesMapped, pages_lazy: pagesLazy,
      injected_syscalls: built.timings.injectedSyscalls,
    },
  }
  if (request.wait) {
    result.exit = built.wait()
    if (reference) pool.releaseReference(reference)
  }
  return result
}

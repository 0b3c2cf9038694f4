/**
 * Result shapes of the pool library. They are printed as JSON by the
 * commands, so every field is a plain number, string, boolean or array
 * (pool offsets fit in 53 bits).
 */
import type {PageDataVerdict} from './page-checksums.js'

export type {PageDataDamage, PageDataVerdict} from './page-checksums.js'

export type CheckpointState = 'published' | 'deleting' | 'corrupt'

export interface CheckpointInfo {
  name: string
  serial: number
  /** Owner uid: only it or root may open or delete the checkpoint. */
  uid: number
  createdAt: string
  /** Bytes of data segments owned (whole 2 MiB segments). */
  dataBytes: number
  /** Bytes of metadata pages owned (descriptor and sections, whole 4 KiB pages). */
  metadataBytes: number
  state: CheckpointState
  /** References held by clones that are still alive. */
  liveRefs: number
  summary?: Record<string, unknown>
}

export interface ReferenceInfo {
  slot: number
  hostIndex: number
  hostname: string
  pid: number
  startTime: number
  alive: boolean
  /** Held by a process of the host running this command. */
  local: boolean
}

export interface SectionInfo {
  type: number
  poolOffset: number
  length: number
  crc32: string
}

export interface ExtentInfo {
  poolOffset: number
  length: number
}

/** What the pool knows about one checkpoint; `inspect` extends it with process-level details. */
export interface CheckpointDetails extends CheckpointInfo {
  directorySlot: number
  descriptorPoolOffset: number
  dataExtents: ExtentInfo[]
  sections: SectionInfo[]
  references: ReferenceInfo[]
  /** Whether the page data has checksums (checkpoints taken before they existed have none). */
  pageChecksums: boolean
  /** With inspect --verify: the page data checked against them. */
  pageData?: PageDataVerdict
}

export interface HostInfo {
  index: number
  hostname: string
  bootId: string
  leaseExpiresAt: string
  leaseLive: boolean
  firstSeenAt: string
  /** The host running this command. */
  self: boolean
}

export interface PoolInfo {
  path: string
  uuid: string
  version: number
  createdAt: string
  fileSystem: string
  /** File size in bytes. */
  size: number
  /** Memory allocated at init and kept when checkpoints are removed (`pool init --provision`). */
  provisioned: boolean
  /** The gid `pool init --shared-group` shared the pool with, or null for a private pool. */
  sharedGid: number | null
  /** Bytes of the file backed by memory (or blocks) right now: a sparse pool grows and shrinks with its checkpoints. */
  residentBytes: number
  /** Bytes of data segments plus metadata pages allocated to checkpoints, builds or garbage not yet collected. */
  used: number
  /** Bytes of data segments plus metadata pages free. */
  free: number
  /** Control area (header, tables): fixed overhead. */
  overhead: number
  data: {bytes: number; used: number; free: number; segmentSize: number; segments: number; segmentsUsed: number}
  metadata: {bytes: number; used: number; free: number; pageSize: number; pages: number; pagesUsed: number}
  checkpoints: number
  deleting: number
  buildsInProgress: number
  /** Builds whose owner died before publishing (a checkpoint killed half-way), and the bytes they hold until `pool gc`. */
  deadBuilds: {count: number; bytes: number}
  liveClones: number
  directory: {slots: number; used: number; tombstones: number}
  hostsSeen: HostInfo[]
}

export interface GcReport {
  buildsReleased: number
  referencesReleased: number
  /** Checkpoints marked for deletion (`rm --force`) whose last clone is gone, now removed. */
  checkpointsRemoved: string[]
  segmentsFreed: number
  pagesFreed: number
  bytesFreed: number
  /** Tombstones turned back into empty directory words (shorter probe chains; publishers also reuse tombstones in place). */
  directoryWordsFreed: number
}

export type FsckSeverity = 'corrupt' | 'stale'

export interface FsckProblem {
  severity: FsckSeverity
  /** Stable machine-readable kind, e.g. DESCRIPTOR_CORRUPT, UNIT_GARBAGE. */
  kind: string
  where: string
  message: string
  repaired: boolean
}

export interface FsckReport {
  path: string
  /** No corruption left (stale items are normal after crashes and are gc's job). */
  clean: boolean
  corruptionFound: number
  corruptionRepaired: number
  checked: {checkpoints: number; segments: number; pages: number; buildSlots: number; references: number; hosts: number
    /** Checkpoints whose page data was read and checked against its checksums, and the bytes read. */
    pageDataCheckpoints: number; pageDataBytes: number}
  /** Checkpoints whose page data has no checksums (taken before cxlfork wrote them): not checked. */
  noPageChecksums: string[]
  problems: FsckProblem[]
}

export interface RemoveResult {
  name: string
  serial: number
  /** removed: gone and space freed; deleting: hidden from new restores, freed by gc once its clones are gone. */
  state: 'removed' | 'deleting'
  liveRefs: number
  bytesFreed: number
}

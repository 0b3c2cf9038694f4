/**
 * What `inspect` adds to the pool's facts about a checkpoint, read from its
 * sections: the process summary, the recorded access bits and the tree.
 * Shared by the inspect command and the porter's GET /v1/checkpoints/NAME.
 */
import {AccessRecord} from './access-record.js'
import {decodeImage} from './codec.js'
import {PageMapView} from './page-map.js'
import {Section} from './sections.js'
import {decodeSharedMemory} from './shared-memory.js'
import {type ProcessSummary, summarizeImage} from './summary.js'

/** The sections of one checkpoint (a pool CheckpointReader). */
export interface SectionSource {
  hasSection(type: number): boolean
  section(type: number): Uint8Array
  sectionsOfType(type: number): Uint8Array[]
  mutableSection(type: number): Uint8Array | undefined
  address(offset: bigint): bigint
}

export interface CheckpointContents {
  process?: ProcessSummary
  /** A process tree (checkpoint --tree): every member, the root first. */
  tree?: {pid: number; ppid: number; pgid: number; sid: number; comm: string; zombie: boolean; threads: number}[]
  /** Access bits recorded from clones (cxlfork record), of the root process: hot (accessed) and dirty (written) pages. */
  accessRecord?: {pages: number; hot: number; dirty: number; recordings: number; firstRecordedAt: string | null; lastRecordedAt: string | null; resetAt: string | null}
  /** Shared anonymous memory of its processes: objects (each once, whatever members map it) and the bytes stored for them. */
  /** `memfds`: the objects that were memfds (name, exact size, seals as F_GET_SEALS gave them), when there are any. */
  sharedMemory?: {objects: number; storedBytes: number; memfds?: {name: string; size: number; seals: string}[]}
}

interface TreeRecordJson {
  members: {pid: number; ppid: number; pgid: number; sid: number; zombieStatus?: number; comm?: string}[]
}

/** The tree section, or undefined when it does not read as one (inspect shows what it can). */
function treeRecord(bytes: Uint8Array): TreeRecordJson | undefined {
  try {
    const record = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(bytes)) as TreeRecordJson
    return Array.isArray(record?.members) ? record : undefined
  } catch {
    return undefined
  }
}

export function checkpointContents(reader: SectionSource): CheckpointContents {
  const contents: CheckpointContents = {}
  if (reader.hasSection(Section.processState) && reader.hasSection(Section.pageMap)) {
    const pageMap = new PageMapView(reader.section(Section.pageMap))
    contents.process = summarizeImage(decodeImage(reader.section(Section.processState)), pageMap)
    const window = reader.mutableSection(Section.accessRecord)
    const access = window ? AccessRecord.open(window, pageMap.totalPages)?.summary() : undefined
    if (access) {
      const at = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString())
      contents.accessRecord = {pages: access.pages, hot: access.accessed, dirty: access.dirty, recordings: access.recordings,
        firstRecordedAt: at(access.firstRecordedMs), lastRecordedAt: at(access.lastRecordedMs), resetAt: at(access.resetAtMs)}
    }
  }
  if (reader.hasSection(Section.sharedMemory)) {
    const objects = decodeSharedMemory(reader.section(Section.sharedMemory), (offset) => reader.address(offset))
    let storedBytes = 0
    for (const object of objects.values()) for (const run of object.runs) storedBytes += Number(run.bytes)
    const memfds = [...objects.values()].flatMap(({memfd}) => (memfd ? [{name: memfd.name, size: Number(memfd.size), seals: sealNames(memfd.seals)}] : []))
    contents.sharedMemory = {objects: objects.size, storedBytes, ...(memfds.length > 0 ? {memfds} : {})}
  }
  const record = contents.process && reader.hasSection(Section.tree) ? treeRecord(reader.section(Section.tree)) : undefined
  if (record) {
    const images = reader.sectionsOfType(Section.processState).map((bytes) => decodeImage(bytes))
    let next = 0
    contents.tree = record.members.map((member) => {
      const image = member.zombieStatus === undefined ? images[next++] : undefined
      return {pid: member.pid, ppid: member.ppid, pgid: member.pgid, sid: member.sid, comm: image?.task.comm ?? member.comm ?? '?', zombie: member.zombieStatus !== undefined, threads: image?.threads.length ?? 0}
    })
  }
  return contents
}

const SEAL_NAMES = ['SEAL', 'SHRINK', 'GROW', 'WRITE', 'FUTURE_WRITE', 'EXEC']

/** F_GET_SEALS bits by name ("SHRINK|GROW"), "none" for none. */
function sealNames(seals: number): string {
  const names = SEAL_NAMES.filter((_, bit) => (seals & (1 << bit)) !== 0)
  return names.length > 0 ? names.join('|') : 'none'
}

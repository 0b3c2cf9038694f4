/**
 * `cxlfork record`: which stored pages a running clone accessed and wrote,
 * read from its page tables and OR-ed into the checkpoint's access record in
 * the pool (image/access-record.ts), where `mow` (written pages) and `hybrid`
 * (accessed pages) find them at the next restore.
 *
 * A clone's page tables say it exactly for the pages it maps from the pool:
 * a present pool page was accessed; an anonymous page inside a pool mapping
 * replaced a pool page, so it was written. Pages the clone copied at restore
 * (its stack, pages a policy made local) are anonymous from the start and say
 * nothing: their bits stay as recorded before. The kernel maps up to 16
 * neighbours of a read fault ("fault-around"), which would count them as
 * accessed; a clone restored with `--record` has fault-around turned off on
 * its pool mappings (restore/record-hold.ts), and the result says whether the
 * recording was exact.
 */
import {readFileSync, statSync} from 'node:fs'
import {NotFoundError, UsageError} from '../errors.js'
import {PAGE_FLAG_ACCESSED, PAGE_FLAG_DIRTY} from '../image/page-map.js'
import {PAGE_SIZE} from '../sys/page.js'
import type {Pool} from '../pool/index.js'
import {type LoadedCheckpoint, loadCheckpoint} from '../restore/restore.js'
import {getuid} from '../sys/syscall.js'
import {childrenOf} from '../checkpoint/preflight.js'
import {PM, Pagemap} from '../sys/pagemap.js'
import {readMaps, readStatus} from '../sys/proc.js'

export interface RecordResult {
  name: string
  pid: number
  /** Pages of the checkpoint judged from the clone's pool mappings. */
  pagesJudged: number
  /** Of those: accessed, and written. */
  accessed: number
  dirty: number
  /** True when the clone had fault-around off on its pool mappings (restored with --record). */
  exact: boolean
  /** The checkpoint's whole record after this one (of its root process): clones recorded, pages accessed and dirty. */
  record: {recordings: number; accessed: number; dirty: number; lastRecordedAt: string | null}
  /** A tree: each member found in the clone tree, recorded into its own access record (the root first). */
  members?: {pid: number; clonePid: number; pagesJudged: number; accessed: number; dirty: number}[]
}

/** The live clone `pid` of checkpoint `name`, by the pool's reference for it. */
function requireClone(pool: Pool, name: string, pid: number): void {
  const references = pool.inspect(name, {uid: getuid()}).references
  if (!references.some((reference) => reference.local && reference.alive && reference.pid === pid)) {
    throw new NotFoundError('NOT_A_CLONE', `process ${pid} is not a running clone of checkpoint ${name} on this host`,
      `\`cxlfork inspect ${name}\` lists its clones; record the pid that \`cxlfork restore\` printed.`)
  }
}

/**
 * Flags one clone process earned for each page of a member (the root by
 * default), judged from its maps and pagemap. `exact` tells whether a hold
 * kept fault-around off.
 */
export function judgeClone(loaded: LoadedCheckpoint, poolPath: string, pid: number, memberIndex = 0): {flags: Uint8Array; judged: number; exact: boolean} {
  const root = loaded.members[memberIndex]!.loaded!
  const pool = statSync(poolPath, {bigint: true})
  const poolMaps = readMaps(pid).filter((vma) => vma.inode === pool.ino && BigInt(vma.devMajor) === (pool.dev >> 8n & 0xfffn) && BigInt(vma.devMinor) === ((pool.dev & 0xffn) | ((pool.dev >> 12n) & ~0xffn)))
  const flags = new Uint8Array(root.pageMap.totalPages)
  let judged = 0
  const pagemap = new Pagemap(pid)
  try {
    for (const entry of root.pageMap.entries()) {
      const end = entry.vaddr + BigInt(entry.nrPages * PAGE_SIZE)
      for (const vma of poolMaps) {
        const from = vma.start > entry.vaddr ? vma.start : entry.vaddr
        const to = vma.end < end ? vma.end : end
        if (from >= to) continue
        judged += Number((to - from) / BigInt(PAGE_SIZE))
        for (const run of pagemap.runs(from, to)) {
          const flag = run.flags & PM.FILE && !(run.flags & PM.SWAPPED) ? PAGE_FLAG_ACCESSED : PAGE_FLAG_ACCESSED | PAGE_FLAG_DIRTY
          const first = entry.firstPage + Number((run.vaddr - entry.vaddr) / BigInt(PAGE_SIZE))
          flags.fill(flag, first, first + run.nrPages)
        }
      }
    }
  } finally {
    pagemap.close()
  }
  return {flags, judged, exact: faultAroundOff(pid, poolMaps.map((vma) => vma.start))}
}

/**
 * Whether fault-around is off on every pool mapping of `pid`: a restore with
 * --record registers them with a userfaultfd in write-protect mode (smaps
 * VmFlags "uw"), which the kernel takes as "no fault-around" (one access maps
 * one page). MADV_RANDOM does not do it: measured on 6.18, one read of a
 * private tmpfs mapping still maps 16 pages with it.
 */
function faultAroundOff(pid: number, starts: readonly bigint[]): boolean {
  if (starts.length === 0) return false
  let smaps: string
  try {
    smaps = readFileSync(`/proc/${pid}/smaps`, 'utf8')
  } catch {
    return false
  }
  const flagsAt = new Map<bigint, string>()
  let current: bigint | undefined
  for (const line of smaps.split('\n')) {
    const header = /^([0-9a-f]+)-[0-9a-f]+ /.exec(line)
    if (header) current = BigInt('0x' + header[1])
    else if (line.startsWith('VmFlags:') && current !== undefined) flagsAt.set(current, line)
  }
  return starts.every((start) => / uw\b/.test(flagsAt.get(start) ?? ''))
}

/** Processes descending from `pid` (itself first), each with its pid as its own PID namespace names it. */
function cloneTree(pid: number): {pid: number; inside: number}[] {
  const out: {pid: number; inside: number}[] = []
  const visit = (at: number): void => {
    let nspid: number[]
    try {
      nspid = readStatus(at).nspid
    } catch {
      return // gone meanwhile
    }
    out.push({pid: at, inside: nspid[nspid.length - 1] ?? at})
    for (const child of childrenOf(at)) visit(child)
  }
  visit(pid)
  return out
}

function countFlags(flags: Uint8Array): {accessed: number; dirty: number} {
  let accessed = 0
  let dirty = 0
  for (const flag of flags) {
    if (flag & PAGE_FLAG_ACCESSED) accessed++
    if (flag & PAGE_FLAG_DIRTY) dirty++
  }
  return {accessed, dirty}
}

/**
 * Record clone `pid` of `name`. For a checkpoint of a tree, `pid` is the clone
 * tree's root: every member found below it (by the pid it keeps inside the
 * clone's PID namespace) is judged into its own access record.
 */
export function recordClone(pool: Pool, name: string, pid: number, options: {exact?: boolean} = {}): RecordResult {
  if (!Number.isInteger(pid) || pid <= 0) throw new UsageError('INVALID_PID', `not a pid: ${pid}`)
  requireClone(pool, name, pid)
  const loaded = loadCheckpoint(pool, name)
  const record = loaded.members[0]?.loaded?.record
  if (!record) {
    throw new UsageError('NO_ACCESS_RECORD', `checkpoint ${name} was taken before access recording existed`, 'Take a new checkpoint to record its clones.')
  }
  const now = Date.now()
  const judged = judgeClone(loaded, pool.path, pid)
  record.merge(judged.flags, now)
  const {accessed, dirty} = countFlags(judged.flags)
  const result: RecordResult = {name, pid, pagesJudged: judged.judged, accessed, dirty, exact: options.exact ?? judged.exact, record: summarize(loaded)}
  if (loaded.members.length > 1) {
    result.members = [{pid: loaded.members[0]!.pid, clonePid: pid, pagesJudged: judged.judged, accessed, dirty}]
    const byInside = new Map(cloneTree(pid).slice(1).map((process) => [process.inside, process.pid]))
    loaded.members.forEach((member, index) => {
      const clonePid = byInside.get(member.pid)
      if (index === 0 || !member.loaded?.record || clonePid === undefined) return
      const flags = judgeClone(loaded, pool.path, clonePid, index)
      member.loaded.record.merge(flags.flags, now)
      result.members!.push({pid: member.pid, clonePid, pagesJudged: flags.judged, ...countFlags(flags.flags)})
    })
  }
  return result
}

/**
 * restore --record, at the exit stop of one clone process: judge it as member
 * `member` of `name` (0: the root) and merge into that member's own record.
 * Each member of a clone tree is recorded at its own exit, so one that ends
 * before or after the root is judged while its memory is still there.
 */
export function recordMemberAtExit(pool: Pool, name: string, pid: number, member: number): void {
  const loaded = loadCheckpoint(pool, name)
  const record = loaded.members[member]?.loaded?.record
  if (!record) return
  record.merge(judgeClone(loaded, pool.path, pid, member).flags, Date.now())
}

export function summarize(loaded: LoadedCheckpoint): RecordResult['record'] {
  const summary = loaded.members[0]?.loaded?.record?.summary()
  return {recordings: summary?.recordings ?? 0, accessed: summary?.accessed ?? 0, dirty: summary?.dirty ?? 0,
    lastRecordedAt: summary?.lastRecordedMs ? new Date(summary.lastRecordedMs).toISOString() : null}
}

export function resetRecords(pool: Pool, name: string): RecordResult['record'] & {name: string; reset: true} {
  const loaded = loadCheckpoint(pool, name)
  const now = Date.now()
  for (const member of loaded.members) member.loaded?.record?.reset(now)
  return {name, reset: true, ...summarize(loaded)}
}

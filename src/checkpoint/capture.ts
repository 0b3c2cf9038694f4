/**
 * Turns what /proc says about a process into the ProcessImage model: task
 * attributes, mm fields, VMAs, file identities, fds, and the runs of pages
 * whose contents must be stored. Register state, signal actions and the
 * current brk come from the tracer (they are not in /proc) and are passed in.
 */
import {closeSync, openSync, readSync, statSync} from 'node:fs'
import {hostname} from 'node:os'

import {recordLayout} from '../image/cpu-state.js'
import {readCredentials} from './credentials.js'
import {UnsupportedError} from '../errors.js'
import {type FdImage, type FdKind, type FileIdentity, IMAGE_VERSION, type MmImage, type PageRun, type ProcessImage, type SigAction, type TaskImage, type ThreadImage, type TimersImage, type VmaImage, type VmaKind} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import {bootId, kernelRelease} from '../sys/host.js'
import {Pagemap} from '../sys/pagemap.js'
import {type FdInfo, type Vma, deviceName, parseLockLine, readAuxv, readCmdline, readCwd, readExe, readLimits, readProcText, readRoot, readStat, readStatus, vdsoLayout} from '../sys/proc.js'
import {MAP} from '../sys/syscall.js'
import {POOL_MAGIC} from '../pool/layout.js'
import {isSharedMemoryObject, sharedObjectId, sharedObjectIdOfFd} from './shared-memory.js'
import {type FdExtras} from './descriptors.js'
import {readTermiosOf} from '../sys/terminal.js'

/** Collects files once each and hands out their index. */
export class FileTable {
  readonly files: FileIdentity[] = []
  private readonly byKey = new Map<string, number>()

  /** `statPath` is where to stat (a /proc magic link), `path` what restore will open. */
  add(path: string, statPath: string): number {
    const st = statSync(statPath, {bigint: true})
    const key = `${st.dev}:${st.ino}:${path}`
    const known = this.byKey.get(key)
    if (known !== undefined) return known
    const index = this.files.length
    this.files.push({path, device: deviceName(st.dev), inode: st.ino, size: st.size, mtimeNs: st.mtimeNs, ctimeNs: st.ctimeNs, mode: Number(st.mode)})
    this.byKey.set(key, index)
    return index
  }
}

function toVmaKind(kind: Vma['kind']): VmaKind {
  if (kind === 'special') throw new UnsupportedError('UNSUPPORTED_MEMORY', 'special kernel mapping', 'cxlfork cannot checkpoint it.')
  return kind
}

/** VMAs from the snapshot's maps, with file identities looked up through /proc/PID/map_files. */
/** A VMA with the VmFlags capture needs (only gd, MAP_GROWSDOWN). */
export type FlaggedVma = Vma & {vmFlags: ReadonlySet<string>}

/**
 * Whether a file mapping maps a cxlfork pool: a clone's zero-copy pages. The
 * pool changes with every checkpoint, so a checkpoint of a clone must not
 * depend on it: such memory is captured as private anonymous memory, every
 * page of it stored. Decided once per file (its magic through map_files).
 */
class PoolFiles {
  private readonly known = new Map<string, boolean>()

  isPool(pid: number, vma: Vma): boolean {
    if (vma.kind !== 'file' || vma.shared) return false
    const key = `${vma.devMajor}:${vma.devMinor}:${vma.inode}`
    let pool = this.known.get(key)
    if (pool === undefined) {
      pool = false
      try {
        const fd = openSync(`/proc/${pid}/map_files/${vma.start.toString(16)}-${vma.end.toString(16)}`, 'r')
        try {
          const magic = Buffer.alloc(POOL_MAGIC.length)
          pool = readSync(fd, magic, 0, magic.length, 0) === magic.length && magic.toString('latin1') === POOL_MAGIC
        } finally {
          closeSync(fd)
        }
      } catch {
        // Unreadable: an ordinary file as far as this goes (its identity is checked as any file's).
      }
      this.known.set(key, pool)
    }
    return pool
  }
}

/** `wholeVmas` receives the indexes of VMAs whose every page must be stored (pool-backed memory of a clone). */
export function captureVmas(pid: number, maps: readonly FlaggedVma[], files: FileTable, wholeVmas?: Set<number>): VmaImage[] {
  const pools = new PoolFiles()
  return maps.map((vma, index) => {
    // Shared anonymous memory shows as "/dev/zero (deleted)": it is no file to reopen (shared-memory.ts).
    const sharedAnonymous = isSharedMemoryObject(pid, vma)
    const poolBacked = !sharedAnonymous && pools.isPool(pid, vma)
    if (poolBacked) wholeVmas?.add(index)
    const kind = sharedAnonymous || poolBacked ? 'anon' : toVmaKind(vma.kind)
    const prot = (vma.read ? 1 : 0) | (vma.write ? 2 : 0) | (vma.exec ? 4 : 0)
    const file = kind === 'file'
    const flags = (vma.shared ? MAP.SHARED : MAP.PRIVATE) | (file ? 0 : MAP.ANONYMOUS) | (kind === 'stack' || vma.vmFlags.has('gd') ? MAP.GROWSDOWN : 0)
    const image: VmaImage = {start: vma.start, end: vma.end, prot, flags, offset: vma.offset, kind}
    if (sharedAnonymous) image.sharedId = sharedObjectId(vma)
    if (file) image.fileIndex = files.add(vma.path, `/proc/${pid}/map_files/${vma.start.toString(16)}-${vma.end.toString(16)}`)
    return image
  })
}

/**
 * Pages whose contents must be stored: every present or swapped page of a
 * private mapping that is anonymous (for file mappings: copied-on-write).
 * Shared file mappings and kernel mappings keep their contents elsewhere.
 */
export function capturePageRuns(pid: number, vmas: readonly VmaImage[], wholeVmas: ReadonlySet<number> = new Set()): PageRun[] {
  const pagemap = new Pagemap(pid)
  try {
    const runs: PageRun[] = []
    vmas.forEach((vma, vmaIndex) => {
      if ((vma.flags & MAP.SHARED) !== 0 || vma.kind === 'vdso' || vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vsyscall') return
      if (wholeVmas.has(vmaIndex)) {
        runs.push({vaddr: vma.start, nrPages: Number((vma.end - vma.start) / BigInt(PAGE_SIZE)), vmaIndex})
        return
      }
      // A present page of a private file mapping may still be the file's own page; only anonymous copies are process state.
      // dataRuns merges contiguous pages already, and runs never span two VMAs.
      for (const run of pagemap.dataRuns(vma.start, vma.end, vma.kind === 'file')) runs.push({vaddr: run.vaddr, nrPages: run.nrPages, vmaIndex})
    })
    return runs
  } finally {
    pagemap.close()
  }
}

const TTY_PATH = /^\/dev\/(pts\/\d+|tty\d*|console)$/

const LOCK_KIND: Record<string, 'posix' | 'flock' | 'ofd'> = {POSIX: 'posix', FLOCK: 'flock', OFDLCK: 'ofd'}

/** An fdinfo 'lock:' line, of a kind preflight let through. */
function lockImage(line: string): NonNullable<FdImage['locks']>[number] {
  const {kind, access, start, end} = parseLockLine(line)
  return {kind: LOCK_KIND[kind] ?? 'posix', write: access === 'WRITE', start: Number(start), end: end === 'EOF' ? null : Number(end)}
}

export function captureFds(pid: number, fds: readonly {info: FdInfo; kind: FdKind; extras?: FdExtras | undefined}[], files: FileTable): FdImage[] {
  const O_CLOEXEC = 0o2000000
  return fds.map(({info, kind, extras}) => {
    const image: FdImage = {fd: info.fd, kind, path: info.target, flags: info.flags & ~O_CLOEXEC, cloexec: (info.flags & O_CLOEXEC) !== 0, offset: info.pos, ...extras}
    if (kind === 'regular' || kind === 'directory') image.fileIndex = files.add(info.target, `/proc/${pid}/fd/${info.fd}`)
    if (kind === 'shmem') image.sharedId = sharedObjectIdOfFd(pid, info.fd)
    if (kind === 'tty' && !TTY_PATH.test(info.target)) image.kind = 'chardev'
    if (info.locks.length > 0) image.locks = info.locks.map(lockImage)
    if (image.kind === 'tty') {
      const termios = readTermiosOf(pid, info.fd)
      if (termios) image.termios = termios
    }
    return image
  })
}

/**
 * A kernel struct sigaction (handler, flags, restorer, mask) at `at` of `view`,
 * as rt_sigaction returned it; undefined for a default disposition with no
 * flags or mask, which the image leaves out.
 */
export function decodeSigaction(view: DataView, at: number, signo: number): SigAction | undefined {
  const action = {signo, handler: view.getBigUint64(at, true), flags: view.getBigUint64(at + 8, true), restorer: view.getBigUint64(at + 16, true), mask: view.getBigUint64(at + 24, true)}
  return action.handler !== 0n || action.flags !== 0n || action.mask !== 0n ? action : undefined
}

export interface TracerState {
  /** State of every thread, read from the stopped target; the leader (tid = pid) first. */
  threads: ThreadImage[]
  sharedPendingSignals: Uint8Array[]
  /** From injected rt_sigaction queries. */
  sigactions: SigAction[]
  /** From an injected brk(0). */
  brk: bigint
  /** From injected prctl(PR_GET_SECUREBITS) and prctl(PR_GET_DUMPABLE). */
  asked: {securebits: number; dumpable: number}
  /** From /proc/PID/timers and injected getitimer/timer_gettime; absent when there are none. */
  timers?: TimersImage | undefined
}

/** The snapshot's memory: what its page write needs, known as soon as the target runs again. */
export interface SnapshotMemory {
  vmas: VmaImage[]
  /** Runs of pages to store, in address order, each within one VMA. */
  pageRuns: PageRun[]
  /** Files named so far (the mapped ones); the image adds the exe and the open files. */
  files: FileTable
}

/** Layout and page runs of the frozen snapshot `snapshot` (its VMAs: `layout`). */
export function captureMemory(snapshot: number, layout: readonly FlaggedVma[]): SnapshotMemory {
  const files = new FileTable()
  const wholeVmas = new Set<number>()
  const vmas = captureVmas(snapshot, layout, files, wholeVmas)
  return {vmas, pageRuns: capturePageRuns(snapshot, vmas, wholeVmas), files}
}

/**
 * Assemble the image. `target` is the original pid (identity, fds, limits);
 * `snapshot` is the frozen fork-snapshot child whose memory was captured
 * (the target's at the instant of the snapshot). Reads /proc only, so it may
 * run while the snapshot child is busy writing its pages.
 */
export function captureImage(target: number, snapshot: number, memory: SnapshotMemory, layout: readonly FlaggedVma[], fds: readonly {info: FdInfo; kind: FdKind; extras?: FdExtras | undefined}[], tracer: TracerState): ProcessImage {
  const files = memory.files
  const stat = readStat(target)
  const snapStat = readStat(snapshot)
  const status = readStatus(target)
  const exePath = readExe(target)
  const exeFileIndex = files.add(exePath, `/proc/${target}/exe`)
  const auxv: bigint[] = []
  for (const [type, value] of readAuxv(target)) auxv.push(type, value)
  const mm: MmImage = {
    startCode: snapStat.startCode, endCode: snapStat.endCode, startData: snapStat.startData, endData: snapStat.endData,
    startBrk: snapStat.startBrk, brk: tracer.brk, startStack: snapStat.startStack, argStart: snapStat.argStart, argEnd: snapStat.argEnd,
    envStart: snapStat.envStart, envEnd: snapStat.envEnd, auxv, exeFileIndex,
  }
  const umaskLine = /^Umask:\s*([0-7]+)/m.exec(readProcText(target, 'status'))
  const task: TaskImage = {
    pid: target, ppid: stat.ppid, pgid: stat.pgrp, sid: stat.session, comm: stat.comm, uid: status.uid[0], gid: status.gid[0],
    umask: umaskLine ? parseInt(umaskLine[1]!, 8) : 0o022, personality: parseInt(readProcText(target, 'personality').trim(), 16),
    cwd: readCwd(target), root: readRoot(target),
    rlimits: readLimits(target).map((limit, resource) => ({resource, cur: limit.cur, max: limit.max})),
    sigactions: tracer.sigactions, sharedPendingSignals: tracer.sharedPendingSignals, cmdline: readCmdline(target),
    // The snapshot's: fork copied the target's credentials at the instant of the snapshot.
    credentials: readCredentials(snapshot, tracer.asked),
    ...(tracer.timers ? {timers: tracer.timers} : {}),
  }
  const vdso = vdsoLayout([...layout])
  const fdImages = captureFds(target, fds, files)
  return {
    version: IMAGE_VERSION,
    capturedAt: Date.now(),
    kernel: {
      release: kernelRelease(), hostname: hostname(), bootId: bootId(),
      vdsoLayout: vdso.parts.map((part) => ({name: part.name, offset: BigInt(part.offset), size: BigInt(part.size)})),
    },
    task, threads: tracer.threads.map(withXsaveLayout), mm, vmas: memory.vmas, files: files.files, fds: fdImages, pageRuns: memory.pageRuns,
  }
}

/** The thread with the layout of its XSAVE buffer recorded, so a host with another CPU can restore it. */
function withXsaveLayout(thread: ThreadImage): ThreadImage {
  const layout = recordLayout(thread.xstate)
  return layout ? {...thread, xsaveLayout: layout} : thread
}

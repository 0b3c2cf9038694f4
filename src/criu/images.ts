/**
 * The CRIU-format baseline: a ProcessImage written as the image set CRIU 4.x writes
 * for one process (inventory, pstree, core-TID, ids, mm, pagemap, pages-1, files,
 * fdinfo, fs, stats-dump), and read back, from cxlfork's own sets or from sets real
 * CRIU wrote for a single process whose files are regular files.
 *
 * Where CRIU has a field, the model goes there in CRIU's meaning. What CRIU has no
 * field for (file identity beyond name/size/mode, cmdline, kernel identity, the exact
 * xstate buffer, the model's fd kinds...) goes into field 1000 of the message it
 * belongs to (see proto/cxlfork-ext.proto); CRIU and crit skip it. Reading a set
 * written by CRIU itself fills those parts with the best available values (listed in
 * readCriuImages).
 */
import {closeSync, existsSync, openSync, readSync, statSync, writeSync} from 'node:fs'
import {join} from 'node:path'

import {CorruptError, CxlforkError, NotFoundError, UnsupportedError} from '../errors.js'
import {MAP, O, PROT, RLIM_INFINITY, SIG} from '../sys/libc.js'
import {type Vma, deviceName, readMaps} from '../sys/proc.js'
import {
  type FdImage, type FdKind, type FileIdentity, IMAGE_VERSION, type PageRun, PAGE_SIZE, type ProcessImage, type Rlimit,
  type SigAction, type ThreadImage, USER_REGS_NAMES, type UserRegName, type UserRegs, type VmaImage, type VmaKind,
} from '../image/process-image.js'
import {type ImageKind, encodeMessage, readImage, readImageRecords, decodeMessage, writeImage} from './image-file.js'
import {big, has, str64, u64} from './values.js'
import {fpregsToXstate, xstateToFpregs} from './xsave.js'

// ---- constants from CRIU (criu/include/image.h, pagemap.h, magic.h, fdinfo.proto) ----

/** inventory img_version: 1 = CRIU 1.0 images (no head magic), 2 = every image since (head magic pair). */
export const CRTOOLS_IMAGES_V1 = 1
export const CRTOOLS_IMAGES_V1_1 = 2

export const PE_PARENT = 1 << 0
export const PE_LAZY = 1 << 1
export const PE_PRESENT = 1 << 2

export const VMA_AREA_REGULAR = 1 << 0
export const VMA_AREA_STACK = 1 << 1
export const VMA_AREA_VSYSCALL = 1 << 2
export const VMA_AREA_VDSO = 1 << 3
export const VMA_AREA_HEAP = 1 << 5
export const VMA_FILE_PRIVATE = 1 << 6
export const VMA_FILE_SHARED = 1 << 7
export const VMA_ANON_SHARED = 1 << 8
export const VMA_ANON_PRIVATE = 1 << 9
export const VMA_AREA_SYSVIPC = 1 << 10
export const VMA_AREA_SOCKET = 1 << 11
export const VMA_AREA_VVAR = 1 << 12
export const VMA_AREA_AIORING = 1 << 13
export const VMA_AREA_MEMFD = 1 << 14
export const VMA_AREA_SHSTK = 1 << 15
export const VMA_AREA_GUARD = 1 << 16
export const VMA_AREA_UPROBES = 1 << 17
export const VMA_EXT_PLUGIN = 1 << 27
export const VMA_UNSUPP = 1 << 31

const UNSUPPORTED_VMA_BITS: [number, string][] = [
  [VMA_ANON_SHARED, 'VMA_ANON_SHARED'], [VMA_AREA_SYSVIPC, 'VMA_AREA_SYSVIPC'], [VMA_AREA_SOCKET, 'VMA_AREA_SOCKET'],
  [VMA_AREA_AIORING, 'VMA_AREA_AIORING'], [VMA_AREA_MEMFD, 'VMA_AREA_MEMFD'], [VMA_AREA_SHSTK, 'VMA_AREA_SHSTK'],
  [VMA_AREA_GUARD, 'VMA_AREA_GUARD'], [VMA_AREA_UPROBES, 'VMA_AREA_UPROBES'], [VMA_EXT_PLUGIN, 'VMA_EXT_PLUGIN'], [VMA_UNSUPP, 'VMA_UNSUPP'],
]

const FD_TYPE_REG = 1
const FD_TYPE_PIPE = 2
const FD_TYPE_NAMES: Record<number, string> = {
  0: 'UND', 1: 'REG', 2: 'PIPE', 3: 'FIFO', 4: 'INETSK', 5: 'UNIXSK', 6: 'EVENTFD', 7: 'EVENTPOLL', 8: 'INOTIFY', 9: 'SIGNALFD',
  10: 'PACKETSK', 11: 'TTY', 12: 'FANOTIFY', 13: 'NETLINKSK', 14: 'NS', 15: 'TUNF', 16: 'EXT', 17: 'TIMERFD', 18: 'MEMFD', 19: 'BPFMAP', 20: 'PIDFD',
}
const FD_CLOEXEC = 1
const SS_DISABLE = 2
const TASK_ALIVE = 1
const MARCH_X86_64 = 1
const REGS_MODE_NATIVE = 1
/** CRIU keeps sigactions for signals 1..SIGMAX (64) except SIGKILL and SIGSTOP, positionally. */
const SIGMAX = 64
const RLIM_NLIMITS = 16
/** Words of saved auxv CRIU keeps on x86_64 (its AT_VECTOR_SIZE): it dumps at most these and refuses a longer mm_saved_auxv. */
const AT_VECTOR_SIZE = 44
const S_IFMT = 0o170000
const S_IFDIR = 0o040000
const S_IFCHR = 0o020000
/**
 * Kernel-object ids (criu/kerndat kid tree) of a one-process dump, as CRIU numbers them:
 * the dumper's own vm/files/fs/sighand come first (1, inventory root_ids), the task's
 * objects next (2, ids-PID.img, fdinfo-2.img). CRIU's restore refuses a root task whose
 * files_id equals root_ids' ("Image corruption on kIDs data": it would share the
 * restorer's fd table).
 */
const ROOT_KID = 1
const KID = 2
const PAGES_ID = 1

/** CRIU's names for the user_regs_struct fields (same order as USER_REGS_NAMES). */
const CRIU_REG_NAMES: Record<UserRegName, string> = {
  r15: 'r15', r14: 'r14', r13: 'r13', r12: 'r12', rbp: 'bp', rbx: 'bx', r11: 'r11', r10: 'r10', r9: 'r9', r8: 'r8',
  rax: 'ax', rcx: 'cx', rdx: 'dx', rsi: 'si', rdi: 'di', orig_rax: 'orig_ax', rip: 'ip', cs: 'cs', eflags: 'flags',
  rsp: 'sp', ss: 'ss', fs_base: 'fs_base', gs_base: 'gs_base', ds: 'ds', es: 'es', fs: 'fs', gs: 'gs',
}

// ---- public types ----

/** Where page contents come from when writing: typically the frozen snapshot of the target. */
export interface PageSource {
  /** Fill `into` (exactly run.nrPages * 4096 bytes) with the pages of `run`. */
  read(run: PageRun, into: Uint8Array): void | Promise<void>
  /**
   * Optionally, write the pages of every run itself into pages-1.img, which the writer holds
   * open as `file.fd`, back to back from offset 0 (the snapshot splices them there: one copy,
   * no buffer of ours). Started before the other images are encoded, finished after them;
   * null when it cannot (nothing written): `read` is used instead.
   */
  start?(file: {fd: number; path: string}, runs: readonly PageRun[]): {finish(): void} | null
}

/** CRIU's dump statistics (stats-dump.img); times in microseconds. */
export interface DumpStats {
  freezingTime: number
  frozenTime: number
  memdumpTime: number
  memwriteTime: number
  pagesScanned: number
  pagesWritten: number
  pagesSkippedParent?: number
  pagesLazy?: number
}

/** CRIU's restore statistics (stats-restore.img); times in microseconds. */
export interface RestoreStats {
  restoreTime: number
  pagesRestored: number
  forkingTime?: number
  pagesCompared?: number
  pagesSkippedCow?: number
}

export interface CriuPagemapEntry {
  vaddr: bigint
  nrPages: number
  /** PE_* bits as read (old images without flags: PE_PRESENT, or PE_PARENT for in_parent). */
  flags: number
  /** Byte offset in pagesPath of the entry's first page (entries without PE_PRESENT store none: the offset they would have). */
  pagesOffset: number
}

export interface CriuImageSet {
  image: ProcessImage
  pagemap: CriuPagemapEntry[]
  pagesPath: string
  /** Byte offset in pagesPath of each of image.pageRuns. */
  runOffsets: number[]
  stats?: DumpStats
  restoreStats?: RestoreStats
  /** 'cxlfork' when cxlfork's extension fields were present (exact model), 'criu' otherwise. */
  writtenBy: 'cxlfork' | 'criu'
}

export interface WriteOptions {
  /** Bytes gathered from the page source before each write to pages-1.img (default 8 MiB). */
  chunkBytes?: number
  /**
   * st_mode of a path the model keeps no file identity for (a character device or
   * directory fd, cwd, root), e.g. from stat() on the dumping host. CRIU's restore compares
   * a recorded reg_file mode with the opened file's whole st_mode, permission bits
   * included; without a mode from here, files.img records none and CRIU checks none.
   */
  modeOf?: (path: string) => number | undefined
  /**
   * Also store the [vdso] pages (read from `pages` like the others), which the model does not
   * carry: CRIU's restore parses the dumped vDSO in place to compare it with its own and
   * fails on a zero-filled one ("vdso: Invalid ELF magic"). The reader drops them again.
   */
  vdsoPages?: boolean
}

// ---- writing ----

type Obj = Record<string, unknown>

const fown = () => ({uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0})

function vmaStatus(vma: VmaImage, index: number): number {
  const where = `VMA ${index} (${vma.start.toString(16)}-${vma.end.toString(16)}, ${vma.kind})`
  switch (vma.kind) {
    case 'anon':
    case 'heap':
    case 'stack':
      if (vma.flags & MAP.SHARED) {
        throw new UnsupportedError('CRIU_SHARED_ANON', `${where} is shared anonymous memory, which the CRIU-format path does not write`,
          'CRIU keeps shared anonymous memory in pagemap-shmem images; use the pool path (`cxlfork checkpoint`) for this process.')
      }
      return VMA_AREA_REGULAR | VMA_ANON_PRIVATE | (vma.kind === 'heap' ? VMA_AREA_HEAP : 0) | (vma.kind === 'stack' ? VMA_AREA_STACK : 0)
    case 'file':
      return VMA_AREA_REGULAR | (vma.flags & MAP.SHARED ? VMA_FILE_SHARED : VMA_FILE_PRIVATE)
    case 'vdso':
      return VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE
    case 'vvar':
    case 'vvar_vclock':
      return VMA_AREA_REGULAR | VMA_AREA_VVAR | VMA_ANON_PRIVATE
    case 'vsyscall':
      return VMA_AREA_VSYSCALL
  }
}

function fileIdFor(image: ProcessImage, index: number | undefined, what: string): number {
  if (index === undefined || !Number.isInteger(index) || index < 0 || index >= image.files.length) {
    throw new CorruptError('IMAGE_INCONSISTENT', `${what} refers to file index ${String(index)}, but the image has ${image.files.length} files`,
      'The captured image is inconsistent; this is a cxlfork bug.')
  }
  return index + 1
}

function siginfos(list: readonly Uint8Array[]): Obj {
  return {signals: list.map((siginfo) => ({siginfo}))}
}

const ERESTARTSYS = 512n
const ERESTARTNOINTR = 513n
const ERESTARTNOHAND = 514n
const ERESTART_RESTARTBLOCK = 516n
const EINTR = 4n

/**
 * The registers CRIU's dump stores for a thread stopped inside a system call (compel's
 * get_task_regs, x86): an interrupted call that the kernel would restart is set up to run
 * again (rax = orig_rax, rip back over the 2-byte syscall instruction); one restarted
 * through restart_syscall (-ERESTART_RESTARTBLOCK) returns -EINTR instead, as its restart
 * block does not survive. CRIU's restore resumes a thread with these registers as they are:
 * left raw, the process would see -ERESTART* (e.g. errno 514 from a sleep).
 */
function criuRestartRegs(regs: UserRegs): UserRegs {
  if (BigInt.asIntN(64, regs.orig_rax) < 0n) return regs
  const ax = BigInt.asIntN(64, regs.rax)
  if (ax === -ERESTARTSYS || ax === -ERESTARTNOINTR || ax === -ERESTARTNOHAND) return {...regs, rax: regs.orig_rax, rip: u64(regs.rip - 2n)}
  if (ax === -ERESTART_RESTARTBLOCK) return {...regs, rax: u64(-EINTR)}
  return regs
}

function coreFor(image: ProcessImage, thread: ThreadImage, leader: boolean): Obj {
  const gpregs: Obj = {mode: REGS_MODE_NATIVE}
  const regs = criuRestartRegs(thread.regs)
  for (const name of USER_REGS_NAMES) gpregs[CRIU_REG_NAMES[name]] = str64(u64(regs[name]))
  const threadCore: Obj = {
    futex_rla: str64(u64(thread.robustList.head)),
    futex_rla_len: Number(thread.robustList.length),
    blk_sigset: str64(u64(thread.sigmask)),
    sas: {ss_sp: str64(u64(thread.altStack.sp)), ss_size: str64(u64(thread.altStack.size)), ss_flags: thread.altStack.flags >>> 0},
    signals_p: siginfos(thread.pendingSignals),
    creds: {
      uid: image.task.uid, gid: image.task.gid, euid: image.task.uid, egid: image.task.gid, suid: image.task.uid, sgid: image.task.gid,
      fsuid: image.task.uid, fsgid: image.task.gid, cap_inh: [], cap_prm: [], cap_eff: [], cap_bnd: [], secbits: 0, groups: [],
    },
  }
  // CRIU names each thread in thread_core.comm; the leader's is the task's.
  const comm = leader ? image.task.comm : thread.comm
  if (comm !== undefined) threadCore['comm'] = comm
  if (thread.rseq) {
    threadCore['rseq_entry'] = {rseq_abi_pointer: str64(u64(thread.rseq.address)), rseq_abi_size: thread.rseq.length, signature: thread.rseq.signature >>> 0}
  }
  const core: Obj = {
    mtype: MARCH_X86_64,
    thread_info: {
      clear_tid_addr: str64(u64(thread.clearTidAddress)), gpregs, fpregs: xstateToFpregs(thread.xstate, thread.xsaveLayout), tls: [],
      ...(regs === thread.regs ? {} : {cxlfork: {ax: str64(u64(thread.regs.rax)), ip: str64(u64(thread.regs.rip))}}),
    },
    thread_core: threadCore,
  }
  if (leader) core['tc'] = taskCore(image, thread)
  return core
}

const disarmed = () => ({isec: str64(0n), iusec: str64(0n), vsec: str64(0n), vusec: str64(0n)})

function taskCore(image: ProcessImage, leader: ThreadImage): Obj {
  const {task} = image
  // sigactions: 62 positional slots; signals without a slot travel in the extension.
  const slots: Obj[] = []
  const bySigno = new Map<number, SigAction>()
  for (const action of task.sigactions) bySigno.set(action.signo, action)
  const extra: Obj[] = []
  for (const action of task.sigactions) {
    if (action.signo < 1 || action.signo > SIGMAX || action.signo === SIG.KILL || action.signo === SIG.STOP) {
      extra.push({signo: action.signo >>> 0, handler: str64(u64(action.handler)), flags: str64(u64(action.flags)), restorer: str64(u64(action.restorer)), mask: str64(u64(action.mask))})
    }
  }
  for (let signo = 1; signo <= SIGMAX; signo++) {
    if (signo === SIG.KILL || signo === SIG.STOP) continue
    const action = bySigno.get(signo)
    slots.push(action
      ? {sigaction: str64(u64(action.handler)), flags: str64(u64(action.flags)), restorer: str64(u64(action.restorer)), mask: str64(u64(action.mask)), compat_sigaction: false}
      : {sigaction: str64(0n), flags: str64(0n), restorer: str64(0n), mask: str64(0n), compat_sigaction: false})
  }
  // rlimits: positional by RLIMIT_* number; gaps are unlimited.
  let count = RLIM_NLIMITS
  for (const limit of task.rlimits) count = Math.max(count, limit.resource + 1)
  const limits: Obj[] = Array.from({length: count}, () => ({cur: str64(RLIM_INFINITY), max: str64(RLIM_INFINITY)}))
  for (const limit of task.rlimits) limits[limit.resource] = {cur: str64(u64(limit.cur)), max: str64(u64(limit.max))}
  return {
    task_state: TASK_ALIVE,
    exit_code: 0,
    personality: task.personality >>> 0,
    flags: 0,
    blk_sigset: str64(u64(leader.sigmask)),
    comm: task.comm,
    // Present even though the model holds no timers: CRIU 4.x reads a core without tc.timers as
    // pre-1.x images and looks for the separate itimers/posix-timers images, which it refuses
    // as deprecated ("Deprecated functionality (Posix timers) rejected").
    timers: {real: disarmed(), virt: disarmed(), prof: disarmed(), posix: []},
    rlimits: {rlimits: limits},
    signals_s: siginfos(task.sharedPendingSignals),
    sigactions: slots,
    cxlfork: {
      cmdline: task.cmdline.map((arg) => Buffer.from(arg, 'utf8')),
      sigaction_signos: task.sigactions.map((action) => action.signo >>> 0),
      extra_sigactions: extra,
      rlimit_resources: task.rlimits.map((limit) => limit.resource >>> 0),
      listed: true,
      ppid: task.ppid >>> 0,
    },
  }
}

function checkRuns(image: ProcessImage): void {
  let previousEnd = 0n
  image.pageRuns.forEach((run, i) => {
    const vma = image.vmas[run.vmaIndex]
    const end = run.vaddr + BigInt(run.nrPages) * BigInt(PAGE_SIZE)
    if (!vma || run.nrPages <= 0 || run.vaddr < vma.start || end > vma.end || run.vaddr < previousEnd || run.vaddr % BigInt(PAGE_SIZE) !== 0n) {
      throw new CorruptError('IMAGE_INCONSISTENT', `page run ${i} (${run.vaddr.toString(16)} +${run.nrPages} pages) is not inside VMA ${run.vmaIndex} or not in ascending order`,
        'The captured image is inconsistent; this is a cxlfork bug.')
    }
    previousEnd = end
  })
}

/** Two vvar parts that one merged entry describes exactly (everything but the bounds equal). */
function sameVvar(a: VmaImage, b: VmaImage): boolean {
  return a.prot === b.prot && a.flags === b.flags && a.offset === b.offset && JSON.stringify(a.advice) === JSON.stringify(b.advice)
}

/** The page runs writeCriuImages stores in pages-1.img, in address order. */
export function runsToWrite(image: ProcessImage, options: WriteOptions = {}): PageRun[] {
  return options.vdsoPages ? withVdsoRuns(image) : image.pageRuns
}

/** image.pageRuns with a run for every [vdso] VMA inserted in address order (the model never holds vDSO pages). */
function withVdsoRuns(image: ProcessImage): PageRun[] {
  const vdso: PageRun[] = []
  image.vmas.forEach((vma, vmaIndex) => {
    if (vma.kind === 'vdso') vdso.push({vaddr: vma.start, nrPages: Number((vma.end - vma.start) / BigInt(PAGE_SIZE)), vmaIndex})
  })
  if (vdso.length === 0) return image.pageRuns
  return [...image.pageRuns, ...vdso].sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0))
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let at = 0
  while (at < bytes.byteLength) at += writeSync(fd, bytes, at, bytes.byteLength - at)
}

/**
 * Write `image` as a CRIU image set into `dir` (which must exist). Pages are pulled from
 * `pages` run by run (runs larger than the chunk are split) into one reusable buffer and
 * written to pages-1.img in large sequential writes.
 */
export async function writeCriuImages(dir: string, image: ProcessImage, pages: PageSource, stats?: DumpStats, options: WriteOptions = {}): Promise<{files: string[]; bytes: number}> {
  if (image.threads.length === 0) throw new CorruptError('IMAGE_INCONSISTENT', 'the image has no threads', 'This is a cxlfork bug.')
  checkRuns(image)
  const runs = runsToWrite(image, options)
  const files: string[] = []
  let bytes = 0
  const put = (name: string, kind: ImageKind, records: Uint8Array[]) => {
    const path = join(dir, name)
    bytes += writeImage(path, kind, records)
    files.push(path)
  }

  // Pages first: the slow part. A source that writes them itself runs while the other
  // images are encoded here, and is waited for before stats-dump.img.
  const pagesPath = join(dir, `pages-${PAGES_ID}.img`)
  const fd = openSync(pagesPath, 'w', 0o600)
  files.push(pagesPath)
  let writing: {finish(): void} | null = null
  try {
    writing = pages.start?.({fd, path: pagesPath}, runs) ?? null
    if (!writing) await copyPages(fd, runs, pages, options)
  } catch (error) {
    closeSync(fd)
    throw error
  }
  try {
    writeSmallImages(dir, image, runs, options, put)
  } finally {
    try {
      writing?.finish()
    } finally {
      closeSync(fd)
    }
  }
  bytes += statSync(pagesPath).size
  if (stats) {
    put('stats-dump.img', 'stats', [encodeMessage('stats_entry', {dump: {
      freezing_time: stats.freezingTime >>> 0, frozen_time: stats.frozenTime >>> 0, memdump_time: stats.memdumpTime >>> 0, memwrite_time: stats.memwriteTime >>> 0,
      pages_scanned: str64(BigInt(stats.pagesScanned)), pages_skipped_parent: str64(BigInt(stats.pagesSkippedParent ?? 0)), pages_written: str64(BigInt(stats.pagesWritten)),
      pages_lazy: str64(BigInt(stats.pagesLazy ?? 0)),
    }}, 'stats-dump.img')])
  }
  return {files, bytes}
}

/** Pages pulled from `pages` run by run (runs larger than the chunk are split) into one reusable buffer, written to `fd` in large sequential writes. */
async function copyPages(fd: number, runs: readonly PageRun[], pages: PageSource, options: WriteOptions): Promise<void> {
  const chunk = Math.max(PAGE_SIZE, Math.floor((options.chunkBytes ?? 8 << 20) / PAGE_SIZE) * PAGE_SIZE)
  const chunkPages = chunk / PAGE_SIZE
  const buffer = new Uint8Array(chunk)
  let fill = 0
  for (const run of runs) {
    for (let done = 0; done < run.nrPages;) {
      const nrPages = Math.min(chunkPages, run.nrPages - done)
      const length = nrPages * PAGE_SIZE
      if (fill + length > chunk) {
        writeAll(fd, buffer.subarray(0, fill))
        fill = 0
      }
      const piece: PageRun = {vaddr: run.vaddr + BigInt(done * PAGE_SIZE), nrPages, vmaIndex: run.vmaIndex}
      await pages.read(piece, buffer.subarray(fill, fill + length))
      fill += length
      done += nrPages
    }
  }
  writeAll(fd, buffer.subarray(0, fill))
}

/** Every image but pages-1.img and stats-dump.img. */
function writeSmallImages(dir: string, image: ProcessImage, runs: readonly PageRun[], options: WriteOptions, put: (name: string, kind: ImageKind, records: Uint8Array[]) => void): void {
  const pid = image.task.pid
  const enc = (type: string, value: Obj, name: string) => encodeMessage(type, value, name)
  /** The whole st_mode (type and permission bits, as CRIU records it) when modeOf knows `path` as a file of `type`; else no mode. */
  const setMode = (reg: Obj, path: string, type: number) => {
    const mode = options.modeOf?.(path)
    if (mode !== undefined && (mode & S_IFMT) === type) reg['mode'] = mode >>> 0
  }

  const ext = image.kernel
  put('inventory.img', 'inventory', [enc('inventory_entry', {
    img_version: CRTOOLS_IMAGES_V1_1,
    fdinfo_per_id: true,
    root_ids: {vm_id: ROOT_KID, files_id: ROOT_KID, fs_id: ROOT_KID, sighand_id: ROOT_KID},
    lsmtype: 0,
    cxlfork: {
      model_version: image.version, captured_at: image.capturedAt, kernel_release: ext.release, hostname: ext.hostname, boot_id: ext.bootId,
      vdso_layout: ext.vdsoLayout.map((area) => ({name: area.name, offset: str64(u64(area.offset)), size: str64(u64(area.size))})),
    },
  }, 'inventory.img')])

  const threads = image.threads.map((thread) => thread.tid)
  put('pstree.img', 'pstree', [enc('pstree_entry', {pid, ppid: 0, pgid: image.task.pgid, sid: image.task.sid, threads}, 'pstree.img')])

  image.threads.forEach((thread, i) => {
    const name = `core-${thread.tid}.img`
    put(name, 'core', [enc('core_entry', coreFor(image, thread, i === 0), name)])
  })

  put(`ids-${pid}.img`, 'ids', [enc('task_kobj_ids_entry', {vm_id: KID, files_id: KID, fs_id: KID, sighand_id: KID}, `ids-${pid}.img`)])

  // files.img: one entry per tracked file (ids 1..n, index + 1), then one per fd, then cwd and root.
  const fileRecords: Uint8Array[] = []
  image.files.forEach((file, i) => {
    fileRecords.push(enc('file_entry', {type: FD_TYPE_REG, id: i + 1, reg: {
      id: i + 1, flags: 0, pos: str64(0n), fown: fown(), name: file.path, size: str64(u64(file.size)), mode: file.mode >>> 0,
      cxlfork: {file_index: i, device: file.device, inode: str64(u64(file.inode)), mtime_ns: str64(BigInt.asIntN(64, file.mtimeNs))},
    }}, 'files.img'))
  })
  let nextId = image.files.length + 1
  const fdRecords: Uint8Array[] = []
  for (const fdImage of image.fds) {
    const id = nextId++
    const fdExt: Obj = {kind: fdImage.kind, path: fdImage.path}
    if (fdImage.fileIndex !== undefined) fdExt['file_index'] = fileIdFor(image, fdImage.fileIndex, `fd ${fdImage.fd}`) - 1
    if (fdImage.kind === 'pipe') {
      const pipeId = /^pipe:\[(\d+)\]$/.exec(fdImage.path)?.[1]
      fileRecords.push(enc('file_entry', {type: FD_TYPE_PIPE, id, pipe: {id, pipe_id: Number(pipeId ?? 0) >>> 0, flags: fdImage.flags >>> 0, fown: fown()}}, 'files.img'))
    } else {
      const reg: Obj = {id, flags: fdImage.flags >>> 0, pos: str64(u64(fdImage.offset)), fown: fown(), name: fdImage.path}
      const identity = fdImage.fileIndex === undefined ? undefined : image.files[fdImage.fileIndex]
      if (identity) reg['mode'] = identity.mode >>> 0
      else if (fdImage.kind === 'chardev' || fdImage.kind === 'tty') setMode(reg, fdImage.path, S_IFCHR)
      else if (fdImage.kind === 'directory') setMode(reg, fdImage.path, S_IFDIR)
      fileRecords.push(enc('file_entry', {type: FD_TYPE_REG, id, reg}, 'files.img'))
    }
    fdRecords.push(enc('fdinfo_entry', {id, flags: fdImage.cloexec ? FD_CLOEXEC : 0, type: fdImage.kind === 'pipe' ? FD_TYPE_PIPE : FD_TYPE_REG, fd: fdImage.fd, cxlfork: fdExt}, `fdinfo-${KID}.img`))
  }
  const cwdId = nextId++
  const rootId = nextId++
  for (const [id, name] of [[cwdId, image.task.cwd], [rootId, image.task.root]] as const) {
    const reg: Obj = {id, flags: 0, pos: str64(0n), fown: fown(), name}
    setMode(reg, name, S_IFDIR)
    fileRecords.push(enc('file_entry', {type: FD_TYPE_REG, id, reg}, 'files.img'))
  }

  const {mm} = image
  const vmas = image.vmas.map((vma, i) => {
    const entry: Obj = {
      start: str64(u64(vma.start)), end: str64(u64(vma.end)), pgoff: str64(u64(vma.offset)),
      shmid: str64(vma.kind === 'file' ? BigInt(fileIdFor(image, vma.fileIndex, `VMA ${i}`)) : 0n),
      prot: vma.prot >>> 0, flags: vma.flags >>> 0, status: vmaStatus(vma, i) >>> 0, fd: str64(-1n),
    }
    if (vma.kind === 'file') entry['fdflags'] = vma.flags & MAP.SHARED && vma.prot & PROT.WRITE ? O.RDWR : 0
    if (vma.advice) entry['madv'] = str64(vma.advice.reduce((bits, advice) => bits | (1n << BigInt(advice)), 0n))
    return entry
  }).filter((entry, i, all) => {
    // One VMA_AREA_VVAR entry for [vvar] + [vvar_vclock], as CRIU 4.1+ dumps them (kernels >= 6.13):
    // its restore compares that merged size with its own to remap the vDSO in place. Merged only
    // when the parts differ in nothing else, so the reader splits them back exactly.
    const vma = image.vmas[i]!
    const before = image.vmas[i - 1]
    if (vma.kind !== 'vvar_vclock' || before?.kind !== 'vvar' || before.end !== vma.start || !sameVvar(before, vma)) return true
    all[i - 1]!['end'] = entry['end']
    return false
  })
  put(`mm-${pid}.img`, 'mm', [enc('mm_entry', {
    mm_start_code: str64(u64(mm.startCode)), mm_end_code: str64(u64(mm.endCode)), mm_start_data: str64(u64(mm.startData)), mm_end_data: str64(u64(mm.endData)),
    mm_start_stack: str64(u64(mm.startStack)), mm_start_brk: str64(u64(mm.startBrk)), mm_brk: str64(u64(mm.brk)),
    mm_arg_start: str64(u64(mm.argStart)), mm_arg_end: str64(u64(mm.argEnd)), mm_env_start: str64(u64(mm.envStart)), mm_env_end: str64(u64(mm.envEnd)),
    exe_file_id: fileIdFor(image, mm.exeFileIndex, 'the executable'),
    // CRIU restores at most AT_VECTOR_SIZE words of auxv and refuses more ("Image corrupted").
    mm_saved_auxv: mm.auxv.slice(0, AT_VECTOR_SIZE).map((word) => str64(u64(word))),
    vmas,
    ...(mm.auxv.length > AT_VECTOR_SIZE ? {cxlfork: {auxv: mm.auxv.map((word) => str64(u64(word)))}} : {}),
  }, `mm-${pid}.img`)])

  const pagemapRecords = [encodeMessage('pagemap_head', {pages_id: PAGES_ID}, `pagemap-${pid}.img`)]
  for (const run of runs) {
    pagemapRecords.push(enc('pagemap_entry', {vaddr: str64(run.vaddr), compat_nr_pages: run.nrPages, nr_pages: str64(BigInt(run.nrPages)), flags: PE_PRESENT}, `pagemap-${pid}.img`))
  }
  put(`pagemap-${pid}.img`, 'pagemap', pagemapRecords)
  put('files.img', 'files', fileRecords)
  put(`fdinfo-${KID}.img`, 'fdinfo', fdRecords)
  put(`fs-${pid}.img`, 'fs', [enc('fs_entry', {cwd_id: cwdId, root_id: rootId, umask: image.task.umask >>> 0}, `fs-${pid}.img`)])
}

/** Write stats-restore.img (CRIU's restore statistics) into `dir`; returns its path. */
export function writeRestoreStats(dir: string, stats: RestoreStats): string {
  const path = join(dir, 'stats-restore.img')
  writeImage(path, 'stats', [encodeMessage('stats_entry', {restore: {
    pages_compared: str64(BigInt(stats.pagesCompared ?? 0)), pages_skipped_cow: str64(BigInt(stats.pagesSkippedCow ?? 0)),
    forking_time: (stats.forkingTime ?? 0) >>> 0, restore_time: stats.restoreTime >>> 0, pages_restored: str64(BigInt(stats.pagesRestored)),
  }}, 'stats-restore.img')])
  return path
}

// ---- reading ----

// Decoded protobufjs messages: fields are checked with has() before use where optional.
type Msg = Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any

/** VMAs the kernel provides: restore moves this host's, never fills them from pages. */
const KERNEL_VMA_KINDS: ReadonlySet<VmaKind> = new Set(['vdso', 'vvar', 'vvar_vclock', 'vsyscall'])

const corrupt = (message: string, hint = 'The image set is damaged or inconsistent; dump the process again.') => new CorruptError('CRIU_IMAGE_CORRUPT', message, hint)

function only(records: Msg[], name: string): Msg {
  if (records.length !== 1) throw corrupt(`${name} holds ${records.length} records, expected exactly 1`)
  return records[0]!
}

function optionalImage<T>(path: string, read: () => T): T | undefined {
  if (!existsSync(path)) return undefined
  return read()
}

function dumpStatsFrom(entry: Msg): DumpStats | undefined {
  if (!has(entry, 'dump')) return undefined
  const d = entry['dump'] as Msg
  const stats: DumpStats = {
    freezingTime: d['freezing_time'], frozenTime: d['frozen_time'], memdumpTime: d['memdump_time'], memwriteTime: d['memwrite_time'],
    pagesScanned: Number(big(d['pages_scanned'])), pagesWritten: Number(big(d['pages_written'])),
  }
  stats.pagesSkippedParent = Number(big(d['pages_skipped_parent']))
  stats.pagesLazy = Number(big(d['pages_lazy']))
  return stats
}

function restoreStatsFrom(entry: Msg): RestoreStats | undefined {
  if (!has(entry, 'restore')) return undefined
  const r = entry['restore'] as Msg
  return {
    restoreTime: r['restore_time'], pagesRestored: has(r, 'pages_restored') ? Number(big(r['pages_restored'])) : 0, forkingTime: r['forking_time'],
    pagesCompared: Number(big(r['pages_compared'])), pagesSkippedCow: Number(big(r['pages_skipped_cow'])),
  }
}

function vmaName(vma: Msg, index: number): string {
  return `VMA ${index} (${big(vma['start']).toString(16)}-${big(vma['end']).toString(16)}, status ${'0x' + (vma['status'] >>> 0).toString(16)})`
}

const TASK_STATE_NAMES: Record<number, string> = {2: 'dead', 3: 'stopped', 4: 'helper', 5: 'thread', 6: 'zombie'}
const SECCOMP_MODE_NAMES: Record<number, string> = {1: 'strict', 2: 'filter'}

/**
 * Task state CRIU records and the model has no place for: refuse it by name rather than
 * restore a process silently without it (a stopped task, armed interval or POSIX timers,
 * seccomp).
 */
function checkTaskState(tc: Msg, cores: {tid: number; core: Msg}[], pid: number): void {
  const state = tc['task_state'] as number
  if (state !== TASK_ALIVE) {
    throw new UnsupportedError('CRIU_TASK_STATE', `core-${pid}.img: the task was ${TASK_STATE_NAMES[state] ?? `in state ${state}`} when dumped; only running (alive) tasks are restored`,
      'Dump the process while it is running.')
  }
  if (has(tc, 'timers')) {
    const timers = tc['timers'] as Msg
    for (const which of ['real', 'virt', 'prof']) {
      const timer = timers[which] as Msg | undefined
      if (timer && ['isec', 'iusec', 'vsec', 'vusec'].some((field) => big(timer[field]) !== 0n)) {
        throw new UnsupportedError('CRIU_TIMERS', `core-${pid}.img: the task has an armed ITIMER_${which.toUpperCase()} interval timer, which the CRIU-format path does not restore`,
          'Dump a process without armed setitimer()/alarm() timers.')
      }
    }
    const posix = (timers['posix'] ?? []) as Msg[]
    if (posix.length > 0) {
      throw new UnsupportedError('CRIU_TIMERS', `core-${pid}.img: the task has ${posix.length} POSIX timer(s), which the CRIU-format path does not restore`,
        'Dump a process without timer_create() timers.')
    }
  }
  const seccompModes = [has(tc, 'old_seccomp_mode') ? tc['old_seccomp_mode'] as number : 0]
  for (const {core} of cores) if (has(core, 'thread_core') && has(core['thread_core'], 'seccomp_mode')) seccompModes.push(core['thread_core']['seccomp_mode'] as number)
  const seccomp = seccompModes.find((mode) => mode !== 0)
  if (seccomp !== undefined) {
    throw new UnsupportedError('CRIU_SECCOMP', `core-${pid}.img: the task runs under seccomp (${SECCOMP_MODE_NAMES[seccomp] ?? `mode ${seccomp}`}), which the CRIU-format path does not restore`,
      'Dump a process without seccomp filters.')
  }
}

const NT_GNU_BUILD_ID = 3
const PT_NOTE = 4

/**
 * The NT_GNU_BUILD_ID note of an ELF file, found the way CRIU finds it (criu/files-reg.c
 * get_build_id: PT_NOTE segments within the first 1 MiB); undefined if not ELF or none.
 */
function elfBuildId(path: string): Uint8Array | undefined {
  let bytes: Buffer
  try {
    const fd = openSync(path, 'r')
    try {
      bytes = Buffer.alloc(1 << 20)
      bytes = bytes.subarray(0, readSync(fd, bytes, 0, bytes.length, 0))
    } finally {
      closeSync(fd)
    }
  } catch {
    return undefined
  }
  if (bytes.length < 52 || bytes.readUInt32BE(0) !== 0x7f454c46 || bytes[5] !== 1) return undefined // ELF, little-endian
  const is64 = bytes[4] === 2
  if (!is64 && bytes[4] !== 1) return undefined
  if (is64 && bytes.length < 64) return undefined
  const phoff = is64 ? Number(bytes.readBigUInt64LE(32)) : bytes.readUInt32LE(28)
  const phentsize = is64 ? 56 : 32
  const phnum = bytes.readUInt16LE(is64 ? 56 : 44)
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize
    if (ph <= 0 || ph + phentsize > bytes.length) break
    if (bytes.readUInt32LE(ph) !== PT_NOTE) continue
    const offset = is64 ? Number(bytes.readBigUInt64LE(ph + 8)) : bytes.readUInt32LE(ph + 4)
    const filesz = is64 ? Number(bytes.readBigUInt64LE(ph + 32)) : bytes.readUInt32LE(ph + 16)
    const end = Math.min(offset + filesz, bytes.length)
    for (let note = offset; note > 0 && note + 12 <= end;) {
      const namesz = bytes.readUInt32LE(note)
      const descsz = bytes.readUInt32LE(note + 4)
      const desc = note + 12 + ((namesz + 3) & ~3)
      if (bytes.readUInt32LE(note + 8) === NT_GNU_BUILD_ID) {
        if (descsz === 0 || descsz > 512 || desc + descsz > bytes.length) return undefined
        return bytes.subarray(desc, desc + descsz)
      }
      note = desc + ((descsz + 3) & ~3)
    }
  }
  return undefined
}

/**
 * The identity of a file named by a set CRIU wrote. CRIU records no device, inode or
 * mtime; it validates a file at restore by the size and ELF build-id it recorded at dump
 * (criu/files-reg.c validate_file). Do the same here against the file now at that path
 * and take that file's identity, so the restore's own identity check guards the file from
 * now on. A file missing now keeps placeholder values (restore refuses it as missing).
 */
function hostIdentity(reg: Msg, what: string): FileIdentity {
  const path = reg['name'] as string
  const recordedSize = has(reg, 'size') ? u64(big(reg['size'])) : undefined
  const recordedMode = has(reg, 'mode') ? reg['mode'] as number : undefined
  let st
  try {
    st = statSync(path, {bigint: true})
  } catch {
    return {path, device: '0:0', inode: 0n, size: recordedSize ?? 0n, mtimeNs: 0n, mode: recordedMode ?? 0}
  }
  const changed = (detail: string) => new UnsupportedError('BACKING_FILE_CHANGED', `${path} (${what}) changed since CRIU dumped it: ${detail}`,
    'The image set maps or opens this file; restore it only with the exact file it was dumped with.')
  if (recordedMode !== undefined && (recordedMode & S_IFMT) !== 0 && (Number(st.mode) & S_IFMT) !== (recordedMode & S_IFMT)) {
    throw changed(`file type ${(Number(st.mode) & S_IFMT).toString(8)}, CRIU recorded ${(recordedMode & S_IFMT).toString(8)}`)
  }
  if (recordedSize !== undefined && st.size !== recordedSize) throw changed(`size ${st.size}, CRIU recorded ${recordedSize}`)
  const recordedId = (reg['build_id'] ?? []) as number[]
  if (recordedSize !== undefined && recordedId.length > 0) {
    const found = elfBuildId(path)
    if (found) {
      const want = Buffer.alloc(recordedId.length * 4)
      recordedId.forEach((word, i) => want.writeUInt32LE(word >>> 0, i * 4))
      if (((found.length + 3) & ~3) !== want.length || !Buffer.from(found).equals(want.subarray(0, found.length))) {
        throw changed(`ELF build-id ${Buffer.from(found).toString('hex')}, CRIU recorded ${want.toString('hex')}`)
      }
    }
  }
  return {path, device: deviceName(st.dev), inode: st.ino, size: st.size, mtimeNs: st.mtimeNs, mode: recordedMode ?? Number(st.mode)}
}

/** This kernel's vvar areas ([vvar], [vvar_vclock]) in address order, from our own maps; [] if unreadable or not adjacent. */
function hostVvarParts(): {name: 'vvar' | 'vvar_vclock'; size: bigint}[] {
  let maps: Vma[]
  try {
    maps = readMaps('self')
  } catch {
    return []
  }
  const parts = maps.filter((vma) => vma.kind === 'vvar' || vma.kind === 'vvar_vclock').sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))
  for (let i = 1; i < parts.length; i++) if (parts[i]!.start !== parts[i - 1]!.end) return []
  return parts.map((vma) => ({name: vma.kind as 'vvar' | 'vvar_vclock', size: vma.end - vma.start}))
}

/** The vvar areas of a recorded vDSO layout (cxlfork's inventory extension) in address order. */
function recordedVvarParts(layout: readonly Msg[]): {name: 'vvar' | 'vvar_vclock'; size: bigint}[] {
  return layout.filter((area) => area['name'] === '[vvar]' || area['name'] === '[vvar_vclock]')
    .map((area) => ({name: (area['name'] as string).slice(1, -1) as 'vvar' | 'vvar_vclock', offset: u64(big(area['offset'])), size: u64(big(area['size']))}))
    .sort((a, b) => (a.offset < b.offset ? -1 : a.offset > b.offset ? 1 : 0))
    .map(({name, size}) => ({name, size}))
}

/** A merged VMA_AREA_VVAR entry cut into the vvar areas `parts`, or undefined if it is not such a merge. */
function splitMergedVvar(vma: VmaImage, parts: {name: 'vvar' | 'vvar_vclock'; size: bigint}[]): VmaImage[] | undefined {
  if (parts.length < 2 || parts[0]!.name !== 'vvar') return undefined
  const total = parts.reduce((sum, part) => sum + part.size, 0n)
  if (vma.end - vma.start !== total) return undefined
  const out: VmaImage[] = []
  let start = vma.start
  for (const part of parts) {
    const piece: VmaImage = {...vma, start, end: start + part.size, kind: part.name}
    if (vma.advice) piece.advice = [...vma.advice]
    out.push(piece)
    start += part.size
  }
  return out
}

function bitsToList(bits: bigint): number[] {
  const out: number[] = []
  for (let i = 0; i < 64; i++) if ((bits >> BigInt(i)) & 1n) out.push(i)
  return out
}

/**
 * Read a CRIU image set (cxlfork's own, or CRIU 4.x's for one single- or multi-threaded
 * process with regular files and pipes) into the model.
 *
 * From a set CRIU itself wrote, these model parts are not in the images and get fill-in
 * values: file device/inode/mtime (those of the file now at the path, after checking it
 * against the size and ELF build-id CRIU recorded; '0:0', 0, 0 if it is gone), cmdline ([]: it is in the process's
 * memory), capturedAt (0), kernel release/hostname/boot id (''), vdsoLayout (derived
 * from the [vvar]/[vvar_vclock]/[vdso] VMAs, offsets relative to the first of them),
 * sigactions (only non-default ones), fd paths of regular files (CRIU's file name).
 */
export function readCriuImages(dir: string): CriuImageSet {
  try {
    return readSet(dir)
  } catch (error) {
    if (error instanceof CxlforkError) throw error
    // Anything else (RangeError, TypeError from a malformed but decodable message) is a corrupt set.
    throw corrupt(`${dir}: image set is malformed: ${(error as Error).message}`)
  }
}

function readSet(dir: string): CriuImageSet {
  const at = (name: string) => join(dir, name)
  const inventory = only(readImage<Msg>(at('inventory.img'), 'inventory'), 'inventory.img')
  const version = inventory['img_version'] as number
  if (version !== CRTOOLS_IMAGES_V1_1) {
    throw new UnsupportedError('CRIU_IMAGE_VERSION',
      version === CRTOOLS_IMAGES_V1
        ? 'inventory.img has image version 1 (CRIU 1.0 images without head magic), which is not supported'
        : `inventory.img has unknown image version ${version}; supported is ${CRTOOLS_IMAGES_V1_1} (CRIU 1.1 to 4.x)`,
      'Dump the process again with CRIU 3.x/4.x or cxlfork.')
  }
  if (!inventory['fdinfo_per_id']) {
    throw new UnsupportedError('CRIU_IMAGE_VERSION', 'inventory.img lacks fdinfo_per_id: images from CRIU before 1.3 are not supported', 'Dump the process again with a current CRIU.')
  }
  const invExt = has(inventory, 'cxlfork') ? inventory['cxlfork'] as Msg : undefined
  const ours = invExt !== undefined
  if (invExt && invExt['model_version'] !== IMAGE_VERSION) {
    throw new UnsupportedError('CRIU_IMAGE_VERSION', `inventory.img was written by a cxlfork with model version ${invExt['model_version']}, this one reads ${IMAGE_VERSION}`,
      'Read the images with the cxlfork version that wrote them.')
  }

  const tree = readImage<Msg>(at('pstree.img'), 'pstree')
  if (tree.length === 0) throw corrupt('pstree.img holds no task')
  if (tree.length > 1) {
    throw new UnsupportedError('CRIU_PROCESS_TREE', `pstree.img holds ${tree.length} tasks (${tree.map((t) => t['pid']).join(', ')}); only single-process image sets are supported`,
      'Dump a single process (no children).')
  }
  const task = tree[0]!
  const pid = task['pid'] as number
  const tids: number[] = task['threads']?.length ? [...task['threads']] : [pid]
  if (tids[0] !== pid && tids.includes(pid)) tids.splice(tids.indexOf(pid), 1), tids.unshift(pid)

  const ids = optionalImage(at(`ids-${pid}.img`), () => only(readImage<Msg>(at(`ids-${pid}.img`), 'ids'), `ids-${pid}.img`)) ??
    (has(inventory, 'root_ids') ? inventory['root_ids'] as Msg : undefined)
  if (!ids) throw new NotFoundError('CRIU_IMAGE_MISSING', `ids-${pid}.img is missing from ${dir} and inventory.img has no root_ids`, 'The image set is incomplete; dump the process again.')

  const cores = tids.map((tid) => ({tid, core: only(readImage<Msg>(at(`core-${tid}.img`), 'core'), `core-${tid}.img`)}))
  for (const {tid, core} of cores) {
    if (core['mtype'] !== MARCH_X86_64 || !has(core, 'thread_info')) {
      throw new UnsupportedError('CRIU_ARCH', `core-${tid}.img is for architecture ${core['mtype']}, not x86_64`, 'Restore on the architecture the image was dumped on.')
    }
  }
  const leaderCore = cores[0]!.core
  if (!has(leaderCore, 'tc')) throw corrupt(`core-${pid}.img lacks the task core (tc)`)
  const tc = leaderCore['tc'] as Msg
  const taskExt = has(tc, 'cxlfork') ? tc['cxlfork'] as Msg : undefined
  checkTaskState(tc, cores, pid)

  // Files.
  const fileEntries = new Map<number, Msg>()
  for (const entry of readImage<Msg>(at('files.img'), 'files')) fileEntries.set(entry['id'], entry)
  // Files CRIU could not reach by name (unlinked, or only via /proc) are dumped through a
  // remap: the name in files.img is then not the file. cxlfork restores by name only.
  const remapPath = at('remap-fpath.img')
  const remaps = new Map<number, number>()
  for (const remap of optionalImage(remapPath, () => readImage<Msg>(remapPath, 'remap-fpath')) ?? []) {
    remaps.set(remap['orig_id'] as number, has(remap, 'remap_type') ? remap['remap_type'] as number : 0)
  }
  const checkRemap = (id: number, name: string, what: string) => {
    const type = remaps.get(id)
    if (type === undefined) return
    const how = type === 1 ? 'was deleted; CRIU saved its contents as a ghost file' : type === 2 ? 'was reachable only through /proc; CRIU remapped it' : 'was unlinked; CRIU linked it under another name'
    throw new UnsupportedError('CRIU_FILE_REMAP', `${what} refers to ${name} (file id ${id}), which ${how} (remap-fpath.img); the CRIU-format path restores files by name only`,
      'Dump a process whose open and mapped files all still exist under their names.')
  }
  const regOf = (id: number, what: string): Msg => {
    const entry = fileEntries.get(id)
    if (!entry) throw corrupt(`${what} refers to file id ${id}, which files.img does not hold`)
    checkRemap(id, has(entry, 'reg') ? entry['reg']['name'] : `${FD_TYPE_NAMES[entry['type']] ?? entry['type']} file`, what)
    if (entry['type'] !== FD_TYPE_REG || !has(entry, 'reg')) {
      throw new UnsupportedError('CRIU_FILE_TYPE', `${what} refers to file id ${id} of type ${FD_TYPE_NAMES[entry['type']] ?? entry['type']}, not a regular file`,
        'Only regular files (and pipes for descriptors) are supported by the CRIU-format path.')
    }
    return entry['reg'] as Msg
  }
  const files: FileIdentity[] = []
  const byName = new Map<string, number>()
  const fileIndexOf = (id: number, what: string): number => {
    const reg = regOf(id, what)
    if (has(reg, 'cxlfork')) {
      const fileExt = reg['cxlfork'] as Msg
      const index = fileExt['file_index'] as number
      if (!Number.isInteger(index) || index >= fileEntries.size) throw corrupt(`${what}: file id ${id} claims file index ${index}, beyond the ${fileEntries.size} entries of files.img`)
      if (!files[index]) {
        files[index] = {
          path: reg['name'], device: fileExt['device'], inode: u64(big(fileExt['inode'])), size: has(reg, 'size') ? u64(big(reg['size'])) : 0n,
          mtimeNs: big(fileExt['mtime_ns']), mode: has(reg, 'mode') ? reg['mode'] : 0,
        }
      }
      return index
    }
    if (ours) throw corrupt(`${what}: file id ${id} (${reg['name']}) lacks its cxlfork identity`)
    const known = byName.get(reg['name'])
    if (known !== undefined) return known
    files.push(hostIdentity(reg, what))
    byName.set(reg['name'], files.length - 1)
    return files.length - 1
  }

  // Memory layout.
  const mm = only(readImage<Msg>(at(`mm-${pid}.img`), 'mm'), `mm-${pid}.img`)
  const exeFileIndex = fileIndexOf(mm['exe_file_id'], `mm-${pid}.img exe_file_id`)
  const startStack = big(mm['mm_start_stack'])
  const vmas: VmaImage[] = []
  let previousEnd = 0n
  let previous: {status: number; end: bigint} | undefined
  ;(mm['vmas'] as Msg[]).forEach((entry, i) => {
    const status = (entry['status'] as number) >>> 0
    const start = big(entry['start'])
    const end = big(entry['end'])
    const where = vmaName(entry, i)
    if (start >= end || start % BigInt(PAGE_SIZE) !== 0n || end % BigInt(PAGE_SIZE) !== 0n || start < previousEnd) {
      throw corrupt(`mm-${pid}.img: ${where} is empty, unaligned or out of order`)
    }
    previousEnd = end
    for (const [bit, name] of UNSUPPORTED_VMA_BITS) {
      if (status & bit) throw new UnsupportedError('CRIU_VMA_UNSUPPORTED', `mm-${pid}.img: ${where} is ${name}, which the CRIU-format path does not restore`, 'Dump a process without such mappings, or use the pool path.')
    }
    const flags = (entry['flags'] as number) >>> 0
    let kind: VmaKind
    if (status & VMA_AREA_VSYSCALL) kind = 'vsyscall'
    else if (!(status & VMA_AREA_REGULAR)) throw new UnsupportedError('CRIU_VMA_UNSUPPORTED', `mm-${pid}.img: ${where} is not VMA_AREA_REGULAR and of no known kind`, 'Dump the process again.')
    else if (status & VMA_AREA_VDSO) kind = 'vdso'
    else if (status & VMA_AREA_VVAR) kind = previous && previous.status & VMA_AREA_VVAR && previous.end === start ? 'vvar_vclock' : 'vvar'
    else if (status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)) kind = 'file'
    else if (status & VMA_ANON_PRIVATE) {
      if (status & VMA_AREA_HEAP) kind = 'heap'
      else if (status & VMA_AREA_STACK || (!ours && (flags & MAP.GROWSDOWN || (startStack >= start && startStack < end)))) kind = 'stack'
      else kind = 'anon'
    } else throw new UnsupportedError('CRIU_VMA_UNSUPPORTED', `mm-${pid}.img: ${where} has no known memory kind`, 'Dump the process again.')
    previous = {status, end}
    const vma: VmaImage = {start, end, prot: entry['prot'] >>> 0, flags, offset: u64(big(entry['pgoff'])), kind}
    if (kind === 'file') vma.fileIndex = fileIndexOf(Number(big(entry['shmid'])), `mm-${pid}.img ${where}`)
    if (has(entry, 'madv')) vma.advice = bitsToList(u64(big(entry['madv'])))
    if (kind === 'vvar') {
      // CRIU merges adjacent vvar areas into one VMA_AREA_VVAR entry (criu/proc_parse.c, since
      // 4.1 for kernels >= 6.13: [vvar] + [vvar_vclock]), and so does cxlfork's writer. Split it
      // back along the layout cxlfork recorded or else this kernel's, when the merged size
      // matches, as CRIU's own restore compares merged sizes; a mismatch is left whole and
      // refused as KERNEL_MISMATCH at restore.
      const split = splitMergedVvar(vma, invExt ? recordedVvarParts((invExt['vdso_layout'] ?? []) as Msg[]) : hostVvarParts())
      if (split) {
        vmas.push(...split)
        return
      }
    }
    vmas.push(vma)
  })

  // Pages.
  const pagemapPath = at(`pagemap-${pid}.img`)
  const pmRecords = readImageRecords(pagemapPath, 'pagemap')
  if (pmRecords.length === 0) throw corrupt(`pagemap-${pid}.img lacks its pagemap_head`)
  const head = decodeMessage<Msg>('pagemap_head', pmRecords[0]!, `pagemap-${pid}.img record 0`)
  const pagesPath = at(`pages-${head['pages_id']}.img`)
  const pagemap: CriuPagemapEntry[] = []
  const pageRuns: PageRun[] = []
  const runOffsets: number[] = []
  let offset = 0
  let lastEnd = 0n
  let vmaCursor = 0
  pmRecords.slice(1).forEach((record, i) => {
    const entry = decodeMessage<Msg>('pagemap_entry', record, `pagemap-${pid}.img record ${i + 1}`)
    const vaddr = u64(big(entry['vaddr']))
    const nrPages = has(entry, 'nr_pages') ? Number(big(entry['nr_pages'])) : entry['compat_nr_pages'] as number
    let flags: number
    if (has(entry, 'in_parent') && entry['in_parent']) flags = PE_PARENT
    else flags = has(entry, 'flags') ? entry['flags'] >>> 0 : PE_PRESENT
    const where = `pagemap-${pid}.img entry ${i} (${vaddr.toString(16)}, ${nrPages} pages, flags ${flags})`
    if (nrPages <= 0 || vaddr % BigInt(PAGE_SIZE) !== 0n || vaddr < lastEnd) throw corrupt(`${where} is empty, unaligned or out of order`)
    const end = vaddr + BigInt(nrPages) * BigInt(PAGE_SIZE)
    lastEnd = end
    pagemap.push({vaddr, nrPages, flags, pagesOffset: offset})
    if (flags & PE_PARENT) {
      throw new UnsupportedError('CRIU_PAGEMAP_PARENT', `${where} has PE_PARENT: its pages are in a parent (pre-dump) image set`,
        'Incremental dumps are not supported; dump the process without --prev-images-dir / pre-dump.')
    }
    const present = (flags & PE_PRESENT) !== 0
    if (!present && flags & PE_LAZY) {
      throw new UnsupportedError('CRIU_PAGEMAP_LAZY', `${where} has PE_LAZY without PE_PRESENT: its pages are served by a lazy-pages daemon, not stored`,
        'Dump without --lazy-pages (or with pages written to the image).')
    }
    // Split the entry at VMA boundaries; every page must lie in some VMA.
    let cursor = vaddr
    while (cursor < end) {
      while (vmaCursor < vmas.length && vmas[vmaCursor]!.end <= cursor) vmaCursor++
      const vma = vmas[vmaCursor]
      if (!vma || vma.start > cursor) throw corrupt(`${where}: page ${cursor.toString(16)} lies outside every VMA of mm-${pid}.img`)
      const pieceEnd = end < vma.end ? end : vma.end
      const pieces = Number((pieceEnd - cursor) / BigInt(PAGE_SIZE))
      if (present) {
        // CRIU (and cxlfork's dump, for CRIU) store the [vdso] pages; restore maps this host's vDSO instead, so the model holds none.
        if (!KERNEL_VMA_KINDS.has(vma.kind)) {
          pageRuns.push({vaddr: cursor, nrPages: pieces, vmaIndex: vmaCursor})
          runOffsets.push(offset)
        }
        offset += pieces * PAGE_SIZE
      }
      cursor = pieceEnd
    }
    // Neither present, parent nor lazy: CRIU stores nothing and the pages stay zero-filled.
  })
  let pagesSize: number
  try {
    pagesSize = statSync(pagesPath).size
  } catch {
    throw new NotFoundError('CRIU_IMAGE_MISSING', `${pagesPath} (named by pagemap-${pid}.img) is missing`, 'The image set is incomplete; dump the process again.')
  }
  if (pagesSize < offset) {
    throw corrupt(`pages-${head['pages_id']}.img is too short: ${pagesSize} bytes, but pagemap-${pid}.img describes ${offset / PAGE_SIZE} stored pages (${offset} bytes)`)
  }
  // CRIU images carry no checksums: the shape is what can be checked. CRIU writes exactly
  // the pages its pagemap lists, so any other size means the two no longer describe each other.
  if (pagesSize > offset) {
    throw corrupt(`pages-${head['pages_id']}.img does not match pagemap-${pid}.img: ${pagesSize} bytes, but the pagemap describes ${offset / PAGE_SIZE} stored pages (${offset} bytes)${pagesSize % PAGE_SIZE === 0 ? '' : `; ${pagesSize % PAGE_SIZE} bytes beyond the last whole page`}`)
  }

  // Threads.
  const threads: ThreadImage[] = cores.map(({tid, core}) => {
    const info = core['thread_info'] as Msg
    const gp = info['gpregs'] as Msg
    if (has(gp, 'mode') && gp['mode'] !== REGS_MODE_NATIVE) {
      throw new UnsupportedError('CRIU_COMPAT_TASK', `core-${tid}.img holds 32-bit (compat) registers`, 'Only native x86_64 tasks are supported.')
    }
    const regs = Object.fromEntries(USER_REGS_NAMES.map((name) => [name, u64(big(gp[CRIU_REG_NAMES[name]]))])) as UserRegs
    // cxlfork's own sets keep the captured rax/rip beside CRIU's restart fix-up; restore applies its own.
    if (has(info, 'cxlfork')) Object.assign(regs, {rax: u64(big(info['cxlfork']['ax'])), rip: u64(big(info['cxlfork']['ip']))})
    const threadCore = has(core, 'thread_core') ? core['thread_core'] as Msg : undefined
    const sigmask = threadCore && has(threadCore, 'blk_sigset') ? u64(big(threadCore['blk_sigset'])) : u64(big(tc['blk_sigset']))
    const fp = fpregsToXstate(info['fpregs'] as Msg, `core-${tid}.img`)
    const thread: ThreadImage = {
      tid,
      regs,
      xstate: fp.xstate,
      ...(fp.layout ? {xsaveLayout: fp.layout} : {}),
      sigmask,
      pendingSignals: threadCore && has(threadCore, 'signals_p') ? (threadCore['signals_p']['signals'] as Msg[]).map((s) => new Uint8Array(s['siginfo'])) : [],
      robustList: {head: threadCore ? u64(big(threadCore['futex_rla'])) : 0n, length: threadCore ? BigInt(threadCore['futex_rla_len']) : 0n},
      clearTidAddress: u64(big(info['clear_tid_addr'])),
      altStack: threadCore && has(threadCore, 'sas')
        ? {sp: u64(big(threadCore['sas']['ss_sp'])), flags: threadCore['sas']['ss_flags'], size: u64(big(threadCore['sas']['ss_size']))}
        : {sp: 0n, flags: SS_DISABLE, size: 0n},
    }
    // The leader's name is the task's (tc.comm); other threads have their own.
    if (tid !== pid && threadCore && has(threadCore, 'comm') && typeof threadCore['comm'] === 'string') thread.comm = threadCore['comm']
    if (threadCore && has(threadCore, 'rseq_entry')) {
      const rseq = threadCore['rseq_entry'] as Msg
      const address = u64(big(rseq['rseq_abi_pointer']))
      if (ours || address !== 0n) thread.rseq = {address, length: rseq['rseq_abi_size'], signature: rseq['signature']}
    }
    return thread
  })

  // Task-wide state.
  const slots = (tc['sigactions'] ?? []) as Msg[]
  const slotSignos: number[] = []
  for (let signo = 1; signo <= SIGMAX; signo++) if (signo !== SIG.KILL && signo !== SIG.STOP) slotSignos.push(signo)
  if (slots.length !== 0 && slots.length !== slotSignos.length) throw corrupt(`core-${pid}.img holds ${slots.length} sigactions, expected ${slotSignos.length}`)
  const bySigno = new Map<number, SigAction>()
  slots.forEach((slot, i) => {
    if (slot['compat_sigaction']) throw new UnsupportedError('CRIU_COMPAT_TASK', `core-${pid}.img holds a 32-bit (compat) sigaction for signal ${slotSignos[i]}`, 'Only native x86_64 tasks are supported.')
    bySigno.set(slotSignos[i]!, {signo: slotSignos[i]!, handler: u64(big(slot['sigaction'])), flags: u64(big(slot['flags'])), restorer: u64(big(slot['restorer'])), mask: u64(big(slot['mask']))})
  })
  let sigactions: SigAction[]
  if (taskExt && taskExt['listed']) {
    for (const extra of (taskExt['extra_sigactions'] ?? []) as Msg[]) {
      bySigno.set(extra['signo'], {signo: extra['signo'], handler: u64(big(extra['handler'])), flags: u64(big(extra['flags'])), restorer: u64(big(extra['restorer'])), mask: u64(big(extra['mask']))})
    }
    sigactions = ((taskExt['sigaction_signos'] ?? []) as number[]).map((signo) => {
      const action = bySigno.get(signo)
      if (!action) throw corrupt(`core-${pid}.img lists sigaction for signal ${signo} but holds none`)
      return action
    })
  } else {
    sigactions = [...bySigno.values()].filter((a) => a.handler !== 0n || a.flags !== 0n || a.restorer !== 0n || a.mask !== 0n)
  }
  const limitList = (has(tc, 'rlimits') ? tc['rlimits']['rlimits'] ?? [] : []) as Msg[]
  const limitOf = (resource: number): Rlimit => {
    const limit = limitList[resource]
    if (!limit) throw corrupt(`core-${pid}.img lists rlimit ${resource} but holds only ${limitList.length}`)
    return {resource, cur: u64(big(limit['cur'])), max: u64(big(limit['max']))}
  }
  const rlimits = taskExt && taskExt['listed'] ? ((taskExt['rlimit_resources'] ?? []) as number[]).map(limitOf) : limitList.map((_, i) => limitOf(i))

  const leaderThreadCore = has(leaderCore, 'thread_core') ? leaderCore['thread_core'] as Msg : undefined
  let creds: Msg | undefined = leaderThreadCore && has(leaderThreadCore, 'creds') ? leaderThreadCore['creds'] as Msg : undefined
  if (!creds) creds = optionalImage(at(`creds-${pid}.img`), () => only(readImage<Msg>(at(`creds-${pid}.img`), 'creds'), `creds-${pid}.img`))

  const fsPath = at(`fs-${pid}.img`)
  const fs = only(readImage<Msg>(fsPath, 'fs'), `fs-${pid}.img`)

  // Descriptors.
  const fds: FdImage[] = []
  const filesId = ids['files_id'] as number
  const fdinfoName = `fdinfo-${filesId}.img`
  // CRIU writes the fdinfo image of every files id, empty for a process without fds: a missing one is a lost file, not "no fds".
  const fdinfos = readImage<Msg>(at(fdinfoName), 'fdinfo')
  for (const info of fdinfos) {
    const fdNumber = info['fd'] as number
    const what = `${fdinfoName} fd ${fdNumber}`
    const fdExt = has(info, 'cxlfork') ? info['cxlfork'] as Msg : undefined
    const entry = fileEntries.get(info['id'])
    if (!entry) throw corrupt(`${what} refers to file id ${info['id']}, which files.img does not hold`)
    let fdImage: FdImage
    if (info['type'] === FD_TYPE_PIPE && entry['type'] === FD_TYPE_PIPE && has(entry, 'pipe')) {
      const pipe = entry['pipe'] as Msg
      fdImage = {fd: fdNumber, kind: 'pipe', path: fdExt ? fdExt['path'] : `pipe:[${pipe['pipe_id']}]`, flags: pipe['flags'], cloexec: (info['flags'] & FD_CLOEXEC) !== 0, offset: 0n}
    } else if (info['type'] === FD_TYPE_REG && entry['type'] === FD_TYPE_REG && has(entry, 'reg')) {
      const reg = entry['reg'] as Msg
      checkRemap(info['id'], reg['name'], what)
      const mode = has(reg, 'mode') ? reg['mode'] as number : 0
      let kind: FdKind
      if (fdExt) kind = fdExt['kind'] as FdKind
      else if ((mode & S_IFMT) === S_IFDIR) kind = 'directory'
      else if ((mode & S_IFMT) === S_IFCHR) kind = /^\/dev\/(pts\/|tty)/.test(reg['name']) ? 'tty' : 'chardev'
      else kind = 'regular'
      fdImage = {fd: fdNumber, kind, path: fdExt ? fdExt['path'] : reg['name'], flags: reg['flags'], cloexec: (info['flags'] & FD_CLOEXEC) !== 0, offset: u64(big(reg['pos']))}
      if (fdExt) {
        if (has(fdExt, 'file_index')) fdImage.fileIndex = fdExt['file_index']
      } else if (kind === 'regular' || kind === 'directory') {
        fdImage.fileIndex = fileIndexOf(info['id'], what)
      }
    } else {
      const type = FD_TYPE_NAMES[info['type']] ?? String(info['type'])
      throw new UnsupportedError('CRIU_FD_TYPE', `${what} is of type ${type}, which the CRIU-format path does not restore`,
        'Only regular files, directories, character devices and pipes are supported; close other descriptors before dumping.')
    }
    fds.push(fdImage)
  }
  if (ours) {
    for (let i = 0; i < files.length; i++) if (!files[i]) throw corrupt(`files.img lacks tracked file index ${i}`)
    // Files tracked by the model but referenced by nothing above still travel in files.img.
    for (const entry of fileEntries.values()) {
      if (entry['type'] === FD_TYPE_REG && has(entry['reg'], 'cxlfork')) fileIndexOf(entry['id'], 'files.img')
    }
  }

  const vdsoAreas = vmas.filter((vma) => vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vdso')
  const vdsoBase = vdsoAreas[0]?.start ?? 0n
  const kernel = invExt
    ? {
        release: invExt['kernel_release'] ?? '', hostname: invExt['hostname'] ?? '', bootId: invExt['boot_id'] ?? '',
        vdsoLayout: ((invExt['vdso_layout'] ?? []) as Msg[]).map((area) => ({name: area['name'] as string, offset: u64(big(area['offset'])), size: u64(big(area['size']))})),
      }
    : {release: '', hostname: '', bootId: '', vdsoLayout: vdsoAreas.map((vma) => ({name: `[${vma.kind}]`, offset: vma.start - vdsoBase, size: vma.end - vma.start}))}

  const image: ProcessImage = {
    version: IMAGE_VERSION,
    capturedAt: invExt && has(invExt, 'captured_at') ? invExt['captured_at'] : 0,
    kernel,
    task: {
      pid, ppid: taskExt && has(taskExt, 'ppid') ? taskExt['ppid'] : task['ppid'], pgid: task['pgid'], sid: task['sid'],
      comm: tc['comm'],
      uid: creds ? creds['uid'] : 0,
      gid: creds ? creds['gid'] : 0,
      umask: has(fs, 'umask') ? fs['umask'] : 0o022,
      personality: tc['personality'],
      cwd: regOf(fs['cwd_id'], `fs-${pid}.img cwd_id`)['name'],
      root: regOf(fs['root_id'], `fs-${pid}.img root_id`)['name'],
      rlimits,
      sigactions,
      sharedPendingSignals: has(tc, 'signals_s') ? (tc['signals_s']['signals'] as Msg[]).map((s) => new Uint8Array(s['siginfo'])) : [],
      cmdline: taskExt ? ((taskExt['cmdline'] ?? []) as Uint8Array[]).map((arg) => Buffer.from(arg).toString('utf8')) : [],
    },
    threads,
    mm: {
      startCode: u64(big(mm['mm_start_code'])), endCode: u64(big(mm['mm_end_code'])), startData: u64(big(mm['mm_start_data'])), endData: u64(big(mm['mm_end_data'])),
      startBrk: u64(big(mm['mm_start_brk'])), brk: u64(big(mm['mm_brk'])), startStack,
      argStart: u64(big(mm['mm_arg_start'])), argEnd: u64(big(mm['mm_arg_end'])), envStart: u64(big(mm['mm_env_start'])), envEnd: u64(big(mm['mm_env_end'])),
      auxv: (((has(mm, 'cxlfork') ? mm['cxlfork']['auxv'] : mm['mm_saved_auxv']) ?? []) as unknown[]).map((word) => u64(big(word))),
      exeFileIndex,
    },
    vmas,
    files,
    fds,
    pageRuns,
  }

  const set: CriuImageSet = {image, pagemap, pagesPath, runOffsets, writtenBy: ours ? 'cxlfork' : 'criu'}
  // CRIU names its service images without the .img suffix (stats-dump, stats-restore); cxlfork with it.
  const statsName = (kind: 'dump' | 'restore') => [`stats-${kind}.img`, `stats-${kind}`].find((name) => existsSync(at(name))) ?? `stats-${kind}.img`
  const dumpName = statsName('dump')
  const dumpStats = optionalImage(at(dumpName), () => dumpStatsFrom(only(readImage<Msg>(at(dumpName), 'stats'), dumpName)))
  if (dumpStats) set.stats = dumpStats
  const restoreName = statsName('restore')
  const restoreStats = optionalImage(at(restoreName), () => restoreStatsFrom(only(readImage<Msg>(at(restoreName), 'stats'), restoreName)))
  if (restoreStats) set.restoreStats = restoreStats
  return set
}

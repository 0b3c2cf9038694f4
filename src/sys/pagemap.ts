/**
 * Which pages of a process are present, swapped or file-backed, from
 * /proc/PID/pagemap: through the PAGEMAP_SCAN ioctl where the kernel has it
 * (one call per many runs), else by reading the pagemap's 8-byte entries.
 */
import {NotFoundError, PermissionError, SyscallError} from '../errors.js'
import {close, open, pread} from './file-io.js'
import {procPath} from './proc.js'
import {O, SYS, syscallRaw} from './syscall.js'
import {PAGE_SIZE} from './page.js'
import {addressOf} from './vm-io.js'

export const PM = {
  PRESENT: 1,
  SWAPPED: 2,
  /** Page is file-backed or shared-anon (bit 61). */
  FILE: 4,
  /** Page exclusively mapped (bit 56). */
  EXCLUSIVE: 8,
  /** Soft-dirty (bit 55) — never set on this kernel (not built in). */
  SOFT_DIRTY: 16,
  /** uffd write-protected (bit 57). */
  UFFD_WP: 32,
} as const

export interface PagemapRun {
  vaddr: bigint
  nrPages: number
  /** PM.* bits shared by every page of the run (within the mask asked for). */
  flags: number
}

export interface PagemapOptions {
  /** Which PM bits split runs; default PRESENT|SWAPPED|FILE. */
  mask?: number
  /** Pages per pread (default 65536 = 512 KiB of pagemap). */
  chunkPages?: number
}

/**
 * Open /proc/PID/pagemap once and scan many ranges with it. Root sees PFNs
 * but we do not report them.
 */
export class Pagemap {
  private readonly fd: number
  private buf: Buffer
  private closed = false

  /** `useScan` false: dataRuns() reads the pagemap even where PAGEMAP_SCAN works (to test that path). */
  constructor(readonly pid: number | 'self', private readonly chunkPages = 65536, useScan = true) {
    if (!useScan) this.scanWorks = false
    try {
      this.fd = open(procPath(pid, 'pagemap'), O.RDONLY)
    } catch (err) {
      if (err instanceof NotFoundError) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
      if (err instanceof SyscallError && (err.errno === 13 || err.errno === 1)) {
        throw new PermissionError('PROC_ACCESS_DENIED', `permission denied reading /proc/${pid}/pagemap`, 'run as root')
      }
      throw err
    }
    this.buf = Buffer.allocUnsafeSlow(chunkPages * 8)
  }

  /**
   * Runs of present or swapped pages in [start, end) (page aligned), merged
   * while their flags (restricted to `mask`) are equal. Pages neither present
   * nor swapped are skipped.
   */
  runs(start: bigint, end: bigint, mask: number = PM.PRESENT | PM.SWAPPED | PM.FILE): PagemapRun[] {
    if (this.closed) throw new Error('Pagemap closed')
    const out: PagemapRun[] = []
    const firstPage = start / BigInt(PAGE_SIZE)
    const total = Number((end - start) / BigInt(PAGE_SIZE))
    const u32 = new Uint32Array(this.buf.buffer, this.buf.byteOffset, this.chunkPages * 2)
    let runStart = -1
    let runFlags = 0
    let done = 0
    const flush = (upto: number): void => {
      if (runStart >= 0) {
        out.push({vaddr: start + BigInt(runStart) * BigInt(PAGE_SIZE), nrPages: upto - runStart, flags: runFlags})
        runStart = -1
      }
    }
    while (done < total) {
      const n = Math.min(this.chunkPages, total - done)
      const off = (firstPage + BigInt(done)) * 8n
      const want = n * 8
      let got = 0
      while (got < want) {
        const r = pread(this.fd, this.buf.subarray(got), off + BigInt(got), want - got)
        if (r === 0) break
        got += r
      }
      const pages = got >> 3
      for (let i = 0; i < pages; i++) {
        const hi = u32[2 * i + 1]!
        let f = 0
        if (hi & 0x80000000) f |= PM.PRESENT
        if (hi & 0x40000000) f |= PM.SWAPPED
        if (f === 0) {
          if (runStart >= 0) flush(done + i)
          continue
        }
        if (hi & 0x20000000) f |= PM.FILE
        if (hi & 0x01000000) f |= PM.EXCLUSIVE
        if (hi & 0x00800000) f |= PM.SOFT_DIRTY
        if (hi & 0x02000000) f |= PM.UFFD_WP
        f &= mask | PM.PRESENT | PM.SWAPPED
        if (runStart >= 0 && f !== runFlags) flush(done + i)
        if (runStart < 0) {
          runStart = done + i
          runFlags = f
        }
      }
      if (pages < n) {
        flush(done + pages)
        break
      }
      done += n
    }
    flush(total)
    return out
  }

  /**
   * Runs of pages that hold a process's own data in [start, end): present or
   * swapped, leaving out present pages of a file's page cache when
   * `fileBacked` (a private file mapping's copied-on-write pages stay).
   * Asked of the kernel with the PAGEMAP_SCAN ioctl (Linux 6.7), which
   * returns ranges: 0.16 ms for 64 MiB of anonymous memory against 2.4 ms
   * to read and decode the pagemap entries one by one, measured here (most
   * of that is the kernel looking up every page's struct page, which the
   * scan does only when asked for PAGE_IS_FILE). Falls back to reading the
   * pagemap where the ioctl is missing.
   */
  dataRuns(start: bigint, end: bigint, fileBacked: boolean): PagemapRun[] {
    if (this.closed) throw new Error('Pagemap closed')
    if (this.scanWorks !== false) {
      const runs = this.scanRuns(start, end, fileBacked)
      if (runs !== null) return runs
    }
    const out: PagemapRun[] = []
    for (const run of this.runs(start, end, PM.PRESENT | PM.SWAPPED | (fileBacked ? PM.FILE : 0))) {
      if ((run.flags & PM.FILE) !== 0 && (run.flags & PM.SWAPPED) === 0) continue
      appendRun(out, {vaddr: run.vaddr, nrPages: run.nrPages, flags: run.flags & (PM.PRESENT | PM.SWAPPED)})
    }
    return out
  }

  private scanWorks: boolean | undefined
  private scanArg: BigUint64Array | undefined
  private scanVec: BigUint64Array | undefined

  /** PAGEMAP_SCAN; null when this kernel has no such ioctl. */
  private scanRuns(start: bigint, end: bigint, fileBacked: boolean): PagemapRun[] | null {
    const arg = (this.scanArg ??= new BigUint64Array(12))
    const vec = (this.scanVec ??= new BigUint64Array(3 * SCAN_REGIONS))
    const wanted = SCAN.PRESENT | SCAN.SWAPPED
    const out: PagemapRun[] = []
    let at = start
    while (at < end) {
      arg.fill(0n)
      arg[0] = BigInt(arg.byteLength) // size
      arg[2] = at
      arg[3] = end
      arg[5] = addressOf(vec)
      arg[6] = BigInt(SCAN_REGIONS)
      arg[10] = wanted // category_anyof_mask
      arg[11] = wanted | (fileBacked ? SCAN.FILE : 0n) // return_mask
      const r = syscallRaw(SYS.ioctl, this.fd, PAGEMAP_SCAN, arg)
      if (r < 0n) {
        const errno = Number(-r)
        if (this.scanWorks === undefined && (errno === 25 || errno === 22)) { // ENOTTY, EINVAL: no PAGEMAP_SCAN here
          this.scanWorks = false
          return null
        }
        throw new SyscallError('ioctl(PAGEMAP_SCAN)', errno, `/proc/${this.pid}/pagemap 0x${at.toString(16)}-0x${end.toString(16)}`)
      }
      this.scanWorks = true
      for (let i = 0; i < Number(r); i++) {
        const categories = vec[3 * i + 2]!
        if ((categories & SCAN.FILE) !== 0n && (categories & SCAN.SWAPPED) === 0n) continue
        const flags = ((categories & SCAN.PRESENT) !== 0n ? PM.PRESENT : 0) | ((categories & SCAN.SWAPPED) !== 0n ? PM.SWAPPED : 0)
        appendRun(out, {vaddr: vec[3 * i]!, nrPages: Number((vec[3 * i + 1]! - vec[3 * i]!) / BigInt(PAGE_SIZE)), flags})
      }
      const walkEnd = arg[4]!
      if (walkEnd <= at) break // no progress: never loop forever
      at = walkEnd
    }
    return out
  }

  close(): void {
    if (!this.closed) {
      this.closed = true
      close(this.fd)
    }
  }
}

/** Append, merging with the previous run when contiguous (flags of a merged run: those of its first part). */
function appendRun(out: PagemapRun[], run: PagemapRun): void {
  const last = out.at(-1)
  if (last && last.vaddr + BigInt(last.nrPages * PAGE_SIZE) === run.vaddr) last.nrPages += run.nrPages
  else out.push(run)
}

/** _IOWR('f', 16, struct pm_scan_arg), 96 bytes. */
const PAGEMAP_SCAN = 0xc0606610
/** Regions returned per ioctl. */
const SCAN_REGIONS = 512
/** PAGE_IS_* categories of PAGEMAP_SCAN (include/uapi/linux/fs.h). */
const SCAN = {FILE: 1n << 2n, PRESENT: 1n << 3n, SWAPPED: 1n << 4n} as const

/** One-shot: runs of present/swapped pages of [start, end) of pid. */
export function pageRuns(pid: number | 'self', start: bigint, end: bigint, opts: PagemapOptions = {}): PagemapRun[] {
  const pm = new Pagemap(pid, opts.chunkPages ?? 65536)
  try {
    return pm.runs(start, end, opts.mask ?? (PM.PRESENT | PM.SWAPPED | PM.FILE))
  } finally {
    pm.close()
  }
}

/**
 * Test helper: build a ProcessImage of a live (stopped) process from /proc with plain
 * file reads, and a page source over /proc/PID/mem. Registers are zeros and the xstate
 * is synthetic: this exercises the CRIU codec, not the capture path.
 */
import {closeSync, openSync, readFileSync, readdirSync, readlinkSync, readSync, statSync} from 'node:fs'

import {emptyRegs, IMAGE_VERSION, type FdImage, type FileIdentity, type PageRun, type ProcessImage, type Rlimit, type VmaImage, type VmaKind} from '../../src/image/process-image.js'
import {PAGE_SIZE} from '../../src/sys/page.js'

const MAP_SHARED = 1
const MAP_PRIVATE = 2
const MAP_ANONYMOUS = 0x20
const MAP_GROWSDOWN = 0x100

interface MapLine {start: bigint; end: bigint; perms: string; offset: bigint; path: string}

export function parseMaps(pid: number): MapLine[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n').map((line) => {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$/.exec(line)
    if (!m) throw new Error(`bad maps line: ${line}`)
    return {start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), perms: m[3]!, offset: BigInt('0x' + m[4]), path: m[5] ?? ''}
  })
}

/** A synthetic but well-formed NT_X86_XSTATE buffer: Intel standard layout, XCR0 = 0x2e7 (AVX-512 + PKRU), 2696 bytes. */
export function syntheticXstate(seed = 7): Uint8Array {
  const raw = new Uint8Array(2696)
  let x = seed
  for (let i = 0; i < raw.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    raw[i] = x >>> 24
  }
  const v = new DataView(raw.buffer)
  v.setBigUint64(464, 0x2e7n, true) // XCR0 word of sw_reserved
  v.setBigUint64(512, 0x2e7n, true) // xstate_bv
  v.setBigUint64(520, 0n, true) // xcomp_bv: standard format
  return raw
}

function identity(path: string): FileIdentity {
  const st = statSync(path, {bigint: true})
  return {path, device: `${Number(st.dev >> 8n) & 0xfff}:${Number((st.dev & 0xffn) | ((st.dev >> 12n) & 0xfff00n))}`, inode: st.ino, size: st.size, mtimeNs: st.mtimeNs, mode: Number(st.mode)}
}

function rlimits(pid: number): Rlimit[] {
  const lines = readFileSync(`/proc/${pid}/limits`, 'utf8').trim().split('\n').slice(1)
  return lines.map((line, resource) => {
    const fields = line.slice(26).trim().split(/\s+/)
    const value = (text: string) => (text === 'unlimited' ? (1n << 64n) - 1n : BigInt(text))
    return {resource, cur: value(fields[0]!), max: value(fields[1]!)}
  })
}

/** Capture `pid` (which the caller has stopped) into a ProcessImage. */
export function captureFromProc(pid: number): ProcessImage {
  const files: FileIdentity[] = []
  const fileIndex = (path: string): number => {
    const known = files.findIndex((file) => file.path === path)
    if (known >= 0) return known
    files.push(identity(path))
    return files.length - 1
  }
  const exe = readlinkSync(`/proc/${pid}/exe`)
  const exeFileIndex = fileIndex(exe)

  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const afterComm = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const num = (field: number) => BigInt(afterComm[field - 3]!) // stat(5) field numbers
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  const statusField = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)![1]!

  const maps = parseMaps(pid)
  const vmas: VmaImage[] = maps.map((line) => {
    const prot = (line.perms[0] === 'r' ? 1 : 0) | (line.perms[1] === 'w' ? 2 : 0) | (line.perms[2] === 'x' ? 4 : 0)
    const shared = line.perms[3] === 's'
    let kind: VmaKind
    const special: Record<string, VmaKind> = {'[heap]': 'heap', '[stack]': 'stack', '[vdso]': 'vdso', '[vvar]': 'vvar', '[vvar_vclock]': 'vvar_vclock', '[vsyscall]': 'vsyscall'}
    if (special[line.path]) kind = special[line.path]!
    else if (line.path.startsWith('/')) kind = 'file'
    else kind = 'anon'
    const flags = (shared ? MAP_SHARED : MAP_PRIVATE) | (kind === 'file' ? 0 : MAP_ANONYMOUS) | (kind === 'stack' ? MAP_GROWSDOWN : 0)
    const vma: VmaImage = {start: line.start, end: line.end, prot, flags, offset: kind === 'file' ? line.offset : 0n, kind}
    if (kind === 'file') vma.fileIndex = fileIndex(line.path)
    if (kind === 'stack') vma.advice = []
    return vma
  })

  // Present private pages (pagemap bit 63), not page-cache pages (bit 61), in dumpable VMAs.
  const pageRuns: PageRun[] = []
  const pagemap = openSync(`/proc/${pid}/pagemap`, 'r')
  try {
    vmas.forEach((vma, vmaIndex) => {
      if (!(vma.prot & 1) || vma.kind === 'vdso' || vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vsyscall') return
      const pages = Number((vma.end - vma.start) / BigInt(PAGE_SIZE))
      const entries = Buffer.alloc(pages * 8)
      readSync(pagemap, entries, 0, entries.length, Number(vma.start / BigInt(PAGE_SIZE)) * 8)
      let runStart = -1
      for (let i = 0; i <= pages; i++) {
        const e = i < pages ? entries.readBigUInt64LE(i * 8) : 0n
        const take = ((e >> 63n) & 1n) === 1n && ((e >> 61n) & 1n) === 0n
        if (take && runStart < 0) runStart = i
        if (!take && runStart >= 0) {
          pageRuns.push({vaddr: vma.start + BigInt(runStart * PAGE_SIZE), nrPages: i - runStart, vmaIndex})
          runStart = -1
        }
      }
    })
  } finally {
    closeSync(pagemap)
  }

  const fds: FdImage[] = []
  for (const name of readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b)) {
    const path = readlinkSync(`/proc/${pid}/fd/${name}`)
    if (/^(socket|anon_inode):/.test(path)) continue // not in the model's fd kinds
    const info = readFileSync(`/proc/${pid}/fdinfo/${name}`, 'utf8')
    const rawFlags = parseInt(/^flags:\s*([0-7]+)/m.exec(info)![1]!, 8)
    const offset = BigInt(/^pos:\s*(\d+)/m.exec(info)![1]!)
    const O_CLOEXEC = 0o2000000
    let kind: FdImage['kind']
    if (path.startsWith('pipe:')) kind = 'pipe'
    else if (/^\/dev\/(pts\/|tty)/.test(path)) kind = 'tty'
    else if (path.startsWith('/dev/')) kind = 'chardev'
    else if (statSync(path).isDirectory()) kind = 'directory'
    else kind = 'regular'
    const fd: FdImage = {fd: name, kind, path, flags: rawFlags & ~O_CLOEXEC, cloexec: (rawFlags & O_CLOEXEC) !== 0, offset}
    if (kind === 'regular' || kind === 'directory') fd.fileIndex = fileIndex(path)
    fds.push(fd)
  }

  const auxvBytes = readFileSync(`/proc/${pid}/auxv`)
  const auxv: bigint[] = []
  for (let i = 0; i + 8 <= auxvBytes.length; i += 8) auxv.push(auxvBytes.readBigUInt64LE(i))

  const regs = emptyRegs()
  regs.orig_rax = (1n << 64n) - 1n
  regs.rip = 0x401000n
  regs.cs = 0x33n
  regs.ss = 0x2bn
  regs.eflags = 0x246n

  const special = vmas.filter((v) => v.kind === 'vvar' || v.kind === 'vvar_vclock' || v.kind === 'vdso')
  const base = special[0]?.start ?? 0n
  return {
    version: IMAGE_VERSION,
    capturedAt: Date.now(),
    kernel: {
      release: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
      vdsoLayout: special.map((v) => ({name: `[${v.kind}]`, offset: v.start - base, size: v.end - v.start})),
      hostname: readFileSync('/proc/sys/kernel/hostname', 'utf8').trim(),
      bootId: readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(),
    },
    task: {
      pid, ppid: Number(num(4)), pgid: Number(num(5)), sid: Number(num(6)),
      comm: readFileSync(`/proc/${pid}/comm`, 'utf8').trim(),
      uid: Number(statusField('Uid').split(/\s+/)[0]), gid: Number(statusField('Gid').split(/\s+/)[0]),
      umask: parseInt(statusField('Umask'), 8), personality: 0,
      cwd: readlinkSync(`/proc/${pid}/cwd`), root: readlinkSync(`/proc/${pid}/root`),
      rlimits: rlimits(pid),
      sigactions: [
        {signo: 2, handler: 0x7f0000001000n, flags: 0x04000000n, restorer: 0x7f0000002000n, mask: 0n},
        {signo: 13, handler: 1n, flags: 0n, restorer: 0n, mask: 0n},
        {signo: 64, handler: 0x7f0000003000n, flags: 0x14000000n, restorer: 0x7f0000002000n, mask: 1n << 63n},
      ],
      sharedPendingSignals: [new Uint8Array(128).fill(3)],
      cmdline: readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1),
    },
    threads: [{
      tid: pid, regs, xstate: syntheticXstate(), sigmask: BigInt('0x' + statusField('SigBlk')),
      pendingSignals: [], rseq: {address: 0x7f0000004000n, length: 32, signature: 0x53053053},
      robustList: {head: 0x7f0000005000n, length: 24n}, clearTidAddress: 0x7f0000006000n,
      altStack: {sp: 0n, flags: 2, size: 0n},
    }],
    mm: {
      startCode: num(26), endCode: num(27), startData: num(45), endData: num(46), startBrk: num(47), brk: 0n, startStack: num(28),
      argStart: num(48), argEnd: num(49), envStart: num(50), envEnd: num(51), auxv, exeFileIndex,
    },
    vmas,
    files,
    fds,
    pageRuns,
  }
}

/** Reads page runs from /proc/PID/mem. */
export function procMemSource(pid: number): {read(run: PageRun, into: Uint8Array): void; close(): void} {
  const fd = openSync(`/proc/${pid}/mem`, 'r')
  return {
    read(run, into) {
      const got = readSync(fd, into, 0, run.nrPages * PAGE_SIZE, run.vaddr)
      if (got !== run.nrPages * PAGE_SIZE) throw new Error(`short read at ${run.vaddr.toString(16)}`)
    },
    close: () => closeSync(fd),
  }
}

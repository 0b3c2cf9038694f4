/**
 * Parsers for /proc/PID/*. Addresses are bigint ([vsyscall] is above 2^53).
 * Sizes reported by the kernel in kB are converted to bytes (number).
 * All reads are synchronous. A vanished process raises NotFoundError.
 */
import * as fs from 'node:fs'
import {NotFoundError, PermissionError, SyscallError, UnsupportedError} from '../errors.js'
import {prlimit, type ResourceLimit} from './syscall.js'

export function procPath(pid: number | 'self', what: string): string {
  return `/proc/${pid}/${what}`
}

function wrapFsError(err: unknown, pid: number | 'self', what: string): never {
  const e = err as NodeJS.ErrnoException
  if (e && e.code === 'ENOENT') {
    throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid} (reading /proc/${pid}/${what})`, 'check the pid with ps; the process may have exited')
  }
  if (e && (e.code === 'EACCES' || e.code === 'EPERM')) {
    throw new PermissionError('PROC_ACCESS_DENIED', `permission denied reading /proc/${pid}/${what}`, 'run as root or as the owner of the process (ptrace access is needed)')
  }
  if (e && e.code === 'ESRCH') {
    throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
  }
  throw err
}

export function readProcText(pid: number | 'self', what: string): string {
  try {
    return fs.readFileSync(procPath(pid, what), 'utf8')
  } catch (err) {
    wrapFsError(err, pid, what)
  }
}

export function readProcBytes(pid: number | 'self', what: string): Buffer {
  try {
    return fs.readFileSync(procPath(pid, what))
  } catch (err) {
    wrapFsError(err, pid, what)
  }
}

export function readProcLink(pid: number | 'self', what: string): string {
  try {
    return fs.readlinkSync(procPath(pid, what))
  } catch (err) {
    wrapFsError(err, pid, what)
  }
}

// ---------------------------------------------------------------------------
// stat

export const PF_KTHREAD = 0x00200000
export const PF_EXITING = 0x00000004

export interface ProcStat {
  pid: number
  comm: string
  /** R S D T t Z X I ... */
  state: string
  ppid: number
  pgrp: number
  session: number
  ttyNr: number
  flags: number
  isKernelThread: boolean
  minflt: number
  majflt: number
  utime: number
  stime: number
  priority: number
  nice: number
  numThreads: number
  /** Clock ticks after boot (field 22); with bootId, identifies a process incarnation. */
  starttime: bigint
  vsize: bigint
  rssPages: number
  startCode: bigint
  endCode: bigint
  startStack: bigint
  startData: bigint
  endData: bigint
  startBrk: bigint
  argStart: bigint
  argEnd: bigint
  envStart: bigint
  envEnd: bigint
  exitSignal: number
  processor: number
  /** A zombie's wait status (field 52, as waitpid reports it); 0 for a live process. */
  exitCode: number
}

export function parseStat(text: string): ProcStat {
  const open = text.indexOf('(')
  const close = text.lastIndexOf(')')
  if (open < 0 || close < 0) throw new Error(`malformed /proc stat: ${text.slice(0, 80)}`)
  const pid = Number(text.slice(0, open).trim())
  const comm = text.slice(open + 1, close)
  const f = text.slice(close + 2).trim().split(/\s+/)
  // f[0] is field 3 (state): field N is f[N - 3].
  const F = (n: number): string => f[n - 3] ?? '0'
  const flags = Number(F(9))
  return {
    pid, comm, state: F(3), ppid: Number(F(4)), pgrp: Number(F(5)), session: Number(F(6)), ttyNr: Number(F(7)),
    flags, isKernelThread: (flags & PF_KTHREAD) !== 0, minflt: Number(F(10)), majflt: Number(F(12)),
    utime: Number(F(14)), stime: Number(F(15)), priority: Number(F(18)), nice: Number(F(19)),
    numThreads: Number(F(20)), starttime: BigInt(F(22)), vsize: BigInt(F(23)), rssPages: Number(F(24)),
    startCode: BigInt(F(26)), endCode: BigInt(F(27)), startStack: BigInt(F(28)), exitSignal: Number(F(38)),
    processor: Number(F(39)), startData: BigInt(F(45)), endData: BigInt(F(46)), startBrk: BigInt(F(47)),
    argStart: BigInt(F(48)), argEnd: BigInt(F(49)), envStart: BigInt(F(50)), envEnd: BigInt(F(51)), exitCode: Number(F(52)),
  }
}

export function readStat(pid: number | 'self'): ProcStat {
  return parseStat(readProcText(pid, 'stat'))
}

// ---------------------------------------------------------------------------
// status

export interface ProcStatus {
  name: string
  state: string
  tgid: number
  pid: number
  ppid: number
  tracerPid: number
  /** real, effective, saved, fs */
  uid: [number, number, number, number]
  gid: [number, number, number, number]
  threads: number
  /** Namespace pids, outermost first. */
  nspid: number[]
  sigQ: {queued: number; limit: number}
  sigPnd: bigint
  shdPnd: bigint
  sigBlk: bigint
  sigIgn: bigint
  sigCgt: bigint
  capEff: bigint
  /** Bytes (kernel reports kB). Missing fields (kernel threads) are 0. */
  vmRSS: number
  rssAnon: number
  rssFile: number
  rssShmem: number
  vmSwap: number
  /** Every raw key/value, untouched. */
  raw: Record<string, string>
}

export function parseStatus(text: string): ProcStatus {
  const raw: Record<string, string> = {}
  for (const line of text.split('\n')) {
    const c = line.indexOf(':')
    if (c > 0) raw[line.slice(0, c)] = line.slice(c + 1).trim()
  }
  const nums = (k: string): number[] => (raw[k] ?? '').split(/\s+/).filter(Boolean).map(Number)
  const kb = (k: string): number => {
    const v = raw[k]
    return v ? Number(v.split(/\s+/)[0]) * 1024 : 0
  }
  const hex = (k: string): bigint => (raw[k] ? BigInt('0x' + raw[k]) : 0n)
  const u = nums('Uid')
  const g = nums('Gid')
  const [q, lim] = (raw['SigQ'] ?? '0/0').split('/').map(Number)
  return {
    name: raw['Name'] ?? '', state: (raw['State'] ?? '?')[0]!, tgid: Number(raw['Tgid'] ?? 0), pid: Number(raw['Pid'] ?? 0),
    ppid: Number(raw['PPid'] ?? 0), tracerPid: Number(raw['TracerPid'] ?? 0),
    uid: [u[0] ?? 0, u[1] ?? 0, u[2] ?? 0, u[3] ?? 0], gid: [g[0] ?? 0, g[1] ?? 0, g[2] ?? 0, g[3] ?? 0],
    threads: Number(raw['Threads'] ?? 0), nspid: nums('NSpid'), sigQ: {queued: q ?? 0, limit: lim ?? 0},
    sigPnd: hex('SigPnd'), shdPnd: hex('ShdPnd'), sigBlk: hex('SigBlk'), sigIgn: hex('SigIgn'), sigCgt: hex('SigCgt'),
    capEff: hex('CapEff'), vmRSS: kb('VmRSS'), rssAnon: kb('RssAnon'), rssFile: kb('RssFile'), rssShmem: kb('RssShmem'),
    vmSwap: kb('VmSwap'), raw,
  }
}

export function readStatus(pid: number | 'self'): ProcStatus {
  return parseStatus(readProcText(pid, 'status'))
}

// ---------------------------------------------------------------------------
// maps / smaps

export type VmaKind = 'anon' | 'file' | 'heap' | 'stack' | 'vdso' | 'vvar' | 'vvar_vclock' | 'vsyscall' | 'special'

export interface Vma {
  start: bigint
  end: bigint
  /** end - start, as a number (no VMA a user process has exceeds 2^53). */
  size: number
  /** 'rwxp' form. */
  perms: string
  read: boolean
  write: boolean
  exec: boolean
  shared: boolean
  offset: bigint
  devMajor: number
  devMinor: number
  inode: bigint
  /** Path or pseudo-name; '' for plain anonymous memory. ' (deleted)' is stripped (see `deleted`). */
  path: string
  deleted: boolean
  kind: VmaKind
}

const MAPS_RE = /^([0-9a-f]+)-([0-9a-f]+) ([-r][-w][-x][ps]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)\s*(.*)$/

export function vmaKind(path: string): VmaKind {
  if (path === '') return 'anon'
  if (path[0] === '/') return 'file'
  switch (path) {
    case '[heap]': return 'heap'
    case '[stack]': return 'stack'
    case '[vdso]': return 'vdso'
    case '[vvar]': return 'vvar'
    case '[vvar_vclock]': return 'vvar_vclock'
    case '[vsyscall]': return 'vsyscall'
  }
  if (path.startsWith('[anon:') || path.startsWith('[anon_shmem:')) return 'anon'
  return 'special'
}

export function parseMapsLine(line: string): Vma {
  const m = MAPS_RE.exec(line)
  if (!m) throw new Error(`malformed maps line: ${line}`)
  let path = m[8] ?? ''
  let deleted = false
  if (path.endsWith(' (deleted)')) {
    deleted = true
    path = path.slice(0, -' (deleted)'.length)
  }
  const start = BigInt('0x' + m[1])
  const end = BigInt('0x' + m[2])
  const perms = m[3]!
  return {
    start, end, size: Number(end - start), perms, read: perms[0] === 'r', write: perms[1] === 'w', exec: perms[2] === 'x',
    shared: perms[3] === 's', offset: BigInt('0x' + m[4]), devMajor: parseInt(m[5]!, 16), devMinor: parseInt(m[6]!, 16),
    inode: BigInt(m[7]!), path, deleted, kind: vmaKind(path),
  }
}

export function parseMaps(text: string): Vma[] {
  const out: Vma[] = []
  for (const line of text.split('\n')) if (line) out.push(parseMapsLine(line))
  return out
}

export function readMaps(pid: number | 'self'): Vma[] {
  return parseMaps(readProcText(pid, 'maps'))
}

export interface SmapsVma extends Vma {
  /** Bytes. */
  rss: number
  pss: number
  sharedClean: number
  sharedDirty: number
  privateClean: number
  privateDirty: number
  referenced: number
  anonymous: number
  swap: number
  locked: number
  /** Two-letter VmFlags (rd wr ex sh mr mw me ms gd pf dw lo io sr rr dc de ac nr ht sf nl ar wf dd sd mm hg nh mg um uw ss...). */
  vmFlags: Set<string>
  /** Every "Key: N kB" field in bytes. */
  fields: Record<string, number>
}

export function parseSmaps(text: string): SmapsVma[] {
  const out: SmapsVma[] = []
  let cur: SmapsVma | null = null
  for (const line of text.split('\n')) {
    if (!line) continue
    const c = line.indexOf(':')
    // A VMA header has '-' before any ':' (the dev field contains ':' after the range)
    const dash = line.indexOf('-')
    if (dash > 0 && (c < 0 || dash < c) && /^[0-9a-f]+-/.test(line)) {
      const v = parseMapsLine(line)
      cur = {
        ...v, rss: 0, pss: 0, sharedClean: 0, sharedDirty: 0, privateClean: 0, privateDirty: 0, referenced: 0,
        anonymous: 0, swap: 0, locked: 0, vmFlags: new Set(), fields: {},
      }
      out.push(cur)
      continue
    }
    if (!cur || c < 0) continue
    const key = line.slice(0, c)
    const val = line.slice(c + 1).trim()
    if (key === 'VmFlags') {
      cur.vmFlags = new Set(val.split(/\s+/).filter(Boolean))
      continue
    }
    const n = Number(val.split(/\s+/)[0])
    const bytes = val.endsWith('kB') ? n * 1024 : n
    cur.fields[key] = bytes
    switch (key) {
      case 'Rss': cur.rss = bytes; break
      case 'Pss': cur.pss = bytes; break
      case 'Shared_Clean': cur.sharedClean = bytes; break
      case 'Shared_Dirty': cur.sharedDirty = bytes; break
      case 'Private_Clean': cur.privateClean = bytes; break
      case 'Private_Dirty': cur.privateDirty = bytes; break
      case 'Referenced': cur.referenced = bytes; break
      case 'Anonymous': cur.anonymous = bytes; break
      case 'Swap': cur.swap = bytes; break
      case 'Locked': cur.locked = bytes; break
    }
  }
  return out
}

export function readSmaps(pid: number | 'self'): SmapsVma[] {
  return parseSmaps(readProcText(pid, 'smaps'))
}

/** smaps_rollup: every "Key: N kB" in bytes (Rss, Pss, Pss_Anon, Anonymous, Swap, ...). */
export function readSmapsRollup(pid: number | 'self'): Record<string, number> {
  const out: Record<string, number> = {}
  for (const line of readProcText(pid, 'smaps_rollup').split('\n')) {
    const m = /^(\w+):\s+(\d+)\s*kB/.exec(line)
    if (m) out[m[1]!] = Number(m[2]) * 1024
  }
  return out
}

// ---------------------------------------------------------------------------
// vDSO layout

export interface VdsoPart {
  name: '[vvar]' | '[vvar_vclock]' | '[vdso]'
  start: bigint
  size: number
  /** Offset from the lowest part's start. */
  offset: number
}

export interface VdsoLayout {
  /** Lowest start among the parts. */
  base: bigint
  /** Span from base to the end of the highest part. */
  span: number
  parts: VdsoPart[]
  vdso: VdsoPart
  /** Stable textual signature ("[vvar]@0+16384,..."): equal signatures = movable as one block onto each other. */
  signature: string
}

/**
 * The vDSO block ([vvar], [vvar_vclock], [vdso]) of a process. Since 6.13 it
 * is three adjacent special mappings; they move only together, keeping their
 * spacing, and their sizes identify the kernel build.
 */
export function vdsoLayout(pidOrMaps: number | 'self' | Vma[]): VdsoLayout {
  const maps = Array.isArray(pidOrMaps) ? pidOrMaps : readMaps(pidOrMaps)
  const raw = maps.filter((v) => v.kind === 'vvar' || v.kind === 'vvar_vclock' || v.kind === 'vdso')
  if (!raw.some((v) => v.kind === 'vdso')) {
    throw new UnsupportedError('NO_VDSO', 'the process has no [vdso] mapping', 'vdso=0 on the kernel command line is not supported')
  }
  const base = raw.reduce((m, v) => (v.start < m ? v.start : m), raw[0]!.start)
  const top = raw.reduce((m, v) => (v.end > m ? v.end : m), raw[0]!.end)
  const parts: VdsoPart[] = raw.map((v) => ({name: v.path as VdsoPart['name'], start: v.start, size: v.size, offset: Number(v.start - base)}))
  const vdso = parts.find((p) => p.name === '[vdso]')!
  return {base, span: Number(top - base), parts, vdso, signature: parts.map((p) => `${p.name}@${p.offset}+${p.size}`).join(',')}
}

// ---------------------------------------------------------------------------
// fds

export interface FdInfo {
  fd: number
  /** readlink of /proc/PID/fd/N: a path, 'pipe:[ino]', 'socket:[ino]', 'anon_inode:[eventfd]', ... */
  target: string
  pos: bigint
  /** open flags (octal in fdinfo), e.g. O_APPEND, O_NONBLOCK, O_CLOEXEC (0o2000000). */
  flags: number
  mntId: number
  ino: bigint
  /** All fdinfo lines (of lines that repeat, the last). */
  raw: Record<string, string>
  /** File locks held through this open file description, as fdinfo's 'lock:' lines show them ('1: POSIX  ADVISORY  WRITE 42 fe:00:123 0 EOF'). */
  locks: string[]
}

/** One file lock as /proc/locks and fdinfo's 'lock:' lines show it: '1: POSIX  ADVISORY  WRITE 42 fe:00:123 0 EOF' ('1: -> ...' for a waiter). */
export interface LockLine {
  /** POSIX, FLOCK, OFDLCK, LEASE, DELEG, ... */
  kind: string
  /** ADVISORY or MANDATORY. */
  mode: string
  /** READ or WRITE. */
  access: string
  /** The holder's pid (-1 for an OFD lock, which no process holds). */
  pid: number
  inode: string
  start: string
  /** A byte offset, or 'EOF'. */
  end: string
  waiter: boolean
}

export function parseLockLine(line: string): LockLine {
  const fields = line.trim().split(/\s+/)
  const waiter = fields[1] === '->'
  const [kind = '?', mode = '?', access = '?', pid = '-1', device = '', start = '0', end = 'EOF'] = fields.slice(waiter ? 2 : 1)
  return {kind, mode, access, pid: Number(pid), inode: device.split(':')[2] ?? '', start, end, waiter}
}

export function parseFdinfo(text: string): {pos: bigint; flags: number; mntId: number; ino: bigint; raw: Record<string, string>; locks: string[]} {
  const raw: Record<string, string> = {}
  const locks: string[] = []
  for (const line of text.split('\n')) {
    const c = line.indexOf(':')
    if (c <= 0) continue
    const key = line.slice(0, c)
    raw[key] = line.slice(c + 1).trim()
    if (key === 'lock') locks.push(raw[key])
  }
  return {
    pos: BigInt(raw['pos'] ?? '0'), flags: parseInt(raw['flags'] ?? '0', 8), mntId: Number(raw['mnt_id'] ?? 0),
    ino: BigInt(raw['ino'] ?? '0'), raw, locks,
  }
}

/** Open file descriptors with link targets and fdinfo, ascending by fd. fds closed meanwhile are skipped. */
export function listFds(pid: number | 'self'): FdInfo[] {
  let names: string[]
  try {
    names = fs.readdirSync(procPath(pid, 'fd'))
  } catch (err) {
    wrapFsError(err, pid, 'fd')
  }
  const out: FdInfo[] = []
  for (const n of names.map(Number).sort((x, y) => x - y)) {
    let target: string
    let info: string
    try {
      target = fs.readlinkSync(procPath(pid, `fd/${n}`))
      info = fs.readFileSync(procPath(pid, `fdinfo/${n}`), 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue
      wrapFsError(err, pid, `fd/${n}`)
    }
    out.push({fd: n, target, ...parseFdinfo(info)})
  }
  return out
}

// ---------------------------------------------------------------------------
// auxv, links, cmdline, environ, limits

export const AT = {
  NULL: 0, PHDR: 3, PHENT: 4, PHNUM: 5, PAGESZ: 6, BASE: 7, ENTRY: 9, UID: 11, HWCAP: 16, CLKTCK: 17, SECURE: 23,
  RANDOM: 25, HWCAP2: 26, EXECFN: 31, SYSINFO_EHDR: 33, MINSIGSTKSZ: 51, RSEQ_FEATURE_SIZE: 27, RSEQ_ALIGN: 28,
} as const

/** /proc/PID/auxv as [type, value] bigint pairs, up to and including AT_NULL. */
export function readAuxv(pid: number | 'self'): [bigint, bigint][] {
  const b = readProcBytes(pid, 'auxv')
  const out: [bigint, bigint][] = []
  for (let off = 0; off + 16 <= b.length; off += 16) {
    const t = b.readBigUInt64LE(off)
    const v = b.readBigUInt64LE(off + 8)
    out.push([t, v])
    if (t === 0n) break
  }
  return out
}

export function readExe(pid: number | 'self'): string {
  return readProcLink(pid, 'exe')
}

export function readCwd(pid: number | 'self'): string {
  return readProcLink(pid, 'cwd')
}

export function readRoot(pid: number | 'self'): string {
  return readProcLink(pid, 'root')
}

function splitNul(b: Buffer): string[] {
  const s = b.toString('utf8')
  const parts = s.split('\0')
  if (parts.length && parts[parts.length - 1] === '') parts.pop()
  return parts
}

export function readCmdline(pid: number | 'self'): string[] {
  return splitNul(readProcBytes(pid, 'cmdline'))
}

export function readEnviron(pid: number | 'self'): string[] {
  return splitNul(readProcBytes(pid, 'environ'))
}

export const RLIMIT_NAMES = [
  'CPU', 'FSIZE', 'DATA', 'STACK', 'CORE', 'RSS', 'NPROC', 'NOFILE', 'MEMLOCK', 'AS', 'LOCKS', 'SIGPENDING',
  'MSGQUEUE', 'NICE', 'RTPRIO', 'RTTIME',
] as const

/**
 * All 16 resource limits of a process via prlimit64 (index = RLIMIT_* number).
 * prlimit64 on another user's process needs CAP_SYS_RESOURCE even for root
 * (nginx's workers run as nobody): /proc/PID/limits says the same then.
 */
export function readLimits(pid: number): ResourceLimit[] {
  const out: ResourceLimit[] = []
  for (let r = 0; r < RLIMIT_NAMES.length; r++) {
    try {
      out.push(prlimit(pid, r))
    } catch (err) {
      if (err instanceof SyscallError && err.errno === 3) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
      if (err instanceof SyscallError && err.errno === 1) return readLimitsFile(pid)
      throw err
    }
  }
  return out
}

/** /proc/PID/limits: one line per limit in RLIMIT order, "unlimited" for RLIM_INFINITY. */
function readLimitsFile(pid: number): ResourceLimit[] {
  let text: string
  try {
    text = fs.readFileSync(`/proc/${pid}/limits`, 'utf8')
  } catch {
    throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
  }
  const value = (word: string): bigint => (word === 'unlimited' ? 0xffff_ffff_ffff_ffffn : BigInt(word))
  const rows = text.split('\n').slice(1).filter((line) => line.trim() !== '')
  if (rows.length < RLIMIT_NAMES.length) throw new SyscallError('read', 5, `/proc/${pid}/limits has ${rows.length} limits, expected ${RLIMIT_NAMES.length}`)
  return rows.slice(0, RLIMIT_NAMES.length).map((line) => {
    // "Max cpu time              unlimited            unlimited            seconds": the name has spaces, the columns start at fixed places.
    const [cur, max] = line.slice(26).trim().split(/\s+/)
    return {cur: value(cur!), max: value(max!)}
  })
}

/** True when the process exists and is not a zombie/dead. */
export function isAlive(pid: number): boolean {
  try {
    const s = readStat(pid)
    return s.state !== 'Z' && s.state !== 'X'
  } catch {
    return false
  }
}

/** st_dev as the kernel prints it, "major:minor" (new_decode_dev), e.g. for file identities. */
export function deviceName(dev: bigint): string {
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn)
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn)
  return `${major}:${minor}`
}

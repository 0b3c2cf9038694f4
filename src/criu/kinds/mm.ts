/**
 * mm-PID.img: the memory layout (every VMA with CRIU's status bits), the mm bounds and the
 * saved auxv. CRIU 4.1+ writes [vvar] + [vvar_vclock] as one VMA_AREA_VVAR entry; so does
 * cxlfork, and the reader splits it back.
 */
import {existsSync} from 'node:fs'

import {UnsupportedError} from '../../errors.js'
import {type ProcessImage, type VmaImage, type VmaKind} from '../../image/process-image.js'
import {PAGE_SIZE} from '../../sys/page.js'
import {MAP, O, PROT} from '../../sys/syscall.js'
import {type Vma, readMaps} from '../../sys/proc.js'
import {
  AT_VECTOR_SIZE, UNSUPPORTED_VMA_BITS, VMA_ANON_PRIVATE, VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_HEAP, VMA_AREA_REGULAR, VMA_AREA_STACK, VMA_AREA_VDSO, VMA_AREA_VSYSCALL,
  VMA_AREA_VVAR, VMA_FILE_PRIVATE, VMA_FILE_SHARED,
} from '../constants.js'
import {encodeMessage, readImage} from '../image-file.js'
import {big, has, str64, u64} from '../values.js'
import {type ImagePath, type Msg, type Obj, type PutImage, corrupt, fileIdFor, only} from './common.js'
import type {FileTable} from './files.js'

// ---- writing ----

/**
 * The shmid CRIU names a shared anonymous object by (its shmem inode), from the model's
 * object id ("major:minor:inode" as captured, or the inode alone as read from a set).
 */
export function shmemId(sharedId: string): number | undefined {
  const inode = Number(sharedId.split(':').pop())
  return Number.isSafeInteger(inode) && inode > 0 ? inode : undefined
}

function vmaStatus(vma: VmaImage, index: number): number {
  const where = `VMA ${index} (${vma.start.toString(16)}-${vma.end.toString(16)}, ${vma.kind})`
  switch (vma.kind) {
    case 'anon':
    case 'heap':
    case 'stack':
      if (vma.flags & MAP.SHARED) {
        // Its object's pages go into pagemap-shmem-SHMID.img (shmemId); without an object the model has no contents for it.
        if (vma.sharedId !== undefined && shmemId(vma.sharedId) !== undefined) return VMA_AREA_REGULAR | VMA_ANON_SHARED
        throw new UnsupportedError('CRIU_SHARED_ANON', `${where} is shared anonymous memory whose object this image does not identify, which the CRIU-format path cannot write`,
          'Checkpoint the process again (the capture records each shared object), or use the pool path (`cxlfork checkpoint`).')
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

/** Two vvar parts that one merged entry describes exactly (everything but the bounds equal). */
function sameVvar(a: VmaImage, b: VmaImage): boolean {
  return a.prot === b.prot && a.flags === b.flags && a.offset === b.offset && JSON.stringify(a.advice) === JSON.stringify(b.advice)
}

/**
 * `fileBase`: the files.img id of the member's first tracked file. `memfdOf`: the files.img
 * id of a MEMFD entry for a shared VMA whose object the set holds open as a memfd; such a
 * VMA is written as CRIU writes a memfd's mapping (VMA_AREA_MEMFD, a file mapping of that
 * entry, without MAP_ANONYMOUS), so that CRIU's restore maps the memfd it restores too.
 */
export function writeMm(put: PutImage, image: ProcessImage, fileBase = 1, memfdOf?: (vma: VmaImage) => number | undefined): void {
  const pid = image.task.pid
  const {mm} = image
  const vmas = image.vmas.map((vma, i) => {
    const memfdId = vma.flags & MAP.SHARED && vma.sharedId !== undefined ? memfdOf?.(vma) : undefined
    if (memfdId !== undefined) {
      return {
        start: str64(u64(vma.start)), end: str64(u64(vma.end)), pgoff: str64(u64(vma.offset)), shmid: str64(BigInt(memfdId)),
        prot: vma.prot >>> 0, flags: (vma.flags & ~MAP.ANONYMOUS) >>> 0, status: (VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD) >>> 0, fd: str64(-1n),
        fdflags: vma.prot & PROT.WRITE ? O.RDWR : 0, ...(vma.advice ? {madv: str64(vma.advice.reduce((bits, advice) => bits | (1n << BigInt(advice)), 0n))} : {}),
      } as Obj
    }
    const entry: Obj = {
      start: str64(u64(vma.start)), end: str64(u64(vma.end)), pgoff: str64(u64(vma.offset)),
      shmid: str64(vma.kind === 'file' ? BigInt(fileIdFor(image, vma.fileIndex, `VMA ${i}`, fileBase)) : vma.sharedId !== undefined && vma.flags & MAP.SHARED ? BigInt(shmemId(vma.sharedId) ?? 0) : 0n),
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
  put(`mm-${pid}.img`, 'mm', [encodeMessage('mm_entry', {
    mm_start_code: str64(u64(mm.startCode)), mm_end_code: str64(u64(mm.endCode)), mm_start_data: str64(u64(mm.startData)), mm_end_data: str64(u64(mm.endData)),
    mm_start_stack: str64(u64(mm.startStack)), mm_start_brk: str64(u64(mm.startBrk)), mm_brk: str64(u64(mm.brk)),
    mm_arg_start: str64(u64(mm.argStart)), mm_arg_end: str64(u64(mm.argEnd)), mm_env_start: str64(u64(mm.envStart)), mm_env_end: str64(u64(mm.envEnd)),
    exe_file_id: fileIdFor(image, mm.exeFileIndex, 'the executable', fileBase),
    // CRIU restores at most AT_VECTOR_SIZE words of auxv and refuses more ("Image corrupted").
    mm_saved_auxv: mm.auxv.slice(0, AT_VECTOR_SIZE).map((word) => str64(u64(word))),
    vmas,
    ...(image.task.credentials ? {dumpable: image.task.credentials.dumpable} : {}),
    ...(mm.auxv.length > AT_VECTOR_SIZE ? {cxlfork: {auxv: mm.auxv.map((word) => str64(u64(word)))}} : {}),
  }, `mm-${pid}.img`)])
}

// ---- reading ----

function vmaName(vma: Msg, index: number): string {
  return `VMA ${index} (${big(vma['start']).toString(16)}-${big(vma['end']).toString(16)}, status ${'0x' + (vma['status'] >>> 0).toString(16)})`
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
 * The shmid of the memfd a VMA_AREA_MEMFD VMA maps (its files.img id): shared anonymous
 * memory (an inode CRIU names /dev/zero) or a real memfd, whose fds name the same shmid
 * (memfd.ts), so the mapping and the fds are one object again.
 */
function memfdShmemOf(at: ImagePath, table: FileTable, id: number): number | undefined {
  const file = table.entries.get(id)
  if (!file || !has(file, 'memfd') || !existsSync(at('memfd.img'))) return undefined
  const inodeId = BigInt(file['memfd']['inode_id'])
  const inode = readImage<Msg>(at('memfd.img'), 'memfd').find((candidate) => big(candidate['inode_id']) === inodeId)
  return inode ? inode['shmid'] as number : undefined
}

export interface MmRead {
  mm: Msg
  vmas: VmaImage[]
  exeFileIndex: number
  startStack: bigint
}

/**
 * mm-PID.img as the model's VMAs (kinds from CRIU's status bits; unsupported kinds refused
 * by name) and bounds. `vdsoLayout`: the layout cxlfork recorded (its sets), to split a
 * merged vvar entry by; without it, this kernel's.
 */
export function readMm(at: ImagePath, pid: number, table: FileTable, ours: boolean, vdsoLayout: readonly Msg[] | undefined): MmRead {
  const mm = only(readImage<Msg>(at(`mm-${pid}.img`), 'mm'), `mm-${pid}.img`)
  const exeFileIndex = table.fileIndexOf(mm['exe_file_id'], `mm-${pid}.img exe_file_id`)
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
    // CRIU 4.x dumps shared anonymous memory as a memfd-backed mapping of "/dev/zero", and a memfd's mappings as mappings of it: both are shared memory objects.
    const anonShmid = status & VMA_AREA_MEMFD ? memfdShmemOf(at, table, Number(big(entry['shmid']))) : undefined
    for (const [bit, name] of UNSUPPORTED_VMA_BITS) {
      if (status & bit && !(bit === VMA_AREA_MEMFD && anonShmid !== undefined)) throw new UnsupportedError('CRIU_VMA_UNSUPPORTED', `mm-${pid}.img: ${where} is ${name}, which the CRIU-format path does not restore`, 'Dump a process without such mappings, or use the pool path.')
    }
    const flags = (entry['flags'] as number) >>> 0
    let kind: VmaKind
    if (status & VMA_AREA_VSYSCALL) kind = 'vsyscall'
    else if (!(status & VMA_AREA_REGULAR)) throw new UnsupportedError('CRIU_VMA_UNSUPPORTED', `mm-${pid}.img: ${where} is not VMA_AREA_REGULAR and of no known kind`, 'Dump the process again.')
    else if (status & VMA_AREA_VDSO) kind = 'vdso'
    else if (status & VMA_AREA_VVAR) kind = previous && previous.status & VMA_AREA_VVAR && previous.end === start ? 'vvar_vclock' : 'vvar'
    else if (anonShmid !== undefined) kind = 'anon'
    else if (status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)) kind = 'file'
    else if (status & VMA_ANON_SHARED) kind = 'anon'
    else if (status & VMA_ANON_PRIVATE) {
      if (status & VMA_AREA_HEAP) kind = 'heap'
      else if (status & VMA_AREA_STACK || (!ours && (flags & MAP.GROWSDOWN || (startStack >= start && startStack < end)))) kind = 'stack'
      else kind = 'anon'
    } else throw new UnsupportedError('CRIU_VMA_UNSUPPORTED', `mm-${pid}.img: ${where} has no known memory kind`, 'Dump the process again.')
    previous = {status, end}
    const vma: VmaImage = {start, end, prot: entry['prot'] >>> 0, flags, offset: u64(big(entry['pgoff'])), kind}
    if (kind === 'file' && anonShmid === undefined) vma.fileIndex = table.fileIndexOf(Number(big(entry['shmid'])), `mm-${pid}.img ${where}`)
    // Shared anonymous memory: the object pagemap-shmem-SHMID.img holds, named by its shmid.
    if (status & VMA_ANON_SHARED) vma.sharedId = String(big(entry['shmid']))
    if (anonShmid !== undefined) {
      vma.sharedId = String(anonShmid)
      vma.flags |= MAP.ANONYMOUS
    }
    if (has(entry, 'madv')) vma.advice = bitsToList(u64(big(entry['madv'])))
    if (kind === 'vvar') {
      // CRIU merges adjacent vvar areas into one VMA_AREA_VVAR entry (criu/proc_parse.c, since
      // 4.1 for kernels >= 6.13: [vvar] + [vvar_vclock]), and so does cxlfork's writer. Split it
      // back along the layout cxlfork recorded or else this kernel's, when the merged size
      // matches, as CRIU's own restore compares merged sizes; a mismatch is left whole and
      // refused as KERNEL_MISMATCH at restore.
      const split = splitMergedVvar(vma, vdsoLayout ? recordedVvarParts(vdsoLayout) : hostVvarParts())
      if (split) {
        vmas.push(...split)
        return
      }
    }
    vmas.push(vma)
  })
  return {mm, vmas, exeFileIndex, startStack}
}

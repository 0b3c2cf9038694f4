/**
 * What a restore maps where: a pure function from a process image and the
 * location of its stored pages to an ordered list of mapping operations. The
 * executor (build-process.ts) turns each into one or two injected syscalls, so
 * the cost of a zero-copy restore is O(VMAs + page runs), never O(pages).
 */
import {CorruptError, UnsupportedError} from '../errors.js'
import {PAGE_FLAG_ACCESSED, PAGE_FLAG_DIRTY} from '../image/page-map.js'
import {type ProcessImage, type VmaImage} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import {MAP, PROT} from '../sys/syscall.js'

/**
 * `mow`: stored pages mapped from the store, copy-on-write (pages recorded as
 * written are copied instead); `moa`: nothing mapped, every page copied on
 * first touch by a fault server (tiering/); `hybrid`: pages recorded as
 * accessed copied, the rest mapped; `local`: everything copied.
 */
export type Policy = 'mow' | 'moa' | 'hybrid' | 'local'

/** Where the bytes of one stored page run are. */
export interface StoredRun {
  vaddr: bigint
  nrPages: number
  vmaIndex: number
  /** Offset of the run's first page in the page store (pool file or pages image). */
  storeOffset: bigint
  /** Recorded access flags, one byte per page (PAGE_FLAG_*), when the checkpoint has any. */
  flags?: Uint8Array
}

/** An anonymous range whose pages a fault server fills on first touch (`moa`). */
export interface LazyRange {
  start: bigint
  end: bigint
  vmaIndex: number
}

export type MapOp =
  /** Anonymous private memory for a whole VMA (holes read as zero, like the original's never-touched pages). */
  | {kind: 'anon'; start: bigint; end: bigint; prot: number; flags: number; vmaIndex: number}
  /** The VMA's file, mapped as the original mapped it. */
  | {kind: 'file'; start: bigint; end: bigint; prot: number; flags: number; fileIndex: number; offset: bigint; vmaIndex: number}
  /** Stored pages mapped MAP_PRIVATE from the page store: zero-copy, copy-on-write. */
  | {kind: 'store-map'; start: bigint; end: bigint; prot: number; storeOffset: bigint; vmaIndex: number}
  /** Shared anonymous memory: the object `sharedId`, filled from the store once per restore, mapped MAP_SHARED at `offset`. */
  | {kind: 'shared'; start: bigint; end: bigint; prot: number; sharedId: string; offset: bigint; vmaIndex: number}
  /** Stored pages copied into memory already mapped by an earlier op. */
  | {kind: 'copy'; start: bigint; end: bigint; storeOffset: bigint; vmaIndex: number}

export interface RestorePlan {
  ops: MapOp[]
  /** VMAs that are kernel-provided ([vdso], [vvar], ...) and must be moved, not mapped. */
  specialVmas: VmaImage[]
  /** Ranges registered with userfaultfd (`moa`), and the stored runs that fill them. */
  lazy: LazyRange[]
  lazyRuns: StoredRun[]
  pagesMapped: number
  pagesCopied: number
  /** Pages left to the fault server (`moa`). */
  pagesLazy: number
}

function isSpecial(vma: VmaImage): boolean {
  return vma.kind === 'vdso' || vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vsyscall'
}

/** Which recorded flag makes a page local at restore under `policy` (0: none). */
function localFlag(policy: Policy): number {
  if (policy === 'mow') return PAGE_FLAG_DIRTY
  if (policy === 'hybrid') return PAGE_FLAG_ACCESSED
  return 0
}

/** Split a run into maximal sub-runs of pages that are (local) or are not flagged with `flag`. */
function splitRun(run: StoredRun, flag: number): {run: StoredRun; local: boolean}[] {
  if (flag === 0 || !run.flags) return [{run, local: false}]
  const pieces: {run: StoredRun; local: boolean}[] = []
  let first = 0
  const isLocal = (i: number): boolean => (run.flags![i]! & flag) !== 0
  for (let i = 1; i <= run.nrPages; i++) {
    if (i < run.nrPages && isLocal(i) === isLocal(first)) continue
    const offset = BigInt(first * PAGE_SIZE)
    pieces.push({run: {vaddr: run.vaddr + offset, nrPages: i - first, vmaIndex: run.vmaIndex, storeOffset: run.storeOffset + offset}, local: isLocal(first)})
    first = i
  }
  return pieces
}

/**
 * Plan the mappings. Under `mow`, runs of anonymous VMAs are mapped from the
 * store; the stack is always copied because it must stay a growable anonymous
 * mapping (MAP_GROWSDOWN cannot be file backed). Pages recorded as written
 * (`mow`) or accessed (`hybrid`) are copied instead. Under `moa`, anonymous
 * VMAs with stored pages are left empty and registered with userfaultfd
 * (which takes anonymous memory only): file-backed VMAs and the stack are
 * copied. Under `local` every run is copied. A VMA that must receive copies
 * is mapped writable first; the executor applies the final protection after
 * copying (see `needsProtectFixup`).
 */
export function planRestore(image: ProcessImage, runs: readonly StoredRun[], policy: Policy): RestorePlan {
  const ops: MapOp[] = []
  const specialVmas: VmaImage[] = []
  const lazy: LazyRange[] = []
  const lazyRuns: StoredRun[] = []
  let pagesMapped = 0
  let pagesCopied = 0
  let pagesLazy = 0
  const flag = localFlag(policy)
  const runsByVma = new Map<number, StoredRun[]>()
  for (const run of runs) {
    const list = runsByVma.get(run.vmaIndex) ?? []
    list.push(run)
    runsByVma.set(run.vmaIndex, list)
  }
  image.vmas.forEach((vma, vmaIndex) => {
    if (isSpecial(vma)) {
      specialVmas.push(vma)
      return
    }
    const vmaRuns = runsByVma.get(vmaIndex) ?? []
    const shared = (vma.flags & MAP.SHARED) !== 0
    if (shared && vma.fileIndex === undefined && vma.sharedId !== undefined && vmaRuns.length === 0) {
      // Shared anonymous memory is always local: clones and the members of a tree must share one object (shared-memory.ts).
      ops.push({kind: 'shared', start: vma.start, end: vma.end, prot: vma.prot, sharedId: vma.sharedId, offset: vma.offset, vmaIndex})
      return
    }
    if (shared && vma.fileIndex === undefined) {
      throw new UnsupportedError('SHARED_ANON_MEMORY', `shared anonymous memory at 0x${vma.start.toString(16)} cannot be restored`, 'cxlfork restores private memory and file mappings only.')
    }
    if (shared && vmaRuns.length > 0) {
      throw new CorruptError('IMAGE_INCONSISTENT', `stored pages inside the shared file mapping at 0x${vma.start.toString(16)}`, 'The checkpoint is inconsistent; take a new one.')
    }
    for (const run of vmaRuns) {
      const end = run.vaddr + BigInt(run.nrPages * PAGE_SIZE)
      if (run.vaddr < vma.start || end > vma.end) {
        throw new CorruptError('IMAGE_INCONSISTENT', `stored pages 0x${run.vaddr.toString(16)}-0x${end.toString(16)} lie outside their VMA`, 'The checkpoint is inconsistent; take a new one.')
      }
    }
    const mustCopy = policy === 'local' || vma.kind === 'stack' || (policy === 'moa' && vma.fileIndex !== undefined)
    const isLazy = policy === 'moa' && !mustCopy && vmaRuns.length > 0
    const pieces = vmaRuns.flatMap((run) => (mustCopy ? [{run, local: true}] : isLazy ? [{run, local: false}] : splitRun(run, flag)))
    const copies = pieces.some((piece) => piece.local)
    // Copy targets start writable; the executor restores vma.prot afterwards.
    const prot = copies ? vma.prot | PROT.READ | PROT.WRITE : vma.prot
    if (vma.fileIndex === undefined) {
      const flags = MAP.PRIVATE | MAP.ANONYMOUS | (vma.kind === 'stack' ? MAP.GROWSDOWN : 0)
      ops.push({kind: 'anon', start: vma.start, end: vma.end, prot, flags, vmaIndex})
    } else {
      ops.push({kind: 'file', start: vma.start, end: vma.end, prot, flags: shared ? MAP.SHARED : MAP.PRIVATE, fileIndex: vma.fileIndex, offset: vma.offset, vmaIndex})
    }
    if (isLazy) {
      lazy.push({start: vma.start, end: vma.end, vmaIndex})
      for (const run of vmaRuns) {
        lazyRuns.push(run)
        pagesLazy += run.nrPages
      }
      return
    }
    for (const {run, local} of pieces) {
      const end = run.vaddr + BigInt(run.nrPages * PAGE_SIZE)
      if (local) {
        ops.push({kind: 'copy', start: run.vaddr, end, storeOffset: run.storeOffset, vmaIndex})
        pagesCopied += run.nrPages
      } else {
        ops.push({kind: 'store-map', start: run.vaddr, end, prot: vma.prot, storeOffset: run.storeOffset, vmaIndex})
        pagesMapped += run.nrPages
      }
    }
  })
  return {ops, specialVmas, lazy, lazyRuns, pagesMapped, pagesCopied, pagesLazy}
}

/** VMAs whose protection was widened for copying and must be set back. */
export function needsProtectFixup(plan: RestorePlan, image: ProcessImage): VmaImage[] {
  const fix = new Set<number>()
  for (const op of plan.ops) if (op.kind === 'copy') fix.add(op.vmaIndex)
  return [...fix].map((i) => image.vmas[i]!).filter((vma) => (vma.prot & (PROT.READ | PROT.WRITE)) !== (PROT.READ | PROT.WRITE))
}

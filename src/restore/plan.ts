/**
 * What a restore maps where: a pure function from a process image and the
 * location of its stored pages to an ordered list of mapping operations. The
 * executor (build-process.ts) turns each into one or two injected syscalls, so
 * the cost of a zero-copy restore is O(VMAs + page runs), never O(pages).
 */
import {CorruptError, UnsupportedError} from '../errors.js'
import {PAGE_SIZE, type ProcessImage, type VmaImage} from '../image/process-image.js'
import {MAP, PROT} from '../sys/libc.js'

export type Policy = 'mow' | 'local'
export const POLICIES: readonly Policy[] = ['mow', 'local']

/** Where the bytes of one stored page run are. */
export interface StoredRun {
  vaddr: bigint
  nrPages: number
  vmaIndex: number
  /** Offset of the run's first page in the page store (pool file or pages image). */
  storeOffset: bigint
}

export type MapOp =
  /** Anonymous private memory for a whole VMA (holes read as zero, like the original's never-touched pages). */
  | {kind: 'anon'; start: bigint; end: bigint; prot: number; flags: number; vmaIndex: number}
  /** The VMA's file, mapped as the original mapped it. */
  | {kind: 'file'; start: bigint; end: bigint; prot: number; flags: number; fileIndex: number; offset: bigint; vmaIndex: number}
  /** Stored pages mapped MAP_PRIVATE from the page store: zero-copy, copy-on-write. */
  | {kind: 'store-map'; start: bigint; end: bigint; prot: number; storeOffset: bigint; vmaIndex: number}
  /** Stored pages copied into memory already mapped by an earlier op. */
  | {kind: 'copy'; start: bigint; end: bigint; storeOffset: bigint; vmaIndex: number}

export interface RestorePlan {
  ops: MapOp[]
  /** VMAs that are kernel-provided ([vdso], [vvar], ...) and must be moved, not mapped. */
  specialVmas: VmaImage[]
  pagesMapped: number
  pagesCopied: number
}

function isSpecial(vma: VmaImage): boolean {
  return vma.kind === 'vdso' || vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vsyscall'
}

/**
 * Plan the mappings. Under `mow`, runs of anonymous VMAs are mapped from the
 * store; the stack is always copied because it must stay a growable anonymous
 * mapping (MAP_GROWSDOWN cannot be file backed). Under `local` every run is copied.
 * A VMA that must receive copies is mapped writable first; the executor
 * applies the final protection after copying (see `needsProtectFixup`).
 */
export function planRestore(image: ProcessImage, runs: readonly StoredRun[], policy: Policy): RestorePlan {
  const ops: MapOp[] = []
  const specialVmas: VmaImage[] = []
  let pagesMapped = 0
  let pagesCopied = 0
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
    if (shared && vma.fileIndex === undefined) {
      throw new UnsupportedError('SHARED_ANON_MEMORY', `shared anonymous memory at 0x${vma.start.toString(16)} cannot be restored`, 'cxlfork restores private memory and file mappings only.')
    }
    if (shared && vmaRuns.length > 0) {
      throw new CorruptError('IMAGE_INCONSISTENT', `stored pages inside the shared file mapping at 0x${vma.start.toString(16)}`, 'The checkpoint is inconsistent; take a new one.')
    }
    const copies = vmaRuns.length > 0 && (policy === 'local' || vma.kind === 'stack')
    // Copy targets start writable; the executor restores vma.prot afterwards.
    const prot = copies ? vma.prot | PROT.READ | PROT.WRITE : vma.prot
    if (vma.fileIndex === undefined) {
      const flags = MAP.PRIVATE | MAP.ANONYMOUS | (vma.kind === 'stack' ? MAP.GROWSDOWN : 0)
      ops.push({kind: 'anon', start: vma.start, end: vma.end, prot, flags, vmaIndex})
    } else {
      ops.push({kind: 'file', start: vma.start, end: vma.end, prot, flags: shared ? MAP.SHARED : MAP.PRIVATE, fileIndex: vma.fileIndex, offset: vma.offset, vmaIndex})
    }
    for (const run of vmaRuns) {
      const end = run.vaddr + BigInt(run.nrPages * PAGE_SIZE)
      if (run.vaddr < vma.start || end > vma.end) {
        throw new CorruptError('IMAGE_INCONSISTENT', `stored pages 0x${run.vaddr.toString(16)}-0x${end.toString(16)} lie outside their VMA`, 'The checkpoint is inconsistent; take a new one.')
      }
      if (copies) {
        ops.push({kind: 'copy', start: run.vaddr, end, storeOffset: run.storeOffset, vmaIndex})
        pagesCopied += run.nrPages
      } else {
        ops.push({kind: 'store-map', start: run.vaddr, end, prot: vma.prot, storeOffset: run.storeOffset, vmaIndex})
        pagesMapped += run.nrPages
      }
    }
  })
  return {ops, specialVmas, pagesMapped, pagesCopied}
}

/** VMAs whose protection was widened for copying and must be set back. */
export function needsProtectFixup(plan: RestorePlan, image: ProcessImage): VmaImage[] {
  const fix = new Set<number>()
  for (const op of plan.ops) if (op.kind === 'copy') fix.add(op.vmaIndex)
  return [...fix].map((i) => image.vmas[i]!).filter((vma) => (vma.prot & (PROT.READ | PROT.WRITE)) !== (PROT.READ | PROT.WRITE))
}

/**
 * pagemap-PID.img (pagemap_head naming the pages image, then one entry per run of stored
 * pages) and pages-N.img, the raw pages in pagemap order.
 */
import {statSync} from 'node:fs'

import {NotFoundError, UnsupportedError} from '../../errors.js'
import {type PageRun, type VmaImage} from '../../image/process-image.js'
import {PAGE_SIZE} from '../../sys/page.js'
import {KERNEL_VMA_KINDS, PAGES_ID, PE_LAZY, PE_PARENT, PE_PRESENT} from '../constants.js'
import {decodeMessage, encodeMessage, readImageRecords} from '../image-file.js'
import type {CriuPagemapEntry} from '../set-types.js'
import {big, has, str64, u64} from '../values.js'
import {type ImagePath, type Msg, type PutImage, corrupt} from './common.js'

/** pagemap-PID.img for `runs`, stored back to back in pages-1.img. */
export function writePagemap(put: PutImage, pid: number, runs: readonly PageRun[], pagesId = PAGES_ID): void {
  const name = `pagemap-${pid}.img`
  const records = [encodeMessage('pagemap_head', {pages_id: pagesId}, name)]
  for (const run of runs) {
    records.push(encodeMessage('pagemap_entry', {vaddr: str64(run.vaddr), compat_nr_pages: run.nrPages, nr_pages: str64(BigInt(run.nrPages)), flags: PE_PRESENT}, name))
  }
  put(name, 'pagemap', records)
}

export interface PagemapRead {
  pagemap: CriuPagemapEntry[]
  /** The model's runs: stored pages split at VMA boundaries, without the kernel's VMAs ([vdso]...). */
  pageRuns: PageRun[]
  /** Byte offset in pagesPath of each of pageRuns. */
  runOffsets: number[]
  pagesPath: string
}

/**
 * The page runs of pagemap-PID.img inside `vmas`, checked against the size of the pages
 * image they name (CRIU images carry no checksums: the shape is what can be checked).
 */
export function readPagemap(at: ImagePath, pid: number, vmas: readonly VmaImage[]): PagemapRead {
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
  return {pagemap, pageRuns, runOffsets, pagesPath}
}

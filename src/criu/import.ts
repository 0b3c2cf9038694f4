/**
 * `criu import`: store a CRIU image set in the pool as a cxlfork checkpoint,
 * pages read from pages-1.img straight into a write-once pool extent, so a
 * process dumped by CRIU can be restored zero-copy.
 */
import {accessRecordFor} from '../image/access-record.js'
import {closeSync, openSync} from 'node:fs'

import {SyscallError} from '../errors.js'
import {checkFiles} from '../restore/host-checks.js'
import {encodeImage} from '../image/codec.js'
import {encodePageMap} from '../image/page-map.js'
import {totalPages} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import {Section} from '../image/sections.js'
import {type CheckpointBuilder, PAGE_CHECKSUMS_SECTION, type Pool, checksumRange, encodePageChecksums} from '../pool/index.js'
import {validateCheckpointName} from '../pool/names.js'
import {preadFull} from '../sys/file-io.js'
import {getuid} from '../sys/syscall.js'
import {readCriuImages} from './images.js'

export interface CriuImportResult {
  name: string
  images: string
  pages: number
  bytes: number
  writtenBy: 'cxlfork' | 'criu'
  totalUs: number
}

export function criuImport(pool: Pool, request: {images: string; name: string}): CriuImportResult {
  const t0 = performance.now()
  validateCheckpointName(request.name)
  const set = readCriuImages(request.images)
  const image = set.image
  // Refuse now what every restore would refuse, rather than store an unrestorable checkpoint.
  checkFiles(image)
  const pages = totalPages(image.pageRuns)
  let builder: CheckpointBuilder | undefined = pool.beginCheckpoint()
  try {
    const entries: {vaddr: bigint; poolOffset: bigint; nrPages: number; vmaIndex: number}[] = []
    let checksums = encodePageChecksums([])
    if (pages > 0) {
      const bytes = BigInt(pages) * BigInt(PAGE_SIZE)
      // Read into the mapping: its memory is allocated first (a full file system is POOL_NO_SPACE, not SIGBUS).
      const extent = builder.allocateData(bytes, {reserve: true})
      const fd = openSync(set.pagesPath, 'r')
      try {
        let offset = 0n
        image.pageRuns.forEach((run, i) => {
          const len = run.nrPages * PAGE_SIZE
          const got = preadFull(fd, extent.address + offset, set.runOffsets[i]!, len)
          if (got !== len) throw new SyscallError('pread', 5, `${set.pagesPath}: ${got} of ${len} bytes at ${set.runOffsets[i]}`)
          entries.push({vaddr: run.vaddr, poolOffset: extent.poolOffset + offset, nrPages: run.nrPages, vmaIndex: run.vmaIndex})
          offset += BigInt(len)
        })
      } finally {
        closeSync(fd)
      }
      checksums = encodePageChecksums([checksumRange(pool.fd, pool.path, extent.poolOffset, bytes)])
    }
    builder.addSection(Section.processState, encodeImage(image))
    const pageMap = encodePageMap(entries)
    builder.addSection(Section.pageMap, pageMap)
    builder.addSection(Section.accessRecord, accessRecordFor(pageMap))
    builder.addSection(PAGE_CHECKSUMS_SECTION, checksums)
    builder.publish(request.name, {uid: getuid(), summary: {pid: image.task.pid, comm: image.task.comm, pages, vmas: image.vmas.length, importedFrom: request.images}})
    builder = undefined
  } finally {
    builder?.abort()
  }
  return {name: request.name, images: request.images, pages, bytes: pages * PAGE_SIZE, writtenBy: set.writtenBy, totalUs: Math.round((performance.now() - t0) * 1000)}
}

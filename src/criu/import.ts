/**
 * `criu import`: store a CRIU image set in the pool as a cxlfork checkpoint,
 * each task's pages read from its pages-N.img straight into a write-once pool
 * extent, so a process or a process tree dumped by CRIU can be restored
 * zero-copy. A tree is stored as `checkpoint --tree` stores one.
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
import {type SharedMemoryRecord, type SharedObjectRun, encodeSharedMemory} from '../image/shared-memory.js'
import {type CheckpointBuilder, type ChecksumRange, PAGE_CHECKSUMS_SECTION, type Pool, checksumRange, encodePageChecksums} from '../pool/index.js'
import type {TreeRecord} from '../checkpoint/tree.js'
import {validateCheckpointName} from '../pool/names.js'
import {preadFull} from '../sys/file-io.js'
import {getuid} from '../sys/syscall.js'
import {readCriuImages} from './images.js'

export interface CriuImportResult {
  name: string
  images: string
  pages: number
  bytes: number
  /** Tasks of the set (zombies too): 1 for a single process. */
  processes: number
  writtenBy: 'cxlfork' | 'criu'
  totalUs: number
}

export function criuImport(pool: Pool, request: {images: string; name: string}): CriuImportResult {
  const t0 = performance.now()
  validateCheckpointName(request.name)
  const set = readCriuImages(request.images)
  const live = set.members.filter((member) => member.image !== undefined)
  // Refuse now what every restore would refuse, rather than store an unrestorable checkpoint.
  for (const member of live) checkFiles(member.image!)
  let pages = 0
  for (const member of live) pages += totalPages(member.image!.pageRuns)
  let builder: CheckpointBuilder | undefined = pool.beginCheckpoint()
  try {
    const checksums: ChecksumRange[] = []
    // Each live task as a pool checkpoint stores a tree member: its state, page map and access record, in tree order.
    for (const member of live) {
      const image = member.image!
      const memberPages = totalPages(image.pageRuns)
      const entries: {vaddr: bigint; poolOffset: bigint; nrPages: number; vmaIndex: number}[] = []
      if (memberPages > 0) {
        const bytes = BigInt(memberPages) * BigInt(PAGE_SIZE)
        // Read into the mapping: its memory is allocated first (a full file system is POOL_NO_SPACE, not SIGBUS).
        const extent = builder.allocateData(bytes, {reserve: true})
        const fd = openSync(member.pagesPath!, 'r')
        try {
          let offset = 0n
          image.pageRuns.forEach((run, i) => {
            const len = run.nrPages * PAGE_SIZE
            const got = preadFull(fd, extent.address + offset, member.runOffsets![i]!, len)
            if (got !== len) throw new SyscallError('pread', 5, `${member.pagesPath}: ${got} of ${len} bytes at ${member.runOffsets![i]}`)
            entries.push({vaddr: run.vaddr, poolOffset: extent.poolOffset + offset, nrPages: run.nrPages, vmaIndex: run.vmaIndex})
            offset += BigInt(len)
          })
        } finally {
          closeSync(fd)
        }
        checksums.push(checksumRange(pool.fd, pool.path, extent.poolOffset, bytes))
      }
      builder.addSection(Section.processState, encodeImage(image))
      const pageMap = encodePageMap(entries)
      builder.addSection(Section.pageMap, pageMap)
      builder.addSection(Section.accessRecord, accessRecordFor(pageMap))
    }
    // Shared anonymous objects: their pages into an extent of their own, described by the shared-memory section.
    if (set.sharedObjects.length > 0) {
      let sharedBytes = 0n
      for (const object of set.sharedObjects) for (const run of object.runs) sharedBytes += run.bytes
      const extent = sharedBytes === 0n ? undefined : builder.allocateData(sharedBytes, {reserve: true})
      let at = 0n
      const record: SharedMemoryRecord = {objects: []}
      for (const object of set.sharedObjects) {
        const runs: SharedObjectRun[] = []
        const fd = object.runs.length > 0 ? openSync(object.pagesPath, 'r') : -1
        try {
          for (const run of object.runs) {
            const got = preadFull(fd, extent!.address + at, run.fileOffset, Number(run.bytes))
            if (got !== Number(run.bytes)) throw new SyscallError('pread', 5, `${object.pagesPath}: ${got} of ${run.bytes} bytes at ${run.fileOffset}`)
            runs.push({offset: run.offset, bytes: run.bytes, storeOffset: extent!.poolOffset + at})
            at += run.bytes
          }
        } finally {
          if (fd >= 0) closeSync(fd)
        }
        record.objects.push({id: object.id, size: object.size, runs, ...(object.memfd ? {memfd: object.memfd} : {})})
      }
      if (extent) checksums.push(checksumRange(pool.fd, pool.path, extent.poolOffset, sharedBytes))
      pages += Number(sharedBytes / BigInt(PAGE_SIZE))
      builder.addSection(Section.sharedMemory, encodeSharedMemory(record))
    }
    if (set.members.length > 1) {
      const record: TreeRecord = {members: set.members.map((member) => ({
        pid: member.pid, ppid: member.ppid, pgid: member.pgid, sid: member.sid,
        ...(member.zombieStatus === undefined ? {} : {zombieStatus: member.zombieStatus, ...(member.comm === undefined ? {} : {comm: member.comm})}),
      }))}
      builder.addSection(Section.tree, new TextEncoder().encode(JSON.stringify(record)))
    }
    builder.addSection(PAGE_CHECKSUMS_SECTION, encodePageChecksums(checksums))
    const image = set.image
    builder.publish(request.name, {uid: getuid(), summary: {pid: image.task.pid, comm: image.task.comm, pages, vmas: image.vmas.length, importedFrom: request.images}})
    builder = undefined
  } finally {
    builder?.abort()
  }
  return {name: request.name, images: request.images, pages, bytes: pages * PAGE_SIZE, processes: set.members.length, writtenBy: set.writtenBy, totalUs: Math.round((performance.now() - t0) * 1000)}
}

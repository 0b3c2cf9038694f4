/**
 * pagemap-shmem-SHMID.img and its pages-N.img: the contents of a shared anonymous memory
 * object (MAP_SHARED|MAP_ANONYMOUS, shared by a parent and its forked children), once
 * however many VMAs and tasks map it. The VMAs name it by shmid (its shmem inode); the
 * pagemap's vaddr is an offset in the object, as CRIU writes it.
 */
import {closeSync, existsSync, openSync, statSync} from 'node:fs'
import {join} from 'node:path'

import type {MemfdFacts} from '../../image/shared-memory.js'
import {sendfileAt} from '../../sys/file-io.js'
import {PAGE_SIZE} from '../../sys/page.js'
import {PE_PRESENT} from '../constants.js'
import {decodeMessage, encodeMessage, readImageRecords} from '../image-file.js'
import {big, has, str64} from '../values.js'
import {type ImagePath, type Msg, type PutImage, corrupt} from './common.js'
import {shmemId} from './mm.js'

/** An object's populated ranges as captured: staged at the same offsets in `fd` (checkpoint/shared-memory.ts). */
export interface ShmemToWrite {
  id: string
  fd: number
  /** The object's size (whole pages), when captured: a memfd inode's size in memfd.img. */
  size?: bigint
  runs: readonly {offset: bigint; bytes: bigint}[]
  /** Name, exact size and seals of a memfd (a mapping of it is then written as a memfd's, even with no fd left). */
  memfd?: MemfdFacts
}

/** Write one object's pagemap-shmem and pages-`pagesId` images; returns the pages file's path and size. */
export function writeShmem(dir: string, put: PutImage, object: ShmemToWrite, pagesId: number): {path: string; bytes: number} {
  const shmid = shmemId(object.id)!
  const name = `pagemap-shmem-${shmid}.img`
  const records = [encodeMessage('pagemap_head', {pages_id: pagesId}, name)]
  const path = join(dir, `pages-${pagesId}.img`)
  const fd = openSync(path, 'w', 0o600)
  try {
    let at = 0n
    for (const run of object.runs) {
      const nrPages = Number(run.bytes / BigInt(PAGE_SIZE))
      records.push(encodeMessage('pagemap_entry', {vaddr: str64(run.offset), compat_nr_pages: nrPages, nr_pages: str64(BigInt(nrPages)), flags: PE_PRESENT}, name))
      sendfileAt(fd, object.fd, run.offset, at, run.bytes, `shared memory ${object.id} into ${path}`)
      at += run.bytes
    }
  } finally {
    closeSync(fd)
  }
  put(name, 'pagemap', records)
  return {path, bytes: statSync(path).size}
}

/** A shared object of a read set: its size (what its VMAs reach) and stored ranges, each at `fileOffset` of `pagesPath`. */
export interface CriuShmem {
  id: string
  size: bigint
  pagesPath: string
  runs: {offset: bigint; bytes: bigint; fileOffset: number}[]
  /** Name, exact size and seals, when memfd.img holds the object as a memfd. */
  memfd?: MemfdFacts
}

/** The object `shmid` (its pages; none stored when the set has no pagemap for it: all zeros). */
export function readShmem(at: ImagePath, shmid: string, size: bigint): CriuShmem {
  const name = `pagemap-shmem-${shmid}.img`
  const path = at(name)
  if (!existsSync(path)) return {id: shmid, size, pagesPath: '', runs: []}
  const records = readImageRecords(path, 'pagemap')
  if (records.length === 0) throw corrupt(`${name} lacks its pagemap_head`)
  const head = decodeMessage<Msg>('pagemap_head', records[0]!, `${name} record 0`)
  const pagesPath = at(`pages-${head['pages_id']}.img`)
  const runs: CriuShmem['runs'] = []
  let fileOffset = 0
  records.slice(1).forEach((record, i) => {
    const entry = decodeMessage<Msg>('pagemap_entry', record, `${name} record ${i + 1}`)
    const offset = big(entry['vaddr'])
    const nrPages = has(entry, 'nr_pages') ? Number(big(entry['nr_pages'])) : entry['compat_nr_pages'] as number
    const flags = has(entry, 'flags') ? entry['flags'] >>> 0 : PE_PRESENT
    const bytes = BigInt(nrPages) * BigInt(PAGE_SIZE)
    if (offset % BigInt(PAGE_SIZE) !== 0n || offset + bytes > size) throw corrupt(`${name} entry ${i}: ${nrPages} pages at offset ${offset} lie beyond the object's ${size} bytes`)
    if (flags & PE_PRESENT) {
      runs.push({offset, bytes, fileOffset})
      fileOffset += Number(bytes)
    }
  })
  if (runs.length > 0 && (!existsSync(pagesPath) || statSync(pagesPath).size !== fileOffset)) {
    throw corrupt(`${pagesPath} (named by ${name}) is missing or does not hold the ${fileOffset} bytes its pagemap describes`)
  }
  return {id: shmid, size, pagesPath, runs}
}

/**
 * Deleted files held open, as CRIU carries them: the files.img entry the process uses keeps
 * the name the file had, remap-fpath.img names it as the GHOST remap of ghost-file-N.img,
 * which holds the file's owner, mode and size, then its contents (unframed to the end of the
 * image; or, from GHOST_CHUNKS_AT bytes on, as ghost_chunk_entry records each followed by
 * its bytes, as CRIU writes larger ones). Only regular files: CRIU's ghost directories,
 * FIFOs, devices and symlinks are refused by name.
 */
import {statSync} from 'node:fs'

import {UnsupportedError} from '../../errors.js'
import type {FdImage} from '../../image/process-image.js'
import {decodeMessage, encodeMessage, readImageRecords} from '../image-file.js'
import {S_IFMT, S_IFREG} from '../constants.js'
import {big, str64} from '../values.js'
import {type ImagePath, type Msg, type PutImage, corrupt} from './common.js'

export const REMAP_GHOST = 1
/** From this size on, CRIU writes a ghost file's contents in chunks (its GHOST_CHUNKS_THRESH). */
const GHOST_CHUNKS_AT = 3 * 4096

export type Ghost = NonNullable<FdImage['ghost']>

/** remap-fpath.img and one ghost-file-N.img per deleted file (N from 1, as CRIU counts them). */
export class GhostWriter {
  private readonly remaps: Uint8Array[] = []
  private readonly files: {n: number; records: Uint8Array[]; trailers: (Uint8Array | undefined)[]}[] = []

  /** The deleted file behind files.img entry `origId`. */
  add(origId: number, ghost: Ghost): void {
    const n = this.files.length + 1
    const name = `ghost-file-${n}.img`
    const chunked = ghost.data.length >= GHOST_CHUNKS_AT
    const entry = {uid: ghost.uid >>> 0, gid: ghost.gid >>> 0, mode: (S_IFREG | (ghost.mode & 0o7777)) >>> 0, ...(chunked ? {chunks: true, size: str64(BigInt(ghost.data.length))} : {})}
    const records = [encodeMessage('ghost_file_entry', entry, name)]
    const trailers: (Uint8Array | undefined)[] = [chunked ? undefined : ghost.data]
    if (chunked) {
      records.push(encodeMessage('ghost_chunk_entry', {len: str64(BigInt(ghost.data.length)), off: str64(0n)}, name))
      trailers.push(ghost.data)
    }
    this.files.push({n, records, trailers})
    this.remaps.push(encodeMessage('remap_file_path_entry', {orig_id: origId, remap_id: n, remap_type: REMAP_GHOST}, 'remap-fpath.img'))
  }

  write(put: PutImage): void {
    if (this.remaps.length === 0) return
    put('remap-fpath.img', 'remap-fpath', this.remaps)
    for (const {n, records, trailers} of this.files) put(`ghost-file-${n}.img`, 'ghost-file', records, trailers)
  }
}

/** The deleted file ghost-file-`remapId`.img holds, named `path` (the name it had); `what` names the fd for errors. */
export function readGhost(at: ImagePath, remapId: number, path: string, what: string): Ghost {
  const name = `ghost-file-${remapId}.img`
  const file = at(name)
  let total = 0
  try {
    total = statSync(file).size
  } catch {
    // readImageRecords names the missing image.
  }
  let entry: Msg | undefined
  let data = new Uint8Array(0)
  let chunk: Msg | undefined
  readImageRecords(file, 'ghost-file', {
    length: (record, i) => {
      if (i === 0) {
        entry = decodeMessage<Msg>('ghost_file_entry', record, `${name} record 0`)
        const mode = entry['mode'] as number
        if ((mode & S_IFMT) !== S_IFREG) {
          throw new UnsupportedError('CRIU_FILE_REMAP', `${what} refers to ${path}, which was deleted and is not a regular file (mode 0${mode.toString(8)}; ${name})`,
            'Only deleted regular files are restored; dump a process whose deleted directories, FIFOs, devices and symlinks are closed.')
        }
        if (!entry['chunks']) {
          // The contents run unframed to the end of the image.
          const rest = total - 8 - 4 - record.byteLength
          data = new Uint8Array(Math.max(rest, 0))
          return Math.max(rest, 0)
        }
        data = new Uint8Array(Number(big(entry['size'])))
        return 0
      }
      chunk = decodeMessage<Msg>('ghost_chunk_entry', record, `${name} record ${i}`)
      const off = Number(big(chunk['off']))
      const len = Number(big(chunk['len']))
      if (off + len > data.length) throw corrupt(`${name}: chunk ${i} (${len} bytes at ${off}) runs past the file's ${data.length} bytes`)
      return len
    },
    onTrailer: (i, bytes) => {
      if (i === 0) data.set(bytes)
      else data.set(bytes, Number(big(chunk!['off'])))
    },
  })
  if (!entry) throw corrupt(`${name} holds no ghost_file_entry`)
  return {path, mode: (entry['mode'] as number) & 0o7777, uid: entry['uid'] as number, gid: entry['gid'] as number, data}
}

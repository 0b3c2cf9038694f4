/**
 * CRIU image framing.
 *
 * Every protobuf image of CRIU's "v1.1" format (inventory img_version 2) starts with
 * two little-endian u32 magics: IMG_COMMON_MAGIC (or IMG_SERVICE_MAGIC for the
 * stats-*.img service files), then the image's own magic. inventory.img is the one
 * exception: it starts with INVENTORY_MAGIC alone. After the head come records, each
 * a u32 little-endian byte length followed by that many bytes of one protobuf
 * message. pages-N.img is raw page data with no head at all.
 *
 * The protobuf schemas (src/criu/proto) are parsed on first use (proto-schema.ts) and
 * records encoded and decoded by proto-codec.ts, so merely importing this module costs
 * nothing at CLI start-up.
 */
import {closeSync, openSync, readFileSync, writeSync} from 'node:fs'
import {basename, join} from 'node:path'

import {CorruptError, CxlforkError, NotFoundError} from '../errors.js'
import {projectRoot} from '../paths.js'
import {WireError, decode, encode} from './proto-codec.js'
import {type MessageDesc, type Schema, parseSchema} from './proto-schema.js'

export const IMG_COMMON_MAGIC = 0x54564319
export const IMG_SERVICE_MAGIC = 0x55105940

/** Image kinds cxlfork reads or writes, with CRIU's magic and the message type of their records. */
export const IMAGE_KINDS = {
  inventory: {magic: 0x58313116, head: 'none', type: 'inventory_entry'},
  pstree: {magic: 0x50273030, head: 'common', type: 'pstree_entry'},
  core: {magic: 0x55053847, head: 'common', type: 'core_entry'},
  ids: {magic: 0x54432030, head: 'common', type: 'task_kobj_ids_entry'},
  mm: {magic: 0x57492820, head: 'common', type: 'mm_entry'},
  // pagemap: first record is pagemap_head, the rest pagemap_entry.
  pagemap: {magic: 0x56084025, head: 'common', type: 'pagemap_entry'},
  files: {magic: 0x56303138, head: 'common', type: 'file_entry'},
  fdinfo: {magic: 0x56213732, head: 'common', type: 'fdinfo_entry'},
  fs: {magic: 0x51403912, head: 'common', type: 'fs_entry'},
  creds: {magic: 0x54023547, head: 'common', type: 'creds_entry'},
  stats: {magic: 0x57093306, head: 'service', type: 'stats_entry'},
  // Each pipe_data_entry record is followed by its `bytes` raw bytes of pipe contents.
  'pipes-data': {magic: 0x56453709, head: 'common', type: 'pipe_data_entry'},
  // Each sk_packet_entry record is followed by its `length` raw bytes of the packet.
  'sk-queues': {magic: 0x56264026, head: 'common', type: 'sk_packet_entry'},
  // The inodes of memfds and unlinked tmpfs files held open (and, read only, of CRIU's memfd-backed shared anonymous memory).
  memfd: {magic: 0x48453499, head: 'common', type: 'memfd_inode_entry'},
  // Each FIFO's size and buffered bytes, framed as pipes-data.
  'fifo-data': {magic: 0x59333054, head: 'common', type: 'pipe_data_entry'},
  // Files dumped through a remap: written for deleted files (GHOST); read also for CRIU's other kinds, which are refused.
  'remap-fpath': {magic: 0x59133954, head: 'common', type: 'remap_file_path_entry'},
  // A deleted file's attributes, then its contents (unframed, or as ghost_chunk_entry records each followed by its bytes).
  'ghost-file': {magic: 0x52583605, head: 'common', type: 'ghost_file_entry'},
} as const

export type ImageKind = keyof typeof IMAGE_KINDS

const PROTO_FILES = ['inventory.proto', 'core.proto', 'mm.proto', 'pagemap.proto', 'fdinfo.proto', 'fs.proto', 'pstree.proto', 'stats.proto', 'creds.proto', 'remap-file-path.proto', 'pipe-data.proto', 'sk-packet.proto', 'ghost-file.proto']

let schema: Schema | undefined

/** The CRIU message types, parsed from src/criu/proto on first call. */
export function criuSchema(): Schema {
  if (schema) return schema
  const dir = join(projectRoot(), 'src/criu/proto')
  try {
    schema = parseSchema(PROTO_FILES, (file) => readFileSync(join(dir, file), 'utf8'))
  } catch (error) {
    throw new NotFoundError('CRIU_PROTO_MISSING', `cannot load the CRIU protobuf schemas from ${dir}: ${(error as Error).message}`,
      'The installation is incomplete: src/criu/proto/*.proto must ship with cxlfork.')
  }
  return schema
}

export function messageType(name: string): MessageDesc {
  const desc = criuSchema().messages.get(name)
  if (!desc) throw new CxlforkError('CRIU_IMAGE_ENCODE', `no message type ${name} in the CRIU schemas`, 'This is a cxlfork bug.')
  return desc
}

const hex = (value: number) => '0x' + value.toString(16).padStart(8, '0')

function expectedHead(kind: ImageKind): number[] {
  const spec = IMAGE_KINDS[kind]
  if (spec.head === 'none') return [spec.magic]
  return [spec.head === 'service' ? IMG_SERVICE_MAGIC : IMG_COMMON_MAGIC, spec.magic]
}

/** Encode one message of `typeName` from a plain object; a bad object is a programming error, reported as CorruptError. */
export function encodeMessage(typeName: string, value: Record<string, unknown>, path = typeName): Uint8Array {
  try {
    return encode(messageType(typeName), value)
  } catch (error) {
    if (!(error instanceof WireError)) throw error
    throw new CorruptError('CRIU_IMAGE_ENCODE', `cannot encode ${typeName} for ${basename(path)}: ${error.message}`, 'This is a cxlfork bug; report it with the process that was dumped.')
  }
}

/** Decode one record; any decoding failure (bad wire data, missing proto2 required field) is a CorruptError. */
export function decodeMessage<T = Record<string, unknown>>(typeName: string, bytes: Uint8Array, where: string): T {
  const type = messageType(typeName)
  try {
    return decode(type, bytes) as unknown as T
  } catch (error) {
    if (error instanceof CxlforkError || !(error instanceof WireError)) throw error
    throw new CorruptError('CRIU_IMAGE_CORRUPT', `${where}: cannot decode ${typeName}: ${error.message}`,
      'The image file is damaged or was not written by CRIU/cxlfork; dump the process again.')
  }
}

/** Frame records into a complete image file's bytes; `trailers[i]`, if any, follows record i unframed (pipes-data). */
export function frameImage(kind: ImageKind, records: readonly Uint8Array[], trailers: readonly (Uint8Array | undefined)[] = []): Uint8Array {
  const head = expectedHead(kind)
  let size = head.length * 4
  for (const record of records) size += 4 + record.byteLength
  for (const trailer of trailers) size += trailer?.byteLength ?? 0
  const out = new Uint8Array(size)
  const view = new DataView(out.buffer)
  let at = 0
  for (const magic of head) {
    view.setUint32(at, magic, true)
    at += 4
  }
  records.forEach((record, i) => {
    view.setUint32(at, record.byteLength, true)
    out.set(record, at + 4)
    at += 4 + record.byteLength
    const trailer = trailers[i]
    if (trailer) {
      out.set(trailer, at)
      at += trailer.byteLength
    }
  })
  return out
}

/** Write an image file of `kind` holding the already encoded `records`; returns the bytes written. */
export function writeImage(path: string, kind: ImageKind, records: readonly Uint8Array[], trailers?: readonly (Uint8Array | undefined)[]): number {
  const bytes = frameImage(kind, records, trailers)
  const fd = openSync(path, 'w', 0o600)
  try {
    let at = 0
    while (at < bytes.byteLength) at += writeSync(fd, bytes, at, bytes.byteLength - at)
  } finally {
    closeSync(fd)
  }
  return bytes.byteLength
}

/**
 * Split an image file's bytes into its records after checking the magic head; `trailer`
 * gives the length of the unframed bytes that follow a record (pipes-data), which are
 * skipped here and handed to `onTrailer`.
 */
export function unframeImage(bytes: Uint8Array, kind: ImageKind, path: string, trailer?: {length(record: Uint8Array, index: number): number; onTrailer(index: number, data: Uint8Array): void}): Uint8Array[] {
  const name = basename(path)
  const head = expectedHead(kind)
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (bytes.byteLength < head.length * 4) {
    throw new CorruptError('CRIU_IMAGE_TRUNCATED', `${name} is truncated: ${bytes.byteLength} bytes, shorter than its ${head.length * 4}-byte magic head`,
      'The image set is incomplete or damaged; dump the process again.')
  }
  for (let i = 0; i < head.length; i++) {
    const found = view.getUint32(i * 4, true)
    if (found !== head[i]) {
      const what = head.length === 2 && i === 0 ? (IMAGE_KINDS[kind].head === 'service' ? 'IMG_SERVICE_MAGIC' : 'IMG_COMMON_MAGIC') : `${kind} magic`
      throw new CorruptError('CRIU_IMAGE_MAGIC',
        `${name} has wrong magic: expected ${what} ${hex(head[i]!)} (head ${head.map(hex).join(' ')}), found ${hex(found)}${head.length === 2 ? ` (head ${hex(view.getUint32(0, true))}${bytes.byteLength >= 8 ? ' ' + hex(view.getUint32(4, true)) : ''})` : ''}`,
        kind === 'inventory' && found === IMG_COMMON_MAGIC
          ? 'inventory.img must start with its own magic only; this file was framed like another image.'
          : `Is this a CRIU ${kind} image? The file may be damaged or of another kind; dump the process again.`)
    }
  }
  const records: Uint8Array[] = []
  let at = head.length * 4
  let index = 0
  while (at < bytes.byteLength) {
    if (bytes.byteLength - at < 4) {
      throw new CorruptError('CRIU_IMAGE_TRUNCATED', `${name} is truncated: record ${index} at byte ${at} has only ${bytes.byteLength - at} of its 4 length bytes`,
        'The image file was cut short; dump the process again.')
    }
    const length = view.getUint32(at, true)
    if (length > bytes.byteLength - at - 4) {
      throw new CorruptError('CRIU_IMAGE_TRUNCATED', `${name} is truncated: record ${index} at byte ${at} claims ${length} bytes but only ${bytes.byteLength - at - 4} remain`,
        'The image file was cut short; dump the process again.')
    }
    records.push(bytes.subarray(at + 4, at + 4 + length))
    at += 4 + length
    if (trailer) {
      const extra = trailer.length(records[index]!, index)
      if (extra > bytes.byteLength - at) {
        throw new CorruptError('CRIU_IMAGE_TRUNCATED', `${name} is truncated: record ${index} is followed by ${extra} bytes of data but only ${bytes.byteLength - at} remain`,
          'The image file was cut short; dump the process again.')
      }
      trailer.onTrailer(index, bytes.subarray(at, at + extra))
      at += extra
    }
    index++
  }
  return records
}

/** Read an image file and return its raw records. A missing file is NotFoundError. */
export function readImageRecords(path: string, kind: ImageKind, trailer?: Parameters<typeof unframeImage>[3]): Uint8Array[] {
  let bytes: Uint8Array
  try {
    bytes = readFileSync(path)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT') {
      throw new NotFoundError('CRIU_IMAGE_MISSING', `${basename(path)} is missing from ${join(path, '..')}`,
        'The directory does not hold a complete CRIU image set; dump the process again.')
    }
    throw new CorruptError('CRIU_IMAGE_UNREADABLE', `cannot read ${path}: ${(error as Error).message}`, 'Check the image directory and its permissions.')
  }
  return unframeImage(bytes, kind, path, trailer)
}

/** Read an image file and decode every record as the kind's message type. */
export function readImage<T = Record<string, unknown>>(path: string, kind: ImageKind): T[] {
  const name = basename(path)
  return readImageRecords(path, kind).map((record, i) => decodeMessage<T>(IMAGE_KINDS[kind].type, record, `${name} record ${i}`))
}

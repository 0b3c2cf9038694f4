/**
 * pipes-data.img: each pipe's size (F_GETPIPE_SZ) and the bytes buffered in it, one
 * pipe_data_entry per pipe followed by its bytes unframed, as CRIU writes it (it splices
 * them there). file_entry.pipe (pipe_entry) names the pipe by pipe_id, the pipefs inode.
 * fifo-data.img holds the same for FIFOs (file_entry.fifo names a FIFO by its inode).
 */
import type {FdImage} from '../../image/process-image.js'
import {existsSync} from 'node:fs'

import {type ImageKind, encodeMessage, decodeMessage, readImageRecords} from '../image-file.js'
import {type ImagePath, type Msg, type Obj, type PutImage, fown} from './common.js'

/** The pipe_id of a pipe fd (its pipefs inode, as /proc/PID/fd names it). */
export function pipeIdOf(fd: FdImage): number {
  return Number(/^pipe:\[(\d+)\]$/.exec(fd.pipe?.id === undefined ? fd.path : `pipe:[${fd.pipe.id}]`)?.[1] ?? 0) >>> 0
}

export function pipeEntry(fd: FdImage, id: number): Obj {
  return {id, pipe_id: pipeIdOf(fd), flags: fd.flags >>> 0, fown: fown()}
}

/** What a set records of each pipe: its size and buffered bytes. */
export interface PipeData {
  size: number
  data: Uint8Array
}

/** Collects each pipe (or FIFO) once (the first end that carries its data wins, as the model keeps it on one end). */
export class PipesDataWriter {
  private readonly pipes = new Map<number, PipeData>()

  constructor(private readonly kind: Extract<ImageKind, 'pipes-data' | 'fifo-data'> = 'pipes-data') {}

  add(fd: FdImage): void {
    if (fd.pipe) this.addData(pipeIdOf(fd), fd.pipe.size, fd.pipe.data)
  }

  addData(id: number, size: number, data: Uint8Array | undefined): void {
    const known = this.pipes.get(id)
    if (!known) this.pipes.set(id, {size, data: data ?? new Uint8Array(0)})
    else if (known.data.length === 0 && data) known.data = data
  }

  write(put: PutImage): void {
    if (this.pipes.size === 0) return
    const name = `${this.kind}.img`
    const records: Uint8Array[] = []
    const trailers: Uint8Array[] = []
    for (const [pipeId, {size, data}] of this.pipes) {
      records.push(encodeMessage('pipe_data_entry', {pipe_id: pipeId, bytes: data.length, size: size >>> 0}, name))
      trailers.push(data)
    }
    put(name, this.kind, records, trailers)
  }
}

/** Every pipe's (or FIFO's) size and bytes, by pipe_id (empty when the set has no such image). */
export function readPipesData(at: ImagePath, kind: Extract<ImageKind, 'pipes-data' | 'fifo-data'> = 'pipes-data'): Map<number, PipeData> {
  const out = new Map<number, PipeData>()
  const name = `${kind}.img`
  const path = at(name)
  if (!existsSync(path)) return out
  const data: Uint8Array[] = []
  const records = readImageRecords(path, kind, {
    length: (record, i) => decodeMessage<Msg>('pipe_data_entry', record, `${name} record ${i}`)['bytes'] as number,
    onTrailer: (i, bytes) => {
      data[i] = Uint8Array.from(bytes)
    },
  })
  records.forEach((record, i) => {
    const entry = decodeMessage<Msg>('pipe_data_entry', record, `${name} record ${i}`)
    // CRIU records no size for a pipe of the default size in old sets: 16 pages.
    out.set(entry['pipe_id'] as number, {size: (entry['size'] as number) || 65_536, data: data[i] ?? new Uint8Array(0)})
  })
  return out
}

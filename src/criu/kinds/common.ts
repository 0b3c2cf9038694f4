/** What the per-kind image writers and readers share. */
import {existsSync} from 'node:fs'

import {CorruptError} from '../../errors.js'
import type {ProcessImage} from '../../image/process-image.js'
import type {ImageKind} from '../image-file.js'

/** A message to encode, as a plain object. */
export type Obj = Record<string, unknown>

// Decoded messages: fields are checked with has() before use where optional.
export type Msg = Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any

/** Writes one image file of the set (its name, kind and encoded records). */
export type PutImage = (name: string, kind: ImageKind, records: Uint8Array[], trailers?: (Uint8Array | undefined)[]) => void

/** The path of an image file of the set being read. */
export type ImagePath = (name: string) => string

export const fown = (): Obj => ({uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0})

/** files.img id of the model's file `index` (a member's tracked files have ids first..first+n-1; 1.. in a one-process set). */
export function fileIdFor(image: ProcessImage, index: number | undefined, what: string, first = 1): number {
  if (index === undefined || !Number.isInteger(index) || index < 0 || index >= image.files.length) {
    throw new CorruptError('IMAGE_INCONSISTENT', `${what} refers to file index ${String(index)}, but the image has ${image.files.length} files`,
      'The captured image is inconsistent; this is a cxlfork bug.')
  }
  return first + index
}

export const corrupt = (message: string, hint = 'The image set is damaged or inconsistent; dump the process again.'): CorruptError => new CorruptError('CRIU_IMAGE_CORRUPT', message, hint)

export function only(records: Msg[], name: string): Msg {
  if (records.length !== 1) throw corrupt(`${name} holds ${records.length} records, expected exactly 1`)
  return records[0]!
}

export function optionalImage<T>(path: string, read: () => T): T | undefined {
  if (!existsSync(path)) return undefined
  return read()
}

/**
 * Encoding of the process state record stored in a checkpoint. The state is
 * small (kilobytes) and read once per restore, so it is light JSON; bigints
 * are tagged decimal strings and byte arrays base64. Memory never goes through
 * here: pages live in pool segments and are described by the binary page map.
 */
import {CorruptError} from '../errors.js'
import {IMAGE_VERSION, type ProcessImage} from './process-image.js'

const BIGINT_TAG = '#n:'
const BYTES_TAG = '#b:'

export function encodeImage(image: ProcessImage): Uint8Array {
  const text = JSON.stringify(image, (_key, value: unknown) => {
    if (typeof value === 'bigint') return BIGINT_TAG + value.toString()
    if (value instanceof Uint8Array) return BYTES_TAG + Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64')
    return value
  })
  return new TextEncoder().encode(text)
}

export function decodeImage(bytes: Uint8Array): ProcessImage {
  let parsed: unknown
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', {fatal: true}).decode(bytes), (_key, value: unknown) => {
      if (typeof value === 'string') {
        if (value.startsWith(BIGINT_TAG)) return BigInt(value.slice(BIGINT_TAG.length))
        if (value.startsWith(BYTES_TAG)) return new Uint8Array(Buffer.from(value.slice(BYTES_TAG.length), 'base64'))
      }
      return value
    })
  } catch (error) {
    throw new CorruptError('IMAGE_CORRUPT', `process state record is unreadable: ${(error as Error).message}`,
      'The checkpoint is damaged; run `cxlfork pool fsck` and take a new checkpoint.')
  }
  const image = parsed as ProcessImage
  if (typeof image !== 'object' || image === null || image.version !== IMAGE_VERSION) {
    throw new CorruptError('IMAGE_VERSION', `process state record has version ${String((image as {version?: unknown} | null)?.version)}, expected ${IMAGE_VERSION}`,
      'The checkpoint was written by an incompatible cxlfork; restore it with the version that wrote it.')
  }
  if (!Array.isArray(image.vmas) || !Array.isArray(image.threads) || image.threads.length === 0 || !Array.isArray(image.pageRuns)) {
    throw new CorruptError('IMAGE_CORRUPT', 'process state record lacks VMAs, threads or page runs', 'Take a new checkpoint.')
  }
  return image
}

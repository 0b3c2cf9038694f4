/**
 * The one place that loads libc through koffi. Every binding module in
 * src/sys declares its functions on this handle, so there is a single libc
 * instance and errno is read consistently.
 */
import {createRequire} from 'node:module'

// koffi is CommonJS with a native part; require it so ESM interop stays simple.
const require = createRequire(import.meta.url)
export const koffi = require('koffi') as typeof import('koffi')

export const libc = koffi.load('libc.so.6')

/** errno of the last failed libc call on this thread. */
export function errno(): number {
  return koffi.errno()
}

/** This host's identity: which boot and which kernel a record was made under. */
import * as fs from 'node:fs'
import {uname} from './syscall.js'

let bootIdCache: string | undefined
/** /proc/sys/kernel/random/boot_id (with starttime, identifies a process incarnation). */
export function bootId(): string {
  bootIdCache ??= fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  return bootIdCache
}

/** uname -r */
export function kernelRelease(): string {
  return uname().release
}

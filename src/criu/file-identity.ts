/** The identity of a file a CRIU-written set names, checked the way CRIU's restore checks it. */
import {statSync} from 'node:fs'

import {UnsupportedError} from '../errors.js'
import type {FileIdentity} from '../image/process-image.js'
import {deviceName} from '../sys/proc.js'
import {S_IFMT} from './constants.js'
import {elfBuildId} from './elf.js'
import type {Msg} from './kinds/common.js'
import {big, has, u64} from './values.js'

/**
 * The identity of a file named by a set CRIU wrote. CRIU records no device, inode or
 * mtime; it validates a file at restore by the size and ELF build-id it recorded at dump
 * (criu/files-reg.c validate_file). Do the same here against the file now at that path
 * and take that file's identity, so the restore's own identity check guards the file from
 * now on. A file missing now keeps placeholder values (restore refuses it as missing).
 */
export function hostIdentity(reg: Msg, what: string): FileIdentity {
  const path = reg['name'] as string
  const recordedSize = has(reg, 'size') ? u64(big(reg['size'])) : undefined
  const recordedMode = has(reg, 'mode') ? reg['mode'] as number : undefined
  let st
  try {
    st = statSync(path, {bigint: true})
  } catch {
    return {path, device: '0:0', inode: 0n, size: recordedSize ?? 0n, mtimeNs: 0n, mode: recordedMode ?? 0}
  }
  const changed = (detail: string) => new UnsupportedError('BACKING_FILE_CHANGED', `${path} (${what}) changed since CRIU dumped it: ${detail}`,
    'The image set maps or opens this file; restore it only with the exact file it was dumped with.')
  if (recordedMode !== undefined && (recordedMode & S_IFMT) !== 0 && (Number(st.mode) & S_IFMT) !== (recordedMode & S_IFMT)) {
    throw changed(`file type ${(Number(st.mode) & S_IFMT).toString(8)}, CRIU recorded ${(recordedMode & S_IFMT).toString(8)}`)
  }
  if (recordedSize !== undefined && st.size !== recordedSize) throw changed(`size ${st.size}, CRIU recorded ${recordedSize}`)
  const recordedId = (reg['build_id'] ?? []) as number[]
  if (recordedSize !== undefined && recordedId.length > 0) {
    const found = elfBuildId(path)
    if (found) {
      const want = Buffer.alloc(recordedId.length * 4)
      recordedId.forEach((word, i) => want.writeUInt32LE(word >>> 0, i * 4))
      if (((found.length + 3) & ~3) !== want.length || !Buffer.from(found).equals(want.subarray(0, found.length))) {
        throw changed(`ELF build-id ${Buffer.from(found).toString('hex')}, CRIU recorded ${want.toString('hex')}`)
      }
    }
  }
  return {path, device: deviceName(st.dev), inode: st.ino, size: st.size, mtimeNs: st.mtimeNs, mode: recordedMode ?? Number(st.mode)}
}

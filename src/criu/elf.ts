/** The ELF build-id of a file, as CRIU finds and compares it. */
import {closeSync, openSync, readSync} from 'node:fs'

const NT_GNU_BUILD_ID = 3
const PT_NOTE = 4

/**
 * The NT_GNU_BUILD_ID note of an ELF file, found the way CRIU finds it (criu/files-reg.c
 * get_build_id: PT_NOTE segments within the first 1 MiB); undefined if not ELF or none.
 */
export function elfBuildId(path: string): Uint8Array | undefined {
  let bytes: Buffer
  try {
    const fd = openSync(path, 'r')
    try {
      bytes = Buffer.alloc(1 << 20)
      bytes = bytes.subarray(0, readSync(fd, bytes, 0, bytes.length, 0))
    } finally {
      closeSync(fd)
    }
  } catch {
    return undefined
  }
  if (bytes.length < 52 || bytes.readUInt32BE(0) !== 0x7f454c46 || bytes[5] !== 1) return undefined // ELF, little-endian
  const is64 = bytes[4] === 2
  if (!is64 && bytes[4] !== 1) return undefined
  if (is64 && bytes.length < 64) return undefined
  const phoff = is64 ? Number(bytes.readBigUInt64LE(32)) : bytes.readUInt32LE(28)
  const phentsize = is64 ? 56 : 32
  const phnum = bytes.readUInt16LE(is64 ? 56 : 44)
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize
    if (ph <= 0 || ph + phentsize > bytes.length) break
    if (bytes.readUInt32LE(ph) !== PT_NOTE) continue
    const offset = is64 ? Number(bytes.readBigUInt64LE(ph + 8)) : bytes.readUInt32LE(ph + 4)
    const filesz = is64 ? Number(bytes.readBigUInt64LE(ph + 32)) : bytes.readUInt32LE(ph + 16)
    const end = Math.min(offset + filesz, bytes.length)
    for (let note = offset; note > 0 && note + 12 <= end;) {
      const namesz = bytes.readUInt32LE(note)
      const descsz = bytes.readUInt32LE(note + 4)
      const desc = note + 12 + ((namesz + 3) & ~3)
      if (bytes.readUInt32LE(note + 8) === NT_GNU_BUILD_ID) {
        if (descsz === 0 || descsz > 512 || desc + descsz > bytes.length) return undefined
        return bytes.subarray(desc, desc + descsz)
      }
      note = desc + ((descsz + 3) & ~3)
    }
  }
  return undefined
}

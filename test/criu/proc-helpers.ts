/**
 * Test helpers for the CRIU codec tests: /proc/PID/maps lines as they are, and a
 * synthetic but well-formed XSAVE buffer for threads the tests make up. The process
 * image itself comes from the real capture (live-capture.ts).
 */
import {readFileSync} from 'node:fs'

interface MapLine {start: bigint; end: bigint; perms: string; offset: bigint; path: string}

export function parseMaps(pid: number): MapLine[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n').map((line) => {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$/.exec(line)
    if (!m) throw new Error(`bad maps line: ${line}`)
    return {start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]), perms: m[3]!, offset: BigInt('0x' + m[4]), path: m[5] ?? ''}
  })
}

/** A synthetic but well-formed NT_X86_XSTATE buffer: Intel standard layout, XCR0 = 0x2e7 (AVX-512 + PKRU), 2696 bytes. */
export function syntheticXstate(seed = 7): Uint8Array {
  const raw = new Uint8Array(2696)
  let x = seed
  for (let i = 0; i < raw.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    raw[i] = x >>> 24
  }
  const v = new DataView(raw.buffer)
  v.setBigUint64(464, 0x2e7n, true) // XCR0 word of sw_reserved
  v.setBigUint64(512, 0x2e7n, true) // xstate_bv
  v.setBigUint64(520, 0n, true) // xcomp_bv: standard format
  return raw
}

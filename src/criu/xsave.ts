/**
 * Conversion between a raw NT_X86_XSTATE buffer (what PTRACE_GETREGSET returns:
 * 512-byte FXSAVE area, 64-byte XSAVE header, components at their standard,
 * non-compacted offsets) and CRIU's user_x86_fpregs_entry / user_x86_xsave_entry.
 *
 * CRIU names only some of the buffer: the FXSAVE fields, xstate_bv, and the AVX,
 * MPX, AVX-512 and PKRU components. It does not record the buffer's size, the
 * component offsets, the software-reserved words (bytes 464..511, whose first word
 * is the kernel's XCR0), xcomp_bv and the reserved header words, the bytes of MPX
 * BNDCSR beyond its 16-byte struct, or components such as AMX tiles. cxlfork writes
 * what CRIU names into CRIU's fields, bytes 416..511 into the legacy `padding` field,
 * and the rest into a cxlfork_xstate_ext (size, offsets, byte patches) so the raw
 * buffer comes back byte for byte. Images from CRIU itself lack the extension: the
 * buffer is then rebuilt from the named fields at the standard offsets of the
 * host's CPU vendor (Intel table unless /proc/cpuinfo says AMD).
 */
import {readFileSync} from 'node:fs'

import {CorruptError} from '../errors.js'
import {big, str64, u64} from './values.js'

export const FXSAVE_SIZE = 512
export const XSAVE_HEADER_SIZE = 64
const XCR0_OFFSET = 464
const PADDING_OFFSET = 416

/** CRIU's named components: XSAVE feature number, field name, element size, element count. */
const NAMED = [
  {feature: 2, field: 'ymmh_space', elem: 4, count: 64},
  {feature: 3, field: 'bndreg_state', elem: 8, count: 8},
  {feature: 4, field: 'bndcsr_state', elem: 8, count: 2},
  {feature: 5, field: 'opmask_reg', elem: 8, count: 8},
  {feature: 6, field: 'zmm_upper', elem: 8, count: 64},
  {feature: 7, field: 'hi16_zmm', elem: 8, count: 128},
  {feature: 9, field: 'pkru', elem: 4, count: 2},
] as const

/** Standard-format offset and size of each user XSAVE feature, per vendor (CPUID leaf 0xD). */
type Layout = Record<number, {offset: number; size: number}>
export const INTEL_LAYOUT: Layout = {
  2: {offset: 576, size: 256}, 3: {offset: 960, size: 64}, 4: {offset: 1024, size: 64}, 5: {offset: 1088, size: 64},
  6: {offset: 1152, size: 512}, 7: {offset: 1664, size: 1024}, 9: {offset: 2688, size: 8},
  17: {offset: 2752, size: 64}, 18: {offset: 2816, size: 8192},
}
/** AMD leaves out the MPX area, so the AVX-512 and PKRU components sit lower. */
export const AMD_LAYOUT: Layout = {
  2: {offset: 576, size: 256}, 5: {offset: 832, size: 64}, 6: {offset: 896, size: 512}, 7: {offset: 1408, size: 1024},
  9: {offset: 2432, size: 8},
}

function layoutEnd(layout: Layout, xcr0: bigint): number {
  let end = FXSAVE_SIZE + XSAVE_HEADER_SIZE
  for (const [feature, spec] of Object.entries(layout)) {
    if ((xcr0 >> BigInt(feature)) & 1n) end = Math.max(end, spec.offset + spec.size)
  }
  return end
}

let hostVendorLayout: Layout | undefined
function hostLayout(): Layout {
  if (!hostVendorLayout) {
    let amd = false
    try {
      amd = /^vendor_id\s*:\s*AuthenticAMD/m.test(readFileSync('/proc/cpuinfo', 'utf8'))
    } catch {
      // not Linux or no /proc: assume Intel's layout
    }
    hostVendorLayout = amd ? AMD_LAYOUT : INTEL_LAYOUT
  }
  return hostVendorLayout
}

/** Pick the layout whose extent for the enabled features matches the buffer size. */
function chooseLayout(xcr0: bigint, size: number): Layout {
  for (const layout of [hostLayout(), INTEL_LAYOUT, AMD_LAYOUT]) if (layoutEnd(layout, xcr0) === size) return layout
  return hostLayout()
}

const view = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)

function words32(bytes: Uint8Array, at: number, count: number): number[] {
  const v = view(bytes)
  const out: number[] = []
  for (let i = 0; i < count; i++) out.push(at + 4 * i + 4 <= bytes.byteLength ? v.getUint32(at + 4 * i, true) : 0)
  return out
}

function words64(bytes: Uint8Array, at: number, count: number): unknown[] {
  const v = view(bytes)
  const out: unknown[] = []
  for (let i = 0; i < count; i++) out.push(str64(at + 8 * i + 8 <= bytes.byteLength ? v.getBigUint64(at + 8 * i, true) : 0n))
  return out
}

/** A plain object for protobufjs `fromObject` of user_x86_fpregs_entry (u64 as decimal strings). */
export function xstateToFpregs(raw: Uint8Array): Record<string, unknown> {
  const legacy = new Uint8Array(FXSAVE_SIZE)
  legacy.set(raw.subarray(0, FXSAVE_SIZE))
  const v = view(legacy)
  const fpregs: Record<string, unknown> = {
    cwd: v.getUint16(0, true), swd: v.getUint16(2, true), twd: v.getUint16(4, true), fop: v.getUint16(6, true),
    rip: str64(v.getBigUint64(8, true)), rdp: str64(v.getBigUint64(16, true)),
    mxcsr: v.getUint32(24, true), mxcsr_mask: v.getUint32(28, true),
    st_space: words32(legacy, 32, 32), xmm_space: words32(legacy, 160, 64), padding: words32(legacy, PADDING_OFFSET, 24),
  }
  const offsets: number[] = []
  if (raw.byteLength >= FXSAVE_SIZE + XSAVE_HEADER_SIZE) {
    const xcr0 = view(raw).getBigUint64(XCR0_OFFSET, true)
    const layout = chooseLayout(xcr0, raw.byteLength)
    const xsave: Record<string, unknown> = {xstate_bv: str64(view(raw).getBigUint64(FXSAVE_SIZE, true))}
    for (const named of NAMED) {
      const spec = layout[named.feature]
      if (!spec || !((xcr0 >> BigInt(named.feature)) & 1n) || spec.offset + named.elem * named.count > raw.byteLength) continue
      xsave[named.field] = named.elem === 4 ? words32(raw, spec.offset, named.count) : words64(raw, spec.offset, named.count)
      offsets[named.feature] = spec.offset
    }
    fpregs['xsave'] = xsave
  }
  const ext = {size: raw.byteLength, offsets: Array.from({length: offsets.length}, (_, i) => offsets[i] ?? 0), patches: [] as {offset: number; data: Uint8Array}[]}
  const rebuilt = rebuild(fpregs, ext.offsets, raw.byteLength)
  ext.patches = diff(rebuilt, raw)
  fpregs['cxlfork'] = ext
  return fpregs
}

/** Byte ranges where `want` differs from `have`, merging ranges closer than 16 bytes. */
function diff(have: Uint8Array, want: Uint8Array): {offset: number; data: Uint8Array}[] {
  const patches: {offset: number; data: Uint8Array}[] = []
  let i = 0
  while (i < want.byteLength) {
    if (have[i] === want[i]) {
      i++
      continue
    }
    const start = i
    let last = i
    while (i < want.byteLength && i - last < 16) {
      if (have[i] !== want[i]) last = i
      i++
    }
    patches.push({offset: start, data: want.slice(start, last + 1)})
    i = last + 1
  }
  return patches
}

function fieldArray(message: Record<string, unknown>, field: string): unknown[] {
  const value = message[field]
  return Array.isArray(value) ? value : []
}

/** Rebuild the raw buffer from CRIU's fields placed at `offsets` (index = feature), `size` bytes long. */
function rebuild(fpregs: Record<string, unknown>, offsets: readonly number[], size: number): Uint8Array {
  const out = new Uint8Array(Math.max(size, FXSAVE_SIZE + XSAVE_HEADER_SIZE))
  const v = view(out)
  v.setUint16(0, Number(fpregs['cwd'] ?? 0) & 0xffff, true)
  v.setUint16(2, Number(fpregs['swd'] ?? 0) & 0xffff, true)
  v.setUint16(4, Number(fpregs['twd'] ?? 0) & 0xffff, true)
  v.setUint16(6, Number(fpregs['fop'] ?? 0) & 0xffff, true)
  v.setBigUint64(8, u64(big(fpregs['rip'] ?? 0)), true)
  v.setBigUint64(16, u64(big(fpregs['rdp'] ?? 0)), true)
  v.setUint32(24, Number(fpregs['mxcsr'] ?? 0) >>> 0, true)
  v.setUint32(28, Number(fpregs['mxcsr_mask'] ?? 0) >>> 0, true)
  fieldArray(fpregs, 'st_space').slice(0, 32).forEach((w, i) => v.setUint32(32 + 4 * i, Number(w) >>> 0, true))
  fieldArray(fpregs, 'xmm_space').slice(0, 64).forEach((w, i) => v.setUint32(160 + 4 * i, Number(w) >>> 0, true))
  fieldArray(fpregs, 'padding').slice(0, 24).forEach((w, i) => v.setUint32(PADDING_OFFSET + 4 * i, Number(w) >>> 0, true))
  const xsave = fpregs['xsave'] as Record<string, unknown> | undefined
  if (xsave) {
    v.setBigUint64(FXSAVE_SIZE, u64(big(xsave['xstate_bv'] ?? 0)), true)
    for (const named of NAMED) {
      const offset = offsets[named.feature] ?? 0
      const words = fieldArray(xsave, named.field)
      if (!offset || words.length === 0) continue
      words.slice(0, named.count).forEach((w, i) => {
        const at = offset + named.elem * i
        if (at + named.elem > out.byteLength) return
        if (named.elem === 4) v.setUint32(at, Number(w) >>> 0, true)
        else v.setBigUint64(at, u64(big(w)), true)
      })
    }
  }
  return out.subarray(0, size)
}

/**
 * The raw NT_X86_XSTATE buffer from a decoded user_x86_fpregs_entry. With cxlfork's
 * extension it is exact; without it (CRIU's own images) it is rebuilt at standard offsets.
 */
export function fpregsToXstate(fpregs: Record<string, unknown>, where: string): Uint8Array {
  const ext = fpregs['cxlfork'] as {size: number; offsets: number[]; patches: {offset: number; data: Uint8Array}[]} | undefined
  if (ext && Object.prototype.hasOwnProperty.call(fpregs, 'cxlfork')) {
    const out = new Uint8Array(rebuild(fpregs, ext.offsets ?? [], ext.size))
    for (const patch of ext.patches ?? []) {
      if (patch.offset + patch.data.byteLength > out.byteLength) {
        throw new CorruptError('CRIU_IMAGE_CORRUPT', `${where}: xstate patch at ${patch.offset} (+${patch.data.byteLength}) lies outside the ${out.byteLength}-byte buffer`,
          'The core image is damaged; dump the process again.')
      }
      out.set(patch.data, patch.offset)
    }
    return out
  }
  // A CRIU-written image: place the named components at the host vendor's standard offsets.
  const layout = hostLayout()
  const xsave = fpregs['xsave'] as Record<string, unknown> | undefined
  const offsets: number[] = []
  let size = FXSAVE_SIZE
  let xcr0 = 3n
  if (xsave) {
    size = FXSAVE_SIZE + XSAVE_HEADER_SIZE
    for (const named of NAMED) {
      const spec = layout[named.feature]
      if (!spec || fieldArray(xsave, named.field).length === 0) continue
      offsets[named.feature] = spec.offset
      size = Math.max(size, spec.offset + spec.size)
      xcr0 |= 1n << BigInt(named.feature)
    }
  }
  const out = new Uint8Array(rebuild(fpregs, Array.from({length: offsets.length}, (_, i) => offsets[i] ?? 0), size))
  // CRIU does not keep the software-reserved words; put back the XCR0 word the kernel reports there.
  if (xsave && fieldArray(fpregs, 'padding').length === 0) view(out).setBigUint64(XCR0_OFFSET, xcr0, true)
  return out
}

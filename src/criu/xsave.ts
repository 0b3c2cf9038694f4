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
 * and the rest into a cxlfork_xstate_ext (size, offset and size of every component,
 * byte patches) so the raw buffer comes back byte for byte, along with the layout of
 * the CPU that saved it (restore translates it for its own CPU: src/cpu). Images from
 * CRIU itself lack the extension: the buffer is then rebuilt from the named fields in
 * Intel's standard layout, which is returned with it.
 */
import {hostXsaveLayout} from '../cpu/host-xsave.js'
import {
  AMD_LAYOUT, bufferXcr0, FXSAVE_SIZE, inferLayout, INTEL_LAYOUT, LEGACY_FEATURES, layoutFromTable, referenceLayouts, XCR0_WORD_OFFSET,
  XSAVE_HEADER_SIZE, XSTATE_BV_OFFSET, type XsaveComponent, type XsaveLayout,
} from '../cpu/xsave-layout.js'
import {CorruptError} from '../errors.js'
import {big, str64, u64} from './values.js'

// The reference layouts moved to src/cpu; kept importable from here for the CRIU path's readers and tests.
export {AMD_LAYOUT, FXSAVE_SIZE, INTEL_LAYOUT, XSAVE_HEADER_SIZE}
const XCR0_OFFSET = XCR0_WORD_OFFSET
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

/**
 * A plain object to encode as user_x86_fpregs_entry (u64 fields as bigint).
 * `layout` is the buffer's recorded layout; without one it
 * is inferred from the buffer's size (this host's layout first, then the
 * vendor tables), as for checkpoints that predate recorded layouts.
 */
export function xstateToFpregs(raw: Uint8Array, layout?: XsaveLayout, host: () => XsaveLayout = hostXsaveLayout): Record<string, unknown> {
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
  const sizes: number[] = []
  if (raw.byteLength >= FXSAVE_SIZE + XSAVE_HEADER_SIZE) {
    const known = layout ?? inferLayout(raw, [host(), ...referenceLayouts()])
    const components = new Map<number, XsaveComponent>((known?.components ?? []).map((c) => [c.feature, c]))
    const xsave: Record<string, unknown> = {xstate_bv: str64(view(raw).getBigUint64(FXSAVE_SIZE, true))}
    for (const named of NAMED) {
      const spec = components.get(named.feature)
      if (!spec || spec.offset + named.elem * named.count > raw.byteLength) continue
      xsave[named.field] = named.elem === 4 ? words32(raw, spec.offset, named.count) : words64(raw, spec.offset, named.count)
    }
    // Every component's place, named by CRIU or not: a restoring CPU with another layout moves them all.
    // Sizes (which make the layout a recorded one) only for a layout the model recorded: an inferred one
    // stays unrecorded, so the reader infers it as the model's reader would.
    for (const c of known?.components ?? []) offsets[c.feature] = c.offset
    if (layout) for (const c of layout.components) sizes[c.feature] = c.size
    fpregs['xsave'] = xsave
  }
  const dense = (list: number[]) => Array.from({length: list.length}, (_, i) => list[i] ?? 0)
  const ext = {size: raw.byteLength, offsets: dense(offsets), sizes: dense(sizes), patches: [] as {offset: number; data: Uint8Array}[]}
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

/** The raw buffer and, when the image records it, the layout of the CPU that saved it. */
export interface DecodedXstate {
  xstate: Uint8Array
  /** Absent for images from cxlfork versions that recorded offsets only: restore infers it from the size. */
  layout?: XsaveLayout
}

type XstateExt = {size: number; offsets?: number[]; sizes?: number[]; patches?: {offset: number; data: Uint8Array}[]}

/** The layout an extension records: every feature with both an offset and a size. */
function extLayout(ext: XstateExt, xstate: Uint8Array): XsaveLayout | undefined {
  const sizes = ext.sizes ?? []
  if (sizes.length === 0 || xstate.byteLength < FXSAVE_SIZE + XSAVE_HEADER_SIZE) return undefined
  const components: XsaveComponent[] = []
  sizes.forEach((size, feature) => {
    const offset = ext.offsets?.[feature] ?? 0
    if (size > 0 && offset > 0) components.push({feature, offset, size})
  })
  return {xcr0: bufferXcr0(xstate), size: xstate.byteLength, components}
}

/**
 * The raw NT_X86_XSTATE buffer from a decoded user_x86_fpregs_entry. With
 * cxlfork's extension it is exact, in the layout of the CPU that dumped it.
 * Without it (CRIU's own images, whose fields name components but not their
 * places) it is built in Intel's standard layout for the components CRIU
 * named, and that layout is returned: restore moves it to its own CPU's
 * layout, or refuses if that CPU lacks one of them.
 */
export function fpregsToXstate(fpregs: Record<string, unknown>, where: string): DecodedXstate {
  const ext = fpregs['cxlfork'] as XstateExt | undefined
  if (ext && Object.prototype.hasOwnProperty.call(fpregs, 'cxlfork')) {
    const out = new Uint8Array(rebuild(fpregs, ext.offsets ?? [], ext.size))
    for (const patch of ext.patches ?? []) {
      if (patch.offset + patch.data.byteLength > out.byteLength) {
        throw new CorruptError('CRIU_IMAGE_CORRUPT', `${where}: xstate patch at ${patch.offset} (+${patch.data.byteLength}) lies outside the ${out.byteLength}-byte buffer`,
          'The core image is damaged; dump the process again.')
      }
      out.set(patch.data, patch.offset)
    }
    const layout = extLayout(ext, out)
    return layout ? {xstate: out, layout} : {xstate: out}
  }
  const xsave = fpregs['xsave'] as Record<string, unknown> | undefined
  if (!xsave) return {xstate: rebuild(fpregs, [], FXSAVE_SIZE)}
  let xcr0 = LEGACY_FEATURES
  for (const named of NAMED) if (fieldArray(xsave, named.field).length > 0) xcr0 |= 1n << BigInt(named.feature)
  const layout = layoutFromTable(INTEL_LAYOUT, xcr0)!
  const offsets: number[] = []
  for (const c of layout.components) offsets[c.feature] = c.offset
  const out = new Uint8Array(rebuild(fpregs, Array.from({length: offsets.length}, (_, i) => offsets[i] ?? 0), layout.size))
  const v = view(out)
  // A live bit for a component CRIU kept no bytes of would hand the CPU zeros as state: leave it initial.
  v.setBigUint64(XSTATE_BV_OFFSET, v.getBigUint64(XSTATE_BV_OFFSET, true) & xcr0, true)
  // CRIU does not always keep the software-reserved words; put back the XCR0 word the kernel reports there.
  if (fieldArray(fpregs, 'padding').length === 0) v.setBigUint64(XCR0_OFFSET, xcr0, true)
  return {xstate: out, layout}
}

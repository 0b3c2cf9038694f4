/**
 * XSAVE standard-format layouts: where each state component of an
 * NT_X86_XSTATE buffer lies. The layout is a property of the CPU (CPUID leaf
 * 0xD), not of the vendor: Intel keeps room for MPX even on CPUs without it,
 * AMD Zen 4 leaves it out, so AVX-512 state sits 256 bytes lower there.
 *
 * Components 0 (x87) and 1 (SSE) live in the 512-byte legacy area at fixed
 * places; the 64-byte XSAVE header follows; components 2 and up sit at the
 * offsets CPUID gives. This module only describes layouts; ./xsave-translate.ts
 * moves state between them and ./host-xsave.ts reads the running CPU's.
 */

export const FXSAVE_SIZE = 512
export const XSAVE_HEADER_SIZE = 64
/** Offset of xstate_bv in the header: which components hold non-initial state. */
export const XSTATE_BV_OFFSET = 512
/** The kernel writes the XCR0 it runs with into the first software-reserved word of the legacy area. */
export const XCR0_WORD_OFFSET = 464
/** x87 and SSE: always in the legacy area. */
export const LEGACY_FEATURES = 3n

export interface XsaveComponent {
  /** XSAVE feature (state component) number, e.g. 2 for AVX. */
  feature: number
  /** Byte offset in the standard (non-compacted) format. */
  offset: number
  size: number
}

/** The layout of one XSAVE buffer, or of what a CPU produces. */
export interface XsaveLayout {
  /** Features enabled (XCR0): the buffer has room for exactly these. */
  xcr0: bigint
  /** Buffer size in bytes. */
  size: number
  /** Components 2 and up enabled in xcr0, ascending by feature. */
  components: XsaveComponent[]
}

/** A vendor reference table: standard-format offset and size per feature (CPUID leaf 0xD). */
export type LayoutTable = Readonly<Record<number, {offset: number; size: number}>>

/** Intel's standard format (SDM vol. 1, 13.4): offsets are architectural, MPX room included. */
export const INTEL_LAYOUT: LayoutTable = {
  2: {offset: 576, size: 256}, 3: {offset: 960, size: 64}, 4: {offset: 1024, size: 64}, 5: {offset: 1088, size: 64},
  6: {offset: 1152, size: 512}, 7: {offset: 1664, size: 1024}, 9: {offset: 2688, size: 8},
  17: {offset: 2752, size: 64}, 18: {offset: 2816, size: 8192},
}
/** AMD Zen 4 leaves out the MPX area, so the AVX-512 and PKRU components sit lower. */
export const AMD_LAYOUT: LayoutTable = {
  2: {offset: 576, size: 256}, 5: {offset: 832, size: 64}, 6: {offset: 896, size: 512}, 7: {offset: 1408, size: 1024},
  9: {offset: 2432, size: 8},
}

const FEATURE_NAMES: Readonly<Record<number, string>> = {
  0: 'x87', 1: 'SSE', 2: 'AVX', 3: 'MPX bndregs', 4: 'MPX bndcsr', 5: 'AVX-512 opmask', 6: 'ZMM_Hi256', 7: 'Hi16_ZMM',
  8: 'PT', 9: 'PKRU', 10: 'PASID', 11: 'CET user', 12: 'CET supervisor', 13: 'HDC', 14: 'UINTR', 15: 'LBR', 16: 'HWP',
  17: 'AMX tilecfg', 18: 'AMX tiledata', 19: 'APX',
}

export function featureName(feature: number): string {
  return FEATURE_NAMES[feature] ?? `XSAVE feature ${feature}`
}

/** Feature numbers of the bits set in `mask`, ascending. */
export function featuresOf(mask: bigint): number[] {
  const out: number[] = []
  for (let i = 0; i < 64; i++) if ((mask >> BigInt(i)) & 1n) out.push(i)
  return out
}

export function featureNames(mask: bigint): string[] {
  return featuresOf(mask).map(featureName)
}

/**
 * The layout a CPU with reference table `table` gives a buffer with features
 * `xcr0`, or undefined when the table lacks an enabled feature.
 */
export function layoutFromTable(table: LayoutTable, xcr0: bigint): XsaveLayout | undefined {
  const components: XsaveComponent[] = []
  let size = FXSAVE_SIZE + XSAVE_HEADER_SIZE
  for (const feature of featuresOf(xcr0 & ~LEGACY_FEATURES)) {
    const spec = table[feature]
    if (!spec) return undefined
    components.push({feature, offset: spec.offset, size: spec.size})
    size = Math.max(size, spec.offset + spec.size)
  }
  return {xcr0, size, components}
}

/** The buffer's own XCR0 word (what the kernel that produced it ran with). */
export function bufferXcr0(xstate: Uint8Array): bigint {
  if (xstate.byteLength < XCR0_WORD_OFFSET + 8) return LEGACY_FEATURES
  return new DataView(xstate.buffer, xstate.byteOffset, xstate.byteLength).getBigUint64(XCR0_WORD_OFFSET, true)
}

/** The buffer's xstate_bv: components holding non-initial state (x87 and SSE only for a bare FXSAVE area). */
export function bufferXstateBv(xstate: Uint8Array): bigint {
  if (xstate.byteLength < FXSAVE_SIZE + XSAVE_HEADER_SIZE) return LEGACY_FEATURES
  return new DataView(xstate.buffer, xstate.byteOffset, xstate.byteLength).getBigUint64(XSTATE_BV_OFFSET, true)
}

/**
 * The layout of a buffer that came without one (checkpoints and images from
 * before layouts were recorded): the first candidate whose extent for the
 * buffer's XCR0 equals the buffer's size. Candidates are the host's own layout
 * first, then the vendor tables. Undefined when none fits.
 */
export function inferLayout(xstate: Uint8Array, candidates: readonly XsaveLayout[]): XsaveLayout | undefined {
  if (xstate.byteLength < FXSAVE_SIZE + XSAVE_HEADER_SIZE) return {xcr0: LEGACY_FEATURES, size: xstate.byteLength, components: []}
  const xcr0 = bufferXcr0(xstate)
  for (const candidate of candidates) {
    const components = candidate.components.filter((c) => (xcr0 >> BigInt(c.feature)) & 1n)
    if (components.length !== featuresOf(xcr0 & ~LEGACY_FEATURES).length) continue
    const size = components.reduce((end, c) => Math.max(end, c.offset + c.size), FXSAVE_SIZE + XSAVE_HEADER_SIZE)
    if (size === xstate.byteLength) return {xcr0, size, components}
  }
  return undefined
}

/** The reference tables as layouts covering every feature they know. */
export function referenceLayouts(): XsaveLayout[] {
  return [INTEL_LAYOUT, AMD_LAYOUT].map((table) => {
    const mask = Object.keys(table).reduce((m, f) => m | (1n << BigInt(f)), LEGACY_FEATURES)
    return layoutFromTable(table, mask)!
  })
}

/** Same features at the same places with the same size: a buffer needs no translation. */
export function sameLayout(a: XsaveLayout, b: XsaveLayout): boolean {
  if (a.xcr0 !== b.xcr0 || a.size !== b.size || a.components.length !== b.components.length) return false
  return a.components.every((c, i) => {
    const d = b.components[i]!
    return c.feature === d.feature && c.offset === d.offset && c.size === d.size
  })
}

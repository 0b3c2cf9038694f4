/** XSAVE buffers for tests: pseudo-random state laid out in a given standard-format layout. */
import {FXSAVE_SIZE, XCR0_WORD_OFFSET, XSTATE_BV_OFFSET, type XsaveLayout} from '../../src/cpu/xsave-layout.js'

/**
 * A buffer as the kernel of a CPU with `layout` would hand it out: legacy
 * area and every component filled from `seed`, gaps zero, the header's
 * xstate_bv set to `xstateBv`, xcomp_bv and reserved words zero, XCR0 at 464.
 */
export function xsaveBuffer(layout: XsaveLayout, seed: number, xstateBv: bigint = layout.xcr0): Uint8Array {
  const raw = new Uint8Array(layout.size)
  let x = seed >>> 0
  const fill = (from: number, to: number): void => {
    for (let i = from; i < to; i++) {
      x = (x * 1103515245 + 12345) >>> 0
      raw[i] = x >>> 24
    }
  }
  fill(0, FXSAVE_SIZE)
  for (const c of layout.components) fill(c.offset, c.offset + c.size)
  const v = new DataView(raw.buffer)
  v.setBigUint64(XCR0_WORD_OFFSET, layout.xcr0, true)
  v.setBigUint64(XSTATE_BV_OFFSET, xstateBv, true)
  return raw
}

/** Where feature `feature` lies in `layout` (fails the test if absent). */
export function componentOf(layout: XsaveLayout, feature: number): {offset: number; size: number} {
  const c = layout.components.find((x) => x.feature === feature)
  if (!c) throw new Error(`layout has no feature ${feature}`)
  return c
}

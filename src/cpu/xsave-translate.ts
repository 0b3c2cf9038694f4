/**
 * Moving XSAVE state from the layout it was saved in to the layout of the CPU
 * that restores it, component by component, and deciding whether that is
 * possible at all. Pure: the restoring CPU is a parameter, so tests can play
 * any CPU (and ./host-xsave.ts supplies the real one).
 *
 * A restore needs every feature the checkpointed process had enabled (its
 * XCR0), not only those holding live state (xstate_bv): the process chose its
 * code paths (glibc's string functions, a JIT) from the features it saw, and
 * would hit #UD on a CPU without them. That is also what `criu check
 * --cpu-cap=fpu` compares.
 */
import {CorruptError, UnsupportedError} from '../errors.js'
import {
  bufferXstateBv, featureName, featureNames, featuresOf, FXSAVE_SIZE, LEGACY_FEATURES, sameLayout, XCR0_WORD_OFFSET,
  XSAVE_HEADER_SIZE, XSTATE_BV_OFFSET, type XsaveLayout,
} from './xsave-layout.js'

export interface CpuVerdict {
  /** This CPU can take the state. */
  ok: boolean
  /** The state must be moved to other offsets (or another size) first. */
  translate: boolean
  /** Features the saved state depends on (its XCR0 and xstate_bv), by name. */
  needed: string[]
  /** Of those, the ones this CPU lacks. */
  missing: string[]
  /** Components present on both sides whose sizes differ (they cannot be moved). */
  resized: string[]
  /** One line for a person. */
  detail: string
}

const hex = (value: bigint): string => '0x' + value.toString(16)

/** Whether `host` can take state saved with layout `from` whose xstate_bv is `xstateBv`. */
export function cpuVerdict(from: XsaveLayout, xstateBv: bigint, host: XsaveLayout): CpuVerdict {
  const neededMask = from.xcr0 | xstateBv | LEGACY_FEATURES
  // A feature counts as present only if the host both enables it and places it.
  const hostHas = host.components.reduce((mask, c) => mask | (1n << BigInt(c.feature)), LEGACY_FEATURES) & host.xcr0
  const missingMask = neededMask & ~hostHas
  const hostSizes = new Map(host.components.map((c) => [c.feature, c.size]))
  const resized = from.components
    .filter((c) => hostSizes.has(c.feature) && hostSizes.get(c.feature) !== c.size)
    .map((c) => `${featureName(c.feature)} (${c.size} bytes saved, ${hostSizes.get(c.feature)} here)`)
  const missing = featureNames(missingMask)
  const ok = missing.length === 0 && resized.length === 0
  const translate = !sameLayout(from, host)
  let detail: string
  if (!ok) {
    detail = missing.length > 0
      ? `this CPU lacks ${missing.join(', ')} (checkpoint XCR0 ${hex(from.xcr0)}, live state ${hex(xstateBv)}; this CPU's XCR0 ${hex(host.xcr0)})`
      : `XSAVE components differ in size: ${resized.join(', ')}`
  } else if (translate) {
    detail = `state saved in another XSAVE layout (${from.size} bytes, XCR0 ${hex(from.xcr0)}) is translated to this CPU's (${host.size} bytes, XCR0 ${hex(host.xcr0)})`
  } else {
    detail = `same XSAVE layout as this CPU (${host.size} bytes, XCR0 ${hex(host.xcr0)})`
  }
  return {ok, translate, needed: featureNames(neededMask), missing, resized, detail}
}

/** The typed refusal for a verdict that is not ok. */
export function cpuMismatchError(verdict: CpuVerdict, what: string): UnsupportedError {
  return new UnsupportedError('CPU_MISMATCH', `${what} cannot be restored on this CPU: ${verdict.detail}`,
    'Restore it on a host whose CPU has these features (`cxlfork check --checkpoint NAME` tells before restoring), or checkpoint the process on a host with the features common to both.')
}

function checkBuffer(xstate: Uint8Array, from: XsaveLayout, what: string): void {
  const corrupt = (detail: string) => new CorruptError('IMAGE_CORRUPT', `${what}: XSAVE state ${detail}`, 'The checkpoint is damaged; take a new one.')
  if (xstate.byteLength !== from.size) throw corrupt(`is ${xstate.byteLength} bytes but its recorded layout is ${from.size}`)
  for (const c of from.components) {
    if (c.offset < FXSAVE_SIZE + XSAVE_HEADER_SIZE || c.offset + c.size > from.size) throw corrupt(`component ${featureName(c.feature)} at ${c.offset}+${c.size} lies outside the buffer`)
  }
  if (featuresOf(from.xcr0 & ~LEGACY_FEATURES).length !== from.components.length) throw corrupt(`layout lacks a component for a feature of XCR0 ${hex(from.xcr0)}`)
  const bv = bufferXstateBv(xstate)
  if (bv & ~from.xcr0) throw corrupt(`marks ${featureNames(bv & ~from.xcr0).join(', ')} live but its XCR0 ${hex(from.xcr0)} does not enable them`)
}

/**
 * The buffer `xstate`, saved with layout `from`, laid out for `host`: every
 * component copied to the host's offset, the host's size, the host's XCR0 in
 * the software word. Components the host has and the buffer lacks stay in
 * their initial state (their xstate_bv bit is clear). Returns `xstate` itself
 * when the layouts are the same. Throws CPU_MISMATCH when the host lacks a
 * feature the state depends on.
 */
export function translateXstate(xstate: Uint8Array, from: XsaveLayout, host: XsaveLayout, what = 'the checkpoint'): Uint8Array {
  checkBuffer(xstate, from, what)
  const verdict = cpuVerdict(from, bufferXstateBv(xstate), host)
  if (!verdict.ok) throw cpuMismatchError(verdict, what)
  if (!verdict.translate) return xstate
  const out = new Uint8Array(host.size)
  out.set(xstate.subarray(0, Math.min(FXSAVE_SIZE + XSAVE_HEADER_SIZE, xstate.byteLength, host.size)))
  const view = new DataView(out.buffer)
  if (host.size >= FXSAVE_SIZE + XSAVE_HEADER_SIZE) {
    view.setBigUint64(XCR0_WORD_OFFSET, host.xcr0, true)
    // A bare FXSAVE area has no header: its x87 and SSE state is live.
    if (xstate.byteLength < FXSAVE_SIZE + XSAVE_HEADER_SIZE) view.setBigUint64(XSTATE_BV_OFFSET, LEGACY_FEATURES, true)
  }
  const target = new Map(host.components.map((c) => [c.feature, c]))
  for (const c of from.components) {
    const to = target.get(c.feature)!
    out.set(xstate.subarray(c.offset, c.offset + c.size), to.offset)
  }
  return out
}

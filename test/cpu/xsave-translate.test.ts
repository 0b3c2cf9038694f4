import {strict as assert} from 'node:assert'

import {
  AMD_LAYOUT, FXSAVE_SIZE, inferLayout, INTEL_LAYOUT, layoutFromTable, referenceLayouts, XCR0_WORD_OFFSET, XSAVE_HEADER_SIZE,
  type XsaveLayout,
} from '../../src/cpu/xsave-layout.js'
import {cpuVerdict, translateXstate} from '../../src/cpu/xsave-translate.js'
import {CorruptError, UnsupportedError} from '../../src/errors.js'
import {expectError} from '../helpers/errors.js'
import {componentOf, xsaveBuffer} from './buffers.js'

/** x87, SSE, AVX, AVX-512 (opmask, ZMM_Hi256, Hi16_ZMM), PKRU: what both vendors' AVX-512 CPUs enable. */
const AVX512_PKRU = 0x2e7n
const intel = layoutFromTable(INTEL_LAYOUT, AVX512_PKRU)!
const amd = layoutFromTable(AMD_LAYOUT, AVX512_PKRU)!
const bytes = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength)

/** Every component of `from` holds the same bytes at its place in `to`; legacy area and header carried over. */
function assertMoved(src: Uint8Array, from: XsaveLayout, out: Uint8Array, to: XsaveLayout): void {
  assert.equal(out.byteLength, to.size)
  for (const c of from.components) {
    const d = componentOf(to, c.feature)
    assert.ok(bytes(out.subarray(d.offset, d.offset + c.size)).equals(bytes(src.subarray(c.offset, c.offset + c.size))), `feature ${c.feature}: ${c.offset} -> ${d.offset}`)
  }
  assert.ok(bytes(out.subarray(0, XCR0_WORD_OFFSET)).equals(bytes(src.subarray(0, XCR0_WORD_OFFSET))), 'legacy area')
  assert.equal(new DataView(out.buffer).getBigUint64(XCR0_WORD_OFFSET, true), to.xcr0, 'XCR0 word is the host\'s')
  assert.ok(bytes(out.subarray(FXSAVE_SIZE, FXSAVE_SIZE + XSAVE_HEADER_SIZE)).equals(bytes(src.subarray(FXSAVE_SIZE, FXSAVE_SIZE + XSAVE_HEADER_SIZE))), 'header')
}

describe('XSAVE translation between layouts', function () {
  it('the reference layouts differ where issue 13 says (opmask at 1088 on Intel, 832 on AMD)', function () {
    assert.equal(componentOf(intel, 5).offset, 1088)
    assert.equal(componentOf(amd, 5).offset, 832)
    assert.equal(intel.size, 2696)
    assert.equal(amd.size, 2440)
  })

  it('moves every component from Intel\'s layout to AMD\'s and back', function () {
    const src = xsaveBuffer(intel, 11)
    const onAmd = translateXstate(src, intel, amd)
    assertMoved(src, intel, onAmd, amd)
    const back = translateXstate(onAmd, amd, intel)
    assertMoved(onAmd, amd, back, intel)
    assert.ok(bytes(back).equals(bytes(src)), 'Intel -> AMD -> Intel is the identity')
  })

  it('moves every component from AMD\'s layout to Intel\'s, leaving the MPX gap zero', function () {
    const src = xsaveBuffer(amd, 12)
    const onIntel = translateXstate(src, amd, intel)
    assertMoved(src, amd, onIntel, intel)
    assert.ok(onIntel.subarray(960, 1088).every((b) => b === 0), 'MPX room stays zero')
  })

  it('returns the buffer itself when the layouts are the same', function () {
    const src = xsaveBuffer(amd, 13)
    assert.equal(translateXstate(src, amd, amd), src)
    assert.equal(cpuVerdict(amd, AVX512_PKRU, amd).translate, false)
    assert.equal(cpuVerdict(amd, AVX512_PKRU, intel).translate, true)
  })

  it('gives a host with more features its size, the extra components left initial', function () {
    const amx = layoutFromTable(INTEL_LAYOUT, AVX512_PKRU | (3n << 17n))!
    assert.equal(amx.size, 11008)
    const src = xsaveBuffer(amd, 14, 0x207n)
    const out = translateXstate(src, amd, amx)
    assertMoved(src, amd, out, amx)
    assert.equal(new DataView(out.buffer).getBigUint64(512, true), 0x207n, 'xstate_bv unchanged: AMX stays in its initial state')
    assert.ok(out.subarray(2752).every((b) => b === 0))
  })

  it('refuses with CPU_MISMATCH (exit 5) naming each feature the host lacks', function () {
    const amx = layoutFromTable(INTEL_LAYOUT, AVX512_PKRU | (3n << 17n))!
    // Live AMX state, restored on an AMD CPU without AMX.
    const withAmx = xsaveBuffer(amx, 15)
    const error = expectError(() => translateXstate(withAmx, amx, amd, 'checkpoint amx'), UnsupportedError, /checkpoint amx.*AMX tilecfg, AMX tiledata/)
    assert.equal(error.code, 'CPU_MISMATCH')
    assert.equal(error.exitCode, 5)
    assert.doesNotMatch(error.message, /AVX-512|PKRU/, 'only what is missing is named')
    assert.ok(error.hint && error.hint.length > 0)
    // A host without PKRU (a VM that hides it).
    const noPkru = layoutFromTable(AMD_LAYOUT, 0xe7n)!
    const pkru = expectError(() => translateXstate(xsaveBuffer(amd, 16), amd, noPkru), UnsupportedError, /lacks PKRU/)
    assert.equal(pkru.code, 'CPU_MISMATCH')
    // MPX enabled on the checkpointing Intel CPU, not on AMD: refused even with MPX state initial (the process saw it enabled).
    const mpx = layoutFromTable(INTEL_LAYOUT, 0x2ffn)!
    const verdict = cpuVerdict(mpx, 0x7n, amd)
    assert.equal(verdict.ok, false)
    assert.deepEqual(verdict.missing, ['MPX bndregs', 'MPX bndcsr'])
  })

  it('refuses a component whose size differs on this CPU', function () {
    const odd: XsaveLayout = {...amd, components: amd.components.map((c) => c.feature === 9 ? {...c, size: 16} : c), size: amd.size + 8}
    const verdict = cpuVerdict(odd, AVX512_PKRU, amd)
    assert.equal(verdict.ok, false)
    assert.match(verdict.detail, /PKRU \(16 bytes saved, 8 here\)/)
  })

  it('calls a buffer that does not match its recorded layout corrupt', function () {
    expectError(() => translateXstate(xsaveBuffer(amd, 17).subarray(0, 2000), amd, intel), CorruptError, /2000 bytes but its recorded layout is 2440/)
    // xstate_bv claims PKRU live while the layout's XCR0 lacks it.
    const noPkru = layoutFromTable(AMD_LAYOUT, 0xe7n)!
    expectError(() => translateXstate(xsaveBuffer(noPkru, 18, 0x2e7n), noPkru, amd), CorruptError, /marks PKRU live/)
  })

  it('infers the layout of an unrecorded buffer from its size, host first', function () {
    const refs = referenceLayouts()
    assert.deepEqual(inferLayout(xsaveBuffer(intel, 19), refs), intel)
    assert.deepEqual(inferLayout(xsaveBuffer(amd, 20), refs), amd)
    // A host whose layout gives the same size wins over the tables.
    // (This host puts opmask before AVX: same total size as AMD's, other places.)
    const host: XsaveLayout = {...amd, components: amd.components.map((c) => c.feature === 2 ? {...c, offset: 640} : c.feature === 5 ? {...c, offset: 576} : c)}
    assert.deepEqual(inferLayout(xsaveBuffer(amd, 21), [host, ...refs]), host)
    assert.equal(inferLayout(xsaveBuffer(amd, 22).subarray(0, 2100), refs), undefined)
  })
})

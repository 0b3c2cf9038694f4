/**
 * `cxlfork check --checkpoint NAME` and restore on CPU state: a checkpoint
 * records its XSAVE layout; one saved in another vendor's layout is translated
 * and restores; one needing a feature this CPU lacks is refused with
 * CPU_MISMATCH (exit 5), by check and by restore alike.
 */
import assert from 'node:assert/strict'

import {hostXsaveLayout} from '../../src/cpu/host-xsave.js'
import {AMD_LAYOUT, featureName, INTEL_LAYOUT, layoutFromTable, sameLayout, type XsaveLayout} from '../../src/cpu/xsave-layout.js'
import {decodeImage, encodeImage} from '../../src/image/codec.js'
import {encodePageMap, PageMapView} from '../../src/image/page-map.js'
import {Section} from '../../src/image/sections.js'
import {Pool} from '../../src/pool/index.js'
import {getuid, killQuiet, SIG} from '../../src/sys/syscall.js'
import {view} from '../../src/sys/vm-io.js'
import {xsaveBuffer} from '../cpu/buffers.js'
import {cleanupProcs, spawnProc, waitState} from '../sys/helpers.js'
import {cli, describeRun, poolPath, removePools} from '../restore/helpers.js'

/** Copy checkpoint `from` as `to`, its thread's XSAVE state replaced by a buffer in `layout`. */
function republish(path: string, from: string, to: string, layout: XsaveLayout): void {
  const pool = Pool.open(path)
  try {
    const reader = pool.openCheckpoint(from, {uid: getuid()})
    const image = decodeImage(reader.section(Section.processState))
    // Live x87, SSE and AVX state only: random AVX-512 or PKRU values would be taken by the kernel, but PKRU could lock the clone out of its memory.
    image.threads = image.threads.map((t) => ({...t, xstate: sane(xsaveBuffer(layout, 31, layout.xcr0 & 0x7n)), xsaveLayout: layout}))
    const builder = pool.beginCheckpoint()
    // The pages are copied: a checkpoint's page map may point only into its own data.
    const entries = [...new PageMapView(reader.section(Section.pageMap)).entries()]
    const total = entries.reduce((n, e) => n + e.nrPages * 4096, 0)
    const extent = builder.allocateData(BigInt(total))
    let at = 0n
    const moved = entries.map((e) => {
      const len = e.nrPages * 4096
      view(extent.address + at, len).set(view(reader.address(e.poolOffset), len))
      const entry = {vaddr: e.vaddr, poolOffset: extent.poolOffset + at, nrPages: e.nrPages, vmaIndex: e.vmaIndex}
      at += BigInt(len)
      return entry
    })
    builder.addSection(Section.processState, encodeImage(image))
    builder.addSection(Section.pageMap, encodePageMap(moved))
    builder.publish(to, {uid: getuid()})
  } finally {
    pool.close()
  }
}

/** Random bytes, but a legal MXCSR (the kernel refuses reserved bits) and x87 control word with every exception masked. */
function sane(xstate: Uint8Array): Uint8Array {
  const v = new DataView(xstate.buffer, xstate.byteOffset)
  v.setUint16(0, 0x37f, true)
  v.setUint32(24, 0x1f80, true)
  v.setUint32(28, 0xffff, true)
  return xstate
}

describe('cxlfork check --checkpoint (CPU state)', function () {
  this.timeout(120_000)
  const host = hostXsaveLayout()
  let pool: string

  before(async function () {
    pool = poolPath('cpu')
    const proc = spawnProc('/bin/sleep', ['sleep', '600'])
    waitState(proc.pid, (s) => s === 'S')
    const ck = await cli(['checkpoint', String(proc.pid), '--name', 'native', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
  })

  after(function () {
    cleanupProcs()
    removePools()
  })

  it('records this CPU\'s layout in the checkpoint and finds it restorable as is', async function () {
    const p = Pool.open(pool)
    try {
      const image = decodeImage(p.openCheckpoint('native', {uid: getuid()}).section(Section.processState))
      assert.deepEqual(image.threads[0]!.xsaveLayout, host)
    } finally {
      p.close()
    }
    const run = await cli(['check', '--checkpoint', 'native', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    assert.equal(run.json.checkpoint.ok, true)
    assert.equal(run.json.checkpoint.translate, false)
    assert.deepEqual(run.json.checkpoint.missing, [])
    const human = await cli(['check', '--checkpoint', 'native', '--pool', pool])
    assert.match(human.stdout, /ok {3}CPU state of checkpoint native: same XSAVE layout/)
    assert.match(human.stdout, /Looks good\./)
  })

  it('translates a checkpoint saved in the other vendor\'s layout, and the clone runs', async function () {
    const other = [INTEL_LAYOUT, AMD_LAYOUT].map((t) => layoutFromTable(t, host.xcr0)).find((l) => l !== undefined && !sameLayout(l, host))
    if (!other) this.skip()
    republish(pool, 'native', 'foreign-layout', other!)
    const run = await cli(['check', '--checkpoint', 'foreign-layout', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    assert.equal(run.json.checkpoint.ok, true)
    assert.equal(run.json.checkpoint.translate, true)
    // PTRACE_SETREGSET takes only a buffer of this CPU's size: the restore proves the translation reached the kernel.
    const restored = await cli(['restore', 'foreign-layout', '--json', '--pool', pool])
    assert.equal(restored.status, 0, describeRun(restored))
    assert.equal(typeof restored.json.pid, 'number')
    await new Promise((resolve) => setTimeout(resolve, 200))
    assert.notEqual(waitState(restored.json.pid, (s) => s === 'S' || s === 'Z'), 'Z', 'the clone sleeps on')
    killQuiet(restored.json.pid, SIG.KILL)
  })

  it('refuses a checkpoint needing a feature this CPU lacks: check and restore exit 5 with CPU_MISMATCH', async function () {
    // A feature of Intel's table this CPU does not enable (PKRU on a VM hiding it, AMX on AVX-512 CPUs, MPX on newer ones).
    const lacking = [9, 17, 3].find((f) => !((host.xcr0 >> BigInt(f)) & 1n))
    const extra = lacking === 17 ? 3n << 17n : lacking === 3 ? 3n << 3n : lacking === undefined ? 0n : 1n << BigInt(lacking)
    const layout = lacking === undefined ? undefined : layoutFromTable(INTEL_LAYOUT, host.xcr0 | extra)
    if (!layout) this.skip()
    republish(pool, 'native', 'needs-more', layout!)
    const run = await cli(['check', '--checkpoint', 'needs-more', '--json', '--pool', pool])
    assert.equal(run.status, 5, describeRun(run))
    assert.equal(run.json.checkpoint.ok, false)
    assert.ok(run.json.checkpoint.missing.includes(featureName(lacking!)), JSON.stringify(run.json.checkpoint))
    assert.equal(run.json.checkpoint.error.code, 'CPU_MISMATCH')
    assert.equal(run.json.checkpoint.error.exitCode, 5)
    const human = await cli(['check', '--checkpoint', 'needs-more', '--pool', pool])
    assert.equal(human.status, 5)
    assert.match(human.stdout, new RegExp(`FAIL CPU state of checkpoint needs-more: this CPU lacks .*${featureName(lacking!)}`))
    assert.doesNotMatch(human.stdout + human.stderr, /Looks good|at .*\.js:\d+/)
    const restored = await cli(['restore', 'needs-more', '--json', '--pool', pool])
    assert.equal(restored.status, 5, describeRun(restored))
    assert.equal(restored.json.error.code, 'CPU_MISMATCH')
    assert.match(restored.json.error.message, new RegExp(featureName(lacking!)))
    assert.ok(restored.json.error.hint.length > 10)
  })
})

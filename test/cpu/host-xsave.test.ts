/**
 * The running CPU's XSAVE layout from CPUID against the kernel's own
 * NT_X86_XSTATE buffer of a live process that loaded known values into its
 * vector and mask registers: the values must sit where CPUID says.
 */
import {strict as assert} from 'node:assert'
import {execFileSync} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {hostXsaveLayout} from '../../src/cpu/host-xsave.js'
import {AMD_LAYOUT, bufferXcr0, INTEL_LAYOUT, layoutFromTable, type XsaveLayout} from '../../src/cpu/xsave-layout.js'
import {translateXstate} from '../../src/cpu/xsave-translate.js'
import {Tracee} from '../../src/inject/tracee.js'
import {cpuid, xgetbv} from '../../src/sys/cpuid.js'
import {cleanupProcs, spawnProc, waitState} from '../sys/helpers.js'
import {componentOf} from './buffers.js'

/** Loads 64 known bytes into ymm7 (AVX) or k3, zmm7, zmm20 (AVX-512), then sits in pause(2) without touching them. */
const SOURCE = `
#include <stdint.h>
#include <string.h>
static uint8_t pat[64] __attribute__((aligned(64)));
int main(int argc, char **argv) {
  for (int i = 0; i < 64; i++) pat[i] = (uint8_t)(0x40 + i);
  if (argc > 1 && strcmp(argv[1], "avx512") == 0)
    __asm__ volatile("kmovw (%0), %%k3\\n\\tvmovdqu64 (%0), %%zmm7\\n\\tvmovdqu64 (%0), %%zmm20" :: "r"(pat) : "memory");
  else
    __asm__ volatile("vmovdqu (%0), %%ymm7" :: "r"(pat) : "memory");
  __asm__ volatile("1: mov $34, %%eax\\n\\tsyscall\\n\\tjmp 1b" ::: "rax", "rcx", "r11", "memory");
  return 0;
}
`
const PAT = Uint8Array.from({length: 64}, (_, i) => 0x40 + i)
const has = (layout: XsaveLayout, feature: number) => ((layout.xcr0 >> BigInt(feature)) & 1n) === 1n
const slice = (b: Uint8Array, at: number, len: number) => Buffer.from(b.subarray(at, at + len))

describe('the running CPU\'s XSAVE layout (CPUID leaf 0xD)', function () {
  this.timeout(60_000)
  let dir: string
  let binary: string
  const tracees: Tracee[] = []

  before(function () {
    dir = mkdtempSync(join(tmpdir(), 'cxlfork-xsave-'))
    writeFileSync(join(dir, 'regs.c'), SOURCE)
    binary = join(dir, 'regs')
    execFileSync('gcc', ['-O1', '-o', binary, join(dir, 'regs.c')])
  })

  afterEach(function () {
    for (const t of tracees.splice(0)) t.kill()
    cleanupProcs()
  })

  after(function () {
    rmSync(dir, {recursive: true, force: true})
  })

  /** The kernel's XSAVE buffer of the fixture, stopped in pause(2). */
  function liveXstate(mode: 'avx' | 'avx512'): {tracee: Tracee; xstate: Uint8Array} {
    const proc = spawnProc(binary, ['regs', mode])
    waitState(proc.pid, (s) => s === 'S')
    const tracee = Tracee.seize(proc.pid)
    tracees.push(tracee)
    return {tracee, xstate: tracee.getXState()}
  }

  it('reads a consistent layout: x87 and SSE enabled, components inside the size, none overlapping', function () {
    const host = hostXsaveLayout()
    assert.equal(host.xcr0 & 3n, 3n)
    assert.equal(host.xcr0, xgetbv(0))
    assert.ok(cpuid(0).eax >= 0xd, 'CPUID has leaf 0xD')
    const sorted = [...host.components].sort((a, b) => a.offset - b.offset)
    let end = 576
    for (const c of sorted) {
      assert.ok(c.offset >= end, `feature ${c.feature} at ${c.offset} overlaps the previous component (ends ${end})`)
      assert.ok(c.size > 0)
      end = c.offset + c.size
    }
    assert.ok(end <= host.size, `components end at ${end}, size ${host.size}`)
    assert.equal(hostXsaveLayout(), host, 'cached')
  })

  it('agrees with the kernel\'s buffer: size, XCR0 word, and AVX state where CPUID puts it', function () {
    const host = hostXsaveLayout()
    if (!has(host, 2)) this.skip()
    const {xstate} = liveXstate('avx')
    assert.equal(xstate.byteLength, host.size)
    assert.equal(bufferXcr0(xstate), host.xcr0)
    assert.ok(slice(xstate, 160 + 7 * 16, 16).equals(Buffer.from(PAT.subarray(0, 16))), 'xmm7 in the legacy area')
    assert.ok(slice(xstate, componentOf(host, 2).offset + 7 * 16, 16).equals(Buffer.from(PAT.subarray(16, 32))), 'upper ymm7 at the AVX offset')
  })

  it('agrees with the kernel\'s buffer on the AVX-512 components (where Intel and AMD differ)', function () {
    const host = hostXsaveLayout()
    if (!(has(host, 5) && has(host, 6) && has(host, 7))) this.skip()
    const {xstate} = liveXstate('avx512')
    assert.ok(slice(xstate, componentOf(host, 5).offset + 3 * 8, 8).equals(Buffer.from([0x40, 0x41, 0, 0, 0, 0, 0, 0])), 'k3 at the opmask offset')
    assert.ok(slice(xstate, componentOf(host, 6).offset + 7 * 32, 32).equals(Buffer.from(PAT.subarray(32, 64))), 'upper zmm7 at the ZMM_Hi256 offset')
    assert.ok(slice(xstate, componentOf(host, 7).offset + 4 * 64, 64).equals(Buffer.from(PAT)), 'zmm20 at the Hi16_ZMM offset')
  })

  it('a buffer translated from the other vendor\'s layout is taken by the kernel with the values in place', function () {
    const host = hostXsaveLayout()
    if (!has(host, 7)) this.skip()
    // The reference layout that is not this CPU's (both, when this CPU matches neither).
    const others = [INTEL_LAYOUT, AMD_LAYOUT].map((table) => layoutFromTable(table, host.xcr0)).filter((l): l is XsaveLayout => l !== undefined)
    if (others.length === 0) this.skip()
    for (const other of others) {
      const {tracee, xstate} = liveXstate('avx512')
      const foreign = translateXstate(xstate, host, other)
      // Change zmm21 in the foreign layout; it must arrive in the kernel at this CPU's place for it.
      foreign.set(PAT.map((b) => b ^ 0xff), componentOf(other, 7).offset + 5 * 64)
      tracee.setXState(translateXstate(foreign, other, host))
      const back = tracee.getXState()
      assert.ok(slice(back, componentOf(host, 7).offset + 5 * 64, 64).equals(Buffer.from(PAT.map((b) => b ^ 0xff))), 'zmm21 moved into place')
      assert.ok(slice(back, componentOf(host, 7).offset + 4 * 64, 64).equals(Buffer.from(PAT)), 'zmm20 kept')
      assert.ok(slice(back, componentOf(host, 5).offset + 3 * 8, 2).equals(Buffer.from([0x40, 0x41])), 'k3 kept')
    }
  })
})

/**
 * cxlfork SIGKILLed at each step of the fork snapshot (CXLFORK_FAULT points):
 * the target must run on exactly as it was, the orphaned snapshot child must
 * not run on as a second copy, and the pool must hold no half-built checkpoint.
 */
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'

import {cleanupAll, procStat, processExists, readLog, requestCheck, startFixture, waitForTicks} from '../helpers/fixtures.js'
import {cli, describeRun, poolPath, reapStrayZombies, removePools} from './helpers.js'

/** Every step at which the target's kernel state changes, in order (src/inject/tracee.ts, src/checkpoint/snapshot.ts). */
const FAULT_POINTS = [
  'snapshot-seized', 'fork-frame-ready', 'fork-mmap-entry', 'fork-mmap-exit', 'fork-trampoline-ready', 'fork-clone-entry',
  'fork-clone-exit', 'fork-munmap-entry', 'fork-munmap-exit', 'fork-done', 'fork-unwind',
] as const

/** Private anonymous r-x mappings (where cxlfork's trampoline pages live), as "start-end". */
function anonExecMappings(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n').map((line) => line.split(/\s+/))
    .filter((f) => f[1] === 'r-xp' && (f[5] ?? '') === '').map((f) => f[0]!)
}

function allMappings(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n').map((line) => line.split(/\s+/)).map((f) => `${f[0]} ${f[1]} ${f[5] ?? ''}`)
}

function tracerPid(pid: number): number {
  return Number(/^TracerPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? -1)
}

function blockedSignals(pid: number): string {
  return /^SigBlk:\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '?'
}

/** Mappings other than cxlfork's trampoline leftovers (anonymous r-x pages). */
function mapsWithoutTrampolines(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n')
    .map((line) => line.split(/\s+/))
    .filter((f) => !(f[1] === 'r-xp' && (f[5] ?? '') === ''))
    .map((f) => `${f[0]} ${f[1]} ${f[5] ?? ''}`)
}

describe('restore: cxlfork killed inside the fork snapshot leaves the target as it was', function () {
  this.timeout(120_000)
  // Created in before(): another suite's removePools() would otherwise forget it first.
  let pool = ''
  before(() => {
    pool = poolPath('fault')
  })

  afterEach(async () => {
    await cleanupAll()
  })
  after(() => removePools())

  for (const point of FAULT_POINTS) {
    it(`SIGKILL at ${point}: target unharmed, no second copy, pool clean`, async () => {
      const fx = await startFixture('memtouch', {mib: 32})
      await waitForTicks(fx.logPath, fx.pid, 2)
      const mapsBefore = mapsWithoutTrampolines(fx.pid)
      const maskBefore = blockedSignals(fx.pid)
      const run = await cli(['checkpoint', String(fx.pid), '--name', `f-${point}`, '--pool', pool, '--json'], {env: {CXLFORK_FAULT: point}})
      assert.equal(run.signal, 'SIGKILL', `the CLI died at the fault point\n${describeRun(run)}`)

      // The kernel detached the target: it must run untraced, ticking, with its state intact.
      assert.ok(processExists(fx.pid), 'target alive')
      assert.equal(tracerPid(fx.pid), 0, 'target no longer traced')
      assert.ok(!['t', 'T'].includes(procStat(fx.pid)!.state), 'target not left stopped')
      assert.equal(blockedSignals(fx.pid), maskBefore, 'target\'s signal mask as it was')
      const before = readLog(fx.logPath).length
      await waitForTicks(fx.logPath, fx.pid, 3)
      const check = await requestCheck(fx.logPath, fx.pid)
      assert.equal(check.fields['ok'], '1', `target's own CHECK: ${check.line}`)
      assert.equal(check.fields['crc'], fx.ready.fields['crc'], 'memory checksum unchanged')
      assert.equal(check.fields['clockbad'], '0')
      // Its layout is unchanged but for at most one leftover trampoline page.
      assert.deepEqual(mapsWithoutTrampolines(fx.pid), mapsBefore)

      // No orphaned snapshot ran on as a second copy writing to the log.
      const writers = new Set(readLog(fx.logPath).slice(before).map((event) => event.pid))
      assert.deepEqual([...writers], [fx.pid], 'only the target writes to its log')
      await reapStrayZombies([fx.pid])

      // Nothing visible in the pool; gc recovers whatever the dead build held.
      const ls = await cli(['ls', '--pool', pool, '--json'])
      if (ls.status === 0) {
        assert.deepEqual((ls.json as {checkpoints: {name: string}[]}).checkpoints.map((c) => c.name).filter((n) => n.startsWith('f-')), [], describeRun(ls))
        const gc = await cli(['pool', 'gc', '--pool', pool, '--json'])
        assert.equal(gc.status, 0, describeRun(gc))
        const fsck = await cli(['pool', 'fsck', '--pool', pool, '--json'])
        assert.equal(fsck.status, 0, describeRun(fsck))
      }

      // And the next checkpoint works, reclaiming the leftover trampoline page.
      const ok = await cli(['checkpoint', String(fx.pid), '--name', `after-${point}`, '--pool', pool, '--json'])
      assert.equal(ok.status, 0, describeRun(ok))
      const again = await requestCheck(fx.logPath, fx.pid)
      assert.equal(again.fields['ok'], '1', again.line)
    })
  }

  it('repeated kills around the trampoline never stack pages: at most one tagged page at a time, none after a successful checkpoint', async () => {
    const fx = await startFixture('memtouch', {mib: 8})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const before = allMappings(fx.pid)
    const execBefore = anonExecMappings(fx.pid)
    // A run that finds a leftover reuses it (so it no longer reaches the mmap): it may then succeed instead of dying.
    const points = ['fork-mmap-exit', 'fork-mmap-exit', 'fork-mmap-exit', 'fork-trampoline-ready', 'fork-mmap-exit', 'fork-clone-exit', 'fork-mmap-exit']
    let killed = 0
    for (const [i, point] of points.entries()) {
      const run = await cli(['checkpoint', String(fx.pid), '--name', `stack-${i}`, '--pool', pool, '--json'], {env: {CXLFORK_FAULT: point}})
      assert.ok(run.signal === 'SIGKILL' || run.status === 0, describeRun(run))
      if (run.signal === 'SIGKILL') killed++
      await reapStrayZombies([fx.pid])
      const extra = anonExecMappings(fx.pid).filter((range) => !execBefore.includes(range))
      assert.ok(extra.length <= 1, `after ${point}: ${extra.join(', ')}`)
      for (const range of extra) {
        const [start, end] = range.split('-').map((hex) => BigInt(`0x${hex}`)) as [bigint, bigint]
        assert.equal(end - start, 4096n, `one page: ${range}`)
        assert.equal(start & 0xffffffffn, 0xcf0fc000n, `tagged address: ${range}`)
      }
    }
    assert.ok(killed >= 4, `${killed} of ${points.length} runs died at their fault point`)
    for (const name of ['clean-1', 'clean-2']) {
      const ok = await cli(['checkpoint', String(fx.pid), '--name', name, '--pool', pool, '--json'])
      assert.equal(ok.status, 0, describeRun(ok))
      assert.deepEqual(allMappings(fx.pid), before, `no mapping left or changed after ${name}`)
    }
    const check = await requestCheck(fx.logPath, fx.pid)
    assert.equal(check.fields['ok'], '1', check.line)
    assert.equal(check.fields['crc'], fx.ready.fields['crc'], 'memory checksum unchanged')
    await reapStrayZombies([fx.pid])
  })
})

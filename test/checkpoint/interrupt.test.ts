/**
 * SIGTERM (or SIGINT, SIGHUP) during a checkpoint aborts it at the next safe
 * point (issue 14, item 5): the target runs on as it was, nothing is left in
 * the pool, and the command exits 128+N with INTERRUPTED. Before, the signal
 * was deferred and then lost: the checkpoint completed and the command
 * exited 0.
 */
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'

import {Pool} from '../../src/pool/index.js'
import {SIG, tgkill} from '../../src/sys/syscall.js'
import {procStat, requestCheck, startFixture, waitForTicks} from '../helpers/fixtures.js'
import {describeRun, installCleanupHooks, poolPath, reapStrayZombies, startCli, until} from '../restore/helpers.js'

function mappings(pid: number): string {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
}

function assertPoolEmpty(path: string): void {
  const pool = Pool.open(path)
  try {
    assert.deepEqual(pool.list(), [], 'no checkpoint published')
    const info = pool.info()
    assert.equal(info.used, 0, 'no unit left allocated')
    assert.equal(info.buildsInProgress, 0)
    assert.equal(pool.gc().bytesFreed, 0, 'nothing for gc to free')
  } finally {
    pool.close()
  }
}

describe('checkpoint: a terminating signal aborts it cleanly', function () {
  this.timeout(180_000)

  installCleanupHooks('interrupt')

  it('SIGTERM at the last safe point (pages written, nothing published): exit 143 INTERRUPTED, target unharmed, pool empty', async () => {
    const pool = poolPath('interrupt')
    Pool.create(pool, {size: 256n << 20n}).close()
    const fx = await startFixture('memtouch', {mib: 32})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const before = mappings(fx.pid)
    // The CLI stops itself at the point (CXLFORK_FAULT_STOP); SIGTERM goes to its main thread, then SIGCONT.
    const run = startCli(['checkpoint', String(fx.pid), '--name', 'stopped', '--pool', pool, '--json'], {env: {CXLFORK_FAULT_STOP: 'pages-written'}})
    const cliPid = run.child.pid!
    await until(() => procStat(cliPid)?.state === 'T', 'the CLI stopped at pages-written', 60_000)
    tgkill(cliPid, cliPid, SIG.TERM)
    process.kill(cliPid, 'SIGCONT')
    const result = await run.done
    assert.equal(result.status, 143, describeRun(result))
    assert.equal(result.json?.error?.code, 'INTERRUPTED', describeRun(result))
    assert.equal(result.json.error.exitCode, 143)
    assertPoolEmpty(pool)
    await reapStrayZombies([fx.pid])
    assert.equal(mappings(fx.pid), before, 'target layout as it was')
    const check = await requestCheck(fx.logPath, fx.pid)
    assert.equal(check.fields['ok'], '1', check.line)
    assert.equal(check.fields['crc'], fx.ready.fields['crc'], 'memory as it was')
  })

  it('SIGTERM while a 512 MiB target is being written: exit 143, nothing kept; a checkpoint afterwards succeeds', async () => {
    const pool = poolPath('interrupt-big')
    Pool.create(pool, {size: 2n << 30n}).close()
    const fx = await startFixture('memtouch', {mib: 512})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const observer = Pool.open(pool)
    let result
    try {
      const run = startCli(['checkpoint', String(fx.pid), '--name', 'big', '--pool', pool, '--json'])
      // Mid-checkpoint: its build has claimed data segments (the snapshot is writing its pages).
      await until(() => observer.info().data.segmentsUsed > 0 || run.child.exitCode !== null, 'the checkpoint writing its pages', 60_000)
      run.child.kill('SIGTERM')
      result = await run.done
    } finally {
      observer.close()
    }
    assert.equal(result.status, 143, describeRun(result))
    assert.equal(result.json?.error?.code, 'INTERRUPTED', describeRun(result))
    assertPoolEmpty(pool)
    await reapStrayZombies([fx.pid])
    const check = await requestCheck(fx.logPath, fx.pid)
    assert.equal(check.fields['ok'], '1', check.line)
    // Asked again without a signal, it is taken.
    const again = startCli(['checkpoint', String(fx.pid), '--name', 'big', '--pool', pool, '--json'])
    const ok = await again.done
    assert.equal(ok.status, 0, describeRun(ok))
    await reapStrayZombies([fx.pid])
  })
})

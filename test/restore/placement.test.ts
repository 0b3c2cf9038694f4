/**
 * Two things a checkpoint or restore does beside its main job, checked on real processes:
 * - a provisioned pool (`pool init --provision`) holds all of its memory from the start and
 *   keeps it when a checkpoint is removed; a sparse pool takes memory as it is written and
 *   gives it back;
 * - cxlfork moves its own thread next to the process it drives (src/sys/affinity.ts), but
 *   the target's CPU affinity is left as it was and a clone gets the restorer's, never a pin.
 */
import assert from 'node:assert/strict'
import {cpus} from 'node:os'
import {readFileSync, statSync} from 'node:fs'

import {processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, describeRun, installCleanupHooks, poolPath} from './helpers.js'

const MIB = 1 << 20

function allowedCpus(pid: number | 'self'): string {
  const match = /^Cpus_allowed_list:\s*(\S+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  assert.ok(match, `Cpus_allowed_list of ${pid}`)
  return match[1]!
}

async function poolInfo(pool: string): Promise<{provisioned: boolean; residentBytes: number; size: number; used: number}> {
  const info = await cli(['pool', 'info', '--json', '--pool', pool])
  assert.equal(info.status, 0, describeRun(info))
  return info.json
}

describe('provisioned pools and CPU placement', function () {
  this.timeout(120_000)

  installCleanupHooks('placement')

  it('a provisioned pool holds all its memory from init on and keeps it after rm; a sparse pool gives it back', async () => {
    const fx = await startFixture('memtouch', {mib: 16})
    for (const provisioned of [true, false]) {
      const pool = poolPath(provisioned ? 'provisioned' : 'sparse')
      const init = await cli(['pool', 'init', '--size', '128M', '--json', '--pool', pool, ...(provisioned ? ['--provision'] : [])])
      assert.equal(init.status, 0, describeRun(init))
      assert.equal(init.json.provisioned, provisioned)
      const atInit = await poolInfo(pool)
      assert.equal(atInit.provisioned, provisioned)
      assert.equal(atInit.residentBytes, statSync(pool).blocks * 512)
      if (provisioned) assert.equal(atInit.residentBytes, 128 * MIB, 'every byte allocated at init')
      else assert.ok(atInit.residentBytes < MIB, `a new sparse pool holds ${atInit.residentBytes} bytes`)

      const ck = await cli(['checkpoint', String(fx.pid), '--name', 'p', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const restored = await cli(['restore', 'p', '--json', '--pool', pool])
      assert.equal(restored.status, 0, describeRun(restored))
      trackPid(restored.json.pid)
      const check = await requestCheck(fx.logPath, restored.json.pid)
      assert.equal(check.fields.ok, '1', check.line)
      assert.equal(check.fields.crc, fx.ready.fields.crc, check.line)
      const withCheckpoint = await poolInfo(pool)
      if (provisioned) assert.equal(withCheckpoint.residentBytes, 128 * MIB)
      else assert.ok(withCheckpoint.residentBytes >= 16 * MIB, `sparse pool with a 16 MiB checkpoint holds ${withCheckpoint.residentBytes} bytes`)

      process.kill(restored.json.pid, 'SIGKILL')
      for (let i = 0; i < 50 && processExists(restored.json.pid); i++) await new Promise((resolve) => setTimeout(resolve, 20))
      const gc = await cli(['pool', 'gc', '--json', '--pool', pool])
      assert.equal(gc.status, 0, describeRun(gc))
      const rm = await cli(['rm', 'p', '--json', '--pool', pool])
      assert.equal(rm.status, 0, describeRun(rm))
      const after = await poolInfo(pool)
      assert.equal(after.used, 0)
      if (provisioned) assert.equal(after.residentBytes, 128 * MIB, 'a provisioned pool keeps its memory')
      else assert.ok(after.residentBytes <= atInit.residentBytes + MIB, `sparse pool after rm holds ${after.residentBytes} bytes (at init ${atInit.residentBytes})`)
    }
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', original.line)
  })

  it('checkpoint and restore leave the CPU affinity of the target and of the clone as they were', async function () {
    if (cpus().length < 2) this.skip()
    const fx = await startFixture('memtouch', {mib: 8})
    const pool = poolPath('affinity')
    // The target may only run on CPU 1: a cxlfork allowed there pins itself to it; one kept on CPU 0 cannot.
    const taskset = await import('node:child_process').then(({spawnSync}) => spawnSync('taskset', ['-pc', '1', String(fx.pid)]))
    assert.equal(taskset.status, 0, String(taskset.stderr))
    await waitForTicks(fx.logPath, fx.pid, 1)
    for (const [name, cpuList] of [['free', undefined], ['cpu0', '0']] as const) {
      const ck = await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', pool], cpuList === undefined ? {} : {cpus: cpuList})
      assert.equal(ck.status, 0, describeRun(ck))
      assert.equal(allowedCpus(fx.pid), '1', `the target's affinity after the checkpoint by a ${name} cxlfork`)
    }
    const ours = allowedCpus('self')
    const clone = await cli(['restore', 'free', '--json', '--pool', pool])
    assert.equal(clone.status, 0, describeRun(clone))
    trackPid(clone.json.pid)
    assert.equal(allowedCpus(clone.json.pid), ours, 'a clone runs where its restorer could, not pinned')
    const narrowed = await cli(['restore', 'free', '--json', '--pool', pool], {cpus: '1'})
    assert.equal(narrowed.status, 0, describeRun(narrowed))
    trackPid(narrowed.json.pid)
    assert.equal(allowedCpus(narrowed.json.pid), '1', 'a clone inherits the CPUs of a restorer started with taskset')
    for (const pid of [fx.pid, clone.json.pid, narrowed.json.pid]) {
      const check = await requestCheck(fx.logPath, pid)
      assert.equal(check.fields.ok, '1', check.line)
    }
  })
})

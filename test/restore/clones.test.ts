/**
 * Several clones of one checkpoint at once, while the original runs on; the pool counts them
 * as live references, refuses `rm` while any lives, and lets gc + rm reclaim everything after.
 */
import assert from 'node:assert/strict'

import {
  lastTick, processExists, requestCheck, requestGrow, startFixture, trackPid, waitForExit, waitForTicks,
} from '../helpers/fixtures.js'
import {cli, describeRun, installCleanupHooks, note, poolPath} from './helpers.js'

const CLONES = 4

describe('restore: concurrent clones of one checkpoint', function () {
  this.timeout(120_000)

  installCleanupHooks('clones')

  it(`${CLONES} clones run concurrently with the original; references follow them; rm refused until they are gone and gc ran`, async () => {
    const pool = poolPath('clones')
    const fx = await startFixture('memtouch', {mib: 16})
    await waitForTicks(fx.logPath, fx.pid, 3)
    const before = Number(lastTick(fx.logPath, fx.pid)!.fields.n)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'many', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))

    // CLONES restores at the same time, each its own CLI process.
    const runs = await Promise.all(Array.from({length: CLONES}, () => cli(['restore', 'many', '--json', '--pool', pool])))
    const clones: number[] = []
    for (const run of runs) {
      assert.equal(run.status, 0, describeRun(run))
      clones.push(run.json.pid)
      trackPid(run.json.pid)
    }
    note(`${CLONES} concurrent restores: restore_time ${runs.map((r) => (r.json.stats.restore_time / 1000).toFixed(1)).join(', ')} ms; CLI wall ${runs.map((r) => r.ms.toFixed(0)).join(', ')} ms`)
    assert.equal(new Set(clones).size, CLONES, `distinct clone pids: ${clones.join(', ')}`)
    assert.ok(!clones.includes(fx.pid))

    // All of them (and the original) tick, each clone from the checkpointed counter on.
    await Promise.all([fx.pid, ...clones].map((pid) => waitForTicks(fx.logPath, pid, 2)))
    const checks = await Promise.all(clones.map((pid) => requestCheck(fx.logPath, pid)))
    for (const check of checks) {
      assert.equal(check.fields.ok, '1', check.line)
      assert.equal(check.fields.crc, fx.ready.fields.crc, check.line)
    }
    for (const pid of clones) {
      const first = Number(lastTick(fx.logPath, pid)!.fields.n)
      assert.ok(first >= before, `clone ${pid} n=${first} >= ${before}`)
    }

    // Clones are private copies: one grows, the others do not see it.
    const grew = await requestGrow(fx.logPath, clones[0]!)
    assert.equal(grew.fields.ok, '1', grew.line)
    const other = await requestCheck(fx.logPath, clones[1]!)
    assert.equal(other.fields.ok, '1', other.line)
    assert.equal(other.fields.grown, '0', `clone ${clones[1]} did not grow: ${other.line}`)
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', original.line)
    assert.equal(original.fields.grown, '0', original.line)

    // The pool sees CLONES live references, held by exactly these pids.
    const inspect = await cli(['inspect', 'many', '--json', '--pool', pool])
    assert.equal(inspect.status, 0, describeRun(inspect))
    assert.equal(inspect.json.liveRefs, CLONES, describeRun(inspect))
    const alive = inspect.json.references.filter((r: any) => r.alive)
    assert.deepEqual(alive.map((r: any) => r.pid).sort(), [...clones].sort(), 'references name the clone pids')
    assert.ok(alive.every((r: any) => r.local === true), 'references are of this host')
    const ls = await cli(['ls', '--json', '--pool', pool])
    assert.equal(ls.status, 0, describeRun(ls))
    assert.equal(ls.json.checkpoints.length, 1)
    assert.equal(ls.json.checkpoints[0].liveRefs, CLONES)
    const info = await cli(['pool', 'info', '--json', '--pool', pool])
    assert.equal(info.json.liveClones, CLONES, describeRun(info))

    // rm while clones live: refused with exit 7, nothing changes, clones undisturbed.
    const refused = await cli(['rm', 'many', '--json', '--pool', pool])
    assert.equal(refused.status, 7, describeRun(refused))
    assert.equal(refused.json.error.code, 'CHECKPOINT_IN_USE', describeRun(refused))
    assert.match(refused.json.error.message, /many/, 'the error names the checkpoint')
    const still = await cli(['ls', '--json', '--pool', pool])
    assert.equal(still.json.checkpoints[0].state, 'published')
    assert.equal((await requestCheck(fx.logPath, clones[2]!)).fields.ok, '1')

    // Kill half: live references drop to the survivors.
    for (const pid of clones.slice(0, 2)) process.kill(pid, 'SIGKILL')
    for (const pid of clones.slice(0, 2)) assert.ok(await waitForExit(pid), `clone ${pid} died`)
    const half = await cli(['ls', '--json', '--pool', pool])
    assert.equal(half.json.checkpoints[0].liveRefs, CLONES - 2, describeRun(half))
    // still refused while 2 live
    assert.equal((await cli(['rm', 'many', '--json', '--pool', pool])).status, 7)

    for (const pid of clones.slice(2)) process.kill(pid, 'SIGKILL')
    for (const pid of clones.slice(2)) assert.ok(await waitForExit(pid), `clone ${pid} died`)
    const none = await cli(['ls', '--json', '--pool', pool])
    assert.equal(none.json.checkpoints[0].liveRefs, 0, describeRun(none))

    // Dead references stay recorded (a refused rm already collected those dead at that time)
    // until gc releases them.
    const dead = await cli(['inspect', 'many', '--json', '--pool', pool])
    const deadRefs = dead.json.references.length
    assert.ok(deadRefs > 0 && dead.json.references.every((r: any) => !r.alive), `dead references await gc: ${describeRun(dead)}`)
    const gc = await cli(['pool', 'gc', '--json', '--pool', pool])
    assert.equal(gc.status, 0, describeRun(gc))
    assert.equal(gc.json.referencesReleased, deadRefs, describeRun(gc))
    const after = await cli(['inspect', 'many', '--json', '--pool', pool])
    assert.deepEqual(after.json.references, [], 'gc released every dead reference')
    assert.equal(after.json.liveRefs, 0)

    const rm = await cli(['rm', 'many', '--json', '--pool', pool])
    assert.equal(rm.status, 0, describeRun(rm))
    assert.equal(rm.json.state, 'removed')
    assert.ok(rm.json.bytesFreed >= 16 << 20, `rm freed the data: ${rm.stdout}`)
    const empty = await cli(['ls', '--json', '--pool', pool])
    assert.deepEqual(empty.json.checkpoints, [])
    const fsck = await cli(['pool', 'fsck', '--json', '--pool', pool])
    assert.equal(fsck.status, 0, describeRun(fsck))
    assert.equal(fsck.json.clean, true)
    assert.deepEqual(fsck.json.problems, [], describeRun(fsck))

    // The original never noticed.
    assert.ok(processExists(fx.pid))
    assert.equal((await fx.check()).fields.ok, '1')
    const gone = await cli(['restore', 'many', '--json', '--pool', pool])
    assert.equal(gone.status, 3, describeRun(gone))
  })
  it('a clone of a clone: a mow clone (its pages mapped from the pool) is checkpointed with those pages stored, restores after the pool changed, and outlives the first checkpoint', async () => {
    const pool = poolPath('clones')
    const fx = await startFixture('memtouch', {mib: 16})
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'gen1', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const first = await cli(['restore', 'gen1', '--policy', 'mow', '--json', '--pool', pool])
    assert.equal(first.status, 0, describeRun(first))
    const clone = first.json.pid as number
    trackPid(clone)
    assert.ok(first.json.stats.pages_mapped > 4096, `the first clone maps its 16 MiB from the pool: ${first.json.stats.pages_mapped} pages`)
    await waitForTicks(fx.logPath, clone, 2)
    const again = await cli(['checkpoint', String(clone), '--name', 'gen2', '--json', '--pool', pool])
    assert.equal(again.status, 0, describeRun(again))
    assert.ok(again.json.pages >= first.json.stats.pages_mapped, `gen2 stores the pool-backed pages too: ${again.json.pages} pages`)
    const inspect = await cli(['inspect', 'gen2', '--json', '--pool', pool])
    assert.ok(!inspect.json.process.vmas.some((vma: {path?: string}) => vma.path === pool), 'gen2 maps no file of the pool')
    // The pool changed since gen2 (gen3 written): a restore that depended on the pool file would be refused (BACKING_FILE_CHANGED).
    assert.equal((await cli(['checkpoint', String(fx.pid), '--name', 'gen3', '--json', '--pool', pool])).status, 0)
    const second = await cli(['restore', 'gen2', '--json', '--pool', pool])
    assert.equal(second.status, 0, describeRun(second))
    trackPid(second.json.pid)
    assert.equal((await requestCheck(fx.logPath, second.json.pid)).fields.ok, '1', 'the clone of the clone passes its checks')
    // gen1 gone (its clone killed, then removed): gen2 does not need its pages.
    process.kill(clone, 'SIGKILL')
    await waitForExit(clone)
    assert.equal((await cli(['pool', 'gc', '--json', '--pool', pool])).status, 0)
    const rm = await cli(['rm', 'gen1', '--json', '--pool', pool])
    assert.equal(rm.status, 0, describeRun(rm))
    const third = await cli(['restore', 'gen2', '--policy', 'local', '--json', '--pool', pool])
    assert.equal(third.status, 0, describeRun(third))
    trackPid(third.json.pid)
    assert.equal((await requestCheck(fx.logPath, third.json.pid)).fields.ok, '1', 'restored from gen2 alone')
  })
})

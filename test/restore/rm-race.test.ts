/**
 * A refused `rm` never makes a restore fail (issue 14, item 5). `rm` used to
 * flip the checkpoint to DELETING before counting its clones and flip it back
 * when it found one, and a restore that looked in between failed with
 * CHECKPOINT_DELETING (exit 3) while the checkpoint stayed. Now rm decides
 * under the pool's directory lock and changes nothing when it refuses.
 */
import assert from 'node:assert/strict'

import {requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {exited, startWorker} from '../pool/helpers.js'
import {cli, describeRun, installCleanupHooks, poolPath} from './helpers.js'

const ROUNDS = 20

describe('restore: concurrent rm of a referenced checkpoint', function () {
  this.timeout(240_000)

  installCleanupHooks('rm-race')

  it(`${ROUNDS} rounds of restore racing rm (refused: a clone runs): every restore succeeds, every rm is CHECKPOINT_IN_USE`, async () => {
    const pool = poolPath('rm-race')
    const fx = await startFixture('memtouch', {mib: 8})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'busy', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const first = await cli(['restore', 'busy', '--json', '--pool', pool])
    assert.equal(first.status, 0, describeRun(first))
    trackPid(first.json.pid)

    // Besides the CLI rm of each round, a process tries `rm busy` in a loop the whole time.
    const looping = startWorker(['rm-loop', pool, 'busy'])
    let loopErr = ''
    looping.stderr?.on('data', (chunk: Buffer) => {
      loopErr += chunk.toString()
    })
    try {
      await new Promise<void>((resolve) => looping.stdout?.once('data', () => resolve()))
      for (let round = 0; round < ROUNDS; round++) {
        const [restore, rm] = await Promise.all([cli(['restore', 'busy', '--json', '--pool', pool]), cli(['rm', 'busy', '--json', '--pool', pool])])
        if (restore.json?.pid) trackPid(restore.json.pid)
        assert.equal(restore.status, 0, `round ${round}: ${describeRun(restore)}`)
        assert.equal(rm.status, 7, `round ${round}: ${describeRun(rm)}`)
        assert.equal(rm.json.error.code, 'CHECKPOINT_IN_USE')
        assert.equal(looping.exitCode, null, `the looping rm was refused every time: ${loopErr}`)
      }
    } finally {
      looping.kill('SIGKILL')
      await exited(looping)
    }
    const check = await requestCheck(fx.logPath, first.json.pid)
    assert.equal(check.fields['ok'], '1', check.line)
    const ls = await cli(['ls', '--json', '--pool', pool])
    const busy = (ls.json.checkpoints as {name: string; state: string; liveRefs: number}[]).find((c) => c.name === 'busy')
    assert.equal(busy?.state, 'published')
    assert.equal(busy?.liveRefs, ROUNDS + 1)
  })
})

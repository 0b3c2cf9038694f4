/**
 * A restore killed right after spawning its stub, before it could seize it (so before
 * PTRACE_O_EXITKILL applies), must not leave the stub behind as an orphan: the stub asks
 * for SIGKILL at its parent's death and checks its parent at birth, and a stub nobody
 * seized ends itself after STUB_PARK_SECONDS (src/inject/stub.ts).
 */
import assert from 'node:assert/strict'

import {startFixture, waitForTicks} from '../helpers/fixtures.js'
import {STUB_PARK_SECONDS} from '../../src/inject/stub.js'
import {allProcesses, cli, describeRun, installCleanupHooks, poolPath, sleep, until} from './helpers.js'

describe('restore: no orphaned stub', function () {
  this.timeout(60_000)

  installCleanupHooks('orphans')

  for (const threads of [false, true]) {
    it(`cxlfork SIGKILLed right after spawning the stub (${threads ? 'a multi-threaded checkpoint: its namespace init' : 'a single process'}): no cxlfork-stub is left`, async () => {
      const pool = poolPath('orphans')
      const fx = threads ? await startFixture('threads') : await startFixture('memtouch', {mib: 4})
      await waitForTicks(fx.logPath, fx.pid, 1)
      const ck = await cli(['checkpoint', String(fx.pid), '--name', 'o', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const before = new Set(allProcesses().map((p) => p.pid))
      for (let round = 0; round < 3; round++) {
        const run = await cli(['restore', 'o', '--json', '--pool', pool], {env: {CXLFORK_FAULT: 'stub-spawned'}})
        assert.equal(run.signal, 'SIGKILL', describeRun(run))
      }
      // Gone at once by the death signal, or, where it came too late (a namespace init cannot check
      // its parent at birth), once its park runs out (STUB_PARK_SECONDS).
      const strays = (): ReturnType<typeof allProcesses> => allProcesses().filter((p) => !before.has(p.pid) && p.state !== 'Z' && p.ppid === 1 && (p.comm === 'cxlfork-stub' || p.comm === 'cxlfork-init'))
      await until(() => strays().length === 0, `every stub spawned by the killed restores is gone: ${JSON.stringify(strays())}`, (STUB_PARK_SECONDS + 3) * 1000)
      // A restore that is not killed still gives a clone that outlives the command.
      const run = await cli(['restore', 'o', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const {trackPid, requestCheck} = await import('../helpers/fixtures.js')
      trackPid(run.json.pid)
      await sleep(200)
      const check = await requestCheck(fx.logPath, run.json.pid)
      assert.equal(check.fields.ok, '1', check.line)
    })
  }
})

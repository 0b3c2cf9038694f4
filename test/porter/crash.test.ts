/**
 * Issue 15, crash safety: a porter SIGKILLed while it restores (at each
 * fault point of a restore, and at a random instant in a stream of them)
 * leaves the pool consistent (fsck), no ghost and no half-built clone, and
 * clones it had released run on untouched. A porter restarted on the same
 * socket (stale socket and pid file) recovers and serves.
 */
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'

import {PorterUnreachable, porterRequest} from '../../src/porter/client.js'
import {processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {seeded} from '../helpers/seeded.js'
import {cli, describeRun, installCleanupHooks, note, poolPath} from '../restore/helpers.js'
import {type RunningPorter, livingStubs, removeSocketDirs, sleep, socketDir, startPorter, stopPorter} from './helpers.js'

function comm(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  } catch {
    return undefined
  }
}

async function readyGhosts(socket: string, count: number): Promise<number[]> {
  for (let i = 0; i < 200; i++) {
    const pids = (await porterRequest(socket, 'GET', '/v1/status')).body.ghostPids as number[]
    if (pids.length >= count) return pids
    await sleep(25)
  }
  throw new Error('ghosts not ready')
}

describe('porter: SIGKILL while restoring leaves nothing behind (issue 15)', function () {
  this.timeout(240_000)
  installCleanupHooks('porter-crash')
  const porters: RunningPorter[] = []

  afterEach(async () => {
    for (const porter of porters.splice(0)) await stopPorter(porter)
  })
  after(() => removeSocketDirs())

  /** After the porter died: references of gone processes released by gc, every live reference a running clone (not a stub), fsck clean. */
  async function expectClean(pool: string, ghosts: number[], what: string): Promise<number[]> {
    // EXITKILL is delivered as the tracer exits; give the kernel a moment to finish the ghosts.
    for (let i = 0; i < 100 && livingStubs(ghosts).length > 0; i++) await sleep(20)
    assert.deepEqual(livingStubs(ghosts), [], `${what}: no ghost survives the porter`)
    const gc = await cli(['pool', 'gc', '--json', '--pool', pool])
    assert.equal(gc.status, 0, describeRun(gc))
    const inspect = await cli(['inspect', 'web', '--json', '--pool', pool])
    assert.equal(inspect.status, 0, describeRun(inspect))
    const alive = inspect.json.references.filter((r: any) => r.alive).map((r: any) => r.pid as number)
    for (const pid of alive) trackPid(pid)
    assert.equal(inspect.json.references.length, alive.length, `${what}: gc released every reference of a gone process: ${JSON.stringify(inspect.json.references)}`)
    for (const pid of alive) assert.equal(comm(pid), 'memtouch', `${what}: reference ${pid} is a released clone, not a half-built one`)
    const fsck = await cli(['pool', 'fsck', '--json', '--pool', pool])
    assert.equal(fsck.status, 0, `${what}: ${describeRun(fsck)}`)
    return alive
  }

  for (const point of ['porter-stub-taken', 'restore-referenced', 'porter-restored'] as const) {
    it(`SIGKILL at ${point}: the CLI says PORTER_FAILED, no ghost or half-built clone is left, a released clone runs on; a restarted porter serves`, async () => {
      const pool = poolPath('crash')
      const fx = await startFixture('memtouch', {mib: 8})
      await waitForTicks(fx.logPath, fx.pid, 2)
      assert.equal((await cli(['checkpoint', String(fx.pid), '--name', 'web', '--json', '--pool', pool])).status, 0)
      const socket = `${socketDir()}/p.sock`
      const porter = await startPorter(pool, socket, {ghosts: 2, env: {CXLFORK_FAULT: point}})
      porters.push(porter)
      const ghosts = await readyGhosts(socket, 2)
      const run = await cli(['restore', 'web', '--json', '--pool', pool], {env: {CXLFORK_PORTER_SOCKET: socket}})
      assert.equal(run.status, 1, describeRun(run))
      assert.equal(run.json.error.code, 'PORTER_FAILED', describeRun(run))
      assert.deepEqual(await porter.exited, {code: null, signal: 'SIGKILL'})
      const alive = await expectClean(pool, ghosts, point)
      // Only at porter-restored had the clone been released: it runs on with the checkpoint's memory.
      assert.equal(alive.length, point === 'porter-restored' ? 1 : 0, `${point}: live clones ${alive.join(', ')}`)
      for (const pid of alive) {
        const check = await requestCheck(fx.logPath, pid)
        assert.equal(check.fields.crc, fx.ready.fields.crc, check.line)
      }
      // The dead porter's socket is still there: the CLI finds nobody listening and restores itself.
      const stale = await cli(['restore', 'web', '--json', '--pool', pool], {env: {CXLFORK_PORTER_SOCKET: socket}})
      assert.equal(stale.status, 0, describeRun(stale))
      trackPid(stale.json.pid)
      assert.equal(stale.json.servedBy, 'cli')
      // Restart on the same socket: the stale socket and pid file are taken over.
      const again = await startPorter(pool, socket, {ghosts: 1})
      porters.push(again)
      const served = await cli(['restore', 'web', '--json', '--pool', pool], {env: {CXLFORK_PORTER_SOCKET: socket}})
      assert.equal(served.status, 0, describeRun(served))
      trackPid(served.json.pid)
      assert.equal(served.json.servedBy, 'porter')
      for (const pid of alive) assert.ok(processExists(pid), `released clone ${pid} untouched by the restart`)
    })
  }

  it('SIGKILL at a random instant during a stream of restores: every answered clone runs, nothing half-built or ghostly remains after gc; restart recovers', async () => {
    const pool = poolPath('crash')
    const fx = await startFixture('memtouch', {mib: 8})
    await waitForTicks(fx.logPath, fx.pid, 2)
    assert.equal((await cli(['checkpoint', String(fx.pid), '--name', 'web', '--json', '--pool', pool])).status, 0)
    const socket = `${socketDir()}/p.sock`
    const {rng, replay} = seeded('CXLFORK_PORTER_KILL_SEED')
    const REQUESTS = 16
    let unanswered = 0
    for (let round = 0; round < 3; round++) {
      const porter = await startPorter(pool, socket, {ghosts: 2})
      porters.push(porter)
      const ghosts = await readyGhosts(socket, 2)
      // A stream of restores, the porter killed once a random number of them (1 to 14) are answered: with restores of a few ms, a
      // kill at a fixed delay could come after the whole stream (it did, once they became fast).
      let settled = 0
      const killAfter = 1 + Math.floor(rng() * (REQUESTS - 2))
      let reached: () => void = () => undefined
      const enough = new Promise<void>((resolve) => (reached = resolve))
      const replies = Array.from({length: REQUESTS}, (_, i) => porterRequest(socket, 'POST', '/v1/restore', {name: 'web', ...(i % 3 === 2 ? {policy: 'local'} : {})}).then(
        (reply) => reply, (error: unknown) => (error instanceof PorterUnreachable ? undefined : Promise.reject(error))).finally(() => {
        if (++settled === killAfter) reached()
      }))
      await Promise.race([enough, sleep(60_000)])
      porter.child.kill('SIGKILL')
      await porter.exited
      const answered = (await Promise.all(replies)).filter((reply) => reply?.status === 200).map((reply) => reply!.body.pid as number)
      for (const pid of answered) trackPid(pid)
      unanswered += REQUESTS - answered.length
      const alive = await expectClean(pool, [...ghosts], `round ${round}`)
      for (const pid of answered) assert.ok(alive.includes(pid), `answered clone ${pid} is alive and referenced`)
      for (const pid of alive) {
        const check = await requestCheck(fx.logPath, pid)
        assert.equal(check.fields.crc, fx.ready.fields.crc, check.line)
      }
    }
    note(`random SIGKILL (${replay}): ${unanswered} of ${3 * REQUESTS} restore requests were cut off by the kill`)
    assert.ok(unanswered > 0, 'the kill came while restores were still queued or running')
    const last = await startPorter(pool, socket, {ghosts: 1})
    porters.push(last)
    const status = await porterRequest(socket, 'GET', '/v1/status')
    assert.equal(status.body.pid, last.pid)
  })
})

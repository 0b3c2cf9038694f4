/**
 * Issue 10's runtimes through the CRIU-format path: a Node.js process with worker_threads
 * (its threads, epoll instances, eventfds and pipes) and Python threading workers are each
 * dumped live with `criu dump`, restored twice with `criu restore`, and imported into a
 * pool and restored there under mow and local. Every clone proves its state by its own
 * checks. A Python multiprocessing pool holds its heap arena through a deleted tmpfs file,
 * which this path does not write: refused by name, the pool untouched (the pool path
 * carries it, test/restore/runtimes.test.ts).
 */
import assert from 'node:assert/strict'

import {procStat, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, imagesDir, installSuiteHooks, note, okJson, poolFile} from './helpers.js'


describe('criu-e2e: runtimes (Node worker_threads, Python threads, a multiprocessing pool) through criu dump, restore and import', function () {
  this.timeout(240_000)

  installSuiteHooks('criu-e2e runtimes')

  for (const c of [
    {fixture: 'nodeworkers', what: 'Node.js with 2 worker_threads'},
    {fixture: 'pythreads', what: 'Python threading workers'},
  ] as const) {
    it(`${c.fixture} (${c.what}): dumped live, restored twice by criu restore and through criu import under mow and local; every clone passes its own checks`, async () => {
      const fx = await startFixture(c.fixture)
      await waitForTicks(fx.logPath, fx.pid, 2)
      const images = imagesDir(c.fixture)
      const dump = okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json']))
      note(`criu dump ${c.fixture}: ${procStat(fx.pid)!.threads} threads, ${dump.files.length} images, downtime ${(dump.downtimeUs / 1000).toFixed(1)} ms`)
      const clones: number[] = []
      for (let round = 0; round < 2; round++) {
        const restored = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
        clones.push(restored.pid)
      }
      const pool = poolFile(c.fixture)
      okJson(await cli(['criu', 'import', '--images', images, '--name', 'imported', '--json', '--pool', pool]))
      for (const policy of ['mow', 'local'] as const) {
        const run = okJson(await cli(['restore', 'imported', '--policy', policy, '--json', '--pool', pool]))
        clones.push(run.pid)
      }
      for (const clone of clones) {
        trackPid(clone)
        const check = await requestCheck(fx.logPath, clone, 30_000)
        assert.equal(check.fields.ok, '1', `clone ${clone} of ${c.fixture}: ${check.line}`)
      }
      assert.equal((await fx.check()).fields.ok, '1', 'the original runs on')
    })
  }

  it('pypool (a multiprocessing.Pool: its heap arena is a deleted tmpfs file): criu dump --tree refuses it by name (CRIU_FD_TYPE), the pool serving on', async () => {
    const fx = await startFixture('pypool')
    await waitForTicks(fx.logPath, fx.pid, 2)
    const run = await cli(['criu', 'dump', String(fx.pid), '--images', imagesDir('pypool'), '--tree', '--json'])
    assert.equal(run.status, 5, JSON.stringify(run.json))
    assert.equal(run.json.error.code, 'CRIU_FD_TYPE')
    assert.match(run.json.error.message, /a memfd or a deleted tmpfs file/)
    assert.match(run.json.error.hint, /cxlfork checkpoint/)
    assert.equal((await fx.check()).fields.ok, '1', 'the pool and its workers serve on')
  })
})

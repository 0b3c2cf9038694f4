import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'

import {Pool} from '../../src/pool/index.js'
import {exited, removeTestPools, startWorker, testPoolPath, waitForLine} from './helpers.js'

function publish(pool: Pool, name: string): void {
  const builder = pool.beginCheckpoint()
  builder.allocateData(3n << 20n)
  builder.addSection(1, new Uint8Array([1, 2, 3]))
  builder.publish(name, {uid: 0})
}

describe('pool: references of running clones', () => {
  after(removeTestPools)

  it('rm is refused while a live clone references the checkpoint; rm --force + gc frees it after the clone dies', async () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    const clone = spawn('sleep', ['30'], {stdio: 'ignore'})
    try {
      publish(pool, 'shared')
      const handle = pool.addReference('shared', {pid: clone.pid!})
      assert.equal(pool.list()[0]!.liveRefs, 1)
      assert.deepEqual(pool.inspect('shared').references.map((r) => [r.pid, r.alive, r.local]), [[clone.pid, true, true]])

      assert.throws(() => pool.remove('shared'), (error: any) => error.code === 'CHECKPOINT_IN_USE' && error.exitCode === 7)
      assert.equal(pool.list()[0]!.state, 'published', 'a refused rm leaves it published')

      const forced = pool.remove('shared', {force: true})
      assert.deepEqual([forced.state, forced.liveRefs], ['deleting', 1])
      assert.throws(() => pool.addReference('shared', {pid: process.pid}), (error: any) => error.code === 'CHECKPOINT_DELETING')
      assert.throws(() => pool.openCheckpoint('shared'), (error: any) => error.code === 'CHECKPOINT_DELETING')
      let gc = pool.gc()
      assert.deepEqual(gc.checkpointsRemoved, [], 'gc keeps it while the clone lives')
      assert.ok(pool.info().used > 0)

      clone.kill('SIGKILL')
      await exited(clone)
      gc = pool.gc()
      assert.deepEqual(gc.checkpointsRemoved, ['shared'])
      assert.equal(gc.referencesReleased, 1)
      assert.equal(pool.info().used, 0)
      assert.deepEqual(pool.list(), [])
      pool.releaseReference(handle) // releasing an already collected reference is harmless
    } finally {
      clone.kill('SIGKILL')
      pool.close()
    }
  })

  it('a reference released by its clone lets rm proceed; a reference of another host lives until that host\'s lease expires', async () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      publish(pool, 'cp')
      const handle = pool.addReference('cp', {pid: process.pid})
      assert.throws(() => pool.remove('cp'))
      pool.releaseReference(handle)
      assert.equal(pool.remove('cp').state, 'removed')

      publish(pool, 'remote')
      // A process of "another host" takes a reference and exits: its pid means nothing here, its lease does.
      const other = startWorker(['reference', path, 'remote'], {CXLFORK_HOST_ID: 'test-host-b', CXLFORK_LEASE_MS: '400'})
      await waitForLine(other, 'ref')
      assert.equal((await exited(other)).code, 0)
      assert.equal(pool.list()[0]!.liveRefs, 1, 'alive while host b\'s lease runs')
      assert.throws(() => pool.remove('remote'), (error: any) => error.code === 'CHECKPOINT_IN_USE')
      assert.ok(pool.info().hostsSeen.some((host) => host.hostname === 'test-host-b' && !host.self))
      await new Promise((resolve) => setTimeout(resolve, 500))
      assert.equal(pool.list()[0]!.liveRefs, 0, 'dead once the lease expired')
      assert.equal(pool.gc().referencesReleased, 1)
      assert.equal(pool.remove('remote').state, 'removed')
      assert.equal(pool.info().used, 0)
    } finally {
      pool.close()
    }
  })
})

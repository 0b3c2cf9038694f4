import assert from 'node:assert/strict'

import {Pool} from '../../src/pool/index.js'
import {exited, removeTestPools, startWorker, testPoolPath} from './helpers.js'
import {assertContentsIntact, assertNoCorruption, assertNoLostSpace, assertNoOverlap} from './verify.js'

const WORKERS = 8
const PER_WORKER = 6

describe('pool: concurrent allocation and publishing', () => {
  after(removeTestPools)

  it(`${WORKERS} processes publish ${PER_WORKER} checkpoints each without overlap, loss or damage`, async () => {
    const path = testPoolPath()
    Pool.create(path, {size: 512n << 20n}).close()
    const workers = Array.from({length: WORKERS}, (_, i) => startWorker(['publish', path, `w${i}`, String(PER_WORKER)]))
    const stderr = workers.map((worker) => {
      let text = ''
      worker.stderr?.on('data', (chunk: Buffer) => {
        text += chunk.toString()
      })
      return () => text
    })
    const results = await Promise.all(workers.map(exited))
    results.forEach((result, i) => assert.equal(result.code, 0, `worker ${i} failed: ${stderr[i]!()}`))

    const pool = Pool.open(path)
    try {
      const checkpoints = pool.list()
      assert.equal(checkpoints.length, WORKERS * PER_WORKER)
      assert.equal(new Set(checkpoints.map((checkpoint) => checkpoint.serial)).size, checkpoints.length, 'serials are unique')
      assert.ok(assertNoOverlap(pool) >= WORKERS * PER_WORKER)
      assertContentsIntact(pool)
      const gc = pool.gc()
      assert.equal(gc.bytesFreed, 0, 'finished workers leave no garbage')
      assertNoLostSpace(pool)
      assertNoCorruption(pool)
      // Removing everything returns the pool to empty.
      for (const checkpoint of checkpoints) pool.remove(checkpoint.name)
      assert.equal(pool.info().used, 0)
    } finally {
      pool.close()
    }
  })

  it('two publishers racing for one name: exactly one wins, the loser gets NAME_TAKEN', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      const first = pool.beginCheckpoint()
      const second = pool.beginCheckpoint()
      first.allocateData(1n)
      second.allocateData(1n)
      first.publish('same', {uid: 0})
      assert.throws(() => second.publish('same', {uid: 0}), (error: any) => error.code === 'NAME_TAKEN' && error.exitCode === 7)
      second.abort()
      assertNoLostSpace(pool)
    } finally {
      pool.close()
    }
  })
})

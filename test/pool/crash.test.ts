import assert from 'node:assert/strict'

import {Pool} from '../../src/pool/index.js'
import {seeded} from '../helpers/seeded.js'
import {exited, removeTestPools, startWorker, testPoolPath, waitForLine} from './helpers.js'
import {assertContentsIntact, assertNoCorruption, assertNoLostSpace, assertNoOverlap} from './verify.js'

const BATCHES = 26
const WORKERS_PER_BATCH = 8

describe('pool: kill -9 at random points of allocate, write, publish, rm and gc', function () {
  // 208 Node workers started 8 at a time: ~60 s alone, several minutes on a loaded 2-core host.
  this.timeout(600_000)
  after(removeTestPools)

  it(`${BATCHES * WORKERS_PER_BATCH} SIGKILLed workers never corrupt the pool, leak space or leave half-built checkpoints`, async () => {
    const path = testPoolPath()
    Pool.create(path, {size: 256n << 20n}).close()
    const pool = Pool.open(path)
    const {rng, replay} = seeded('CXLFORK_CRASH_SEED')
    console.log(`      delays seeded: replay with ${replay}`)
    let kills = 0
    let survivorsSeen = 0
    let buildsReclaimed = 0
    let bytesReclaimed = 0
    let deadBytesSeen = 0
    try {
      for (let batch = 0; batch < BATCHES; batch++) {
        const workers = Array.from({length: WORKERS_PER_BATCH}, (_, i) => startWorker(['churn', path, `b${batch}w${i}`]))
        await Promise.all(workers.map(async (worker, i) => {
          await waitForLine(worker, 'ready')
          // Delays from 0 to ~60 ms spread deaths over every phase of the churn loop
          // (one iteration takes a few ms); batch-dependent so each range gets samples.
          const delay = Math.floor(rng() * (5 + (batch % 6) * 12)) + (i % 2)
          await new Promise((resolve) => setTimeout(resolve, delay))
          worker.kill('SIGKILL')
          const result = await exited(worker)
          assert.equal(result.signal, 'SIGKILL', `worker ${batch}/${i} ended by itself (${result.code}) before being killed`)
          kills++
        }))

        assertNoCorruption(pool)
        // Before gc, `pool info` shows what the dead builds hold; gc frees it (and other garbage) and finds the same builds.
        const dead = pool.info().deadBuilds
        const gc = pool.gc()
        assert.equal(gc.buildsReleased, dead.count, 'pool info counted the builds gc released')
        assert.ok(dead.bytes <= gc.bytesFreed, `pool info's ${dead.bytes} bytes held by dead builds are among the ${gc.bytesFreed} gc freed`)
        if (dead.count > 0) deadBytesSeen += dead.bytes
        assert.deepEqual(pool.info().deadBuilds, {count: 0, bytes: 0})
        buildsReclaimed += gc.buildsReleased
        bytesReclaimed += gc.bytesFreed
        assertNoLostSpace(pool)
        assertNoOverlap(pool)
        assertContentsIntact(pool)
        const info = pool.info()
        assert.equal(info.buildsInProgress, 0)
        survivorsSeen += info.checkpoints
        // Checkpoints marked by rm --force are gone once gc ran: no clone references them.
        assert.equal(info.deleting, 0)
        // Start each batch with an empty pool so every batch can fill it again.
        for (const checkpoint of pool.list()) pool.remove(checkpoint.name)
        assert.equal(pool.info().used, 0)
      }
    } finally {
      pool.close()
    }
    assert.equal(kills, BATCHES * WORKERS_PER_BATCH)
    assert.ok(survivorsSeen > 0, 'some checkpoints were published before the kills')
    // Deaths landed inside builds: their slots and space were recovered by gc.
    assert.ok(buildsReclaimed > BATCHES, `only ${buildsReclaimed} builds were caught half-way`)
    assert.ok(bytesReclaimed > 0)
    assert.ok(deadBytesSeen > 0, 'pool info showed space held by dead builds')
  })
})

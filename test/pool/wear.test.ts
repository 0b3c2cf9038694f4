/**
 * Pool wear (issue 14, item 4): a deleted checkpoint's directory word is
 * reused in place by a later publish (and gc turns trailing tombstones back
 * into empty words), so a small pool takes checkpoints for ever. Before,
 * every deletion left a tombstone for good and a pool of 4,096 directory
 * words refused every checkpoint with DIRECTORY_FULL after ~4,096 creations.
 */
import assert from 'node:assert/strict'

import {Pool} from '../../src/pool/index.js'
import {checkPattern, exited, fillPattern, patternSeed, removeTestPools, startWorker, testPoolPath} from './helpers.js'
import {assertNoCorruption, assertNoLostSpace} from './verify.js'

const SAMPLE = 16384

function publishSmall(pool: Pool, name: string): void {
  const builder = pool.beginCheckpoint()
  try {
    const data = builder.allocateData(BigInt(SAMPLE))
    fillPattern(data.address, SAMPLE, patternSeed(name))
    builder.addSection(1, new TextEncoder().encode(name))
    builder.publish(name, {uid: process.getuid?.() ?? 0})
  } finally {
    builder.abort()
  }
}

function assertIntact(pool: Pool, name: string): void {
  const reader = pool.openCheckpoint(name)
  assert.equal(new TextDecoder().decode(reader.section(1)), name)
  assert.equal(checkPattern(reader.address(reader.dataExtents[0]!.poolOffset), SAMPLE, patternSeed(name)), -1, `data of ${name}`)
}

describe('pool: wear (deleted checkpoints give their directory word back)', function () {
  this.timeout(180_000)
  after(removeTestPools)

  it('creates and removes 20,000 checkpoints in one 64 MiB pool (4,096 directory words); fsck clean, the next checkpoint succeeds', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      assert.equal(pool.header.directorySlots, 4096)
      const live: string[] = []
      const TOTAL = 20_000
      for (let i = 0; i < TOTAL; i++) {
        // Unique names (as timestamps would be), 16 alive at any time: tombstones land between live entries.
        const name = `wear-${i}`
        publishSmall(pool, name)
        live.push(name)
        if (live.length > 16) pool.remove(live.shift()!)
        if (i % 5000 === 4999) assert.ok(pool.info().directory.used < pool.header.directorySlots, `directory words in use after ${i + 1} checkpoints`)
      }
      const before = pool.info().directory
      assert.ok(before.tombstones > 0 && before.used < 4096, JSON.stringify(before))
      for (const name of live) assertIntact(pool, name)
      const fsck = pool.fsck()
      assert.equal(fsck.clean, true, JSON.stringify(fsck.problems.slice(0, 5)))
      assert.deepEqual(fsck.problems, [], 'not even stale findings')
      const gc = pool.gc()
      assert.ok(gc.directoryWordsFreed > 0, 'gc turns trailing tombstones back into empty words')
      assert.equal(gc.bytesFreed, 0)
      const after = pool.info().directory
      assert.equal(after.used, live.length + after.tombstones)
      publishSmall(pool, 'after-wear')
      assertIntact(pool, 'after-wear')
      for (const name of live) assertIntact(pool, name)
      assertNoLostSpace(pool)
      assertNoCorruption(pool)
    } finally {
      pool.close()
    }
  })

  it('a full directory of live checkpoints is DIRECTORY_FULL; removing one lets the next publish reuse its word', () => {
    const path = testPoolPath()
    // 1 GiB (sparse): still 4,096 directory words, and metadata pages for more descriptors than that.
    const pool = Pool.create(path, {size: 1n << 30n})
    try {
      // Fill every word with zero-data checkpoints (metadata only).
      const slots = pool.header.directorySlots
      for (let i = 0; i < slots; i++) {
        const builder = pool.beginCheckpoint()
        builder.publish(`full-${i}`, {uid: 0})
      }
      const extra = pool.beginCheckpoint()
      assert.throws(() => extra.publish('one-too-many', {uid: 0}), (error: any) => error.code === 'DIRECTORY_FULL' && error.exitCode === 7)
      const inspected = pool.inspect('full-1234')
      pool.remove('full-1234')
      extra.publish('one-too-many', {uid: 0})
      // The only free word was the tombstone: reused in place, under another serial.
      const reused = pool.inspect('one-too-many')
      assert.equal(reused.directorySlot, inspected.directorySlot)
      assert.notEqual(reused.serial, inspected.serial)
      assert.throws(() => pool.openCheckpoint('full-1234'), (error: any) => error.code === 'CHECKPOINT_NOT_FOUND')
      // Every name is still found through the full ring.
      assert.equal(pool.list().length, slots)
      assertNoCorruption(pool)
    } finally {
      pool.close()
    }
  })

  it('a reader holding a word that was deleted and reused cannot reference the new checkpoint', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      publishSmall(pool, 'old')
      const stale = pool.openCheckpoint('old')
      pool.remove('old')
      publishSmall(pool, 'old') // same name, likely the same word, new serial and data
      assert.equal(pool.inspect('old').directorySlot, stale.entry.index, 'the word was reused in place')
      assert.throws(() => pool.addReference(stale, {pid: process.pid}), (error: any) => error.code === 'CHECKPOINT_DELETING')
      // By name, the new one is referenced.
      const handle = pool.addReference('old', {pid: process.pid})
      assert.notEqual(handle.serial, stale.serial)
      pool.releaseReference(handle)
    } finally {
      pool.close()
    }
  })

  it('4 processes racing publish, rm and open+reference on 8 shared names: referenced data is always the checkpoint opened', async () => {
    const path = testPoolPath()
    Pool.create(path, {size: 64n << 20n}).close()
    const workers = Array.from({length: 4}, () => startWorker(['race', path, 'shared', '2500']))
    const outputs = workers.map((worker) => {
      let out = ''
      let err = ''
      worker.stdout?.on('data', (chunk: Buffer) => {
        out += chunk.toString()
      })
      worker.stderr?.on('data', (chunk: Buffer) => {
        err += chunk.toString()
      })
      return () => ({out, err})
    })
    const results = await Promise.all(workers.map(exited))
    const totals: Record<string, number> = {}
    results.forEach((result, i) => {
      assert.equal(result.code, 0, `worker ${i}: ${outputs[i]!().err}`)
      for (const [key, value] of Object.entries(JSON.parse(outputs[i]!().out) as Record<string, number>)) totals[key] = (totals[key] ?? 0) + value
    })
    assert.equal(totals['wrong'], 0, JSON.stringify(totals))
    assert.ok(totals['published']! > 500 && totals['removed']! > 200 && totals['referenced']! > 100, JSON.stringify(totals))
    // Only the outcomes a race explains.
    const expected = new Set(['published', 'removed', 'referenced', 'wrong', 'NAME_TAKEN', 'CHECKPOINT_NOT_FOUND', 'CHECKPOINT_DELETING', 'CHECKPOINT_IN_USE'])
    assert.deepEqual(Object.keys(totals).filter((key) => !expected.has(key)), [], JSON.stringify(totals))
    const pool = Pool.open(path)
    try {
      assertNoCorruption(pool)
      pool.gc()
      assertNoLostSpace(pool)
      for (const checkpoint of pool.list()) pool.remove(checkpoint.name)
      assert.equal(pool.info().used, 0)
    } finally {
      pool.close()
    }
  })

  it('a refused rm never makes an open + reference fail (rm looping against a referenced checkpoint)', async () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    publishSmall(pool, 'busy')
    const held = pool.addReference('busy', {pid: process.pid}) // a running clone
    const rm = startWorker(['rm-loop', path, 'busy'])
    try {
      await new Promise<void>((resolve) => rm.stdout?.once('data', () => resolve()))
      let opened = 0
      const deadline = Date.now() + 3000
      while (Date.now() < deadline || opened < 1000) {
        const reader = pool.openCheckpoint('busy')
        pool.releaseReference(pool.addReference(reader, {pid: process.pid}))
        opened++
        if (rm.exitCode !== null) break
      }
      assert.equal(rm.exitCode, null, 'rm was refused every time')
      assert.ok(opened >= 1000)
      pool.releaseReference(held)
    } finally {
      rm.kill('SIGKILL')
      await exited(rm)
      pool.close()
    }
  })
})

/** Whole-pool invariants checked after concurrent and crash tests. */
import assert from 'node:assert/strict'

import type {Pool} from '../../src/pool/index.js'
import {checkPattern, patternSeed} from './helpers.js'

/** No two extents of any two checkpoints overlap; returns the number of extents checked. */
export function assertNoOverlap(pool: Pool): number {
  const extents: Array<{name: string; start: bigint; end: bigint}> = []
  for (const checkpoint of pool.list()) {
    for (const extent of pool.openCheckpoint(checkpoint.name).dataExtents) {
      extents.push({name: checkpoint.name, start: extent.poolOffset, end: extent.poolOffset + extent.length})
    }
  }
  for (let i = 0; i < extents.length; i++) {
    for (let j = i + 1; j < extents.length; j++) {
      const a = extents[i]!
      const b = extents[j]!
      assert.ok(a.end <= b.start || b.end <= a.start, `extents of ${a.name} and ${b.name} overlap`)
    }
  }
  return extents.length
}

/** Every checkpoint's data holds the pattern derived from its name, and its sections read back. */
export function assertContentsIntact(pool: Pool): void {
  for (const checkpoint of pool.list()) {
    const reader = pool.openCheckpoint(checkpoint.name)
    const seed = patternSeed(checkpoint.name)
    assert.deepEqual(JSON.parse(new TextDecoder().decode(reader.section(1))), {name: checkpoint.name, seed})
    assert.equal(reader.section(2).length, 5000)
    let written = 0
    for (const extent of reader.dataExtents) {
      const bad = checkPattern(reader.address(extent.poolOffset), Number(extent.length), (seed + written) >>> 0)
      assert.equal(bad, -1, `data of ${checkpoint.name} damaged at word ${bad} of extent ${extent.poolOffset}`)
      written += Number(extent.length) / 4
    }
  }
}

/** Allocated space equals what the published checkpoints own: nothing lost, nothing leaked. */
export function assertNoLostSpace(pool: Pool): void {
  const info = pool.info()
  const owned = pool.list().reduce((sum, checkpoint) => sum + checkpoint.dataBytes + checkpoint.metadataBytes, 0)
  assert.equal(info.buildsInProgress, 0, 'no build may remain in progress')
  assert.equal(info.used, owned, `used ${info.used} bytes but checkpoints own ${owned}`)
}

export function assertNoCorruption(pool: Pool): void {
  const report = pool.fsck()
  const corrupt = report.problems.filter((problem) => problem.severity === 'corrupt')
  assert.deepEqual(corrupt, [], 'fsck found corruption')
  assert.equal(report.clean, true)
}

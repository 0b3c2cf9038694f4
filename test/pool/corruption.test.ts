import assert from 'node:assert/strict'
import {closeSync, fstatSync, ftruncateSync, openSync, readSync, writeFileSync, writeSync} from 'node:fs'
import {randomBytes} from 'node:crypto'

import {CorruptError} from '../../src/errors.js'
import {Pool, crc32} from '../../src/pool/index.js'
import {fillPattern, patternSeed, readPoolWord32, removeTestPools, testPoolPath, writePoolWord32} from './helpers.js'

/** Flip one bit of the pool file at `offset`, through the file (as a stray writer would). */
function flipBit(path: string, offset: number, bit = 3): void {
  const fd = openSync(path, 'r+')
  const byte = Buffer.alloc(1)
  readSync(fd, byte, 0, 1, offset)
  byte[0] = byte[0]! ^ (1 << bit)
  writeSync(fd, byte, 0, 1, offset)
  closeSync(fd)
}

function publish(pool: Pool, name: string): void {
  const builder = pool.beginCheckpoint()
  const data = builder.allocateData(1n << 20n)
  fillPattern(data.address, Number(data.length), patternSeed(name))
  builder.addSection(7, new TextEncoder().encode(`section of ${name}`.repeat(100)))
  builder.publish(name, {uid: 0})
}

const isCorrupt = (code?: string) => (error: unknown): boolean =>
  error instanceof CorruptError && error.exitCode === 6 && (code === undefined || error.code === code)

describe('pool: integrity checks', () => {
  after(removeTestPools)

  it('a bit flip in a descriptor is refused by readers and found and repaired by fsck', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      publish(pool, 'good')
      publish(pool, 'victim')
      const details = pool.inspect('victim')
      flipBit(path, details.descriptorPoolOffset + 25) // inside the creation time
      assert.throws(() => pool.openCheckpoint('victim'), isCorrupt('CHECKPOINT_CORRUPT'))
      assert.throws(() => pool.inspect('victim'), isCorrupt('CHECKPOINT_CORRUPT'))
      assert.doesNotThrow(() => pool.openCheckpoint('good'))
      assert.equal(pool.list().find((checkpoint) => checkpoint.name === 'victim')?.state, 'corrupt')

      const report = pool.fsck()
      assert.equal(report.clean, false)
      assert.deepEqual(report.problems.filter((p) => p.severity === 'corrupt').map((p) => p.kind), ['DESCRIPTOR_CORRUPT'])
      const repaired = pool.fsck({repair: true})
      assert.equal(repaired.corruptionRepaired, 1)
      assert.equal(pool.fsck().clean, true)
      assert.ok(pool.gc().segmentsFreed >= 1, 'the removed checkpoint\'s space is collected')
      assert.deepEqual(pool.list().map((checkpoint) => checkpoint.name), ['good'])
    } finally {
      pool.close()
    }
  })

  it('a bit flip in a section is refused by readers and found by fsck', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      publish(pool, 'victim')
      const section = pool.inspect('victim').sections[0]!
      flipBit(path, section.poolOffset + 10, 0)
      assert.throws(() => pool.openCheckpoint('victim'), isCorrupt('CHECKPOINT_CORRUPT'))
      assert.throws(() => pool.inspect('victim'), isCorrupt())
      const report = pool.fsck()
      assert.equal(report.clean, false)
      assert.ok(report.problems.some((p) => p.kind === 'SECTION_CORRUPT'))
    } finally {
      pool.close()
    }
  })

  it('a directory word whose state bits read empty beside a page and serial is found by fsck, and tombstoned by --repair', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      publish(pool, 'victim')
      const word = pool.header.directoryOffset + pool.inspect('victim').directorySlot * 8
      flipBit(path, word + 7, 6) // published (1) -> empty (0): the checkpoint vanished and fsck said clean
      const report = pool.fsck()
      assert.equal(report.clean, false)
      assert.deepEqual(report.problems.filter((p) => p.severity === 'corrupt').map((p) => p.kind), ['DIRECTORY_WORD_INVALID'])
      assert.equal(pool.fsck({repair: true}).corruptionRepaired, 1)
      pool.gc()
      assert.equal(pool.fsck().clean, true)
      assert.equal(pool.info().used, 0, 'its units are given back')
    } finally {
      pool.close()
    }
  })

  it('an impossible unit owner word is found and cleared by fsck --repair', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 64n << 20n})
    try {
      publish(pool, 'one')
      const lastSegmentWord = pool.header.segmentStateOffset + (pool.header.segmentCount - 1) * 4
      writePoolWord32(path, lastSegmentWord, 0xdead0000) // generation 0: no build issues it
      const report = pool.fsck({repair: true})
      assert.ok(report.problems.some((p) => p.kind === 'UNIT_STATE_INVALID' && p.repaired))
      assert.equal(report.clean, true)
      assert.equal(readPoolWord32(path, lastSegmentWord), 0)
      // A checkpoint's own unit word knocked to 0 is given back.
      const unit = Number((pool.openCheckpoint('one').dataExtents[0]!.poolOffset - pool.header.dataOffset) / 2097152n)
      writePoolWord32(path, pool.header.segmentStateOffset + unit * 4, 0)
      assert.ok(pool.fsck({repair: true}).problems.some((p) => p.kind === 'UNIT_OWNER_WRONG' && p.repaired))
      assert.equal(pool.fsck().clean, true)
    } finally {
      pool.close()
    }
  })

  it('a flipped header, a truncated file and a foreign file are CorruptErrors on open', () => {
    const path = testPoolPath()
    Pool.create(path, {size: 32n << 20n}).close()
    flipBit(path, 40) // page size field
    assert.throws(() => Pool.open(path), isCorrupt('POOL_HEADER_CORRUPT'))
    flipBit(path, 40)
    Pool.open(path).close()

    // A pool of format version 1 (CRC32C checksums) is named as such, not reported as damaged.
    const old = openSync(path, 'r+')
    const version = Buffer.alloc(4)
    version.writeUInt32LE(1)
    writeSync(old, version, 0, 4, 8)
    closeSync(old)
    assert.throws(() => Pool.open(path), (error: unknown) => isCorrupt('POOL_VERSION')(error) && /format version 1; this cxlfork reads version 2/.test((error as Error).message))
    version.writeUInt32LE(2)
    const back = openSync(path, 'r+')
    writeSync(back, version, 0, 4, 8)
    closeSync(back)
    Pool.open(path).close()

    // A header with a valid CRC but a flag this cxlfork does not know (a later format's) is refused.
    const header = Buffer.alloc(4096)
    const read = openSync(path, 'r+')
    readSync(read, header, 0, 4096, 0)
    header.writeUInt32LE(4, 160)
    header.writeUInt32LE(crc32(header.subarray(0, 4092)), 4092)
    writeSync(read, header, 0, 4096, 0)
    closeSync(read)
    assert.throws(() => Pool.open(path), (error: unknown) => isCorrupt('POOL_HEADER_CORRUPT')(error) && /unknown flags 0x4/.test((error as Error).message))
    header.writeUInt32LE(1, 160) // POOL_FLAG_PROVISIONED: valid, and read back
    header.writeUInt32LE(crc32(header.subarray(0, 4092)), 4092)
    const write = openSync(path, 'r+')
    writeSync(write, header, 0, 4096, 0)
    closeSync(write)
    const flagged = Pool.open(path)
    assert.equal(flagged.info().provisioned, true)
    flagged.close()

    const truncated = openSync(path, 'r+')
    ftruncateSync(truncated, 16 << 20)
    closeSync(truncated)
    assert.throws(() => Pool.open(path), isCorrupt('POOL_TRUNCATED'))
    const tiny = openSync(path, 'r+')
    ftruncateSync(tiny, 100)
    closeSync(tiny)
    assert.throws(() => Pool.open(path), isCorrupt())

    const foreign = testPoolPath()
    writeFileSync(foreign, randomBytes(1 << 20))
    assert.throws(() => Pool.open(foreign), isCorrupt('POOL_FOREIGN'))
    const empty = testPoolPath()
    writeFileSync(empty, '')
    assert.throws(() => Pool.open(empty), isCorrupt())
  })

  it('creates the pool mode 0600 and refuses checkpoints of other uids', () => {
    const path = testPoolPath()
    const pool = Pool.open(path, {create: true, size: 32n << 20n})
    try {
      const {mode} = (() => {
        const fd = openSync(path, 'r')
        try {
          return {mode: fstatSync(fd).mode & 0o777}
        } finally {
          closeSync(fd)
        }
      })()
      assert.equal(mode, 0o600)
      const builder = pool.beginCheckpoint()
      builder.publish('owned', {uid: 1234})
      assert.throws(() => pool.openCheckpoint('owned', {uid: 4321}), (error: any) => error.code === 'CHECKPOINT_ACCESS' && error.exitCode === 4)
      assert.throws(() => pool.remove('owned', {uid: 4321}), (error: any) => error.code === 'CHECKPOINT_ACCESS')
      assert.doesNotThrow(() => pool.openCheckpoint('owned', {uid: 1234}))
      assert.equal(pool.remove('owned', {uid: 0}).state, 'removed')
    } finally {
      pool.close()
    }
  })
})

/**
 * Page data checksums (issue 14, item 2): one byte flipped in a checkpoint's page data
 * is found by `pool fsck` (exit 6, the checkpoint named), by `inspect --verify` (exit 6,
 * the chunk named) and by `restore --verify`, which refuses with PAGE_DATA_CORRUPT before
 * any process exists, while an unverified restore would run the clone with the wrong
 * memory. A clean checkpoint restores verified (--json `verified: true`), a default
 * restore reads no page data (`verified: false`). Trees: every member's data is covered.
 * Checkpoints without page checksums (taken before they existed) still restore; fsck
 * and inspect --verify say so, restore --verify refuses them.
 */
import assert from 'node:assert/strict'
import {closeSync, openSync, readSync, writeSync} from 'node:fs'

import {type Fixture, processExists, readLog, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {encodePageMap, PageMapView} from '../../src/image/page-map.js'
import {Section} from '../../src/image/sections.js'
import {PAGE_CHECKSUMS_SECTION, Pool} from '../../src/pool/index.js'
import {view} from '../../src/sys/vm-io.js'
import {allProcesses, cli, type CliResult, describeRun, installCleanupHooks, note, poolPath} from './helpers.js'

const STUB_COMM = 'cxlfork-stub'

function liveStubs(): number[] {
  return allProcesses().filter((p) => p.comm === STUB_COMM && p.state !== 'Z').map((p) => p.pid)
}

/** XOR one byte of the pool file at `offset` with 0x5a (what the dd did), through write(2). */
function flipByte(pool: string, offset: number): void {
  const fd = openSync(pool, 'r+')
  try {
    const byte = Buffer.alloc(1)
    assert.equal(readSync(fd, byte, 0, 1, offset), 1)
    byte[0] ^= 0x5a
    assert.equal(writeSync(fd, byte, 0, 1, offset), 1)
  } finally {
    closeSync(fd)
  }
}

function expectError(run: CliResult, code: string, exitCode: number): any {
  assert.equal(run.status, exitCode, describeRun(run))
  assert.equal(run.json?.error?.code, code, describeRun(run))
  assert.ok(run.json.error.hint.length > 10, `a hint: ${describeRun(run)}`)
  return run.json.error
}

async function checkpoint(fx: Fixture, pool: string, name: string, extra: string[] = []): Promise<any> {
  const run = await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', pool, ...extra])
  assert.equal(run.status, 0, describeRun(run))
  return run.json
}

async function inspect(pool: string, name: string, verify: boolean): Promise<CliResult> {
  return cli(['inspect', name, '--json', '--pool', pool, ...(verify ? ['--verify'] : [])])
}

/** The original is unharmed and no stub or clone was started by a refused restore. */
async function assertNothingStarted(fx: Fixture, stubsBefore: number[], clones: number[]): Promise<void> {
  assert.deepEqual(liveStubs().filter((pid) => !stubsBefore.includes(pid)), [], 'no stub left behind')
  const strangers = readLog(fx.logPath).filter((event) => event.pid !== fx.pid && !clones.includes(event.pid))
  assert.deepEqual(strangers.map((event) => event.line), [], 'no line in the log from any process but the original')
  assert.ok(processExists(fx.pid))
  const check = await fx.check()
  assert.equal(check.fields.ok, '1', check.line)
}

describe('restore: page data checksums', function () {
  this.timeout(120_000)

  installCleanupHooks('page-checksums')

  it('a flipped byte in the page data: fsck reports the checkpoint, inspect --verify the chunk, restore --verify refuses before anything runs', async () => {
    const pool = poolPath('pagesum')
    const fx = await startFixture('memtouch', {mib: 16})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const ck = await checkpoint(fx, pool, 'good')
    note(`checkpoint of ${ck.bytes} bytes: memwrite ${ck.stats.memwrite_time} us, checksum ${ck.stats.checksum_time} us (tail after the write ${ck.stats.checksum_tail_time} us)`)
    await checkpoint(fx, pool, 'flipped')

    // Clean: restore --verify reads the data and says so; a default restore does not.
    const verified = await cli(['restore', 'good', '--verify', '--json', '--pool', pool])
    assert.equal(verified.status, 0, describeRun(verified))
    trackPid(verified.json.pid)
    assert.equal(verified.json.verified, true)
    assert.ok(verified.json.stats.verify_time > 0, describeRun(verified))
    const plain = await cli(['restore', 'good', '--json', '--pool', pool])
    assert.equal(plain.status, 0, describeRun(plain))
    trackPid(plain.json.pid)
    assert.equal(plain.json.verified, false)
    assert.equal(plain.json.stats.verify_time, undefined)
    for (const pid of [verified.json.pid, plain.json.pid]) {
      const check = await requestCheck(fx.logPath, pid)
      assert.equal(check.fields.ok, '1', check.line)
      assert.equal(check.fields.crc, fx.ready.fields.crc, check.line)
    }
    const clean = await inspect(pool, 'flipped', true)
    assert.equal(clean.status, 0, describeRun(clean))
    assert.equal(clean.json.pageChecksums, true)
    assert.equal(clean.json.pageData.state, 'verified')
    assert.ok(clean.json.pageData.bytes >= 16 << 20, describeRun(clean))

    // One byte in the middle of the data: inside memtouch's 16 MiB region.
    const extent = clean.json.dataExtents[0]
    const target = extent.poolOffset + Math.floor(clean.json.dataBytes / 2 / 4096) * 4096 + 1234
    flipByte(pool, target)

    const fsck = await cli(['pool', 'fsck', '--json', '--pool', pool])
    assert.equal(fsck.status, 6, describeRun(fsck))
    assert.equal(fsck.json.clean, false)
    const problems = fsck.json.problems.filter((p: any) => p.severity === 'corrupt')
    assert.equal(problems.length, 1, describeRun(fsck))
    assert.equal(problems[0].kind, 'PAGE_DATA_CORRUPT')
    assert.match(problems[0].where, /checkpoint flipped/)
    assert.deepEqual(fsck.json.problems.filter((p: any) => p.severity === 'stale'), [], 'the damaged checkpoint\'s units are not called garbage')
    assert.deepEqual(fsck.json.noPageChecksums, [])

    const damaged = await inspect(pool, 'flipped', true)
    assert.equal(damaged.status, 6, describeRun(damaged))
    assert.equal(damaged.json.pageData.state, 'damaged')
    assert.equal(damaged.json.pageData.damagedChunks, 1)
    const chunk = damaged.json.pageData.damaged[0]
    assert.ok(chunk.poolOffset <= target && target < chunk.poolOffset + chunk.length, `chunk ${JSON.stringify(chunk)} holds offset ${target}`)
    assert.equal((await inspect(pool, 'flipped', false)).status, 0, 'inspect without --verify reads no page data')
    assert.equal((await inspect(pool, 'good', true)).status, 0, 'the other checkpoint is intact')

    const stubsBefore = liveStubs()
    const refused = expectError(await cli(['restore', 'flipped', '--verify', '--json', '--pool', pool]), 'PAGE_DATA_CORRUPT', 6)
    assert.match(refused.message, new RegExp(`pool offset ${chunk.poolOffset}`))
    await assertNothingStarted(fx, stubsBefore, [verified.json.pid, plain.json.pid])
    const info = await cli(['inspect', 'flipped', '--json', '--pool', pool])
    assert.deepEqual(info.json.references, [], 'the refused restore holds no reference')

    // What --verify prevents: restored without it, the clone runs with the wrong memory.
    const unverified = await cli(['restore', 'flipped', '--json', '--pool', pool])
    assert.equal(unverified.status, 0, describeRun(unverified))
    trackPid(unverified.json.pid)
    const wrong = await requestCheck(fx.logPath, unverified.json.pid)
    assert.equal(wrong.fields.ok, '0', `the unverified clone finds its memory damaged: ${wrong.line}`)

    // fsck --repair removes the damaged checkpoint; the pool is clean again.
    process.kill(unverified.json.pid, 'SIGKILL')
    const repaired = await cli(['pool', 'fsck', '--repair', '--json', '--pool', pool])
    assert.equal(repaired.status, 0, describeRun(repaired))
    assert.equal(repaired.json.corruptionRepaired, 1)
  })

  it('a tree: the data of a descendant is covered too', async () => {
    const pool = poolPath('pagesum-tree')
    const fx = await startFixture('tree')
    await waitForTicks(fx.logPath, fx.pid, 2)
    await checkpoint(fx, pool, 'tree', ['--tree'])
    const clean = await inspect(pool, 'tree', true)
    assert.equal(clean.status, 0, describeRun(clean))
    assert.ok(clean.json.dataExtents.length >= 2, `one extent per member: ${describeRun(clean)}`)
    const last = clean.json.dataExtents.at(-1)
    flipByte(pool, last.poolOffset + 4096 + 7)
    const damaged = await inspect(pool, 'tree', true)
    assert.equal(damaged.status, 6, describeRun(damaged))
    assert.ok(damaged.json.pageData.damaged[0].poolOffset >= last.poolOffset, describeRun(damaged))
    const stubsBefore = liveStubs()
    expectError(await cli(['restore', 'tree', '--verify', '--json', '--pool', pool]), 'PAGE_DATA_CORRUPT', 6)
    assert.deepEqual(liveStubs().filter((pid) => !stubsBefore.includes(pid)), [], 'no stub left behind')
    const fsck = await cli(['pool', 'fsck', '--json', '--pool', pool])
    assert.equal(fsck.status, 6, describeRun(fsck))
    assert.equal(fsck.json.problems.find((p: any) => p.severity === 'corrupt')?.kind, 'PAGE_DATA_CORRUPT')
  })

  it('a checkpoint without page checksums (taken before them) restores; fsck and inspect --verify say so; restore --verify refuses it', async () => {
    const pool = poolPath('pagesum-old')
    const fx = await startFixture('memtouch', {mib: 4})
    await waitForTicks(fx.logPath, fx.pid, 2)
    await checkpoint(fx, pool, 'new')
    copyWithoutChecksums(pool, 'new', 'old')

    const fsck = await cli(['pool', 'fsck', '--json', '--pool', pool])
    assert.equal(fsck.status, 0, describeRun(fsck))
    assert.deepEqual(fsck.json.noPageChecksums, ['old'])
    assert.equal(fsck.json.checked.pageDataCheckpoints, 1)
    const human = await cli(['pool', 'fsck', '--pool', pool])
    assert.match(human.stdout, /checkpoint old: no page checksums/)
    const inspected = await inspect(pool, 'old', true)
    assert.equal(inspected.status, 0, describeRun(inspected))
    assert.equal(inspected.json.pageChecksums, false)
    assert.equal(inspected.json.pageData.state, 'absent')
    assert.match((await cli(['inspect', 'old', '--verify', '--pool', pool])).stdout, /no page checksums/)

    expectError(await cli(['restore', 'old', '--verify', '--json', '--pool', pool]), 'PAGE_CHECKSUMS_MISSING', 5)
    const restored = await cli(['restore', 'old', '--json', '--pool', pool])
    assert.equal(restored.status, 0, describeRun(restored))
    trackPid(restored.json.pid)
    assert.equal(restored.json.verified, false)
    const check = await requestCheck(fx.logPath, restored.json.pid)
    assert.equal(check.fields.ok, '1', check.line)
    assert.equal(check.fields.crc, fx.ready.fields.crc, check.line)
  })
})

/**
 * Store checkpoint `from` again as `to` the way cxlfork wrote checkpoints before page
 * checksums: the same process record and pages (copied into an extent of its own, the
 * page map moved with them), and no PAGE_CHECKSUMS section.
 */
function copyWithoutChecksums(path: string, from: string, to: string): void {
  const pool = Pool.open(path)
  try {
    const reader = pool.openCheckpoint(from)
    assert.ok(reader.hasSection(PAGE_CHECKSUMS_SECTION))
    assert.equal(Section.pageChecksums, PAGE_CHECKSUMS_SECTION, 'image/sections.ts and the pool agree on the section type')
    const [source] = reader.dataExtents
    const builder = pool.beginCheckpoint()
    const extent = builder.allocateData(source!.length, {reserve: true})
    const bytes = Number(source!.length)
    view(extent.address, bytes).set(view(reader.address(source!.poolOffset), bytes))
    const moved = [...new PageMapView(reader.section(Section.pageMap)).entries()].map((entry) => ({
      vaddr: entry.vaddr, poolOffset: entry.poolOffset - source!.poolOffset + extent.poolOffset, nrPages: entry.nrPages, vmaIndex: entry.vmaIndex,
    }))
    builder.addSection(Section.processState, reader.section(Section.processState))
    builder.addSection(Section.pageMap, encodePageMap(moved))
    builder.publish(to, {uid: reader.info.uid})
  } finally {
    pool.close()
  }
}

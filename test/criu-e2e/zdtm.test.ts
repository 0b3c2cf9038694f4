/**
 * zdtm-style end-to-end through the CRIU-format baseline path: a real fixture is dumped
 * with `criu dump` while it runs on, then either
 *   (a) `criu restore`: deserialized, every page copied into the clone, or
 *   (b) `criu import` into a pool + `restore --policy mow`: the same dump restored zero-copy,
 * and the clone proves (fixtures/README.md protocol) that it carried on from the dump with
 * its state intact: TICK continues the counter, CHECK ok=1 with the READY crc, GREW ok=1
 * then CHECK ok=1 grown=1, clock=ok, EXIT on SIGTERM. The original keeps running intact.
 */
import assert from 'node:assert/strict'
import {availableParallelism} from 'node:os'
import {existsSync, readdirSync, statSync} from 'node:fs'
import {join} from 'node:path'

import {
  type Fixture, type LogEvent, lastTick, processExists, requestCheck, requestExit, requestGrow, startFixture, trackPid, waitForExit, waitForTicks,
} from '../helpers/fixtures.js'
import {
  assertContinues, assertOk, cli, comm, imagesDir, installSuiteHooks, MIB, note, okJson, PAGE, poolFile, statusBytes, ticksOf,
} from './helpers.js'

interface Case {
  fixture: string
  mib?: number
  /** mow: bound for the clone's RssAnon right after restore, as a fraction of the dumped bytes. */
  mowMaxFraction: number
}

const CASES: Case[] = [
  {fixture: 'memtouch', mib: 16, mowMaxFraction: 0.1},
  // sighandler is tiny (a few hundred kB dumped); the copied stack pages dominate its RssAnon.
  {fixture: 'sighandler', mowMaxFraction: 0.5},
  // Timers travel in core-PID.img's task_timers_entry, a timerfd's pending expirations in its ticks.
  {fixture: 'timers', mowMaxFraction: 0.5},
  // CPython writes refcounts into what it touches: loose bound, as in test/restore/zdtm.test.ts.
  {fixture: 'pyheap', mib: 16, mowMaxFraction: 0.25},
]

const IMAGE_FILES = (pid: number) => [
  'inventory.img', 'pstree.img', `core-${pid}.img`, `mm-${pid}.img`, `pagemap-${pid}.img`, 'pages-1.img', 'files.img', 'fdinfo-2.img',
  `fs-${pid}.img`, `ids-${pid}.img`, 'stats-dump.img',
].sort()

interface Dumped {
  json: any
  images: string
  /** The original's last TICK before the dump started / when it ended. */
  before: LogEvent
  afterDump: LogEvent
  wallMs: number
}

async function dump(fx: Fixture, tag: string): Promise<Dumped> {
  await waitForTicks(fx.logPath, fx.pid, 3)
  const before = lastTick(fx.logPath, fx.pid)!
  const images = imagesDir(tag)
  const run = await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json'])
  const json = okJson(run)
  const afterDump = lastTick(fx.logPath, fx.pid)!
  assert.equal(json.pid, fx.pid)
  assert.equal(json.images, images)
  assert.equal(json.killed, false)
  assert.deepEqual(readdirSync(images).sort(), IMAGE_FILES(fx.pid), 'the CRIU image set, nothing more')
  assert.deepEqual(json.files.map((f: string) => f.replace(images + '/', '')).sort(), IMAGE_FILES(fx.pid), 'result lists every file written')
  // pages-1.img holds the process's pages and, for CRIU's restore, the [vdso] pages (pages_written).
  assert.equal(statSync(join(images, 'pages-1.img')).size, json.stats.pages_written * PAGE, 'pages-1.img holds every dumped page')
  assert.ok(json.stats.pages_written > json.pages && json.stats.pages_written <= json.pages + 4, `pages_written ${json.stats.pages_written}: the ${json.pages} pages + [vdso]`)
  const total = readdirSync(images).reduce((sum, f) => sum + statSync(join(images, f)).size, 0)
  assert.equal(json.imageBytes, total, 'imageBytes = bytes of all image files')
  assert.ok(json.downtimeUs > 0 && json.downtimeUs <= json.totalUs, `downtime within total: ${json.downtimeUs} / ${json.totalUs}`)
  note(`criu dump ${fx.name}: ${json.pages} pages (${((json.pages * PAGE) / MIB).toFixed(1)} MiB), ${json.files.length} files ${(json.imageBytes / MIB).toFixed(1)} MiB, downtime ${(json.downtimeUs / 1000).toFixed(1)} ms, total ${(json.totalUs / 1000).toFixed(1)} ms, CLI wall ${run.ms.toFixed(0)} ms`)
  return {afterDump, before, images, json, wallMs: run.ms}
}

/** The original runs on after the dump, its state intact. */
async function assertOriginalIntact(fx: Fixture): Promise<void> {
  await waitForTicks(fx.logPath, fx.pid, 2)
  const check = await fx.check()
  assertOk(check, 'original CHECK after the dump')
  if (fx.ready.fields.crc) assert.equal(check.fields.crc, fx.ready.fields.crc)
}

/** CHECK, GREW, CHECK, EXIT in the clone; the original is unaffected. */
async function assertCloneLifecycle(fx: Fixture, clone: number, c: Case): Promise<void> {
  const readyCrc = fx.ready.fields.crc
  const check1 = await requestCheck(fx.logPath, clone)
  assertOk(check1, 'clone CHECK')
  if (readyCrc) assert.equal(check1.fields.crc, readyCrc, 'clone CHECK crc equals READY crc')
  assert.equal(check1.fields.clockbad, '0', `no clock violation in the clone: ${check1.line}`)

  const grew = await requestGrow(fx.logPath, clone)
  assertOk(grew, 'clone GREW')
  const check2 = await requestCheck(fx.logPath, clone)
  assertOk(check2, 'clone CHECK after GREW')
  if (readyCrc) assert.equal(check2.fields.crc, readyCrc)
  assert.equal(check2.fields.grown, '1', `the grown block is verified: ${check2.line}`)

  const original = await fx.check()
  assertOk(original, 'original CHECK while the clone runs')
  assert.equal(original.fields.grown, '0', `the clone's growth is its own: ${original.line}`)

  const exit = await requestExit(fx.logPath, clone)
  if (c.fixture === 'sighandler') {
    assert.equal(exit.fields.rt2, 'c0ffee', `process-wide queued RT signal survived with its value: ${exit.line}`)
    assert.equal(exit.fields.rt3, 'beef', `thread-queued RT signal survived with its value: ${exit.line}`)
  }
  assert.ok(await waitForExit(clone, 5000), `clone ${clone} ended after EXIT`)
  for (const t of ticksOf(fx.logPath, clone)) assert.equal(t.fields.clock, 'ok', t.line)
  assert.ok(processExists(fx.pid), 'the original is still running')
}

describe('criu-e2e: zdtm-style dump and restore of live fixtures through the CRIU image path', function () {
  this.timeout(60_000)

  installSuiteHooks('criu-e2e zdtm')

  for (const c of CASES) {
    const label = `${c.fixture}${c.mib ? ` --mib ${c.mib}` : ''}`

    it(`${label}: criu dump -> criu restore copies every page; the clone continues intact`, async () => {
      const fx = await startFixture(c.fixture, c.mib === undefined ? {} : {mib: c.mib})
      const d = await dump(fx, `${c.fixture}-copy`)
      if (c.mib) assert.ok(d.json.pages * PAGE >= c.mib * MIB, `the dump holds the ${c.mib} MiB working set: ${d.json.pages} pages`)
      await assertOriginalIntact(fx)

      const run = await cli(['criu', 'restore', '--images', d.images, '--json'])
      const rs = okJson(run)
      const clone = rs.pid as number
      assert.ok(Number.isInteger(clone) && clone > 0, `restore gave a pid: ${run.stdout}`)
      trackPid(clone)
      assert.notEqual(clone, fx.pid)
      assert.equal(rs.images, d.images)
      assert.equal(rs.stats.pages_restored, d.json.pages, 'every dumped page was copied')
      // A copy this large is made from two sides on two CPUs: the clone reads part from pages-N.img itself (the fixture's checks prove the bytes).
      if (c.mib && availableParallelism() >= 2) assert.ok(rs.stats.pages_read_by_clone > 0 && rs.stats.pages_read_by_clone < rs.stats.pages_restored, `the clone read part of its pages itself: ${JSON.stringify(rs.stats)}`)
      assert.ok(rs.stats.restore_time > 0)
      assert.ok(existsSync(join(d.images, 'stats-restore.img')), 'stats-restore.img written')
      assert.ok(processExists(clone), 'the clone runs after restore returns')
      assert.equal(comm(clone), comm(fx.pid), 'the clone has the original comm')
      note(`criu restore ${c.fixture}: restore_time ${(rs.stats.restore_time / 1000).toFixed(1)} ms (deserialize ${(rs.stats.deserialize_time / 1000).toFixed(1)}, fork ${(rs.stats.forking_time / 1000).toFixed(1)}, memory ${(rs.stats.memory_time / 1000).toFixed(1)}, state ${(rs.stats.state_time / 1000).toFixed(1)}), ${rs.stats.pages_restored} pages copied, CLI wall ${run.ms.toFixed(0)} ms`)

      await assertContinues(fx.logPath, clone, d.before, d.afterDump)

      const dumped = d.json.pages * PAGE
      const rssAnon = statusBytes(clone, 'RssAnon')!
      const originalAnon = statusBytes(fx.pid, 'RssAnon')!
      note(`${c.fixture} criu restore: clone RssAnon ${(rssAnon / 1024).toFixed(0)} kB = ${((rssAnon / dumped) * 100).toFixed(1)}% of ${(dumped / 1024).toFixed(0)} kB dumped; original RssAnon ${(originalAnon / 1024).toFixed(0)} kB`)
      assert.ok(rssAnon >= dumped * 0.9, `copy restore: clone RssAnon ${rssAnon} B >= 90% of the ${dumped} B dumped`)

      await assertCloneLifecycle(fx, clone, c)
    })

    it(`${label}: criu dump -> criu import -> restore --policy mow is zero-copy; the clone continues intact`, async () => {
      const pool = poolFile(`${c.fixture}-mow`)
      const fx = await startFixture(c.fixture, c.mib === undefined ? {} : {mib: c.mib})
      const d = await dump(fx, `${c.fixture}-mow`)
      await assertOriginalIntact(fx)

      const name = `criu-e2e-${c.fixture}`
      const imp = await cli(['criu', 'import', '--images', d.images, '--name', name, '--pool', pool, '--json'])
      const ij = okJson(imp)
      assert.equal(ij.name, name)
      assert.equal(ij.pages, d.json.pages, 'every dumped page imported')
      assert.equal(ij.bytes, d.json.pages * PAGE)
      assert.equal(ij.writtenBy, 'cxlfork')
      note(`criu import ${c.fixture}: ${ij.pages} pages in ${(ij.totalUs / 1000).toFixed(1)} ms, CLI wall ${imp.ms.toFixed(0)} ms`)

      const run = await cli(['restore', name, '--policy', 'mow', '--pool', pool, '--json'])
      const rs = okJson(run)
      const clone = rs.pid as number
      assert.ok(Number.isInteger(clone) && clone > 0, `restore gave a pid: ${run.stdout}`)
      trackPid(clone)
      assert.equal(rs.policy, 'mow')
      assert.equal(rs.stats.pages_mapped + rs.stats.pages_restored, d.json.pages, 'every page mapped or copied')
      assert.ok(rs.stats.pages_restored <= 64, `mow copies only a few pages: ${JSON.stringify(rs.stats)}`)
      assert.equal(comm(clone), comm(fx.pid), 'the clone has the original comm')
      note(`restore --policy mow ${c.fixture} (imported): restore_time ${(rs.stats.restore_time / 1000).toFixed(1)} ms, ${rs.stats.pages_mapped} mapped / ${rs.stats.pages_restored} copied, CLI wall ${run.ms.toFixed(0)} ms`)

      await assertContinues(fx.logPath, clone, d.before, d.afterDump)

      const dumped = d.json.pages * PAGE
      const rssAnon = statusBytes(clone, 'RssAnon')!
      note(`${c.fixture} mow: clone RssAnon ${(rssAnon / 1024).toFixed(0)} kB = ${((rssAnon / dumped) * 100).toFixed(1)}% of ${(dumped / 1024).toFixed(0)} kB dumped, RssShmem ${((statusBytes(clone, 'RssShmem') ?? 0) / 1024).toFixed(0)} kB`)
      assert.ok(rssAnon <= dumped * c.mowMaxFraction, `mow clone RssAnon ${rssAnon} B <= ${c.mowMaxFraction * 100}% of the ${dumped} B dumped`)

      await assertCloneLifecycle(fx, clone, c)
    })
  }
})

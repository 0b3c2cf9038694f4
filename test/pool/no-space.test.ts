/**
 * A full file system (issue 14, item 3): a checkpoint into a sparse pool on a 48 MiB
 * tmpfs gets POOL_NO_SPACE (exit 7) with the numbers, never SIGBUS (exit 135), both when
 * the page data does not fit and when the data fits and the metadata then does not (the
 * SIGBUS of the issue); the target runs on with its memory intact, the space is given
 * back (the file system's use and the pool's as before), fsck is clean. A truncated pool
 * file is a typed POOL_TRUNCATED (exit 6) for every command that reads it.
 */
import assert from 'node:assert/strict'
import {execFileSync} from 'node:child_process'
import {mkdtempSync, rmSync, statfsSync, truncateSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {cleanupAll, type Fixture, processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, type CliResult, describeRun} from '../helpers/cli.js'
import {note, printMeasurements} from '../helpers/measurements.js'

const MIB = 1 << 20

function usedBytes(dir: string): number {
  const fs = statfsSync(dir)
  return (fs.blocks - fs.bfree) * fs.bsize
}

async function expectNoSpace(run: CliResult): Promise<any> {
  assert.notEqual(run.status, 135, `no SIGBUS: ${describeRun(run)}`)
  assert.equal(run.status, 7, describeRun(run))
  const error = run.json?.error
  assert.equal(error?.code, 'POOL_NO_SPACE', describeRun(run))
  assert.match(error.message, /needs [\d.]+ MiB \(\d+ bytes\)/, 'names what it needs')
  assert.match(error.message, /has [\d.]+ \w?i?B \(\d+ bytes\) free of 48\.0 MiB/, 'names what the file system has')
  assert.ok(error.hint.length > 10)
  return error
}

async function assertTargetUnharmed(fx: Fixture): Promise<void> {
  assert.ok(processExists(fx.pid), 'the target still runs')
  await waitForTicks(fx.logPath, fx.pid, 2)
  const check = await fx.check()
  assert.equal(check.fields.ok, '1', check.line)
  assert.equal(check.fields.crc, fx.ready.fields.crc, 'its memory checksum is unchanged')
}

async function assertFsckClean(pool: string): Promise<void> {
  const fsck = await cli(['pool', 'fsck', '--json', '--pool', pool])
  assert.equal(fsck.status, 0, describeRun(fsck))
  assert.equal(fsck.json.clean, true, describeRun(fsck))
  assert.deepEqual(fsck.json.problems, [], describeRun(fsck))
}

describe('pool: a full file system', function () {
  this.timeout(120_000)
  let mount: string | undefined

  beforeEach(() => {
    mount = mkdtempSync(join(tmpdir(), 'cxlfork-small-'))
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', mount])
  })

  afterEach(async () => {
    const report = await cleanupAll()
    assert.deepEqual(report.survivors, [])
    if (mount) {
      execFileSync('umount', [mount])
      rmSync(mount, {recursive: true, force: true})
      mount = undefined
    }
  })

  after(() => printMeasurements('no-space'))

  it('a 1 GiB sparse pool on a 48 MiB tmpfs: POOL_NO_SPACE (exit 7) with the numbers, target intact, space given back, fsck clean', async () => {
    const pool = join(mount!, 'small.pool')
    const init = await cli(['pool', 'init', '--size', '1G', '--force', '--json', '--pool', pool])
    assert.equal(init.status, 0, describeRun(init))
    const usedAtInit = usedBytes(mount!)

    // The page data alone does not fit.
    const big = await startFixture('memtouch', {mib: 64})
    await waitForTicks(big.logPath, big.pid, 2)
    const tooBig = await expectNoSpace(await cli(['checkpoint', String(big.pid), '--name', 'big', '--json', '--pool', pool]))
    note(`64 MiB target: ${tooBig.message}`)
    await assertTargetUnharmed(big)
    assert.equal(usedBytes(mount!), usedAtInit, 'the file system holds what it held before')
    await assertFsckClean(pool)

    // The data fits, then nothing is left for the metadata (what died with SIGBUS).
    const fits = await startFixture('memtouch', {mib: 40})
    await waitForTicks(fits.logPath, fits.pid, 2)
    const first = await cli(['checkpoint', String(fits.pid), '--name', 'fits', '--json', '--pool', pool])
    assert.equal(first.status, 0, describeRun(first))
    const usedWithOne = usedBytes(mount!)
    const infoWithOne = await cli(['pool', 'info', '--json', '--pool', pool])
    const second = await expectNoSpace(await cli(['checkpoint', String(fits.pid), '--name', 'second', '--json', '--pool', pool]))
    note(`second checkpoint: ${second.message}`)
    await assertTargetUnharmed(fits)
    assert.equal(usedBytes(mount!), usedWithOne, 'the failed checkpoint gave its space back')
    const info = await cli(['pool', 'info', '--json', '--pool', pool])
    assert.equal(info.json.used, infoWithOne.json.used, 'the pool\'s allocation was rolled back')
    assert.equal(info.json.buildsInProgress, 0)
    await assertFsckClean(pool)
    const ls = await cli(['ls', '--json', '--pool', pool])
    assert.deepEqual(ls.json.checkpoints.map((c: any) => c.name), ['fits'])

    // The checkpoint that fitted is whole and restores.
    const restore = await cli(['restore', 'fits', '--verify', '--json', '--pool', pool])
    assert.equal(restore.status, 0, describeRun(restore))
    trackPid(restore.json.pid)
    const check = await requestCheck(fits.logPath, restore.json.pid)
    assert.equal(check.fields.ok, '1', check.line)
  })

  it('a truncated pool file: POOL_TRUNCATED (exit 6) from ls, inspect, restore, rm, fsck, gc and info; no SIGBUS', async () => {
    const pool = join(mount!, 'trunc.pool')
    const fx = await startFixture('memtouch', {mib: 4})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const init = await cli(['pool', 'init', '--size', '32M', '--json', '--pool', pool])
    assert.equal(init.status, 0, describeRun(init))
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 't', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    truncateSync(pool, 12 * MIB)
    for (const args of [['ls'], ['inspect', 't'], ['inspect', 't', '--verify'], ['restore', 't'], ['restore', 't', '--verify'], ['rm', 't'], ['pool', 'fsck'], ['pool', 'gc'], ['pool', 'info']]) {
      const run = await cli([...args, '--json', '--pool', pool])
      assert.notEqual(run.status, 135, `no SIGBUS from ${args.join(' ')}`)
      assert.equal(run.status, 6, `${args.join(' ')}: ${describeRun(run)}`)
      assert.equal(run.json?.error?.code, 'POOL_TRUNCATED', `${args.join(' ')}: ${describeRun(run)}`)
    }
    await assertTargetUnharmed(fx)
  })
})

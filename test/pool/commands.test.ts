import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import * as fs from 'node:fs'

import {Pool} from '../../src/pool/index.js'
import {removeTestPools, runCli, testPoolPath, writePoolWord32} from './helpers.js'

function expectError(run: ReturnType<typeof runCli>, code: string, exitCode: number): void {
  assert.equal(run.status, exitCode, `exit status of ${code}: ${run.stdout}${run.stderr}`)
  assert.equal(run.json?.error?.code, code)
  assert.equal(run.json.error.exitCode, exitCode)
  assert.equal(typeof run.json.error.message, 'string')
}

describe('pool commands: --json results and error envelopes', () => {
  after(removeTestPools)

  it('init, info, ls, inspect, fsck, gc and rm return their documented shapes', () => {
    const path = testPoolPath()
    const init = runCli(['pool', 'init', '--size', '64M', '--pool', path, '--json'])
    assert.equal(init.status, 0, init.stderr)
    assert.deepEqual(Object.keys(init.json).sort(), ['dataBytes', 'fileSystem', 'metadataBytes', 'path', 'provisioned', 'residentBytes', 'segmentSize', 'sharedGid', 'size', 'uuid'])
    assert.equal(init.json.sharedGid, null)
    assert.equal(init.json.provisioned, false)
    assert.equal(init.json.size, 64 << 20)
    assert.equal(init.json.fileSystem, 'tmpfs')

    const pool = Pool.open(path)
    const builder = pool.beginCheckpoint()
    builder.allocateData(5n << 20n)
    builder.addSection(3, new Uint8Array(10))
    builder.publish('web-1', {uid: 0, summary: {pid: 42}})
    pool.close()

    const info = runCli(['pool', 'info', '--json'], {CXLFORK_POOL: path})
    assert.equal(info.status, 0, info.stderr)
    assert.equal(info.json.checkpoints, 1)
    assert.equal(info.json.used, info.json.data.used + info.json.metadata.used)
    assert.equal(info.json.data.segmentsUsed, 3)
    assert.equal(info.json.hostsSeen.filter((host: any) => host.self).length, 1)
    for (const key of ['size', 'used', 'free', 'liveClones', 'buildsInProgress', 'directory', 'uuid']) assert.ok(key in info.json, key)

    const ls = runCli(['ls', '--pool', path, '--json'])
    assert.equal(ls.status, 0)
    assert.equal(ls.json.pool, path)
    assert.deepEqual(ls.json.checkpoints.map((c: any) => [c.name, c.uid, c.dataBytes, c.state, c.liveRefs]), [['web-1', 0, 6 << 20, 'published', 0]])
    assert.deepEqual(ls.json.checkpoints[0].summary, {pid: 42})

    const inspect = runCli(['inspect', 'web-1', '--pool', path, '--json'])
    assert.equal(inspect.status, 0, inspect.stderr)
    assert.equal(inspect.json.name, 'web-1')
    assert.equal(inspect.json.dataExtents.length, 1)
    assert.equal(inspect.json.dataExtents[0].length, 6 << 20)
    assert.deepEqual(inspect.json.sections.map((s: any) => [s.type, s.length]), [[3, 10]])
    assert.deepEqual(inspect.json.references, [])

    const fsck = runCli(['pool', 'fsck', '--pool', path, '--json'])
    assert.equal(fsck.status, 0)
    assert.equal(fsck.json.clean, true)
    assert.deepEqual(fsck.json.problems, [])

    // Without --json, what these commands show is on stdout, so that a pipe gets it (cxlfork ls | grep web).
    const shown = (args: string[]): string => {
      const run = runCli([...args, '--pool', path])
      assert.equal(run.status, 0, run.stderr)
      assert.equal(run.stderr, '', `${args.join(' ')} shows nothing on stderr`)
      return run.stdout
    }
    assert.match(shown(['ls']), /^web-1\s+.*published/m)
    assert.match(shown(['pool', 'info']), new RegExp(`^pool\\s+${path}`, 'm'))
    assert.match(shown(['inspect', 'web-1']), /^web-1: serial \d+, uid 0/m)
    assert.match(shown(['pool', 'fsck']), /no corruption/)

    const gc = runCli(['pool', 'gc', '--pool', path, '--json'])
    assert.equal(gc.status, 0)
    assert.deepEqual(Object.keys(gc.json).sort(), ['buildsReleased', 'bytesFreed', 'cgroupsRemoved', 'checkpointsRemoved', 'directoryWordsFreed', 'pagesFreed', 'referencesReleased', 'segmentsFreed'])

    const rm = runCli(['rm', 'web-1', '--pool', path, '--json'])
    assert.equal(rm.status, 0, rm.stderr)
    assert.equal(rm.json.state, 'removed')
    assert.ok(rm.json.bytesFreed >= 6 << 20)
    assert.deepEqual(runCli(['ls', '--pool', path, '--json']).json.checkpoints, [])
  })

  it('fsck exits 6 on unrepaired corruption', () => {
    const path = testPoolPath()
    const pool = Pool.create(path, {size: 32n << 20n})
    writePoolWord32(path, pool.header.pageStateOffset + 5 * 4, 0xff000000) // generation 0: impossible
    pool.close()
    const fsck = runCli(['pool', 'fsck', '--pool', path, '--json'])
    assert.equal(fsck.status, 6)
    assert.equal(fsck.json.clean, false)
    assert.equal(runCli(['pool', 'fsck', '--repair', '--pool', path, '--json']).status, 0)
    assert.equal(runCli(['pool', 'fsck', '--pool', path, '--json']).status, 0)
  })

  it('errors: missing pool, wrong magic, size too small, unknown name, existing pool, non-shareable file system', () => {
    const path = testPoolPath()
    expectError(runCli(['pool', 'info', '--pool', path, '--json']), 'POOL_NOT_FOUND', 3)
    expectError(runCli(['ls', '--json'], {CXLFORK_POOL: path}), 'POOL_NOT_FOUND', 3)
    expectError(runCli(['pool', 'init', '--size', '1M', '--pool', path, '--json']), 'POOL_TOO_SMALL', 2)
    assert.equal(runCli(['pool', 'init', '--size', 'lots', '--pool', path, '--json']).status, 2)

    assert.equal(runCli(['pool', 'init', '--size', '32M', '--pool', path, '--json']).status, 0)
    expectError(runCli(['pool', 'init', '--pool', path, '--json']), 'POOL_EXISTS', 7)
    expectError(runCli(['inspect', 'nope', '--pool', path, '--json']), 'CHECKPOINT_NOT_FOUND', 3)
    expectError(runCli(['rm', 'nope', '--pool', path, '--json']), 'CHECKPOINT_NOT_FOUND', 3)
    assert.equal(runCli(['pool', 'init', '--size', '16M', '--force', '--pool', path, '--json']).json.size, 16 << 20)

    const foreign = testPoolPath()
    runCli(['pool', 'init', '--size', '16M', '--pool', foreign])
    const bytes = Buffer.from('NOTAPOOL')
    const fd = fs.openSync(foreign, 'r+')
    fs.writeSync(fd, bytes, 0, 8, 0)
    fs.closeSync(fd)
    const magic = runCli(['pool', 'info', '--pool', foreign, '--json'])
    expectError(magic, 'POOL_FOREIGN', 6)
    assert.ok(magic.json.error.hint)

    // /work and /tmp are on a disk file system here: not shareable.
    const onDisk = `/tmp/cxlfork-test-${process.pid}.pool`
    const refused = runCli(['pool', 'init', '--size', '16M', '--pool', onDisk, '--json'])
    expectError(refused, 'FS_NOT_SHAREABLE', 5)
    assert.match(refused.json.error.hint, /\/dev\/shm/)
    assert.equal(fs.existsSync(onDisk), false)
  })

  it('init --provision on a file system without room: POOL_NO_SPACE, exit 7, no file left behind', () => {
    const dir = fs.mkdtempSync('/tmp/cxlfork-small-tmpfs-')
    const mount = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=24M', 'cxlfork-test', dir])
    try {
      assert.equal(mount.status, 0, `mount a 24 MiB tmpfs: ${mount.stderr}`)
      const path = `${dir}/small.pool`
      const refused = runCli(['pool', 'init', '--size', '64M', '--provision', '--pool', path, '--json'])
      expectError(refused, 'POOL_NO_SPACE', 7)
      assert.match(refused.json.error.hint, /smaller --size|without --provision/)
      assert.deepEqual(fs.readdirSync(dir), [], 'neither the pool nor its temporary file is left')
      // Larger than the file system: refused without --force (no file left), made sparse with it.
      const oversize = runCli(['pool', 'init', '--size', '64M', '--pool', path, '--json'])
      expectError(oversize, 'POOL_NO_SPACE', 7)
      assert.match(oversize.json.error.message, /64\.0 MiB .*24\.0 MiB in all/)
      assert.deepEqual(fs.readdirSync(dir), [])
      const sparse = runCli(['pool', 'init', '--size', '64M', '--force', '--pool', path, '--json'])
      assert.equal(sparse.status, 0, sparse.stderr)
      assert.equal(sparse.json.provisioned, false)
    } finally {
      if (mount.status === 0) spawnSync('umount', [dir])
      fs.rmSync(dir, {recursive: true, force: true})
    }
  })
})

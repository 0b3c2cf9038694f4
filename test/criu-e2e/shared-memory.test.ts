/**
 * Shared anonymous memory of a single process on the CRIU-format path (memtouch --advise
 * shared: 16 pages of MAP_SHARED|MAP_ANONYMOUS with a pattern): `criu dump` writes it as
 * CRIU does (a VMA_ANON_SHARED VMA naming its shmid, pagemap-shmem-SHMID.img and its
 * pages), and the clones of `criu restore` and `criu import` + restore find the pattern in
 * a shared mapping of their own. Trees sharing one object: tree.test.ts.
 */
import assert from 'node:assert/strict'
import {readFileSync, readdirSync} from 'node:fs'

import {requestCheck, startFixture, trackPid} from '../helpers/fixtures.js'
import {cli, imagesDir, installSuiteHooks, okJson, poolFile} from './helpers.js'

describe('criu-e2e: shared anonymous memory through criu dump, restore and import', function () {
  this.timeout(120_000)

  installSuiteHooks('criu-e2e shared memory')

  it('memtouch --advise shared: pagemap-shmem written; the clones check the pattern in a shared mapping of their own', async () => {
    const fx = await startFixture('memtouch', {mib: 4, args: ['--advise', 'shared']})
    const images = imagesDir('shmem')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json']))
    assert.ok(readdirSync(images).some((name) => /^pagemap-shmem-\d+\.img$/.test(name)), `pagemap-shmem-SHMID.img: ${readdirSync(images).join(' ')}`)
    const pool = poolFile('shmem')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'shmem', '--pool', pool, '--json']))
    const runs = [
      {what: 'criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
      {what: 'import + restore local', run: await cli(['restore', 'shmem', '--policy', 'local', '--pool', pool, '--json'])},
    ]
    const sharedLines = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter((line) => / rw-s .*\/dev\/zero \(deleted\)/.test(line))
    for (const {what, run} of runs) {
      const clone = okJson(run).pid as number
      trackPid(clone)
      assert.equal((await requestCheck(fx.logPath, clone)).fields.ok, '1', `${what}: the clone's pattern checks`)
      assert.equal(sharedLines(clone).length, 1, `${what}: a shared anonymous mapping: ${sharedLines(clone).join(' | ')}`)
      assert.notEqual(sharedLines(clone)[0]!.split(/\s+/)[4], sharedLines(fx.pid)[0]!.split(/\s+/)[4], `${what}: an object of its own, not the original's`)
    }
    assert.equal((await fx.check()).fields.ok, '1', 'the original is intact')
  })
})

/**
 * Issue 10's runtimes through the CRIU-format path: a Node.js process with worker_threads
 * (its threads, epoll instances, eventfds and pipes) and Python threading workers are each
 * dumped live with `criu dump`, restored twice with `criu restore`, and imported into a
 * pool and restored there under mow and local. Every clone proves its state by its own
 * checks. A Python multiprocessing pool (a process tree whose heap arena is a deleted tmpfs
 * file held open and mapped) is dumped with --tree, its arena written as CRIU 4.x writes a
 * memfd, and restored the same ways; each clone's workers are its own children.
 */
import assert from 'node:assert/strict'
import {existsSync, readdirSync} from 'node:fs'
import {join} from 'node:path'

import {procStat, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {type Json, cli, critDecode, imagesDir, installSuiteHooks, note, okJson, poolFile} from './helpers.js'


describe('criu-e2e: runtimes (Node worker_threads, Python threads, a multiprocessing pool) through criu dump, restore and import', function () {
  this.timeout(240_000)

  installSuiteHooks('criu-e2e runtimes')

  for (const c of [
    {fixture: 'nodeworkers', what: 'Node.js with 2 worker_threads'},
    {fixture: 'pythreads', what: 'Python threading workers'},
  ] as const) {
    it(`${c.fixture} (${c.what}): dumped live, restored twice by criu restore and through criu import under mow and local; every clone passes its own checks`, async () => {
      const fx = await startFixture(c.fixture)
      await waitForTicks(fx.logPath, fx.pid, 2)
      const images = imagesDir(c.fixture)
      const dump = okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json']))
      note(`criu dump ${c.fixture}: ${procStat(fx.pid)!.threads} threads, ${dump.files.length} images, downtime ${(dump.downtimeUs / 1000).toFixed(1)} ms`)
      const clones: number[] = []
      for (let round = 0; round < 2; round++) {
        const restored = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
        clones.push(restored.pid)
      }
      const pool = poolFile(c.fixture)
      okJson(await cli(['criu', 'import', '--images', images, '--name', 'imported', '--json', '--pool', pool]))
      for (const policy of ['mow', 'local'] as const) {
        const run = okJson(await cli(['restore', 'imported', '--policy', policy, '--json', '--pool', pool]))
        clones.push(run.pid)
      }
      for (const clone of clones) {
        trackPid(clone)
        const check = await requestCheck(fx.logPath, clone, 30_000)
        assert.equal(check.fields.ok, '1', `clone ${clone} of ${c.fixture}: ${check.line}`)
      }
      assert.equal((await fx.check()).fields.ok, '1', 'the original runs on')
    })
  }

  it('pypool (a multiprocessing.Pool: its heap arena is a deleted tmpfs file held open and mapped): criu dump --tree writes it as a memfd, crit decodes every image, restored twice by criu restore and through criu import under mow and local; each clone\'s own workers serve it', async () => {
    const fx = await startFixture('pypool')
    const workers = fx.ready.fields.workers!.split(',').map(Number)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = imagesDir('pypool')
    const dump = okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--tree', '--json']))
    assert.deepEqual(dump.tree.map((m: {pid: number}) => m.pid).sort((a: number, b: number) => a - b), [fx.pid, ...workers].sort((a, b) => a - b))
    // The arena as CRIU 4.x writes a memfd: a MEMFD files.img entry, its inode in memfd.img, its pages in pagemap-shmem-SHMID.img.
    const memfds = (await critDecode(join(images, 'memfd.img'))).entries as Json[]
    assert.ok(memfds.length >= 1, 'memfd.img holds the arena\'s inode')
    const files = (await critDecode(join(images, 'files.img'))).entries as Json[]
    const memfdFiles = files.filter((file) => file.type === 'MEMFD')
    assert.ok(memfdFiles.length >= 1, 'files.img holds MEMFD entries')
    for (const file of memfdFiles) {
      const inode = memfds.find((candidate) => String(candidate.inode_id) === String(file.memfd.inode_id))
      assert.ok(inode, `MEMFD entry ${file.id} names an inode of memfd.img`)
      assert.match(inode.name, /^\/dev\/shm\/|^[^/]/, 'the arena\'s name')
      assert.ok(Number(inode.size) > 0)
      assert.ok(existsSync(join(images, `pagemap-shmem-${inode.shmid}.img`)), `pagemap-shmem-${inode.shmid}.img holds its pages`)
    }
    // crit 3.17 knows memfd: every image of the set decodes (pages-N.img are raw pages, not protobuf).
    for (const name of readdirSync(images).filter((file) => file.endsWith('.img') && !file.startsWith('pages-'))) await critDecode(join(images, name))
    note(`criu dump pypool --tree: ${dump.tree.length} processes, ${dump.files.length} images, ${memfds.length} memfd inodes, downtime ${(dump.downtimeUs / 1000).toFixed(1)} ms`)
    const clones: {pid: number; how: string}[] = []
    for (let round = 0; round < 2; round++) {
      const restored = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
      assert.equal(restored.processes, 1 + workers.length)
      clones.push({pid: restored.pid, how: `criu restore ${round + 1}`})
    }
    const pool = poolFile('pypool')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'imported', '--json', '--pool', pool]))
    for (const policy of ['mow', 'local'] as const) {
      const run = okJson(await cli(['restore', 'imported', '--policy', policy, '--json', '--pool', pool]))
      assert.equal(run.processes, 1 + workers.length)
      clones.push({pid: run.pid, how: `import, ${policy}`})
    }
    for (const clone of clones) {
      trackPid(clone.pid)
      const check = await requestCheck(fx.logPath, clone.pid, 30_000)
      assert.equal(check.fields.ok, '1', `${clone.how} clone ${clone.pid}: ${check.line}`)
      for (const worker of check.fields.workers!.split(',').map(Number)) assert.equal(procStat(worker)?.ppid, clone.pid, `${clone.how}: worker ${worker} is a child of the clone ${clone.pid}`)
      note(`pypool ${clone.how}: workers ${check.fields.workers}, counter ${check.fields.counter}`)
    }
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', `the original pool still serves: ${original.line}`)
    for (const worker of original.fields.workers!.split(',').map(Number)) assert.ok(workers.includes(worker), `the original's answer from ${worker} comes from its own workers`)
  })
})

/**
 * Descriptors on the CRIU-format path, end to end on a real process (fixtures/pyfds.py):
 * pipes with bytes in flight (both ends with a dup of the write end, and a read end whose
 * writer is gone), an eventfd and a semaphore eventfd with their counters, an epoll
 * instance watching four of them, a timerfd, a signalfd, and a regular file open twice
 * through one description. `criu dump` writes them as CRIU 4.x does (files.img entries of
 * their kinds, one per open file description, pipes-data.img with the bytes), crit reads
 * every image, and the clones of `criu restore` and of `criu import` + restore find every
 * descriptor as it was by their own checks.
 */
import assert from 'node:assert/strict'
import {readdirSync} from 'node:fs'
import {join} from 'node:path'

import {requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, critDecode, imagesDir, installSuiteHooks, note, okJson, poolFile} from './helpers.js'

type Entry = Record<string, any>

describe('criu-e2e: pipes, eventfds, epoll, timerfd, signalfd through criu dump, restore and import', function () {
  this.timeout(120_000)

  installSuiteHooks('criu-e2e descriptors')

  it('pyfds: dumped live; crit reads every image and finds each descriptor\'s state; the restored and the imported clones pass their own fd checks', async () => {
    const fx = await startFixture('pyfds')
    await waitForTicks(fx.logPath, fx.pid, 2)
    assert.equal((await fx.check()).fields.ok, '1')
    const images = imagesDir('fds')
    const dump = okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json']))
    note(`criu dump pyfds: ${dump.files.length} images, downtime ${(dump.downtimeUs / 1000).toFixed(1)} ms`)
    // crit reads every image cxlfork wrote (pages-N.img are raw pages, not protobuf).
    for (const name of readdirSync(images).filter((n) => n.endsWith('.img') && !n.startsWith('pages-'))) await critDecode(join(images, name))
    const files = (await critDecode(join(images, 'files.img'))).entries as Entry[]
    const fdinfo = (await critDecode(join(images, `fdinfo-${(await critDecode(join(images, `ids-${fx.pid}.img`))).entries[0].files_id}.img`))).entries as Entry[]
    const byId = new Map(files.map((file) => [file.id as number, file]))
    const kindOf = (fd: Entry) => byId.get(fd.id)!.type as string
    const kinds = fdinfo.map(kindOf)
    for (const [kind, count] of [['PIPE', 4], ['EVENTFD', 2], ['EVENTPOLL', 1], ['TIMERFD', 1], ['SIGNALFD', 1]] as const) {
      assert.equal(kinds.filter((k) => k === kind).length, count, `${count} fd(s) of kind ${kind}: ${kinds.join(', ')}`)
    }
    // One files.img entry per open file description: the dup of A's write end and of the data file name their originals' entries.
    assert.equal(new Set(fdinfo.filter((fd) => kindOf(fd) === 'PIPE').map((fd) => fd.id)).size, 3, 'pipe A read, pipe A write (twice), pipe B read')
    const counters = files.filter((f) => f.type === 'EVENTFD').map((f) => Number(f.efd.counter)).sort()
    assert.deepEqual(counters, [3, 5], 'the eventfd counters')
    const epoll = files.find((f) => f.type === 'EVENTPOLL')!.epfd
    assert.equal(epoll.tfd.length, 4, `the interest list: ${JSON.stringify(epoll.tfd)}`)
    for (const target of epoll.tfd) assert.ok(byId.has(target.id), `epoll target fd ${target.tfd} names its file (id ${target.id})`)
    const timer = files.find((f) => f.type === 'TIMERFD')!.tfd
    assert.equal(Number(timer.insec), 250_000_000, 'the timer interval')
    assert.ok(Number(timer.vsec) > 3000 && Number(timer.vsec) <= 3600, `the time left: ${timer.vsec} s`)
    const signal = files.find((f) => f.type === 'SIGNALFD')!.sgfd
    assert.ok(BigInt(signal.sigmask) !== 0n, 'the signalfd mask')
    const pipes = ((await critDecode(join(images, 'pipes-data.img'))).entries as Entry[]).map((p) => p.bytes as number).sort((a, b) => a - b)
    assert.deepEqual(pipes, [4, 15], 'pipes-data.img holds the bytes in flight of both pipes ("tail", "bytes-in-flight")')
    assert.equal((await fx.check()).fields.ok, '1', 'the original still holds its bytes and counters')

    const restore = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
    trackPid(restore.pid)
    await waitForTicks(fx.logPath, restore.pid, 2)
    const check = await requestCheck(fx.logPath, restore.pid)
    assert.equal(check.fields.ok, '1', `the criu restore clone's own fd checks: ${check.line}`)

    const pool = poolFile('fds')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'fds', '--pool', pool, '--json']))
    for (const policy of ['mow', 'local'] as const) {
      const run = okJson(await cli(['restore', 'fds', '--policy', policy, '--pool', pool, '--json']))
      trackPid(run.pid)
      await waitForTicks(fx.logPath, run.pid, 2)
      const cloneCheck = await requestCheck(fx.logPath, run.pid)
      assert.equal(cloneCheck.fields.ok, '1', `the imported ${policy} clone's own fd checks: ${cloneCheck.line}`)
    }
  })
})

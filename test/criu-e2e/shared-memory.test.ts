/**
 * Shared anonymous memory of a single process on the CRIU-format path (memtouch --advise
 * shared: 16 pages of MAP_SHARED|MAP_ANONYMOUS with a pattern): `criu dump` writes it as
 * CRIU does (a VMA_ANON_SHARED VMA naming its shmid, pagemap-shmem-SHMID.img and its
 * pages), and the clones of `criu restore` and `criu import` + restore find the pattern in
 * a shared mapping of their own. Trees sharing one object: tree.test.ts. A memfd held open
 * and mapped MAP_SHARED is written as CRIU 4.x writes it (a MEMFD files.img entry, its inode
 * in memfd.img with name, size and seals, its pages in pagemap-shmem-SHMID.img); in every
 * clone the fd and the mapping are one object again. pymemfd's memfds (names, sizes off page
 * boundaries, seals) come back as memfds with their names, sizes and seals.
 */
import assert from 'node:assert/strict'
import {existsSync, readFileSync, readdirSync} from 'node:fs'
import {join} from 'node:path'

import {requestCheck, startFixture, trackPid} from '../helpers/fixtures.js'
import {type Json, cli, critDecode, imagesDir, installSuiteHooks, okJson, poolFile, startMemfdProgram} from './helpers.js'

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

  it('a memfd held open and mapped MAP_SHARED: written as CRIU 4.x writes it (MEMFD, memfd.img with name, size, seals; crit decodes it); in every clone of criu restore and import (mow, local) the fd and the mapping are one object', async () => {
    const program = await startMemfdProgram()
    try {
      const {pid, fd: fdNumber, check} = program
      const images = imagesDir('memfd')
      okJson(await cli(['criu', 'dump', String(pid), '--images', images, '--json']))
      const inodes = (await critDecode(join(images, 'memfd.img'))).entries as Json[]
      assert.equal(inodes.length, 1)
      const inode = inodes[0]
      assert.equal(inode.name, 'cxl-arena')
      assert.equal(Number(inode.size), 3 * 4096 + 100)
      assert.equal(Number(inode.seals) & 2, 2, 'F_SEAL_SHRINK recorded')
      const file = ((await critDecode(join(images, 'files.img'))).entries as Json[]).find((entry) => entry.type === 'MEMFD')
      assert.equal(Number(file.memfd.pos), 123)
      assert.equal(String(file.memfd.inode_id), String(inode.inode_id))
      const fdinfo = readdirSync(images).find((name) => /^fdinfo-\d+\.img$/.test(name))!
      assert.ok(((await critDecode(join(images, fdinfo))).entries as Json[]).some((entry) => entry.fd === fdNumber && entry.type === 'MEMFD'), `fd ${fdNumber} is a MEMFD in ${fdinfo}`)
      assert.ok(existsSync(join(images, `pagemap-shmem-${inode.shmid}.img`)), 'its pages in pagemap-shmem-SHMID.img')
      const vmas = (await critDecode(join(images, `mm-${pid}.img`))).entries[0].vmas as Json[]
      // Its mapping as CRIU writes a memfd's: VMA_AREA_MEMFD, a shared file mapping of a MEMFD entry of the same inode.
      const memfdEntries = ((await critDecode(join(images, 'files.img'))).entries as Json[]).filter((entry) => entry.type === 'MEMFD' && String(entry.memfd.inode_id) === String(inode.inode_id))
      const mapping = vmas.find((vma) => (Number(vma.status) & 0x4000) !== 0)
      assert.ok(mapping, 'a VMA_AREA_MEMFD mapping')
      assert.equal(Number(mapping.status) & 0x80, 0x80, 'VMA_FILE_SHARED')
      assert.ok(memfdEntries.some((entry) => String(entry.id) === String(mapping.shmid)), `the mapping names a MEMFD entry of the same inode (${mapping.shmid})`)
      const pool = poolFile('memfd')
      okJson(await cli(['criu', 'import', '--images', images, '--name', 'memfd', '--pool', pool, '--json']))
      const runs = [
        {what: 'criu restore 1', run: await cli(['criu', 'restore', '--images', images, '--json'])},
        {what: 'criu restore 2', run: await cli(['criu', 'restore', '--images', images, '--json'])},
        {what: 'import + restore mow', run: await cli(['restore', 'memfd', '--policy', 'mow', '--pool', pool, '--json'])},
        {what: 'import + restore local', run: await cli(['restore', 'memfd', '--policy', 'local', '--pool', pool, '--json'])},
      ]
      for (const {what, run} of runs) {
        const clone = okJson(run).pid as number
        trackPid(clone)
        await check(clone, what)
      }
      await check(pid, 'the original')
    } finally {
      program.stop()
    }
  })

  it('pymemfd: memfd.img holds each memfd\'s name, exact size and seals (also of one only mapped); the clones of criu restore and import (mow, local) check names, sizes, seals, FD_CLOEXEC and contents', async () => {
    const fx = await startFixture('pymemfd')
    const images = imagesDir('memfds')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json']))
    const inodes = (await critDecode(join(images, 'memfd.img'))).entries as Json[]
    const byName = new Map(inodes.map((inode) => [inode.name as string, inode]))
    const expected: [string, number, number][] = [['cxl-sealed', 3 * 4096 + 100, 0x7], ['cxl-ro', 5000, 0x8], ['cxl-future', 2 * 4096 + 1, 0x10], ['cxl-plain', 2 * 4096 + 7, 0x1], ['cxl-maponly', 4096 + 3, 0x4], ['cxl-empty', 0, 0]]
    for (const [name, size, seals] of expected) {
      const inode = byName.get(name)
      assert.ok(inode, `memfd.img holds ${name}: ${[...byName.keys()].join(',')}`)
      assert.equal(Number(inode.size), size, `${name}: size`)
      // crit shows seals by name; the value, whichever way it is shown, must carry these bits (F_SEAL_EXEC aside).
      const value = typeof inode.seals === 'number' ? inode.seals : sealsOf(String(inode.seals))
      assert.equal(value & 0x1f, seals, `${name}: seals ${String(inode.seals)}`)
    }
    const pool = poolFile('memfds')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'memfds', '--pool', pool, '--json']))
    const runs = [
      {what: 'criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
      {what: 'import + restore mow', run: await cli(['restore', 'memfds', '--policy', 'mow', '--pool', pool, '--json'])},
      {what: 'import + restore local', run: await cli(['restore', 'memfds', '--policy', 'local', '--pool', pool, '--json'])},
    ]
    for (const {what, run} of runs) {
      const clone = okJson(run).pid as number
      trackPid(clone)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `${what}: ${check.line}`)
    }
    assert.equal((await fx.check()).fields.ok, '1', 'the original is intact')
  })
})

/** crit's text for a flags field ("F_SEAL_SEAL | F_SEAL_GROW", or a number) as its value. */
function sealsOf(text: string): number {
  const bits: Record<string, number> = {F_SEAL_SEAL: 1, F_SEAL_SHRINK: 2, F_SEAL_GROW: 4, F_SEAL_WRITE: 8, F_SEAL_FUTURE_WRITE: 16, F_SEAL_EXEC: 32}
  return text.split('|').map((part) => part.trim()).filter(Boolean).reduce((sum, part) => sum | (bits[part] ?? Number(part)), 0)
}

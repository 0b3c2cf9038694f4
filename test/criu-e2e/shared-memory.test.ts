/**
 * Shared anonymous memory of a single process on the CRIU-format path (memtouch --advise
 * shared: 16 pages of MAP_SHARED|MAP_ANONYMOUS with a pattern): `criu dump` writes it as
 * CRIU does (a VMA_ANON_SHARED VMA naming its shmid, pagemap-shmem-SHMID.img and its
 * pages), and the clones of `criu restore` and `criu import` + restore find the pattern in
 * a shared mapping of their own. Trees sharing one object: tree.test.ts. A memfd held open
 * and mapped MAP_SHARED is written as CRIU 4.x writes it (a MEMFD files.img entry, its inode
 * in memfd.img with name, size and seals, its pages in pagemap-shmem-SHMID.img); in every
 * clone the fd and the mapping are one object again.
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, readdirSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {requestCheck, startFixture, trackPid} from '../helpers/fixtures.js'
import {until} from '../restore/helpers.js'
import {type Json, cli, critDecode, imagesDir, installSuiteHooks, okJson, poolFile} from './helpers.js'

// A memfd of 3 pages and 100 bytes, sealed against shrinking, its fd at offset 123, mapped
// MAP_SHARED over its 3 whole pages with a pattern. On SIGUSR1 the process checks the pattern and its
// offset, writes through the fd and reads through the mapping and the other way round, and
// logs its verdict under its own pid.
const MEMFD_PROGRAM = `
import fcntl, mmap, os, signal, sys
log = sys.argv[1]
fd = os.memfd_create('cxl-arena', os.MFD_ALLOW_SEALING)
os.ftruncate(fd, 3 * 4096 + 100)
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
m = mmap.mmap(fd, 3 * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:4096] = b'A' * 4096
m[8192:8200] = b'pattern!'
os.lseek(fd, 123, os.SEEK_SET)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
def say(line):
    with open(log, 'a') as out:
        out.write(line + '\\n')
say('ready pid=%d fd=%d' % (os.getpid(), fd))
while True:
    signal.sigwait({signal.SIGUSR1})
    bad = []
    if m[0:4096] != b'A' * 4096 or m[8192:8200] != b'pattern!': bad.append('pattern')
    if os.lseek(fd, 0, os.SEEK_CUR) != 123: bad.append('offset')
    os.pwrite(fd, b'ZZZZZZZZ', 8192)
    if m[8192:8200] != b'ZZZZZZZZ': bad.append('fd-to-mapping')
    m[100:104] = b'mmmm'
    if os.pread(fd, 4, 100) != b'mmmm': bad.append('mapping-to-fd')
    m[8192:8200] = b'pattern!'
    m[100:104] = b'AAAA'
    say('check pid=%d ok=%d bad=%s' % (os.getpid(), 0 if bad else 1, ','.join(bad)))
`

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
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-memfd-'))
    const log = join(dir, 'log')
    const lines = () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n') : [])
    const child = spawn('python3', ['-c', MEMFD_PROGRAM, log], {stdio: 'ignore'})
    trackPid(child.pid!)
    try {
      await until(() => lines().some((line) => line.startsWith(`ready pid=${child.pid} `)), 'the memfd program is ready')
      const fdNumber = Number(/fd=(\d+)/.exec(lines().find((line) => line.startsWith('ready'))!)![1])
      const check = async (pid: number, what: string): Promise<void> => {
        // Each process checks once: its pid names its verdict.
        process.kill(pid, 'SIGUSR1')
        const line = await until(() => lines().find((candidate) => candidate.startsWith(`check pid=${pid} `)), `${what} checks its memfd`)
        assert.match(line, / ok=1 /, `${what}: ${line}`)
      }
      const images = imagesDir('memfd')
      okJson(await cli(['criu', 'dump', String(child.pid), '--images', images, '--json']))
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
      const vmas = (await critDecode(join(images, `mm-${child.pid}.img`))).entries[0].vmas as Json[]
      assert.ok(vmas.some((vma) => String(vma.shmid) === String(inode.shmid)), 'its mapping names the same object')
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
      await check(child.pid!, 'the original')
    } finally {
      child.kill('SIGKILL')
      rmSync(dir, {recursive: true, force: true})
    }
  })
})

/**
 * FIFOs and deleted files on the CRIU-format path, end to end on a real process
 * (fixtures/pyfifo.py: a FIFO open for reading and for writing, grown to 128 KiB, with 20
 * bytes in flight; a 20000-byte file on /var/tmp, a disk file system, held read-write at
 * offset 777 after it was unlinked, and one of 100 bytes open O_WRONLY|O_APPEND; an inotify
 * instance with watches 1 and 3 on the fixture's directory and the FIFO). `criu dump` writes them as CRIU 4.2 does: a FIFO entry
 * per open FIFO naming a regular-file entry with its path and flags, fifo-data.img with the
 * bytes and pipe size; the deleted file as a regular-file entry under its old name with a
 * GHOST remap (remap-fpath.img) to ghost-file-1.img holding its mode, owner and contents;
 * the inotify instance as an INOTIFY entry with its watches (inode, s_dev, file handle, mask).
 * crit reads every image; the clones of `criu restore` and of `criu import` + restore pass
 * the program's own checks (paths from /proc, kinds, flags, offset, pipe size, the bytes, the
 * contents). With CRIU_BIN (a CRIU >= 4): a real `criu dump` of pyfifo is restored by
 * cxlfork (also with the watches' path hints stripped, so they are found by file handle),
 * and cxlfork's dump is restored by real `criu restore`.
 * A deleted file over CRIU's ghost limit (1 MiB) is refused by name.
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {type Fixture, procStat, processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {allProcesses, until} from '../restore/helpers.js'
import {SYS, syscallRaw} from '../../src/sys/syscall.js'
import {assertOk, cli, crit, critDecode, criuErrors, cxlforkDumpRealRestore, expectCliError, imagesDir, installSuiteHooks, note, okJson, poolFile, realCriu} from './helpers.js'

type Entry = Record<string, any>

const O_ACCMODE = 3
const O_NONBLOCK = 0o4000
const O_APPEND = 0o2000
const S_IFMT = 0o170000
const S_IFIFO = 0o010000
const S_IFREG = 0o100000

/** Ghost files pyfifo (pid `pid`) made, or a restore made for it, still linked in /var/tmp. */
const leftGhosts = (pid: number): string[] => readdirSync('/var/tmp').filter((name) => name.startsWith(`cxlfork-pyfifo-${pid}`))

/** pyfifo's CHECK in `pid` (the original's fixture log), which must pass. */
async function assertChecks(fx: Fixture, pid: number, what: string): Promise<void> {
  await waitForTicks(fx.logPath, pid, 2)
  assertOk(await requestCheck(fx.logPath, pid), what)
}

describe('criu-e2e: FIFOs, deleted files and inotify through criu dump, restore and import', function () {
  this.timeout(120_000)

  installSuiteHooks('criu-e2e fifo-ghost')

  before(() => {
    const fsType = spawnSync('stat', ['-f', '-c', '%T', '/var/tmp'], {encoding: 'utf8'}).stdout.trim()
    assert.notEqual(fsType, 'tmpfs', '/var/tmp must be a disk file system here (a deleted tmpfs file is a memfd to CRIU)')
  })

  it('pyfifo: criu dump writes FIFO entries, fifo-data.img, ghost files and an INOTIFY entry as CRIU 4.2 does; crit reads them; criu restore refills the FIFO, criu import + restore (mow, local) shares it; every clone passes its own checks', async () => {
    const fx = await startFixture('pyfifo')
    await waitForTicks(fx.logPath, fx.pid, 2)
    assertOk(await fx.check(), 'the original\'s own checks')
    const fifo = fx.ready.fields.fifo!
    const ghostPath = fx.ready.fields.ghost!
    const images = imagesDir('fifo')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--kill', '--json']))
    await fx.exited()

    for (const name of readdirSync(images).filter((n) => n.endsWith('.img') && !n.startsWith('pages-'))) await critDecode(join(images, name))
    const files = (await critDecode(join(images, 'files.img'))).entries as Entry[]
    const byId = new Map(files.map((file) => [file.id as number, file]))
    const fifos = files.filter((file) => file.type === 'FIFO')
    assert.equal(fifos.length, 2, `two FIFO entries (the read and the write open): ${JSON.stringify(fifos)}`)
    assert.equal(new Set(fifos.map((file) => file.fifo.pipe_id)).size, 1, 'one FIFO: one pipe_id')
    const regs = fifos.map((file) => byId.get(file.fifo.regf_id)!)
    for (const reg of regs) {
      assert.equal(reg?.type, 'REG', 'each FIFO entry names a regular-file entry')
      assert.equal(reg.reg.name, fifo, 'with the FIFO\'s path')
      assert.equal(reg.reg.mode & S_IFMT, S_IFIFO, 'and its mode (S_IFIFO)')
    }
    assert.deepEqual(regs.map((reg) => [reg.reg.flags & O_ACCMODE, reg.reg.flags & O_NONBLOCK]).sort(), [[0, O_NONBLOCK], [1, 0]], 'the read open non-blocking, the write open blocking')
    const fifoData = (await critDecode(join(images, 'fifo-data.img'))).entries as Entry[]
    assert.deepEqual(fifoData.map((d) => [d.pipe_id, d.bytes, d.size]), [[fifos[0]!.fifo.pipe_id, 20, 128 * 1024]], 'fifo-data.img: the 20 bytes in flight and the 128 KiB pipe size')
    const remaps = (await critDecode(join(images, 'remap-fpath.img'))).entries as Entry[]
    assert.deepEqual(remaps.map((remap) => remap.remap_type), ['GHOST', 'GHOST'], 'both deleted files are ghost-remapped')
    const ghostOf = (name: string) => {
      const remap = remaps.find((r) => byId.get(r.orig_id)!.reg.name === name)
      assert.ok(remap, `the deleted file's entry keeps the name it had (${name})`)
      return {reg: byId.get(remap.orig_id)!.reg, image: join(images, `ghost-file-${remap.remap_id}.img`)}
    }
    const big = ghostOf(ghostPath)
    assert.deepEqual([Number(big.reg.pos), big.reg.flags & O_ACCMODE], [777, 2], 'read-write at offset 777')
    const bigGhost = (await critDecode(big.image)).entries as Entry[]
    assert.equal(bigGhost[0]!.mode, S_IFREG | 0o640, 'ghost-file: a regular file, mode 0640')
    assert.equal(Number(bigGhost[0]!.size), 20000, 'of 20000 bytes, in chunks (as CRIU writes files of 12 KiB or more)')
    assert.equal(Buffer.from(bigGhost[1]!.extra, 'base64').length, 20000, 'its contents')
    const small = ghostOf(`${ghostPath}-small`)
    assert.equal(small.reg.flags & (O_ACCMODE | O_APPEND), 1 | O_APPEND, 'write-only, O_APPEND')
    const smallGhost = (await critDecode(small.image)).entries as Entry[]
    assert.deepEqual([smallGhost.length, smallGhost[0]!.mode, smallGhost[0]!.chunks], [1, S_IFREG | 0o600, undefined], 'the small one unchunked, mode 0600')
    assert.equal(readFileSync(small.image).subarray(-100).toString(), '0123456789'.repeat(10), 'its contents at the end of its image')
    const inotify = files.filter((file) => file.type === 'INOTIFY')
    assert.equal(inotify.length, 1, 'one INOTIFY entry')
    const watches = (inotify[0]!.ify.wd as Entry[]).map((wd) => [wd.wd, wd.mask, wd.f_handle.path, Number(wd.i_ino), wd.f_handle.bytes > 0]).sort()
    assert.deepEqual(watches, [[1, 0x300, fx.dir, Number(statSync(fx.dir).ino), true], [3, 0x2, fifo, Number(statSync(fifo).ino), true]], 'its watches: wd, mask, path hint, inode, a file handle')

    // The original is gone: nobody holds the FIFO, so the clone gets its bytes from fifo-data.img.
    const restore = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
    trackPid(restore.pid)
    await assertChecks(fx, restore.pid, 'the criu restore clone (FIFO refilled, deleted file recreated)')
    // Beside it, the imported clones share the FIFO (and its bytes) with it, each with a deleted file of its own.
    const pool = poolFile('fifo')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'fifo', '--pool', pool, '--json']))
    for (const policy of ['mow', 'local'] as const) {
      const run = okJson(await cli(['restore', 'fifo', '--policy', policy, '--pool', pool, '--json']))
      trackPid(run.pid)
      await assertChecks(fx, run.pid, `the imported ${policy} clone`)
    }
    await assertChecks(fx, restore.pid, 'the first clone, after the others read and put back the FIFO\'s bytes')
    assert.deepEqual(leftGhosts(fx.pid), [], 'no deleted file left linked')
  })

  it('a deleted file a parent and its forked child share (one open file description): criu dump --tree writes one ghost; in the restored clone tree they share one recreated file again', async () => {
    const code = [
      'import ctypes, os, time',
      'os.closerange(3, 1024)',
      'path = "/var/tmp/cxlfork-pyfifo-%d-tree" % os.getpid()',
      'fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)',
      'os.write(fd, b"shared-by-the-tree")',
      'os.unlink(path)',
      'if os.fork() == 0:',
      '    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: dies with its parent',
      '    time.sleep(600)',
      '    os._exit(0)',
      'time.sleep(600)',
    ].join('\n')
    const parent = spawn('python3', ['-c', code], {stdio: 'ignore'})
    trackPid(parent.pid!)
    const ghostFd = (pid: number): number | undefined => {
      try {
        const fd = readdirSync(`/proc/${pid}/fd`).find((n) => readlinkSync(`/proc/${pid}/fd/${n}`).endsWith('-tree (deleted)'))
        return fd === undefined ? undefined : Number(fd)
      } catch {
        return undefined
      }
    }
    const childOf = (pid: number): number | undefined => allProcesses().find((p) => p.ppid === pid)?.pid
    await until(() => childOf(parent.pid!) !== undefined && ghostFd(childOf(parent.pid!)!) !== undefined, 'parent and child hold the deleted file')
    const images = imagesDir('tree-ghost')
    okJson(await cli(['criu', 'dump', String(parent.pid), '--tree', '--images', images, '--json']))
    const remaps = (await critDecode(join(images, 'remap-fpath.img'))).entries as Entry[]
    assert.equal(remaps.length, 1, 'one open file description: one ghost file')
    const restore = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
    trackPid(restore.pid)
    await until(() => childOf(restore.pid) !== undefined && ghostFd(childOf(restore.pid)!) !== undefined, 'the clone tree holds the deleted file')
    const clone = {pid: restore.pid as number, fd: ghostFd(restore.pid)!}
    const kid = {pid: childOf(restore.pid)!, fd: ghostFd(childOf(restore.pid)!)!}
    trackPid(kid.pid)
    assert.equal(readFileSync(`/proc/${kid.pid}/fd/${kid.fd}`, 'utf8'), 'shared-by-the-tree', 'the recreated file\'s contents')
    assert.equal(syscallRaw(SYS.kcmp, clone.pid, kid.pid, 0 /* KCMP_FILE */, clone.fd, kid.fd), 0n, 'the clone parent and child share one open file description')
    const original = {pid: parent.pid!, fd: ghostFd(parent.pid!)!}
    assert.notEqual(syscallRaw(SYS.kcmp, original.pid, clone.pid, 0, original.fd, clone.fd), 0n, 'the clone\'s file is its own, not the original\'s')
  })

  it('a deleted file over 1 MiB (CRIU\'s ghost limit) -> criu dump refuses it by name (exit 5 UNSUPPORTED_FD); the target runs on', async () => {
    const code = [
      'import os, time',
      'os.closerange(3, 1024)',
      'path = "/var/tmp/cxlfork-pyfifo-%d-big" % os.getpid()',
      'fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)',
      'os.write(fd, b"x" * (2 << 20))',
      'os.unlink(path)',
      'time.sleep(600)',
    ].join('\n')
    const child = spawn('python3', ['-c', code], {stdio: 'ignore'})
    trackPid(child.pid!)
    const holds = () => {
      try {
        return readdirSync(`/proc/${child.pid}/fd`).some((fd) => readlinkSync(`/proc/${child.pid}/fd/${fd}`).endsWith('-big (deleted)'))
      } catch {
        return false
      }
    }
    await until(holds, 'the deleted file is held')
    const images = imagesDir('big-ghost')
    const run = await cli(['criu', 'dump', String(child.pid), '--images', images, '--json'])
    expectCliError(run, {code: 'UNSUPPORTED_FD', exitCode: 5, message: [String(child.pid), /a deleted file of 2097152 bytes/, /1048576/]})
    assert.ok(!existsSync(images) || readdirSync(images).length === 0, 'no image written')
    assert.equal(procStat(child.pid!)?.state, 'S', 'the target runs on, not stopped')
  })

  describe('with a real CRIU 4.x (CRIU_BIN)', function () {
    let criu: {bin: string; version: string}

    before(function () {
      const found = realCriu()
      if ('skip' in found) {
        note(`real CRIU part skipped: ${found.skip}`)
        this.skip()
      }
      criu = found
    })

    it('pyfifo: real criu dump -> cxlfork criu restore and criu import + restore mow; the clones pass their own FIFO, deleted-file and inotify checks (also with the watches found by file handle)', async () => {
      const fx = await startFixture('pyfifo')
      await waitForTicks(fx.logPath, fx.pid, 2)
      const images = imagesDir('fifo-from-criu')
      mkdirSync(images, {recursive: true})
      // Without --leave-running CRIU kills the process: nobody holds the FIFO, its bytes come from CRIU's fifo-data.img.
      const dump = spawnSync(criu.bin, ['dump', '-t', String(fx.pid), '-D', images, '--shell-job', '-v4', '-o', 'dump.log'], {encoding: 'utf8'})
      assert.equal(dump.status, 0, `criu dump -t ${fx.pid} failed:\n${criuErrors(images, 'dump.log')}`)
      await fx.exited()
      const types = ((await critDecode(join(images, 'files.img'))).entries as Entry[]).map((file) => file.type as string)
      assert.equal(types.filter((type) => type === 'FIFO').length, 2, 'CRIU wrote two FIFO entries')
      assert.deepEqual(((await critDecode(join(images, 'remap-fpath.img'))).entries as Entry[]).map((remap) => remap.remap_type), ['GHOST', 'GHOST'], 'and two ghost files')
      const restore = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
      trackPid(restore.pid)
      await assertChecks(fx, restore.pid, `criu ${criu.version} dump -> cxlfork criu restore`)
      const pool = poolFile('fifo-from-criu')
      okJson(await cli(['criu', 'import', '--images', images, '--name', 'fifo', '--pool', pool, '--json']))
      const mow = okJson(await cli(['restore', 'fifo', '--policy', 'mow', '--pool', pool, '--json']))
      trackPid(mow.pid)
      await assertChecks(fx, mow.pid, `criu ${criu.version} dump -> criu import + restore mow`)
      // Without the path hints CRIU adds to the watches, they are found by file handle (open_by_handle_at).
      const text = await crit('decode', '-i', join(images, 'files.img'))
      const stripped = text.replace(/("handle": \[[^\]]*\]), "path": "[^"]*"/g, '$1')
      assert.notEqual(stripped, text, 'CRIU wrote path hints')
      writeFileSync(join(images, 'files.json'), stripped)
      await crit('encode', '-i', join(images, 'files.json'), '-o', join(images, 'files.img'))
      const byHandle = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
      trackPid(byHandle.pid)
      await assertChecks(fx, byHandle.pid, 'cxlfork criu restore, the watches found by file handle')
      assert.deepEqual(leftGhosts(fx.pid), [], 'no deleted file left linked')
      note(`pyfifo: criu ${criu.version} dump -> cxlfork criu restore, import + restore mow, restore by file handles: CHECK ok`)
    })

    it('pyfifo: cxlfork criu dump --kill -> real criu restore -d; the process passes its own FIFO, deleted-file and inotify checks under its pid', async () => {
      const {fx, started} = await cxlforkDumpRealRestore(criu.bin, 'pyfifo', 'fifo-to-criu')
      try {
        await assertChecks(fx, fx.pid, `cxlfork criu dump -> criu ${criu.version} restore`)
        assert.deepEqual(leftGhosts(fx.pid), [], 'CRIU removed the ghost file it linked')
        note(`pyfifo: cxlfork criu dump -> criu ${criu.version} restore: CHECK ok`)
      } finally {
        // Not our child (CRIU's -d detaches it): end it if it is still the same process.
        if (processExists(fx.pid) && procStat(fx.pid)?.starttime === started) process.kill(fx.pid, 'SIGKILL')
      }
    })
  })
})

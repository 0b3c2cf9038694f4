/**
 * `criu dump` refuses what `checkpoint` refuses, with the same typed errors: a pid that
 * does not exist (exit 3), a process holding sockets checkpoint refuses (exit 5), a
 * zombie (exit 5), a process with children without --tree (exit 5). What checkpoint
 * takes, criu dump writes too (FIFOs, deleted files and inotify instances:
 * test/criu-e2e/fifo-ghost.test.ts; an unlinked tmpfs file or a memfd as CRIU's MEMFD,
 * test/criu-e2e/runtimes.test.ts).
 * The target is left running and intact (CHECK ok=1), no
 * image is written, and no stub or clone is left behind.
 *
 * What a refused dump leaves on disk, as observed: `criu dump` creates the --images
 * directory (mkdir -p, mode 0700) BEFORE it looks at the target, so a refusal leaves that
 * directory behind, empty. The tests pin that down (empty, no *.img) and check that a
 * later dump into the same directory is not blocked by it.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, readdirSync, statSync} from 'node:fs'
import {join} from 'node:path'

import {type Fixture, procStat, readLog, startFixture, waitForTicks} from '../helpers/fixtures.js'
import {
  cli, expectCliError, type ExpectedError, imagesDir, installSuiteHooks, note, okJson, orphanStubs, pidsNamed, poolFile, processesUsing, STUB_COMM,
} from './helpers.js'

/** What is left at `images` after a refused dump: undefined (nothing) or the file names inside. */
function leftover(images: string): string[] | undefined {
  if (!existsSync(images)) return undefined
  assert.ok(statSync(images).isDirectory())
  return readdirSync(images)
}

async function refuse(pid: number, images: string, want: ExpectedError): Promise<void> {
  // checkpoint's verdict on the same target first: criu dump must mirror it.
  const pool = poolFile('refusal')
  const ck = await cli(['checkpoint', String(pid), '--name', 'refused', '--pool', pool, '--json'])
  const ckError = expectCliError(ck, want)
  assert.equal(readdirSync('/dev/shm').includes(pool.slice('/dev/shm/'.length)) ? okJson(await cli(['ls', '--pool', pool, '--json'])).checkpoints.length : 0, 0, 'checkpoint stored nothing')
  const stubsBefore = pidsNamed(STUB_COMM)
  const run = await cli(['criu', 'dump', String(pid), '--images', images, '--json'])
  const error = expectCliError(run, want)
  assert.equal(error.code, ckError.code, 'criu dump refuses with checkpoint\'s code')
  assert.equal(error.message, ckError.message, 'and checkpoint\'s message')
  const left = leftover(images)
  note(`criu dump ${pid}: exit ${run.status} ${error.code}: ${error.message}; --images dir left: ${left === undefined ? 'none' : `[${left.join(', ')}] (mode ${(statSync(images).mode & 0o777).toString(8)})`}`)
  assert.ok(left === undefined || left.length === 0, `a refused dump writes no image: ${JSON.stringify(left)}`)
  assert.deepEqual(orphanStubs(stubsBefore, run.cliPid), [], `no orphaned ${STUB_COMM}`)
}

async function assertUnharmed(fx: Fixture): Promise<void> {
  await waitForTicks(fx.logPath, fx.pid, 2)
  const check = await fx.check()
  assert.equal(check.fields.ok, '1', `the target is intact after the refused dump: ${check.line}`)
  assert.equal(procStat(fx.pid)?.state === 'T' || procStat(fx.pid)?.state === 't', false, 'the target is not left stopped')
  assert.deepEqual(processesUsing(fx.dir, [fx.pid]), [], 'no other process uses the fixture\'s directory')
  assert.deepEqual(readLog(fx.logPath).filter((e) => e.pid !== fx.pid).map((e) => e.line), [], 'only the target writes its log')
}

describe('criu-e2e: criu dump refuses what checkpoint refuses and leaves the target unharmed', function () {
  this.timeout(60_000)

  installSuiteHooks('criu-e2e dump refusals')

  it('a pid that does not exist -> exit 3 PROCESS_NOT_FOUND', async () => {
    // The pid of a child that has exited and been reaped: real, and free.
    const gone = spawnSync('sh', ['-c', 'echo $$'], {encoding: 'utf8'})
    const pid = Number(gone.stdout.trim())
    assert.ok(pid > 0 && procStat(pid) === undefined, `pid ${pid} is free`)
    const images = imagesDir('nopid')
    await refuse(pid, images, {code: 'PROCESS_NOT_FOUND', exitCode: 3, message: [String(pid)]})
  })

  it('an unsupported fd (socket fixture with a pidfd, leaves its threads-free target running); the empty dir left does not block a dump, a set does (exit 7)', async () => {
    const fx = await startFixture('socket', {args: ['--pidfd', '1']})
    const images = imagesDir('refused-dir')
    await refuse(fx.pid, images, {code: 'UNSUPPORTED_FD', exitCode: 5, message: [String(fx.pid), /pidfd/]})
    await assertUnharmed(fx)

    // The empty directory a refusal leaves does not block a later dump there (it holds no *.img).
    const single = await startFixture('sighandler')
    okJson(await cli(['criu', 'dump', String(single.pid), '--images', images, '--json']))
    const firstSet = readdirSync(images).sort()
    assert.ok(firstSet.includes('inventory.img'))
    // ...but a directory that holds images does: exit 7, the first set untouched.
    const inventory = statSync(join(images, 'inventory.img')).mtimeMs
    const again = await cli(['criu', 'dump', String(single.pid), '--images', images, '--json'])
    expectCliError(again, {code: 'IMAGES_EXIST', exitCode: 7, message: [images]})
    assert.deepEqual(readdirSync(images).sort(), firstSet, 'the existing set is left as it was')
    assert.equal(statSync(join(images, 'inventory.img')).mtimeMs, inventory)
  })

  it('the zombie itself (zombie fixture\'s unreaped child) -> exit 5 PROCESS_ZOMBIE; parent and zombie untouched', async () => {
    const fx = await startFixture('zombie')
    const zombie = Number(fx.ready.fields.zombie)
    assert.equal(procStat(zombie)?.state, 'Z')
    const images = imagesDir('zombie-child')
    await refuse(zombie, images, {code: 'PROCESS_ZOMBIE', exitCode: 5, message: [String(zombie), /zombie/]})
    await assertUnharmed(fx)
    assert.equal(procStat(zombie)?.state, 'Z', 'the zombie is still there, unreaped')
  })

  // A process with children is dumped only as a tree (--tree, test/criu-e2e/tree.test.ts); without it, criu dump
  // refuses it as checkpoint does, naming --tree.
  it('the zombie fixture (a parent with an unreaped child) without --tree -> exit 5 HAS_CHILDREN naming --tree', async () => {
    const fx = await startFixture('zombie')
    const images = imagesDir('zombie-parent')
    await refuse(fx.pid, images, {code: 'HAS_CHILDREN', exitCode: 5, message: [String(fx.pid)]})
    const run = await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json'])
    assert.match(expectCliError(run, {code: 'HAS_CHILDREN', exitCode: 5, message: [String(fx.pid)]}).hint!, /--tree/)
    await assertUnharmed(fx)
  })

  it('a refused dump into a nested new path leaves the created parents (observed)', async () => {
    const fx = await startFixture('socket', {args: ['--pidfd', '1']})
    const parent = imagesDir('nested')
    const images = join(parent, 'a', 'b')
    await refuse(fx.pid, images, {code: 'UNSUPPORTED_FD', exitCode: 5, message: [String(fx.pid)]})
    note(`nested --images ${images}: parent ${existsSync(parent) ? 'created' : 'not created'}, leaf ${existsSync(images) ? 'created (empty)' : 'not created'}`)
    await assertUnharmed(fx)
  })
})

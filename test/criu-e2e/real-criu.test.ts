/**
 * Image sets both ways with a real CRIU 4.x, whenever CRIU_BIN names one (the suite
 * reports itself skipped otherwise, e.g. with Debian's criu 3.17):
 *   (a) `cxlfork criu dump --kill` of a live fixture -> real `criu restore -d`: the process
 *       comes back under its pid and proves (fixtures/README.md protocol) that it carried on
 *       from the dump with its state intact: TICK continues the counter, CHECK ok=1 with the
 *       READY crc, GREW ok=1 then CHECK ok=1 grown=1, EXIT on SIGTERM;
 *   (b) real `criu dump --leave-running` -> `cxlfork criu restore`, and -> `cxlfork criu
 *       import` + `cxlfork restore --policy mow`: the clone proves the same, the original
 *       runs on;
 *   (c) the same for a process tree (the tree fixture: children, a process group, pipes
 *       with bytes in flight, a zombie) and for a process holding pipes, eventfds, an epoll
 *       set, a timerfd and a signalfd (pyfds): the clones keep their shape and descriptors;
 *   (d) memfds with names, sizes off page boundaries and seals (pymemfd) both ways: each
 *       restored process checks its memfds' names, fstat sizes, F_GET_SEALS and contents.
 * CRIU runs as root with --shell-job: the fixtures share the test's session.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {mkdirSync, readFileSync, readdirSync, readlinkSync} from 'node:fs'
import {join} from 'node:path'

import {type Fixture, lastTick, procStat, processExists, readLog, requestCheck, requestExit, requestGrow, startFixture, trackPid, waitForExit, waitForLine, waitForTicks} from '../helpers/fixtures.js'
import {allProcesses, until} from '../restore/helpers.js'
import {wait4} from '../../src/sys/ptrace.js'
import {assertContinues, assertOk, cli, comm, criuErrors, cxlforkDumpRealRestore, imagesDir, installSuiteHooks, note, okJson, realCriu, startMemfdProgram, ticksOf} from './helpers.js'


function nsPid(pid: number): number {
  const ids = (/^NSpid:\s+(.+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '').trim().split(/\s+/).map(Number)
  return ids[ids.length - 1]!
}

function childrenOf(pid: number): number[] {
  return allProcesses().filter((p) => p.ppid === pid).map((p) => p.pid).sort((a, b) => a - b)
}

interface Case {
  fixture: string
  mib?: number
}

const CASES: Case[] = [{fixture: 'memtouch', mib: 16}, {fixture: 'sighandler'}, {fixture: 'timers'}, {fixture: 'pyheap', mib: 16}]

const label = (c: Case) => `${c.fixture}${c.mib ? ` --mib ${c.mib}` : ''}`
const start = (c: Case) => startFixture(c.fixture, c.mib === undefined ? {} : {mib: c.mib})

/** CHECK, GREW, CHECK, EXIT in `pid`, which must then end. */
async function assertLifecycle(fx: Fixture, pid: number, c: Case): Promise<void> {
  const readyCrc = fx.ready.fields.crc
  const check1 = await requestCheck(fx.logPath, pid)
  assertOk(check1, 'CHECK')
  if (readyCrc) assert.equal(check1.fields.crc, readyCrc, 'CHECK crc equals READY crc')
  assert.equal(check1.fields.clockbad, '0', `no clock violation: ${check1.line}`)
  const grew = await requestGrow(fx.logPath, pid)
  assertOk(grew, 'GREW')
  const check2 = await requestCheck(fx.logPath, pid)
  assertOk(check2, 'CHECK after GREW')
  assert.equal(check2.fields.grown, '1', `the grown block is verified: ${check2.line}`)
  const exit = await requestExit(fx.logPath, pid)
  if (c.fixture === 'sighandler') {
    assert.equal(exit.fields.rt2, 'c0ffee', `process-wide queued RT signal survived with its value: ${exit.line}`)
    assert.equal(exit.fields.rt3, 'beef', `thread-queued RT signal survived with its value: ${exit.line}`)
  }
  assert.ok(await waitForExit(pid, 5000), `${pid} ended after EXIT`)
}

describe('criu-e2e: image sets both ways with a real CRIU 4.x (CRIU_BIN)', function () {
  this.timeout(90_000)
  let criu: {bin: string; version: string}

  /** `criu dump --leave-running` of `pid` into a new image directory named by `tag`; its dump.log's errors on failure. */
  const realCriuDump = (pid: number, tag: string): string => {
    const images = imagesDir(tag)
    mkdirSync(images, {recursive: true})
    const dump = spawnSync(criu.bin, ['dump', '-t', String(pid), '-D', images, '--shell-job', '--leave-running', '-v4', '-o', 'dump.log'], {encoding: 'utf8'})
    assert.equal(dump.status, 0, `criu dump -t ${pid} failed:\n${criuErrors(images, 'dump.log')}`)
    return images
  }

  before(function () {
    const found = realCriu()
    if ('skip' in found) {
      note(`real CRIU suite skipped: ${found.skip}`)
      this.skip()
    }
    criu = found
    note(`real CRIU: ${criu.version} at ${criu.bin}`)
  })

  installSuiteHooks('criu-e2e real CRIU')

  for (const c of CASES) {
    it(`${label(c)}: cxlfork criu dump --kill -> real criu restore -d; the process continues intact under its pid`, async () => {
      const fx = await start(c)
      await waitForTicks(fx.logPath, fx.pid, 3)
      const before = lastTick(fx.logPath, fx.pid)!
      const images = imagesDir(`${c.fixture}-to-criu`)
      const originalComm = comm(fx.pid)
      const dump = okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--kill', '--json']))
      assert.equal(dump.killed, true)
      // The original is our child: reaped, so its pid is free for CRIU, which restores it under that pid.
      await fx.exited()
      const afterDump = lastTick(fx.logPath, fx.pid)!
      const from = readLog(fx.logPath).length

      const restore = spawnSync(criu.bin, ['restore', '-D', images, '-d', '--shell-job', '-v4', '-o', 'restore.log'], {encoding: 'utf8'})
      assert.equal(restore.status, 0, `criu restore -D ${images} failed:\n${criuErrors(images, 'restore.log')}`)
      const pid = fx.pid
      const started = procStat(pid)?.starttime
      try {
        assert.ok(processExists(pid), `process ${pid} runs after criu restore`)
        assert.equal(comm(pid), originalComm, 'the restored process has its comm')
        const ticks = await waitForTicks(fx.logPath, pid, 3)
        const first = readLog(fx.logPath).find((e) => e.index >= from && e.kind === 'TICK' && e.pid === pid)!
        const n = Number(first.fields.n)
        assert.ok(n >= Number(before.fields.n), `the restored process continues the counter: n=${n} >= ${before.fields.n} before the dump`)
        assert.ok(n <= Number(afterDump.fields.n) + 100, `n=${n} is close to the checkpointed value (${afterDump.fields.n} when the dump ended)`)
        for (const t of ticks) assert.equal(t.fields.clock, 'ok', t.line)
        note(`${label(c)}: cxlfork criu dump ${(dump.totalUs / 1000).toFixed(1)} ms -> criu ${criu.version} restore: first TICK n=${n} (before dump ${before.fields.n})`)
        await assertLifecycle(fx, pid, c)
      } finally {
        // Not our child (CRIU's -d detaches it): end it if a check failed midway, only if it is still the same process.
        if (processExists(pid) && procStat(pid)?.starttime === started) process.kill(pid, 'SIGKILL')
      }
    })
  }

  for (const c of CASES) {
    it(`${label(c)}: real criu dump --leave-running -> cxlfork criu restore and criu import + restore --policy mow; the clones continue intact`, async () => {
      const fx = await start(c)
      await waitForTicks(fx.logPath, fx.pid, 3)
      const before = lastTick(fx.logPath, fx.pid)!
      const images = realCriuDump(fx.pid, `${c.fixture}-from-criu`)
      const afterDump = lastTick(fx.logPath, fx.pid)!
      assert.ok(processExists(fx.pid), 'the original runs on after criu dump --leave-running')

      const copied = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
      const clone = copied.pid as number
      trackPid(clone)
      assert.notEqual(clone, fx.pid)
      await assertContinues(fx.logPath, clone, before, afterDump)
      await assertLifecycle(fx, clone, c)

      const pool = join(images, 'imported.pool')
      const imported = okJson(await cli(['criu', 'import', '--images', images, '--name', 'from-real-criu', '--pool', pool, '--json']))
      assert.equal(imported.writtenBy, 'criu', 'the importer read a set CRIU wrote')
      const mow = okJson(await cli(['restore', 'from-real-criu', '--policy', 'mow', '--pool', pool, '--json']))
      const mowClone = mow.pid as number
      trackPid(mowClone)
      assert.equal(mow.policy, 'mow')
      await assertContinues(fx.logPath, mowClone, before, afterDump)
      await assertLifecycle(fx, mowClone, c)
      note(`${label(c)}: criu ${criu.version} dump -> cxlfork criu restore (${copied.stats.pages_restored} pages copied), criu import (${imported.pages} pages) -> restore mow (${mow.stats.pages_mapped} mapped)`)

      const original = await fx.check()
      assertOk(original, 'the original is intact')
      assert.equal(original.fields.grown, '0', 'the clones\' growth is their own')
      for (const pid of [clone, mowClone]) for (const t of ticksOf(fx.logPath, pid)) assert.equal(t.fields.clock, 'ok', t.line)
    })
  }

  it('the tree fixture: real criu dump --leave-running of the whole tree -> cxlfork criu restore and criu import + restore; the clone tree keeps its shape, pids, pipes and zombie', async () => {
    const fx = await startFixture('tree')
    const children = fx.ready.fields.children!.split(',').map(Number)
    const zombie = Number(fx.ready.fields.zombie)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = realCriuDump(fx.pid, 'tree-from-criu')
    const pool = join(images, 'imported.pool')
    const imported = okJson(await cli(['criu', 'import', '--images', images, '--name', 'tree', '--pool', pool, '--json']))
    assert.equal(imported.writtenBy, 'criu')
    assert.equal(imported.processes, 5, 'the root, three children and the zombie')
    const runs = [
      {what: 'cxlfork criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
      {what: 'criu import + restore mow', run: await cli(['restore', 'tree', '--pool', pool, '--json'])},
    ]
    for (const {what, run} of runs) {
      const root = okJson(run).pid as number
      trackPid(root)
      assert.equal(okJson(run).processes, 5, what)
      const shape = childrenOf(root).map((pid) => ({pid, inside: nsPid(pid), state: procStat(pid)!.state, pgrp: procStat(pid)!.pgrp}))
      assert.deepEqual(shape.map((m) => m.inside).sort((a, b) => a - b), [...children, zombie].sort((a, b) => a - b), `${what}: every child keeps its pid: ${JSON.stringify(shape)}`)
      assert.equal(shape.find((m) => m.inside === zombie)!.state, 'Z', `${what}: the zombie is a zombie again`)
      assert.equal(shape.find((m) => m.inside === children[2])!.pgrp, shape.find((m) => m.inside === children[2])!.pid, `${what}: child 2 leads its group`)
      const from = readLog(fx.logPath).length
      const check = await requestCheck(fx.logPath, root)
      assertOk(check, `${what}: the clone root's checks`)
      assert.equal(check.fields.pipe, '7,7,7', `${what}: the bytes in flight in each child's pipe, from CRIU's pipes-data: ${check.line}`)
      for (const member of shape.filter((m) => m.state !== 'Z')) {
        const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === member.pid && e.index >= from, 10_000)
        assertOk(line, `${what}: clone child ${member.inside}`)
      }
      note(`tree: criu ${criu.version} dump -> ${what}: ${okJson(run).stats.restore_time / 1000} ms engine`)
    }
    assertOk(await fx.check(), 'the original tree is intact')
  })

  it('pyfds: real criu dump --leave-running -> cxlfork criu restore and criu import + restore; the clones find their pipes, eventfds, epoll set, timerfd and signalfd', async () => {
    const fx = await startFixture('pyfds')
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = realCriuDump(fx.pid, 'fds-from-criu')
    const pool = join(images, 'imported.pool')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'fds', '--pool', pool, '--json']))
    const runs = [
      {what: 'cxlfork criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
      {what: 'criu import + restore mow', run: await cli(['restore', 'fds', '--pool', pool, '--json'])},
    ]
    for (const {what, run} of runs) {
      const clone = okJson(run).pid as number
      trackPid(clone)
      await waitForTicks(fx.logPath, clone, 2)
      const check = await requestCheck(fx.logPath, clone)
      // CRIU 4.2 records an eventfd's counter but not EFD_SEMAPHORE (it reads only eventfd-count from
      // fdinfo), so the semaphore eventfd comes back a plain one: its read gives 3, not 1. Every check
      // pyfds makes before it (kinds, flags, the epoll interest list and a wait, the timer, a signal
      // through the signalfd, the bytes of both pipes, the first eventfd's counter) has passed then.
      assert.ok(check.fields.ok === '1' || check.fields.why === 'semaphore_3', `${what}: the clone's own fd checks: ${check.line}`)
      // The checks pyfds makes after that one, from /proc: the data file's offset, on both fds of its one description.
      const offsets = readdirSync(`/proc/${clone}/fd`).filter((fd) => readlinkSync(`/proc/${clone}/fd/${fd}`).endsWith('.data'))
        .map((fd) => Number(/^pos:\s+(\d+)/m.exec(readFileSync(`/proc/${clone}/fdinfo/${fd}`, 'utf8'))![1]))
      assert.deepEqual(offsets, [123, 123], `${what}: the data file, twice, at offset 123`)
      note(`pyfds: criu ${criu.version} dump -> ${what}: CHECK ${check.fields.ok === '1' ? 'ok' : check.fields.why}`)
    }
    assertOk(await fx.check(), 'the original is intact')
  })

  for (const shared of [false, true]) {
  it(`the tree fixture${shared ? ' --shared-kib 256' : ''}: cxlfork criu dump --tree --kill -> real criu restore -d; the tree comes back under its pids with its pipes and zombie${shared ? ', sharing one region (VMA_ANON_SHARED, pagemap-shmem)' : ''}`, async () => {
    const fx = await startFixture('tree', shared ? {args: ['--shared-kib', '256']} : {})
    const children = fx.ready.fields.children!.split(',').map(Number)
    const zombie = Number(fx.ready.fields.zombie)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = imagesDir('tree-to-criu')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--tree', '--kill', '--images', images, '--json']))
    // The root is our child: reaped, its children then reaped by whoever inherits them. The dump's fork snapshot, made
    // with CLONE_PARENT, is our child too (killed, a zombie in the root's session): reaped here. Until all are gone the
    // root's pid is still in use as a session and group id, and CRIU cannot have it.
    await fx.exited()
    for (const p of allProcesses()) if (p.ppid === process.pid && procStat(p.pid)?.state === 'Z' && procStat(p.pid)?.session === fx.pid) wait4(p.pid, 1 /* WNOHANG */)
    const holders = () => allProcesses().filter((p) => p.pid === fx.pid || [...children, zombie].includes(p.pid) || procStat(p.pid)?.session === fx.pid)
    await until(() => holders().length === 0, 'the dumped tree and its session are gone', 20_000)
    const restore = spawnSync(criu.bin, ['restore', '-D', images, '-d', '--shell-job', '-v4', '-o', 'restore.log'], {encoding: 'utf8'})
    assert.equal(restore.status, 0, `criu restore -D ${images} failed:\n${criuErrors(images, 'restore.log')}`)
    const started = procStat(fx.pid)?.starttime
    try {
      assert.deepEqual(childrenOf(fx.pid), [...children, zombie].sort((a, b) => a - b), 'CRIU restored every child under its pid')
      assert.equal(procStat(zombie)?.state, 'Z', 'and the zombie as a zombie')
      assert.equal(procStat(children[2]!)?.pgrp, children[2], 'child 2 leads its group')
      const from = readLog(fx.logPath).length
      const check = await requestCheck(fx.logPath, fx.pid)
      assertOk(check, 'the restored root\'s checks')
      assert.equal(check.fields.pipe, '7,7,7', `the bytes in flight, from cxlfork's pipes-data: ${check.line}`)
      for (const child of children) {
        const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === child && e.index >= from, 10_000)
        assertOk(line, `restored child ${child}`)
        if (shared) assert.equal(line.fields.snonce, check.fields.snonce, `child ${child} reads its parent's write in the region CRIU restored: ${line.line}`)
      }
      if (shared) {
        const again = await requestCheck(fx.logPath, fx.pid)
        assert.equal(again.fields.seen, children.map(() => check.fields.snonce).join(','), `the parent reads its children's writes: ${again.line}`)
      }
    } finally {
      // Not our child (CRIU's -d detaches it); its children die with it (PR_SET_PDEATHSIG).
      if (processExists(fx.pid) && procStat(fx.pid)?.starttime === started) process.kill(fx.pid, 'SIGKILL')
    }
  })
  }

  it('pyfds: cxlfork criu dump --kill -> real criu restore -d; the process comes back with its pipes, eventfds, epoll set, timerfd and signalfd', async () => {
    const {fx, started} = await cxlforkDumpRealRestore(criu.bin, 'pyfds', 'fds-to-criu')
    try {
      await waitForTicks(fx.logPath, fx.pid, 2)
      const check = await requestCheck(fx.logPath, fx.pid)
      // CRIU's restore drops EFD_SEMAPHORE, which cxlfork keeps in its extension of eventfd_file_entry (see above).
      assert.ok(check.fields.ok === '1' || check.fields.why === 'semaphore_3', `the process restored by CRIU checks its fds: ${check.line}`)
      note(`pyfds: cxlfork criu dump -> criu ${criu.version} restore: CHECK ${check.fields.ok === '1' ? 'ok' : check.fields.why}`)
    } finally {
      if (processExists(fx.pid) && procStat(fx.pid)?.starttime === started) process.kill(fx.pid, 'SIGKILL')
    }
  })

  it('the socket fixture (a TCP listener, stream and datagram socketpairs with bytes and messages queued, an abstract Unix listener): real criu dump --leave-running -> cxlfork criu restore and import + restore in their own network namespaces pass its socket checks', async () => {
    const fx = await startFixture('socket', {args: ['--unix-listener', '1']})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = realCriuDump(fx.pid, 'socket-from-criu')
    const pool = join(images, 'imported.pool')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'socket', '--pool', pool, '--json']))
    const runs = [
      {what: 'cxlfork criu restore', run: await cli(['criu', 'restore', '--images', images, '--netns', 'new', '--json'])},
      {what: 'criu import + restore', run: await cli(['restore', 'socket', '--netns', 'new', '--pool', pool, '--json'])},
    ]
    for (const {what, run} of runs) {
      const clone = okJson(run).pid as number
      trackPid(clone)
      assertOk(await requestCheck(fx.logPath, clone), `${what}: the clone's socket checks (CRIU's unixsk, inetsk and sk-queues)`)
    }
    assertOk(await fx.check(), 'the original is intact')
  })

  it('the socket fixture: cxlfork criu dump --kill -> real criu restore -d; the process passes its socket checks under its pid', async () => {
    const {fx, started} = await cxlforkDumpRealRestore(criu.bin, 'socket', 'socket-to-criu', {args: ['--unix-listener', '1']})
    try {
      assertOk(await requestCheck(fx.logPath, fx.pid), 'the process CRIU restored from cxlfork\'s unixsk, inetsk and sk-queues')
    } finally {
      if (processExists(fx.pid) && procStat(fx.pid)?.starttime === started) process.kill(fx.pid, 'SIGKILL')
    }
  })

  it('tree --shared-kib 256: real criu dump (the shared region as a memfd-backed /dev/zero mapping) -> cxlfork criu restore; the clone tree shares one object, nonces both ways', async () => {
    const fx = await startFixture('tree', {args: ['--shared-kib', '256']})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = realCriuDump(fx.pid, 'shtree-from-criu')
    const root = okJson(await cli(['criu', 'restore', '--images', images, '--json'])).pid as number
    trackPid(root)
    const kids = childrenOf(root).filter((pid) => procStat(pid)?.state !== 'Z')
    const round = async () => {
      const from = readLog(fx.logPath).length
      const check = await requestCheck(fx.logPath, root)
      assertOk(check, 'the clone root')
      const lines = []
      for (const kid of kids) {
        const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === kid && e.index >= from, 10_000)
        assertOk(line, `clone child ${kid}`)
        lines.push(line)
      }
      return {parent: check, kids: lines}
    }
    const first = await round()
    for (const kid of first.kids) assert.equal(kid.fields.snonce, first.parent.fields.snonce, `a clone child reads its parent's write: ${kid.line}`)
    const second = await round()
    assert.equal(second.parent.fields.seen, kids.map(() => first.parent.fields.snonce).join(','), `the clone parent reads its children's writes: ${second.parent.line}`)
    assertOk(await fx.check(), 'the original tree is intact')
  })

  it('a memfd held open and mapped MAP_SHARED: real criu dump (MEMFD, memfd.img, a VMA_AREA_MEMFD mapping) -> cxlfork criu restore; in the clone the fd and the mapping are one object', async () => {
    const program = await startMemfdProgram()
    try {
      const images = realCriuDump(program.pid, 'memfd-from-criu')
      assert.ok(readdirSync(images).includes('memfd.img'), 'CRIU wrote memfd.img')
      const clone = okJson(await cli(['criu', 'restore', '--images', images, '--json'])).pid as number
      trackPid(clone)
      await program.check(clone, 'the clone of CRIU\'s set')
      await program.check(program.pid, 'the original')
    } finally {
      program.stop()
    }
  })

  it('pymemfd: cxlfork criu dump --kill -> real criu restore -d; the process comes back with its memfds under their names, sizes and seals', async () => {
    const {fx, started} = await cxlforkDumpRealRestore(criu.bin, 'pymemfd', 'memfds-to-criu')
    try {
      await waitForTicks(fx.logPath, fx.pid, 2)
      assertOk(await requestCheck(fx.logPath, fx.pid), 'the process CRIU restored checks its memfds')
      assert.equal(readlinkSync(`/proc/${fx.pid}/fd/${/cxl-sealed:(\d+)/.exec(fx.ready.fields.fds!)![1]}`), '/memfd:cxl-sealed (deleted)')
    } finally {
      if (processExists(fx.pid) && procStat(fx.pid)?.starttime === started) process.kill(fx.pid, 'SIGKILL')
    }
  })

  it('pymemfd: real criu dump --leave-running -> cxlfork criu restore; the clone checks its memfds\' names, sizes and seals', async () => {
    const fx = await startFixture('pymemfd')
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = realCriuDump(fx.pid, 'memfds-from-criu')
    const clone = okJson(await cli(['criu', 'restore', '--images', images, '--json'])).pid as number
    trackPid(clone)
    assertOk(await requestCheck(fx.logPath, clone), 'the clone of CRIU\'s set checks its memfds')
    assertOk(await fx.check(), 'the original')
  })
})

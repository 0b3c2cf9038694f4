/**
 * Multi-threaded processes, end to end on real fixtures: checkpointed while they run,
 * restored under every policy, through the CRIU-format path and through criu import.
 * Every clone proves its state with its own checks: each thread's tid, TLS, buffer CRC,
 * signal mask and name; a robust, a PI and a recursive mutex held across the checkpoint
 * and used from the clone; pthread_kill to every thread (fixtures/threads.c). A clone
 * lives in a PID namespace of its own where its pid and tids are the original's; its
 * init (cxlfork-init) ends with it and reports its status to `restore --wait`.
 */
import assert from 'node:assert/strict'
import {mkdtempSync, readFileSync, readdirSync, rmSync} from 'node:fs'

import {
  type Fixture, lastTick, procStat, processExists, readLog, requestCheck, requestExit, startFixture, trackPid, waitForExit, waitForTicks,
} from '../helpers/fixtures.js'
import {allProcesses, cli, comm, describeRun, installCleanupHooks, note, poolPath, startCli, until} from './helpers.js'

/** The NSpid line of a task: its id in every namespace, outermost first. */
function nsIds(pid: number, tid: number): number[] {
  const line = /^NSpid:\s+(.+)$/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1] ?? ''
  return line.trim().split(/\s+/).map(Number)
}

function originalIds(fx: Fixture): number[] {
  return [fx.pid, ...fx.ready.fields.tids!.split(',').map(Number)].sort((a, b) => a - b)
}

function tracerOf(pid: number, tid: number): number {
  return Number(/^TracerPid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'))?.[1] ?? -1)
}

/** What a clone of `fx` must be: its threads with the original ids inside its namespace, an init as parent, its own checks passing. */
async function assertClone(fx: Fixture, json: any, threads: number, what: string): Promise<number> {
  const clone = json.pid as number
  assert.ok(Number.isInteger(clone) && clone !== fx.pid, `${what}: a new pid ${clone}`)
  trackPid(clone)
  assert.equal(json.threads, threads, `${what}: ${threads} threads restored`)
  assert.equal(json.pidNamespace?.pid, fx.pid, `${what}: the clone keeps the original's pid in its namespace`)
  const init = json.pidNamespace.initPid as number
  assert.equal(comm(init), 'cxlfork-init', `${what}: its init runs`)
  assert.equal(procStat(clone)?.ppid, init, `${what}: the init is the clone's parent`)
  const tasks = readdirSync(`/proc/${clone}/task`).map(Number)
  assert.equal(tasks.length, threads, `${what}: /proc lists ${threads} tasks`)
  const inside = tasks.map((tid) => nsIds(clone, tid))
  for (const ids of inside) assert.equal(ids.length, 2, `${what}: every task is one namespace down: ${ids}`)
  assert.deepEqual(inside.map((ids) => ids[1]).sort((a, b) => a! - b!), originalIds(fx), `${what}: every thread has its original tid inside`)
  for (const tid of tasks) assert.equal(tracerOf(clone, tid), 0, `${what}: thread ${tid} is not left traced`)
  assert.equal(comm(clone), comm(fx.pid), `${what}: the clone has the original's name`)
  await waitForTicks(fx.logPath, clone, 2)
  const check = await requestCheck(fx.logPath, clone)
  assert.equal(check.fields.ok, '1', `${what}: the clone's own CHECK (tids, TLS, masks, names, mutexes, pthread_kill): ${check.line}`)
  assert.equal(check.fields.threads, String(threads))
  return clone
}

async function checkpointLive(fx: Fixture, pool: string, name: string): Promise<any> {
  await waitForTicks(fx.logPath, fx.pid, 2)
  const run = await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', pool])
  assert.equal(run.status, 0, describeRun(run))
  note(`checkpoint ${name}: ${run.json.pages} pages, downtime ${(run.json.downtimeUs / 1000).toFixed(1)} ms, CLI ${run.ms.toFixed(0)} ms`)
  // The original runs on with every thread, its state intact.
  const check = await fx.check()
  assert.equal(check.fields.ok, '1', `the original after the checkpoint: ${check.line}`)
  return run.json
}

describe('restore: multi-threaded processes keep their pid and thread ids', function () {
  this.timeout(240_000)

  installCleanupHooks('threads')

  for (const threads of [2, 8, 64]) {
    it(`threads --threads ${threads}: checkpointed live, restored under every policy (mow, moa, hybrid, local); every clone passes its own checks`, async () => {
      const pool = poolPath('threads')
      const fx = await startFixture('threads', {args: ['--threads', String(threads)]})
      assert.equal(procStat(fx.pid)!.threads, threads + 1)
      await waitForTicks(fx.logPath, fx.pid, 2)
      const before = lastTick(fx.logPath, fx.pid)!
      const ck = await checkpointLive(fx, pool, `t${threads}`)
      assert.equal(ck.pid, fx.pid)
      const inspect = await cli(['inspect', `t${threads}`, '--json', '--pool', pool])
      assert.equal(inspect.status, 0, describeRun(inspect))
      const states = inspect.json.process.threadStates as {tid: number; comm: string}[]
      assert.equal(inspect.json.process.threads, threads + 1)
      assert.deepEqual(states.map((t) => t.tid).sort((a, b) => a - b), originalIds(fx), 'inspect lists every thread by its id')
      assert.deepEqual(states.slice(1).map((t) => t.comm).sort(), Array.from({length: threads}, (_, i) => `w${i}`).sort(), 'and by its own name')
      for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
        const run = await cli(['restore', `t${threads}`, '--policy', policy, '--json', '--pool', pool])
        assert.equal(run.status, 0, describeRun(run))
        if (run.json.faultServerPid) trackPid(run.json.faultServerPid)
        note(`restore t${threads} --policy ${policy}: ${(run.json.stats.restore_time / 1000).toFixed(1)} ms engine, ${run.json.stats.injected_syscalls} injected calls, CLI ${run.ms.toFixed(0)} ms`)
        const clone = await assertClone(fx, run.json, threads + 1, `${policy} clone`)
        const first = readLog(fx.logPath).find((e) => e.kind === 'TICK' && e.pid === clone)!
        assert.ok(Number(first.fields.n) >= Number(before.fields.n), `the clone continues the counter: ${first.line} after ${before.line}`)
      }
      // Both clones and the original side by side: each still itself.
      const again = await fx.check()
      assert.equal(again.fields.ok, '1', again.line)
    })
  }

  it('pythreads (CPython, 4 threading workers holding RLocks, a queue between threads): restored under every policy', async () => {
    const pool = poolPath('threads')
    const fx = await startFixture('pythreads')
    await checkpointLive(fx, pool, 'py')
    for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
      const run = await cli(['restore', 'py', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      if (run.json.faultServerPid) trackPid(run.json.faultServerPid)
      await assertClone(fx, run.json, 5, `pythreads ${policy} clone`)
    }
  })

  it('the CRIU-format path: criu dump -> criu restore, and criu import -> restore, of 8 threads', async () => {
    const pool = poolPath('threads')
    const images = mkdtempSync('/dev/shm/cxlfork-threads-images-')
    try {
      const fx = await startFixture('threads', {args: ['--threads', '8']})
      await waitForTicks(fx.logPath, fx.pid, 2)
      const dump = await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json'])
      assert.equal(dump.status, 0, describeRun(dump))
      const cores = readdirSync(images).filter((f) => /^core-\d+\.img$/.test(f))
      assert.equal(cores.length, 9, `one core image per thread: ${cores.join(', ')}`)
      const restored = await cli(['criu', 'restore', '--images', images, '--json'])
      assert.equal(restored.status, 0, describeRun(restored))
      await assertClone(fx, restored.json, 9, 'criu restore clone')
      const imported = await cli(['criu', 'import', '--images', images, '--name', 'imported', '--json', '--pool', pool])
      assert.equal(imported.status, 0, describeRun(imported))
      const run = await cli(['restore', 'imported', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      await assertClone(fx, run.json, 9, 'imported clone')
    } finally {
      rmSync(images, {recursive: true, force: true})
    }
  })

  it('restore --wait: the clone\'s exit code and killing signal come through its init', async () => {
    const pool = poolPath('threads')
    const fx = await startFixture('threads', {args: ['--threads', '4']})
    await checkpointLive(fx, pool, 'waited')
    for (const ending of ['exit', 'kill'] as const) {
      const running = startCli(['restore', 'waited', '--wait', '--json', '--pool', pool])
      const cliPid = running.child.pid!
      const init = await until(() => allProcesses().find((p) => p.ppid === cliPid && p.comm === 'cxlfork-init'), 'the clone\'s init under the waiting CLI')
      const clone = await until(() => allProcesses().find((p) => p.ppid === init.pid && p.comm === 'threads'), 'the clone under its init')
      trackPid(clone.pid)
      await waitForTicks(fx.logPath, clone.pid, 2)
      if (ending === 'exit') await requestExit(fx.logPath, clone.pid)
      else process.kill(clone.pid, 'SIGKILL')
      const run = await running.done
      if (ending === 'exit') {
        assert.equal(run.status, 0, describeRun(run))
        assert.deepEqual(run.json.exit, {code: 0, signal: null})
      } else {
        assert.equal(run.status, 137, describeRun(run))
        assert.deepEqual(run.json.exit, {code: null, signal: 9})
      }
      assert.ok(await waitForExit(init.pid), 'the init ended with the clone')
    }
  })

  it('--pidns host for a multi-threaded checkpoint: exit 5 THREADS_NEED_PIDNS, no process or reference left', async () => {
    const pool = poolPath('threads')
    const fx = await startFixture('threads')
    await checkpointLive(fx, pool, 'hostns')
    const stubsBefore = allProcesses().filter((p) => p.comm === 'cxlfork-stub' || p.comm === 'cxlfork-init').map((p) => p.pid)
    const run = await cli(['restore', 'hostns', '--pidns', 'host', '--json', '--pool', pool])
    assert.equal(run.status, 5, describeRun(run))
    assert.equal(run.json.error.code, 'THREADS_NEED_PIDNS')
    assert.match(run.json.error.message, /3 threads/)
    assert.match(run.json.error.hint, /--pidns new/)
    const stubsAfter = allProcesses().filter((p) => (p.comm === 'cxlfork-stub' || p.comm === 'cxlfork-init') && !stubsBefore.includes(p.pid))
    assert.deepEqual(stubsAfter, [], 'no stub or init left')
    const ls = await cli(['ls', '--json', '--pool', pool])
    const entry = ls.json.checkpoints.find((c: {name: string}) => c.name === 'hostns')
    assert.equal(entry.liveRefs, 0, `no clone reference: ${JSON.stringify(entry)}`)
  })

  for (const point of ['threads-seized', 'threads-frames-ready', 'fork-frame-ready', 'snapshot-threads-read', 'fork-clone-exit'] as const) {
    it(`cxlfork SIGKILLed at ${point}: every thread of the target runs on untraced, its checks pass`, async () => {
      const pool = poolPath('threads')
      const fx = await startFixture('threads', {args: ['--threads', '8']})
      await waitForTicks(fx.logPath, fx.pid, 2)
      const run = await cli(['checkpoint', String(fx.pid), '--name', 'killed', '--json', '--pool', pool], {env: {CXLFORK_FAULT: point}})
      assert.equal(run.signal, 'SIGKILL', describeRun(run))
      const tasks = readdirSync(`/proc/${fx.pid}/task`).map(Number)
      assert.equal(tasks.length, 9, 'no thread lost')
      for (const tid of tasks) {
        assert.equal(tracerOf(fx.pid, tid), 0, `thread ${tid} untraced`)
        const state = /^State:\s+(\S)/m.exec(readFileSync(`/proc/${fx.pid}/task/${tid}/status`, 'utf8'))?.[1]
        assert.ok(state !== 't' && state !== 'T', `thread ${tid} not left stopped (${state})`)
      }
      await waitForTicks(fx.logPath, fx.pid, 2)
      const check = await fx.check()
      assert.equal(check.fields.ok, '1', `the target's own checks after the kill at ${point}: ${check.line}`)
      assert.ok(processExists(fx.pid))
    })
  }
})


/**
 * Issue 15, "Serverless functions": a FunctionBench-style function
 * (fixtures/faas/floatmath.py, its --stdio protocol) deployed on a real
 * porter. Invoked N+2 times it answers correctly and is checkpointed after
 * its Nth invocation (a pool checkpoint `cxlfork ls` shows) while it serves
 * on; concurrent invocations scale out to clones restored from that
 * checkpoint (other pids, each one continuing from the checkpointed
 * invocation count, each holding a reference to the checkpoint); idle
 * instances are stopped after the keep-alive; `fn rm` leaves no process and
 * no checkpoint; bad input gets typed errors; a porter SIGKILLed with
 * invocations in flight leaves no instance behind and a restarted porter
 * serves the function from its checkpoint. With --policy criu the instance
 * is dumped as a CRIU-format image set instead, and clones built from that
 * set carry its state; a refused dump leaves it serving; fn rm removes the set.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {tmpdir} from 'node:os'

import {PorterUnreachable, porterRequest} from '../../src/porter/client.js'
import {processExists, trackPid} from '../helpers/fixtures.js'
import {CLI, PROJECT_ROOT, cli, describeRun, installCleanupHooks, note, poolPath} from '../restore/helpers.js'
import {type RunningPorter, childrenOf, removeSocketDirs, sleep, socketDir, startPorter, stopPorter} from './helpers.js'

const logDirs: string[] = []

/** A log file for the function in a private directory. */
function logFile(): string {
  const dir = mkdtempSync(join(tmpdir(), 'cxlfork-fn-test-'))
  logDirs.push(dir)
  return join(dir, 'float.log')
}

/** The crc every invocation must reproduce: the one the function computed at init (its READY line). */
function readyCrc(log: string): string {
  const m = /^READY pid=\d+ fn=floatmath mib=\d+ crc=([0-9a-f]{8})/m.exec(readFileSync(log, 'utf8'))
  assert.ok(m, `a READY line in ${log}`)
  return m[1]!
}

const floatCmd = (log: string): string => `python3 fixtures/faas/floatmath.py ${log} --mib 4 --stdio 1`

async function invoke(socket: string, name: string, data: unknown): Promise<any> {
  const reply = await porterRequest(socket, 'POST', `/v1/functions/${name}/invoke`, {data})
  assert.equal(reply.status, 200, JSON.stringify(reply.body))
  trackPid(reply.body.pid)
  return reply.body
}

async function functionInfo(socket: string, name: string): Promise<any> {
  const reply = await porterRequest(socket, 'GET', `/v1/functions/${name}`)
  assert.equal(reply.status, 200, JSON.stringify(reply.body))
  return reply.body
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 15_000): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

describe('porter: serverless functions (issue 15)', function () {
  this.timeout(240_000)
  installCleanupHooks('porter-functions')
  const porters: RunningPorter[] = []

  afterEach(async () => {
    for (const porter of porters.splice(0)) await stopPorter(porter)
  })
  after(() => {
    removeSocketDirs()
    for (const dir of logDirs.splice(0)) rmSync(dir, {recursive: true, force: true})
  })

  async function setUp(tag: string): Promise<{pool: string; socket: string; porter: RunningPorter}> {
    const pool = poolPath(tag)
    const init = await cli(['pool', 'init', '--size', '256M', '--pool', pool, '--json'])
    assert.equal(init.status, 0, describeRun(init))
    const socket = join(socketDir(), 'porter.sock')
    const porter = await startPorter(pool, socket, {ghosts: 0})
    porters.push(porter)
    return {pool, socket, porter}
  }

  it('fn deploy, N+2 invocations: correct answers, checkpointed after the Nth (seen by `cxlfork ls`), the instance serving on; fn ls', async () => {
    const {pool, socket, porter} = await setUp('fn-ckpt')
    const log = logFile()
    const deployed = await cli(['fn', 'deploy', 'float', '--cmd', floatCmd(log), '--checkpoint-after', '3', '--keep-alive', '60s', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    assert.equal(deployed.json.name, 'float')
    assert.equal(deployed.json.policy, 'mow')
    assert.equal(deployed.json.checkpointAfter, 3)
    assert.equal(deployed.json.keepAliveMs, 60_000)
    assert.equal(deployed.json.checkpoint, null)
    assert.deepEqual(deployed.json.instances, [], 'no instance before the first invocation')

    const results: any[] = []
    for (let i = 1; i <= 5; i++) {
      const run = await cli(['fn', 'invoke', 'float', '--data', JSON.stringify({i}), '--pool', pool, '--socket', socket, '--json'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      results.push(run.json)
    }
    const crc = readyCrc(log)
    const pid = results[0].pid as number
    results.forEach((result, k) => {
      assert.equal(result.servedBy, 'porter')
      assert.equal(result.output.ok, true)
      assert.equal(result.output.crc, crc, `invocation ${k + 1} reproduces the init result`)
      assert.deepEqual(result.output.data, {i: k + 1}, 'the request data reached the function')
      assert.equal(result.output.n, k + 1, 'the same instance counts its invocations')
      assert.equal(result.pid, pid, 'one instance serves them one after another')
      assert.equal(result.output.pid, pid, 'the function runs as that pid')
      assert.equal(result.start, k === 0 ? 'cold' : 'warm')
      assert.equal(result.checkpointed?.name, k === 2 ? 'fn.float' : undefined, `checkpointed after the 3rd invocation only (invocation ${k + 1})`)
    })
    assert.ok(childrenOf(porter.pid).some((child) => child.pid === pid), 'the instance is the porter\'s child')
    const ls = await cli(['ls', '--pool', pool, '--json'])
    assert.equal(ls.status, 0, describeRun(ls))
    assert.ok(JSON.stringify(ls.json).includes('"fn.float"'), `cxlfork ls shows the checkpoint: ${ls.stdout}`)
    const fnLs = await cli(['fn', 'ls', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(fnLs.status, 0, describeRun(fnLs))
    const [info] = fnLs.json.functions
    assert.equal(info.name, 'float')
    assert.equal(info.checkpoint, 'fn.float')
    assert.equal(info.invocations, 5)
    assert.deepEqual(info.starts, {cold: 1, warm: 4, restored: 0})
    assert.deepEqual(info.instances.map((i: any) => i.pid), [pid])
  })

  it('concurrent invocations scale out to clones restored from the checkpoint; keep-alive scales them in; fn rm leaves no process and no checkpoint', async () => {
    const {pool, socket, porter} = await setUp('fn-scale')
    const log = logFile()
    const deployed = await cli(['fn', 'deploy', 'float', '--cmd', floatCmd(log), '--checkpoint-after', '1', '--keep-alive', '4s', '--max-instances', '4', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    const first = await invoke(socket, 'float', {i: 0})
    assert.equal(first.start, 'cold')
    assert.equal(first.checkpointed?.name, 'fn.float')
    const crc = readyCrc(log)

    // Four at once, each held 1.5 s in the function: the idle instance takes one, three clones are restored.
    const results = await Promise.all([1, 2, 3, 4].map((i) => invoke(socket, 'float', {i, sleepMs: 1500})))
    const pids = results.map((r) => r.pid as number)
    assert.equal(new Set(pids).size, 4, `four instances: ${pids.join(', ')}`)
    assert.deepEqual(results.map((r) => r.start).sort(), ['restored', 'restored', 'restored', 'warm'])
    for (const result of results) {
      assert.equal(result.output.ok, true)
      assert.equal(result.output.crc, crc, 'each instance reproduces the init result')
      assert.equal(result.output.pid, result.pid, 'the answer comes from the process the porter names')
      assert.equal(result.output.data.i, results.indexOf(result) + 1)
      // Restored from the checkpoint taken after invocation 1: a clone's count goes on from there.
      assert.equal(result.output.n, 2, `${result.start} instance ${result.pid} answers its 2nd invocation`)
      if (result.start === 'restored') {
        assert.equal(result.instance, 'restored')
        assert.ok(result.restoreStats.pages_mapped > 0, 'a mow clone maps pages of the pool')
        assert.ok(readFileSync(`/proc/${result.pid}/maps`, 'utf8').includes(pool), 'the clone maps the pool file')
      } else {
        assert.equal(result.pid, first.pid, 'the warm one is the checkpointed original')
      }
    }
    const porterChildren = new Set(childrenOf(porter.pid).map((child) => child.pid))
    for (const pid of pids) assert.ok(porterChildren.has(pid), `instance ${pid} is the porter's child`)
    const inspect = await cli(['inspect', 'fn.float', '--pool', pool, '--json'])
    assert.equal(inspect.status, 0, describeRun(inspect))
    const referenced = new Set(inspect.json.references.filter((r: any) => r.alive).map((r: any) => r.pid as number))
    for (const result of results.filter((r) => r.start === 'restored')) assert.ok(referenced.has(result.pid), `clone ${result.pid} holds a reference to fn.float`)

    // Keep-alive 4 s (room for the checks above on a loaded host): every idle instance is stopped and reaped.
    const info = await until('scale-in', async () => {
      const current = await functionInfo(socket, 'float')
      return current.instances.length === 0 ? current : undefined
    })
    assert.equal(info.scaledIn, 4)
    for (const pid of pids) assert.equal(processExists(pid), false, `instance ${pid} is gone`)
    assert.deepEqual(childrenOf(porter.pid).filter((child) => pids.includes(child.pid)), [], 'and reaped')
    const released = await cli(['inspect', 'fn.float', '--pool', pool, '--json'])
    assert.deepEqual(released.json.references, [], 'the reaped clones\' references are released')
    // With no instance left, the next invocation is a restore, not a cold start.
    const again = await invoke(socket, 'float', {i: 9})
    assert.equal(again.start, 'restored')
    assert.equal(again.output.crc, crc)
    const warm = await invoke(socket, 'float', {i: 10})
    assert.equal(warm.start, 'warm')
    note(`float 4 MiB, in the porter: cold ${first.latencyMs.toFixed(1)} ms (checkpoint after it ${first.checkpointed.ms.toFixed(1)} ms), restored (mow, idle) ${again.latencyMs.toFixed(1)} ms of which restore ${again.startupMs.toFixed(1)} ms, warm ${warm.latencyMs.toFixed(1)} ms`)

    const rm = await cli(['fn', 'rm', 'float', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(rm.status, 0, describeRun(rm))
    assert.equal(rm.json.instancesStopped, 1)
    assert.equal(processExists(warm.pid), false)
    assert.equal(rm.json.checkpoint, 'fn.float')
    assert.equal(rm.json.checkpointState, 'removed')
    assert.equal(processExists(again.pid), false, 'fn rm stopped the instance')
    assert.equal(childrenOf(porter.pid).filter((child) => child.comm.startsWith('python')).length, 0, 'no instance left')
    const ls = await cli(['ls', '--pool', pool, '--json'])
    assert.ok(!JSON.stringify(ls.json).includes('fn.float'), `no checkpoint left: ${ls.stdout}`)
    const fnLs = await cli(['fn', 'ls', '--pool', pool, '--socket', socket, '--json'])
    assert.deepEqual(fnLs.json.functions, [])
    const gone = await cli(['fn', 'invoke', 'float', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(gone.status, 3, describeRun(gone))
    assert.equal(gone.json.error.code, 'FUNCTION_NOT_FOUND')
  })

  it('--policy criu: dumped as a CRIU-format image set after the Nth invocation (0700, on /dev/shm), scaled out to clones restored from it that carry its state; fn rm removes the set and every instance', async () => {
    const {pool, socket, porter} = await setUp('fn-criu')
    const log = logFile()
    const deployed = await cli(['fn', 'deploy', 'float', '--cmd', floatCmd(log), '--policy', 'criu', '--checkpoint-after', '2', '--keep-alive', '60s', '--max-instances', '3', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    assert.equal(deployed.json.policy, 'criu')
    const first = await invoke(socket, 'float', {i: 1})
    assert.equal(first.start, 'cold')
    assert.equal(first.checkpointed, undefined)
    const second = await invoke(socket, 'float', {i: 2})
    assert.equal(second.start, 'warm')
    const images = second.checkpointed?.name as string
    assert.ok(images?.startsWith('/dev/shm/cxlfork-fn-images-'), `dumped after the 2nd invocation into an image set on /dev/shm: ${JSON.stringify(second.checkpointed)}`)
    const root = dirname(images)
    assert.equal(statSync(root).mode & 0o777, 0o700, 'the porter\'s images directory is private')
    for (const file of ['inventory.img', 'pstree.img', `core-${first.pid}.img`, `mm-${first.pid}.img`, 'pages-1.img']) assert.ok(existsSync(join(images, file)), `${file} in the set`)
    const ls = await cli(['ls', '--pool', pool, '--json'])
    assert.ok(!JSON.stringify(ls.json).includes('fn.float'), `nothing in the pool: ${ls.stdout}`)
    const crc = readyCrc(log)

    // Three at once, each held 1 s in the function: the original takes one, two clones are built from the set.
    const results = await Promise.all([3, 4, 5].map((i) => invoke(socket, 'float', {i, sleepMs: 1000})))
    assert.deepEqual(results.map((r) => r.start).sort(), ['restored', 'restored', 'warm'])
    const clones = results.filter((r) => r.start === 'restored')
    assert.equal(new Set(results.map((r) => r.pid)).size, 3)
    for (const result of results) {
      assert.equal(result.output.ok, true)
      assert.equal(result.output.crc, crc, 'the state (4 MiB of floats) reproduces the init result')
      assert.equal(result.output.pid, result.pid)
      assert.equal(result.output.n, 3, `instance ${result.pid} (${result.start}) answers its 3rd invocation: the count dumped after the 2nd goes on`)
    }
    const porterChildren = new Set(childrenOf(porter.pid).map((child) => child.pid))
    for (const clone of clones) {
      assert.ok(porterChildren.has(clone.pid), `clone ${clone.pid} is the porter's child`)
      // criu restore's engine: every page copied into local memory, none mapped from the pool.
      assert.ok(clone.restoreStats.pages_restored >= 1024, `the clone got its pages copied: ${JSON.stringify(clone.restoreStats)}`)
      assert.ok(clone.restoreStats.deserialize_time > 0)
      assert.ok(!readFileSync(`/proc/${clone.pid}/maps`, 'utf8').includes(pool), 'the clone maps nothing of the pool')
    }
    note(`float 4 MiB, policy criu: dump ${second.checkpointed.ms.toFixed(1)} ms; clones restored (criu) in ${clones.map((c) => c.startupMs.toFixed(1)).join(', ')} ms (restore_time ${clones.map((c) => (c.restoreStats.restore_time / 1000).toFixed(1)).join(', ')} ms)`)

    const pids = results.map((r) => r.pid as number)
    const rm = await cli(['fn', 'rm', 'float', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(rm.status, 0, describeRun(rm))
    assert.equal(rm.json.instancesStopped, 3)
    assert.equal(rm.json.checkpoint, images)
    assert.equal(rm.json.checkpointState, 'removed')
    for (const pid of pids) assert.equal(processExists(pid), false, `instance ${pid} is gone`)
    assert.deepEqual(childrenOf(porter.pid).filter((child) => pids.includes(child.pid)), [], 'and reaped')
    assert.equal(existsSync(images), false, 'the image set is removed')
    assert.equal(existsSync(root), false, 'and the porter\'s images directory, empty now')
  })

  it('--policy criu: a dump refused (the instance has a child process) leaves the instance serving, says why in fn ls, and leaves no image set', async () => {
    const {pool, socket} = await setUp('fn-criu-refused')
    const dir = dirname(logFile())
    const script = join(dir, 'parentfn.py')
    // Its child waits for the end of a pipe only the parent holds, so it exits with the parent.
    writeFileSync(script, [
      'import json, os, sys',
      'r, w = os.pipe()',
      'if os.fork() == 0:',
      '    os.close(w)',
      '    os.read(r, 1)',
      '    os._exit(0)',
      'os.close(r)',
      'n = 0',
      'for line in sys.stdin:',
      '    n += 1',
      '    print(json.dumps({"id": json.loads(line)["id"], "n": n, "pid": os.getpid()}), flush=True)',
    ].join('\n') + '\n')
    const deployed = await cli(['fn', 'deploy', 'parent', '--cmd', `python3 ${script}`, '--policy', 'criu', '--checkpoint-after', '1', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    const first = await invoke(socket, 'parent', null)
    assert.equal(first.start, 'cold')
    assert.equal(first.checkpointed, undefined, 'no set was written')
    const info = await functionInfo(socket, 'parent')
    assert.equal(info.checkpoint, null)
    assert.match(info.checkpointError, /HAS_CHILDREN/, 'fn ls says why')
    const second = await invoke(socket, 'parent', null)
    assert.equal(second.start, 'warm')
    assert.equal(second.pid, first.pid, 'the instance runs on')
    assert.equal(second.output.n, 2)
    // The porter's images directory (created for the dump) holds no set.
    const root = `/dev/shm/cxlfork-fn-images-${process.geteuid!()}-${createHash('sha256').update(`${socket}.functions.json`).digest('hex').slice(0, 16)}`
    assert.deepEqual(readdirSync(root), [])
    const rm = await cli(['fn', 'rm', 'parent', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(rm.status, 0, describeRun(rm))
    assert.equal(rm.json.checkpoint, null)
    assert.equal(processExists(first.pid), false)
    assert.equal(existsSync(root), false, `the images directory is removed with the function (${root})`)
  })

  it('a porter stopped (SIGTERM) with restored instances running stops them and gives their references back at once', async () => {
    const {pool, socket, porter} = await setUp('fn-stop')
    const log = logFile()
    const deployed = await cli(['fn', 'deploy', 'float', '--cmd', floatCmd(log), '--checkpoint-after', '1', '--keep-alive', '60s', '--max-instances', '3', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    assert.equal((await invoke(socket, 'float', {i: 0})).checkpointed?.name, 'fn.float')
    const results = await Promise.all([1, 2].map((i) => invoke(socket, 'float', {i, sleepMs: 500})))
    const clones = results.filter((r) => r.start === 'restored').map((r) => r.pid as number)
    assert.equal(clones.length, 1, JSON.stringify(results.map((r) => r.start)))
    const before = await cli(['inspect', 'fn.float', '--pool', pool, '--json'])
    assert.deepEqual(before.json.references.map((r: any) => r.pid), clones, 'the restored instance holds a reference')
    await stopPorter(porter)
    porters.splice(porters.indexOf(porter), 1)
    assert.equal(processExists(clones[0]!), false, 'the instance stopped with the porter')
    const after = await cli(['inspect', 'fn.float', '--pool', pool, '--json'])
    assert.deepEqual(after.json.references, [], 'its reference is given back by the stopping porter, not left to the next start or gc')
  })

  it('bad input gets typed errors and non-zero exits; the porter stays up', async () => {
    const {pool, socket, porter} = await setUp('fn-bad')
    const log = logFile()
    const fn = (args: string[]): ReturnType<typeof cli> => cli(['fn', ...args, '--pool', pool, '--socket', socket, '--json'])
    const expect = (run: Awaited<ReturnType<typeof cli>>, status: number, code: string): void => {
      assert.equal(run.status, status, describeRun(run))
      assert.equal(run.json.error.code, code, describeRun(run))
      assert.ok(run.json.error.hint, 'with a hint')
      assert.ok(!run.stderr.includes('    at '), 'no stack trace')
    }
    expect(await fn(['invoke', 'nosuch']), 3, 'FUNCTION_NOT_FOUND')
    expect(await fn(['rm', 'nosuch']), 3, 'FUNCTION_NOT_FOUND')
    expect(await fn(['invoke', 'nosuch', '--data', '{"a":']), 2, 'INVALID_FUNCTION_DATA')
    expect(await fn(['deploy', 'bad/name', '--cmd', 'true']), 2, 'INVALID_NAME')
    expect(await fn(['deploy', 'x', '--cmd', 'python3 a.py | cat']), 2, 'INVALID_FUNCTION')
    expect(await fn(['deploy', 'x', '--cmd', 'true', '--keep-alive', 'forever']), 2, 'INVALID_DURATION')
    expect(await fn(['deploy', 'x', '--cmd', 'no-such-program-cxlfork']), 3, 'EXECUTABLE_NOT_FOUND')
    const ok = await fn(['deploy', 'float', '--cmd', floatCmd(log)])
    assert.equal(ok.status, 0, describeRun(ok))
    expect(await fn(['deploy', 'float', '--cmd', floatCmd(log)]), 7, 'FUNCTION_EXISTS')
    // criu serves from an image set of its own, never from a pool checkpoint.
    expect(await fn(['deploy', 'x', '--cmd', 'true', '--policy', 'criu', '--checkpoint', 'fn.float']), 2, 'INVALID_POLICY')
    // A function that answers something that is not one JSON line: FUNCTION_FAILED, and its instance is stopped.
    assert.equal((await fn(['deploy', 'garbled', '--cmd', 'python3 -c "import sys; sys.stdin.readline(); print(\'not json\', flush=True); sys.stdin.readline()"'])).status, 0)
    const garbled = await fn(['invoke', 'garbled'])
    expect(garbled, 1, 'FUNCTION_FAILED')
    assert.match(garbled.json.error.message, /not JSON/)
    const garbledInfo = await until('the garbled instance stopped', async () => {
      const current = await functionInfo(socket, 'garbled')
      return current.instances.length === 0 ? current : undefined
    })
    assert.equal(garbledInfo.failures, 1)
    // A function that dies: FUNCTION_FAILED naming its exit.
    assert.equal((await fn(['deploy', 'dies', '--cmd', 'python3 -c "import sys; sys.stderr.write(\'boom\\n\'); sys.exit(3)"'])).status, 0)
    const dies = await fn(['invoke', 'dies'])
    expect(dies, 1, 'FUNCTION_FAILED')
    assert.match(dies.json.error.message, /boom/, 'the message carries its stderr')
    // Malformed requests on the socket.
    const raw = await porterRequest(socket, 'POST', '/v1/functions', {name: 'y', argv: 'true', cwd: '/'})
    assert.equal(raw.status, 400)
    assert.equal(raw.body.error.code, 'PORTER_BAD_REQUEST')
    const method = await porterRequest(socket, 'PUT', '/v1/functions/float')
    assert.equal(method.status, 405)
    // Still serving, and the good function works.
    const good = await invoke(socket, 'float', null)
    assert.equal(good.output.crc, readyCrc(log))
    assert.equal(porter.child.exitCode, null, 'the porter is up')
    // No porter at all: PORTER_NOT_RUNNING.
    const none = await cli(['fn', 'ls', '--pool', pool, '--socket', join(socketDir(), 'none.sock'), '--json'])
    expect(none, 3, 'PORTER_NOT_RUNNING')
  })

  for (const point of ['porter-fn-cold-started', 'porter-fn-checkpointed', 'porter-fn-restored']) {
    it(`SIGKILL at ${point}: no instance survives, the pool is consistent, a restarted porter serves the function`, async () => {
      const pool = poolPath('fn-fault')
      assert.equal((await cli(['pool', 'init', '--size', '256M', '--pool', pool, '--json'])).status, 0)
      const socket = join(socketDir(), 'porter.sock')
      const faulty = await startPorter(pool, socket, {ghosts: 0, env: {CXLFORK_FAULT: point}})
      porters.push(faulty)
      const log = logFile()
      const deployed = await cli(['fn', 'deploy', 'float', '--cmd', floatCmd(log), '--checkpoint-after', '1', '--max-instances', '2', '--pool', pool, '--socket', socket, '--json'])
      assert.equal(deployed.status, 0, describeRun(deployed))
      const ask = (data: unknown): Promise<unknown> => porterRequest(socket, 'POST', '/v1/functions/float/invoke', {data}).then((reply) => reply.body, (error: unknown) => error)
      if (point === 'porter-fn-restored') {
        const first = await ask({i: 1}) as any
        assert.equal(first.checkpointed?.name, 'fn.float', JSON.stringify(first))
        trackPid(first.pid)
        // The original busy, the second one restores a clone: the porter dies there.
        const outcomes = await Promise.all([ask({i: 2, sleepMs: 20_000}), ask({i: 3, sleepMs: 20_000})])
        assert.ok(outcomes.every((outcome) => outcome instanceof PorterUnreachable), `both in flight fail: ${JSON.stringify(outcomes)}`)
      } else {
        const outcome = await ask({i: 1})
        assert.ok(outcome instanceof PorterUnreachable, `the invocation fails with the porter: ${JSON.stringify(outcome)}`)
      }
      await faulty.exited
      const instances = (): number[] => readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).map(Number).filter((pid) => {
        try {
          return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(log) && processExists(pid)
        } catch {
          return false
        }
      })
      await until('no instance left', () => (instances().length === 0 ? true : undefined), 5000)

      const restarted = await startPorter(pool, socket, {ghosts: 0})
      porters.push(restarted)
      const gc = await cli(['pool', 'gc', '--pool', pool, '--json'])
      assert.equal(gc.status, 0, describeRun(gc))
      const fsck = await cli(['pool', 'fsck', '--pool', pool, '--json'])
      assert.equal(fsck.status, 0, describeRun(fsck))
      const info = await functionInfo(socket, 'float')
      assert.equal(info.checkpoint, point === 'porter-fn-cold-started' ? null : 'fn.float', 'a published checkpoint is adopted, none is invented')
      const served = await invoke(socket, 'float', {i: 9})
      assert.equal(served.start, point === 'porter-fn-cold-started' ? 'cold' : 'restored')
      assert.equal(served.output.crc, readyCrc(log))
      if (point !== 'porter-fn-cold-started') {
        assert.equal(served.output.n, 2, 'the clone goes on from the checkpointed invocation')
        const inspect = await cli(['inspect', 'fn.float', '--pool', pool, '--json'])
        assert.deepEqual(inspect.json.references.map((r: any) => r.pid), [served.pid], 'only the live clone references the checkpoint')
      }
      const rm = await cli(['fn', 'rm', 'float', '--pool', pool, '--socket', socket, '--json'])
      assert.equal(rm.status, 0, describeRun(rm))
      assert.deepEqual(instances(), [])
    })
  }

  it('a porter SIGKILLed with invocations in flight leaves no instance; restarted, it serves the function from its checkpoint', async () => {
    const {pool, socket, porter} = await setUp('fn-crash')
    const log = logFile()
    const deployed = await cli(['fn', 'deploy', 'float', '--cmd', floatCmd(log), '--checkpoint-after', '1', '--max-instances', '3', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    const first = await invoke(socket, 'float', {i: 0})
    assert.equal(first.checkpointed?.name, 'fn.float')
    // Three held in flight: the original and two restored clones, all busy.
    const inFlight = [1, 2, 3].map((i) => porterRequest(socket, 'POST', '/v1/functions/float/invoke', {data: {i, sleepMs: 60_000}}).catch((error: unknown) => error))
    const busy = await until<number[]>('three busy instances', async () => {
      const info = await functionInfo(socket, 'float')
      return info.instances.length === 3 && info.instances.every((i: any) => i.busy) ? info.instances.map((i: any) => i.pid as number) : undefined
    })
    for (const pid of busy) trackPid(pid)
    porter.child.kill('SIGKILL')
    await porter.exited
    for (const outcome of await Promise.all(inFlight)) assert.ok(outcome instanceof PorterUnreachable, `the in-flight invocation fails: ${String(outcome)}`)
    await until('the instances to die with the porter', () => (busy.every((pid: number) => !processExists(pid)) ? true : undefined), 5000)

    const restarted = await startPorter(pool, socket, {ghosts: 0})
    porters.push(restarted)
    const fnLs = await cli(['fn', 'ls', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(fnLs.status, 0, describeRun(fnLs))
    assert.equal(fnLs.json.functions[0].name, 'float', 'the function outlives its porter')
    assert.equal(fnLs.json.functions[0].checkpoint, 'fn.float')
    assert.deepEqual(fnLs.json.functions[0].instances, [])
    const after = await invoke(socket, 'float', {i: 4})
    assert.equal(after.start, 'restored')
    assert.equal(after.output.crc, readyCrc(log))
    assert.equal(after.output.n, 2)
    const gc = await cli(['pool', 'gc', '--pool', pool, '--json'])
    assert.equal(gc.status, 0, describeRun(gc))
    const inspect = await cli(['inspect', 'fn.float', '--pool', pool, '--json'])
    assert.deepEqual(inspect.json.references.map((r: any) => r.pid), [after.pid], 'only the new clone references the checkpoint')
    const fsck = await cli(['pool', 'fsck', '--pool', pool, '--json'])
    assert.equal(fsck.status, 0, describeRun(fsck))
  })
})

describe('porter: another user cannot use or remove a function (issue 15)', function () {
  this.timeout(120_000)
  installCleanupHooks('porter-functions-peers')
  const suffix = randomBytes(3).toString('hex')
  const OTHER = `cxlfn-o-${suffix}`
  const GROUP = `cxlfn-g-${suffix}`
  const porters: RunningPorter[] = []
  const sh = (command: string, args: string[]): number | null => spawnSync(command, args, {encoding: 'utf8'}).status

  before(function () {
    const tools = sh('sh', ['-c', 'command -v runuser && command -v useradd && command -v groupadd']) === 0
    if (process.getuid?.() !== 0 || !tools) this.skip() // needs root, runuser, useradd and groupadd
    if (sh('groupadd', [GROUP]) !== 0 || sh('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', '-G', GROUP, OTHER]) !== 0) this.skip()
  })
  afterEach(async () => {
    for (const porter of porters.splice(0)) await stopPorter(porter)
  })
  after(() => {
    removeSocketDirs()
    for (const dir of logDirs.splice(0)) rmSync(dir, {recursive: true, force: true})
    sh('userdel', [OTHER])
    sh('groupdel', [GROUP])
  })

  /** The CLI as OTHER, its --json reply parsed. */
  function cliAsOther(args: string[]): {status: number | null; json: any; output: string} {
    const result = spawnSync('runuser', ['-u', OTHER, '--', process.execPath, CLI, ...args, '--json'], {encoding: 'utf8', cwd: PROJECT_ROOT})
    let json: any
    try {
      json = JSON.parse(result.stdout)
    } catch {
      json = undefined
    }
    return {status: result.status, json, output: result.stdout + result.stderr}
  }

  it('a group member reaching root\'s porter gets FUNCTION_ACCESS for invoke and rm, sees none in fn ls, and cannot deploy (PORTER_UNSERVED); the function is untouched', async () => {
    const pool = poolPath('fn-peers')
    assert.equal((await cli(['pool', 'init', '--size', '128M', '--pool', pool, '--json'])).status, 0)
    const dir = socketDir()
    chmodSync(dir, 0o755)
    const socket = join(dir, 'p.sock')
    porters.push(await startPorter(pool, socket, {ghosts: 0, group: GROUP}))
    const log = logFile()
    const deployed = await cli(['fn', 'deploy', 'float', '--cmd', floatCmd(log), '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    const first = await invoke(socket, 'float', {i: 1})

    const invoked = cliAsOther(['fn', 'invoke', 'float', '--socket', socket])
    assert.equal(invoked.status, 4, invoked.output)
    assert.equal(invoked.json.error.code, 'FUNCTION_ACCESS')
    const removed = cliAsOther(['fn', 'rm', 'float', '--socket', socket])
    assert.equal(removed.status, 4, removed.output)
    assert.equal(removed.json.error.code, 'FUNCTION_ACCESS')
    const listed = cliAsOther(['fn', 'ls', '--socket', socket])
    assert.equal(listed.status, 0, listed.output)
    assert.deepEqual(listed.json.functions, [], 'another user\'s functions are not listed')
    const own = cliAsOther(['fn', 'deploy', 'mine', '--cmd', 'true', '--socket', socket])
    assert.equal(own.status, 5, own.output)
    assert.equal(own.json.error.code, 'PORTER_UNSERVED')

    const again = await invoke(socket, 'float', {i: 2})
    assert.equal(again.pid, first.pid, 'the instance was not touched')
    assert.equal(again.output.n, 2)
    assert.equal(processExists(first.pid), true)
  })
})

/**
 * What real runtimes hold, end to end: a Node.js program with worker_threads (threads,
 * epoll, eventfds, self-pipes, and V8's heap in MADV_DONTFORK memory) and a C program with
 * MADV_DONTFORK memory, each checkpointed live and restored under every tiering policy; every clone
 * answers through its own checks (the Node clone's workers answer requests).
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {createConnection} from 'node:net'

import {procStat, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {PROJECT_ROOT, allProcesses, cli, describeRun, installCleanupHooks, note, poolPath, until} from './helpers.js'

const childrenOf = (pid: number): number[] => allProcesses().filter((p) => p.ppid === pid).map((p) => p.pid).sort((a, b) => a - b)

/** The body of GET http://127.0.0.1:PORT/ (curl, 5 s at most), from inside the network namespace of `netnsOf` if given. */
function httpGet(port: number, netnsOf?: number): string {
  const args = ['-s', '-m', '5', `http://127.0.0.1:${port}/`]
  return (netnsOf === undefined ? spawnSync('curl', args, {encoding: 'utf8'}) : spawnSync('nsenter', ['-t', String(netnsOf), '-n', 'curl', ...args], {encoding: 'utf8'})).stdout
}

/** SIGKILL a server's children, then the server. */
function killWithChildren(pid: number): void {
  for (const each of [...childrenOf(pid), pid]) {
    try {
      process.kill(each, 'SIGKILL')
    } catch {
      // gone
    }
  }
}

/** VmFlags of the VMA of `pid` that starts at `start`. */
function vmFlags(pid: number, start: bigint): string[] {
  const text = readFileSync(`/proc/${pid}/smaps`, 'utf8')
  const at = text.indexOf(`${start.toString(16)}-`)
  assert.ok(at >= 0, `a VMA at 0x${start.toString(16)} in ${pid}`)
  return (/VmFlags:([^\n]*)/.exec(text.slice(at))?.[1] ?? '').trim().split(/\s+/)
}

/** Established TCP sockets on 127.0.0.1 with `port` at one end (both ends count). */
function established(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, '0')
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').filter((line) => line.includes(`:${hex} `) && / 01 /.test(line)).length
}

describe('restore: real runtimes (Node.js worker_threads, MADV_DONTFORK memory)', function () {
  this.timeout(180_000)

  installCleanupHooks('runtimes')

  it('nodeworkers (Node.js, 2 worker_threads): checkpointed live, restored under every policy; the clone\'s workers answer', async () => {
    const pool = poolPath('runtimes')
    const fx = await startFixture('nodeworkers')
    assert.ok(procStat(fx.pid)!.threads >= 7, `Node runs its threads: ${procStat(fx.pid)!.threads}`)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'node', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    note(`checkpoint node: ${procStat(fx.pid)!.threads} threads, ${ck.json.fds} fds, ${ck.json.pages} pages, downtime ${(ck.json.downtimeUs / 1000).toFixed(1)} ms`)
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', original.line)
    for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
      const run = await cli(['restore', 'node', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      note(`restore node --policy ${policy}: ${(run.json.stats.restore_time / 1000).toFixed(1)} ms engine, ${run.json.threads} threads`)
      await waitForTicks(fx.logPath, clone, 2)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `the ${policy} clone: main table and every worker's answer: ${check.line}`)
      assert.equal(check.fields.crc, fx.ready.fields.crc)
    }
  })

  it('nodeworkers as an HTTP server (a listener, 3 epolls, eventfds, self-pipes, worker_threads): restored with --netns new under every policy, it answers HTTP from its workers', async () => {
    const pool = poolPath('runtimes')
    const port = 20000 + (process.pid % 20000)
    const fx = await startFixture('nodeworkers', {args: ['--port', String(port)]})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const original = JSON.parse(await (await fetch(`http://127.0.0.1:${port}/`)).text())
    assert.equal(original.pid, fx.pid)
    // A client holding a connection open: refused by name without --tcp-close, taken closed with it.
    const client = createConnection({host: '127.0.0.1', port})
    await new Promise<void>((resolve, reject) => client.on('connect', () => resolve()).on('error', reject))
    await until(() => readdirSync(`/proc/${fx.pid}/fd`).length > 0 && established(port) >= 2, 'the connection accepted')
    const refused = await cli(['checkpoint', String(fx.pid), '--name', 'nodehttp', '--json', '--pool', pool])
    assert.equal(refused.status, 5, describeRun(refused))
    assert.match(refused.json.error.message, /an established TCP connection .*--tcp-close/)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'nodehttp', '--tcp-close', '--json', '--pool', pool])
    client.destroy()
    assert.equal(ck.status, 0, describeRun(ck))
    note(`checkpoint node http server: ${procStat(fx.pid)!.threads} threads, ${ck.json.fds} fds, downtime ${(ck.json.downtimeUs / 1000).toFixed(1)} ms`)
    for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
      const run = await cli(['restore', 'nodehttp', '--netns', 'new', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      const hashes = new Set<string>()
      for (let i = 0; i < 4; i++) {
        const code = `import urllib.request, json; print(urllib.request.urlopen("http://127.0.0.1:${port}/", timeout=10).read().decode())`
        const got = spawnSync('nsenter', ['-t', String(clone), '-n', 'python3', '-c', code], {encoding: 'utf8', timeout: 20_000})
        assert.equal(got.status, 0, `GET inside the ${policy} clone's namespace: ${got.stderr}`)
        const body = JSON.parse(got.stdout)
        assert.equal(body.pid, clone, 'the clone answered')
        hashes.add(`${body.worker}:${body.hash}`)
      }
      assert.equal(hashes.size, 2, `both workers answered, each with its own table: ${[...hashes].join(' ')}`)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', check.line)
    }
  })

  it('pypool (Python multiprocessing.Pool: forked workers, handler threads, pipes, a shared Value with a POSIX-semaphore lock): checkpointed with --tree, restored under mow and local; the clone\'s own workers serve its tasks', async () => {
    const pool = poolPath('runtimes')
    const fx = await startFixture('pypool')
    const workers = fx.ready.fields.workers!.split(',').map(Number)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const refused = await cli(['checkpoint', String(fx.pid), '--name', 'nope', '--json', '--pool', pool])
    assert.equal(refused.status, 5, describeRun(refused))
    assert.equal(refused.json.error.code, 'HAS_CHILDREN')
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'mp', '--tree', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    assert.deepEqual(ck.json.tree.map((m: {pid: number}) => m.pid).sort((a: number, b: number) => a - b), [fx.pid, ...workers].sort((a, b) => a - b))
    for (const policy of ['mow', 'local'] as const) {
      for (let round = 0; round < 2; round++) {
        const run = await cli(['restore', 'mp', '--policy', policy, '--json', '--pool', pool])
        assert.equal(run.status, 0, describeRun(run))
        const clone = run.json.pid as number
        trackPid(clone)
        assert.equal(run.json.processes, 1 + workers.length)
        const check = await requestCheck(fx.logPath, clone, 20_000)
        assert.equal(check.fields.ok, '1', `${policy} clone ${round + 1}: ${check.line}`)
        const answered = check.fields.workers!.split(',').map(Number)
        for (const worker of answered) assert.equal(procStat(worker)?.ppid, clone, `${policy}: worker ${worker} is a child of the clone ${clone}`)
        note(`pypool ${policy} clone ${round + 1}: restore ${(run.json.stats.restore_time / 1000).toFixed(1)} ms, ${run.json.processes} processes, ${run.json.threads} threads in the root; workers ${answered.join(',')}, counter ${check.fields.counter}`)
      }
    }
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', `the original pool still serves: ${original.line}`)
    const originalAnswered = original.fields.workers!.split(',').map(Number)
    // which of its workers serve one map is up to the pool; each must be one of its own
    for (const worker of originalAnswered) assert.ok(workers.includes(worker), `the original's answer from ${worker} comes from its own workers ${workers.join(',')}`)
  })

  it('nginx (a master and 2 workers as nobody, their channel socketpairs, a shared listener, epoll): checkpointed live with --tree, restored with --netns new under mow and local; the clone\'s workers answer HTTP', async function () {
    const nginx = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((path) => existsSync(path))
    if (!nginx) this.skip() // .ci/run installs nginx-light
    const pool = poolPath('runtimes')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-nginx-'))
    const port = 20_000 + (process.pid % 20_000)
    writeFileSync(join(dir, 'nginx.conf'), `daemon off; master_process on; worker_processes 2; user nobody nogroup;
pid ${dir}/nginx.pid; error_log ${dir}/error.log;
events { worker_connections 64; }
http { access_log ${dir}/access.log; server { listen 127.0.0.1:${port}; location / { return 200 "worker $pid\\n"; } } }
`)
    const master = spawn(nginx!, ['-c', join(dir, 'nginx.conf'), '-p', dir], {stdio: 'ignore'})
    trackPid(master.pid!)
    try {
      const get = (netnsOf?: number): string => httpGet(port, netnsOf)
      await until(() => get().startsWith('worker '), 'nginx answers')
      const workers = await until(() => {
        const found = childrenOf(master.pid!)
        return found.length === 2 ? found : undefined
      }, 'nginx has its 2 workers')
      for (const worker of workers) assert.match(readFileSync(`/proc/${worker}/status`, 'utf8'), /^Uid:\s+65534\s+65534\s+65534\s+65534$/m)
      const ck = await cli(['checkpoint', String(master.pid), '--name', 'nginx', '--tree', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      for (const policy of ['mow', 'local'] as const) {
        const run = await cli(['restore', 'nginx', '--policy', policy, '--netns', 'new', '--json', '--pool', pool])
        assert.equal(run.status, 0, describeRun(run))
        const root = run.json.pid as number
        trackPid(root)
        const cloneWorkers = childrenOf(root)
        cloneWorkers.forEach(trackPid)
        assert.equal(cloneWorkers.length, 2)
        for (const worker of cloneWorkers) assert.match(readFileSync(`/proc/${worker}/status`, 'utf8'), /^Uid:\s+65534\s+65534\s+65534\s+65534$/m, `${policy}: the clone's worker ${worker} runs as nobody`)
        const answers = new Set<string>()
        for (let i = 0; i < 8; i++) answers.add(get(root).trim())
        for (const answer of answers) {
          const pid = Number(/^worker (\d+)$/.exec(answer)?.[1])
          assert.ok(workers.includes(pid), `${policy}: "${answer}" comes from a worker keeping its pid ${JSON.stringify(workers)} in the clone's namespace`)
        }
        note(`nginx ${policy}: restore ${(run.json.stats.restore_time / 1000).toFixed(1)} ms, ${run.json.processes} processes; answers ${[...answers].join(', ')}`)
      }
      assert.ok(get().startsWith('worker '), 'the original answers on')
    } finally {
      master.kill('SIGQUIT')
      await until(() => master.exitCode !== null || master.signalCode !== null, 'nginx exits', 10_000).catch(() => master.kill('SIGKILL'))
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('gunicorn (a Python WSGI arbiter and 2 sync workers: heartbeat files deleted from /tmp shared with the arbiter, pipes, a shared listener): checkpointed live with --tree, restored with --netns new; each clone worker counts on', async function () {
    if (!existsSync('/usr/bin/gunicorn')) this.skip() // .ci/run installs gunicorn
    const pool = poolPath('runtimes')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-gunicorn-'))
    const port = 20_000 + ((process.pid + 13) % 20_000)
    writeFileSync(join(dir, 'app.py'), 'import os\nserved = 0\ndef app(environ, start_response):\n    global served\n    served += 1\n    start_response("200 OK", [("Content-Type", "text/plain")])\n    return [("%d %d\\n" % (os.getpid(), served)).encode()]\n')
    const arbiter = spawn('/usr/bin/gunicorn', ['-w', '2', '-b', `127.0.0.1:${port}`, '--chdir', dir, 'app:app'], {stdio: 'ignore'})
    trackPid(arbiter.pid!)
    const get = (netnsOf?: number): [number, number] | undefined => {
      const text = httpGet(port, netnsOf)
      const m = /^(\d+) (\d+)$/.exec(text.trim())
      return m ? [Number(m[1]), Number(m[2])] : undefined
    }
    try {
      const last = new Map<number, number>()
      await until(() => {
        const answer = get()
        if (answer) last.set(answer[0], answer[1])
        return last.size === 2
      }, 'both workers answer', 30_000)
      childrenOf(arbiter.pid!).forEach(trackPid)
      const ck = await cli(['checkpoint', String(arbiter.pid), '--name', 'gunicorn', '--tree', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'gunicorn', '--netns', 'new', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      const workers = childrenOf(run.json.pid)
      workers.forEach(trackPid)
      for (const worker of workers) {
        const heartbeat = readdirSync(`/proc/${worker}/fd`).map((n) => readlinkSync(`/proc/${worker}/fd/${n}`)).find((link) => link.endsWith('(deleted)'))
        assert.ok(heartbeat, `clone worker ${worker} holds its deleted heartbeat file`)
      }
      const seen = new Map<number, number>()
      for (let i = 0; i < 6; i++) {
        const answer = get(run.json.pid)
        assert.ok(answer, `the clone answers request ${i + 1}`)
        assert.ok(last.has(answer[0]), `answered by worker ${answer[0]}, which keeps its pid in the clone's namespace`)
        assert.ok(answer[1] > (seen.get(answer[0]) ?? last.get(answer[0])!), `worker ${answer[0]} counts on: ${answer[1]}`)
        seen.set(answer[0], answer[1])
      }
      note(`gunicorn: restore ${(run.json.stats.restore_time / 1000).toFixed(1)} ms, ${run.json.processes} processes`)
    } finally {
      killWithChildren(arbiter.pid!)
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a Node.js cluster (a primary and 2 workers: IPC socketpairs split between them, the primary\'s listener): checkpointed live with --tree, restored with --netns new; each clone worker answers and goes on from its own count', async () => {
    const pool = poolPath('runtimes')
    const port = 20_000 + ((process.pid + 7) % 20_000)
    const primary = spawn(process.execPath, [join(PROJECT_ROOT, 'fixtures', 'nodecluster.cjs'), String(port), '2'], {stdio: 'ignore'})
    trackPid(primary.pid!)
    const get = (netnsOf?: number): {pid: number; n: number} | undefined => {
      const text = httpGet(port, netnsOf)
      try {
        return JSON.parse(text) as {pid: number; n: number}
      } catch {
        return undefined
      }
    }
    try {
      const last = new Map<number, number>()
      await until(() => {
        const answer = get()
        if (answer) last.set(answer.pid, answer.n)
        return last.size === 2
      }, 'both workers answer', 20_000)
      childrenOf(primary.pid!).forEach(trackPid)
      const ck = await cli(['checkpoint', String(primary.pid), '--name', 'cluster', '--tree', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      assert.equal(ck.json.tree.length, 3)
      for (const policy of ['mow', 'local'] as const) {
        const run = await cli(['restore', 'cluster', '--policy', policy, '--netns', 'new', '--json', '--pool', pool])
        assert.equal(run.status, 0, describeRun(run))
        trackPid(run.json.pid)
        childrenOf(run.json.pid).forEach(trackPid)
        const seen = new Map<number, number>()
        for (let i = 0; i < 6; i++) {
          const answer = get(run.json.pid)
          assert.ok(answer, `${policy}: the clone answers request ${i + 1}`)
          assert.ok(last.has(answer.pid), `${policy}: answered by worker ${answer.pid}, which keeps its pid in the clone's namespace`)
          // Each worker goes on from the count it had at the checkpoint.
          assert.equal(answer.n, (seen.get(answer.pid) ?? last.get(answer.pid)!) + 1, `${policy}: worker ${answer.pid} counts on`)
          seen.set(answer.pid, answer.n)
        }
        assert.equal(seen.size, 2, `${policy}: both clone workers serve`)
        note(`node cluster ${policy}: restore ${(run.json.stats.restore_time / 1000).toFixed(1)} ms, ${run.json.processes} processes`)
      }
      assert.ok(get(), 'the original answers on')
    } finally {
      killWithChildren(primary.pid!)
    }
  })

  it('memtouch --advise dontfork: its MADV_DONTFORK pages are captured (new pool and existing pool), the clone has them, still DONTFORK', async () => {
    const fx = await startFixture('memtouch', {mib: 4, args: ['--advise', 'dontfork']})
    const extra = BigInt(fx.ready.fields.extra!)
    for (const fresh of [true, false]) {
      const pool = poolPath('runtimes')
      if (!fresh) assert.equal((await cli(['pool', 'init', '--size', '64M', '--json', '--pool', pool])).status, 0)
      const ck = await cli(['checkpoint', String(fx.pid), '--name', 'df', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      assert.ok(vmFlags(fx.pid, extra).includes('dc'), 'the original keeps its MADV_DONTFORK')
      const run = await cli(['restore', 'df', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `the clone's CHECK covers the DONTFORK pages' pattern: ${check.line}`)
      assert.ok(vmFlags(clone, extra).includes('dc'), 'and the clone has them DONTFORK too')
    }
    const check = await fx.check()
    assert.equal(check.fields.ok, '1', check.line)
  })

  it('a Python asyncio program (a counter task, a TCP server): restored without --pidns, the clone keeps its pid in a PID namespace of its own and its tasks run on; with --pidns host they die as CPython says', async () => {
    const pool = poolPath('runtimes')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-asyncio-'))
    const log = join(dir, 'count')
    const errors = join(dir, 'stderr')
    // The counter task writes each count; a loop that lost its pid check raises in asyncio.sleep and stops counting.
    const program = `import asyncio, os\nasync def count():\n    n = 0\n    while True:\n        n += 1\n        with open(${JSON.stringify(log)}, 'a') as f: f.write(f'{os.getpid()} {n}\\n')\n        await asyncio.sleep(0.05)\nasync def main():\n    server = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)\n    await count()\nasyncio.run(main())\n`
    writeFileSync(join(dir, 'prog.py'), program)
    const child = spawn('bash', ['-c', `exec python3 ${join(dir, 'prog.py')} 2>>${errors}`], {stdio: 'ignore'})
    trackPid(child.pid!)
    const counts = (): number => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n').length : 0)
    try {
      await until(() => counts() > 3, 'the task counts')
      const ck = await cli(['checkpoint', String(child.pid), '--name', 'asyncio', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      process.kill(child.pid!, 'SIGSTOP')
      const run = await cli(['restore', 'asyncio', '--netns', 'new', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      assert.ok(run.json.pidNamespace, `a PID namespace by default: ${JSON.stringify(run.json)}`)
      trackPid(run.json.pidNamespace.initPid)
      assert.equal(run.json.pidNamespace.pid, child.pid, 'the clone keeps its pid there')
      const seen = counts()
      await until(() => counts() >= seen + 10, 'the clone\'s task counts on')
      process.kill(run.json.pid, 'SIGKILL')
      // Asked for a new pid, the clone's loop fails its pid check: what the default avoids.
      const host = await cli(['restore', 'asyncio', '--pidns', 'host', '--netns', 'new', '--json', '--pool', pool, '--no-porter'])
      assert.equal(host.status, 0, describeRun(host))
      trackPid(host.json.pid)
      assert.equal(host.json.pidNamespace, null)
      await until(() => existsSync(errors) && /no running event loop/.test(readFileSync(errors, 'utf8')), 'CPython reports the lost loop')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
})

/**
 * Servers people run, from Debian's packages (.ci/run installs them): Redis (an event loop
 * on epoll, background threads, pipes, IPv4 and IPv6 listeners) and memcached (worker
 * threads, each with its own event base and notification pipe). Each is checkpointed
 * while it holds data and restored with --netns new under mow and local; the clone
 * answers with the original's data inside its namespace, takes writes of its own that the
 * original never sees, and the original serves on. And a JVM (OpenJDK's HttpServer, 20-odd
 * threads, a file it maps shared and writes all the time) under every policy.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {procStat, trackPid} from '../helpers/fixtures.js'
import {PROJECT_ROOT, cli, describeRun, installCleanupHooks, note, poolPath, until} from './helpers.js'

/** Run `argv` here, or inside the network namespace of `netnsOf`; its stdout, trimmed. */
function run(argv: string[], netnsOf?: number): string {
  const [cmd, ...args] = netnsOf === undefined ? argv : ['nsenter', '-t', String(netnsOf), '-n', ...argv]
  return spawnSync(cmd!, args, {encoding: 'utf8', timeout: 10_000}).stdout.trim()
}

/** One request to memcached on 127.0.0.1:port (its text protocol), the reply up to END or a status line. */
function memcached(port: number, request: string, netnsOf?: number): string {
  const script = `import socket, sys
s = socket.create_connection(("127.0.0.1", ${port}), timeout=5)
s.sendall(sys.argv[1].encode().decode("unicode_escape").encode())
out = b""
while not (any(out.endswith(end) for end in (b"END\\r\\n", b"STORED\\r\\n", b"ERROR\\r\\n")) or (out.startswith(b"VERSION") and out.endswith(b"\\r\\n"))):
    chunk = s.recv(4096)
    if not chunk: break
    out += chunk
print(out.decode().replace("\\r\\n", "|"))`
  return run(['python3', '-c', script, request], netnsOf)
}

async function stop(server: ChildProcess): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return
  server.kill('SIGKILL')
  await until(() => server.exitCode !== null || server.signalCode !== null, 'the server exits', 10_000)
}

/** GET http://127.0.0.1:port/ (curl, 5 s at most), here or inside the network namespace of `netnsOf`. */
function httpGet(port: number, netnsOf?: number): string {
  return run(['curl', '-s', '-m', '5', `http://127.0.0.1:${port}/`], netnsOf)
}

describe('restore: servers from Debian (Redis, memcached, a JVM)', function () {
  this.timeout(180_000)
  installCleanupHooks('servers')

  it('redis-server (epoll, background threads, IPv4 and IPv6 listeners) holding a string and a list: each clone (mow, local) answers with them in its own namespace; its writes stay its own', async function () {
    if (!existsSync('/usr/bin/redis-server') || !existsSync('/usr/bin/redis-cli')) this.skip() // .ci/run installs redis-server and redis-tools
    const pool = poolPath('servers')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-redis-'))
    const port = 20_000 + ((process.pid + 29) % 20_000)
    const server = spawn('/usr/bin/redis-server', ['--port', String(port), '--save', '', '--appendonly', 'no', '--dir', dir, '--logfile', join(dir, 'redis.log')], {stdio: 'ignore'})
    trackPid(server.pid!)
    const cliAt = (netnsOf: number | undefined, ...args: string[]): string => run(['redis-cli', '-p', String(port), ...args], netnsOf)
    try {
      await until(() => cliAt(undefined, 'ping') === 'PONG', 'redis answers')
      assert.equal(cliAt(undefined, 'set', 'greeting', 'hello'), 'OK')
      cliAt(undefined, 'rpush', 'queue', 'a', 'b', 'c')
      assert.ok(procStat(server.pid!)!.threads >= 2, `redis runs its background threads: ${procStat(server.pid!)!.threads}`)
      const ck = await cli(['checkpoint', String(server.pid), '--name', 'redis', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      for (const policy of ['mow', 'local'] as const) {
        const restored = await cli(['restore', 'redis', '--policy', policy, '--netns', 'new', '--json', '--pool', pool])
        assert.equal(restored.status, 0, describeRun(restored))
        const clone = restored.json.pid as number
        trackPid(clone)
        assert.equal(cliAt(clone, 'get', 'greeting'), 'hello', `${policy}: the clone has the original's string`)
        assert.equal(cliAt(clone, 'lrange', 'queue', '0', '-1'), 'a\nb\nc', `${policy}: and its list`)
        assert.equal(cliAt(clone, 'set', 'only-in-clone', policy), 'OK')
        assert.equal(cliAt(clone, 'get', 'only-in-clone'), policy)
        assert.equal(cliAt(undefined, 'get', 'only-in-clone'), '', `${policy}: the original does not see the clone's write`)
        note(`redis ${policy}: restore ${(restored.json.stats.restore_time / 1000).toFixed(1)} ms, ${restored.json.threads} threads`)
        process.kill(clone, 'SIGKILL')
      }
      assert.equal(cliAt(undefined, 'get', 'greeting'), 'hello', 'the original serves on')
    } finally {
      await stop(server)
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('memcached (4 worker threads, their notification pipes, epoll) holding an item: each clone (mow, local) returns it in its own namespace and stores its own', async function () {
    if (!existsSync('/usr/bin/memcached')) this.skip() // .ci/run installs memcached
    const pool = poolPath('servers')
    const port = 20_000 + ((process.pid + 31) % 20_000)
    const server = spawn('/usr/bin/memcached', ['-p', String(port), '-U', '0', '-l', '127.0.0.1', '-t', '4', '-m', '64', '-u', 'root'], {stdio: 'ignore'})
    trackPid(server.pid!)
    try {
      await until(() => memcached(port, 'version\\r\\n').startsWith('VERSION'), 'memcached answers')
      assert.equal(memcached(port, 'set greeting 0 0 5\\r\\nhello\\r\\n'), 'STORED|')
      const ck = await cli(['checkpoint', String(server.pid), '--name', 'memcached', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      for (const policy of ['mow', 'local'] as const) {
        const restored = await cli(['restore', 'memcached', '--policy', policy, '--netns', 'new', '--json', '--pool', pool])
        assert.equal(restored.status, 0, describeRun(restored))
        const clone = restored.json.pid as number
        trackPid(clone)
        assert.equal(memcached(port, 'get greeting\\r\\n', clone), 'VALUE greeting 0 5|hello|END|', `${policy}: the clone returns the original's item`)
        assert.equal(memcached(port, 'set mine 0 0 4\\r\\nmine\\r\\n', clone), 'STORED|')
        assert.equal(memcached(port, 'get mine\\r\\n', clone), 'VALUE mine 0 4|mine|END|')
        assert.equal(memcached(port, 'get mine\\r\\n'), 'END|', `${policy}: the original does not see the clone's item`)
        note(`memcached ${policy}: restore ${(restored.json.stats.restore_time / 1000).toFixed(1)} ms, ${restored.json.threads} threads`)
        process.kill(clone, 'SIGKILL')
      }
      assert.equal(memcached(port, 'get greeting\\r\\n'), 'VALUE greeting 0 5|hello|END|', 'the original serves on')
    } finally {
      await stop(server)
    }
  })

  it('a JVM (fixtures/java/HttpCounter.java: OpenJDK HttpServer, GC and JIT threads, its hsperfdata file mapped shared and written on): restored under every policy with --netns new; each clone counts on from the original\'s count', async function () {
    if (!existsSync('/usr/bin/java') || !existsSync('/usr/bin/curl')) this.skip()
    const pool = poolPath('servers')
    const port = 20_000 + ((process.pid + 37) % 20_000)
    const server = spawn('/usr/bin/java', ['-Xmx256m', join(PROJECT_ROOT, 'fixtures', 'java', 'HttpCounter.java'), String(port)], {stdio: 'ignore'})
    trackPid(server.pid!)
    const count = (netnsOf?: number): number => Number(/^(\d+) 55999986000000$/.exec(httpGet(port, netnsOf))?.[1] ?? NaN)
    try {
      await until(() => count() > 0, 'the JVM answers', 60_000)
      const before = count()
      assert.ok(procStat(server.pid!)!.threads >= 10, `the JVM runs its threads: ${procStat(server.pid!)!.threads}`)
      const ck = await cli(['checkpoint', String(server.pid), '--name', 'jvm', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      // The JVM writes its hsperfdata file on: a restore must not take the shared file's new mtime for a changed backing file.
      for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
        const restored = await cli(['restore', 'jvm', '--policy', policy, '--netns', 'new', '--json', '--pool', pool])
        assert.equal(restored.status, 0, describeRun(restored))
        const clone = restored.json.pid as number
        trackPid(clone)
        if (restored.json.pidNamespace) trackPid(restored.json.pidNamespace.initPid)
        assert.equal(count(clone), before + 1, `${policy}: the clone's first answer counts on from the checkpoint's`)
        assert.equal(count(clone), before + 2, `${policy}: and its second`)
        note(`jvm ${policy}: restore ${(restored.json.stats.restore_time / 1000).toFixed(1)} ms, ${restored.json.threads} threads`)
        process.kill(clone, 'SIGKILL')
      }
      assert.equal(count(), before + 1, 'the original counts on by itself')
    } finally {
      await stop(server)
    }
  })
})

/**
 * Servers, end to end: `python3 -m http.server` and a small SO_REUSEPORT server
 * (fixtures/pyserver.py) are checkpointed while they serve, and their clones answer real
 * requests on loopback: in a network namespace of their own (--netns new), on the original
 * port once the original is gone (checkpoint --kill), and beside the original on one port
 * (SO_REUSEPORT). A clone that would collide gets ADDRESS_IN_USE naming the address.
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {createConnection} from 'node:net'
import {existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {ask, freePort} from '../helpers/net.js'
import {processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {allProcesses, cli, describeRun, installCleanupHooks, note, poolPath, sleep, until} from './helpers.js'

/** A port nobody listens on now. */
/** The backlog of the TCP listener on 127.0.0.1:port here, as `ss` shows it (Send-Q of a LISTEN socket). */
function backlogOf(port: number): number {
  const out = spawnSync('ss', ['-ltnH', `sport = :${port}`], {encoding: 'utf8'}).stdout.trim().split(/\s+/)
  return Number(out[2])
}



/** An HTTP GET of 127.0.0.1:port from inside the network namespace of `pid` (nsenter + python3). */
function httpStatusInside(pid: number, port: number): string {
  const code = `import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:${port}/", timeout=5).status)`
  const run = spawnSync('nsenter', ['-t', String(pid), '-n', 'python3', '-c', code], {encoding: 'utf8', timeout: 15_000})
  return `${run.stdout.trim()}${run.status === 0 ? '' : ` (exit ${run.status}: ${run.stderr.trim().split('\n').pop()})`}`
}

function listeners(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, '0')
  return readFileSync('/proc/net/tcp', 'utf8').split('\n').filter((line) => line.includes(`:${hex} `) && / 0A /.test(line)).length
}

describe('restore: servers with listening sockets', function () {
  this.timeout(180_000)

  installCleanupHooks('sockets')

  it('a Unix listener whose socket file was renamed into place after its bind (supervisord): its clone listens where the file is now, with its mode', async () => {
    const pool = poolPath('sockets')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-renamed-'))
    const path = join(dir, 'control.sock')
    try {
      // Bound at a temporary name, then renamed over the final one: the kernel still reports the temporary name.
      const script = [
        'import os, socket, sys',
        'path = sys.argv[1]',
        'server = socket.socket(socket.AF_UNIX)',
        'server.bind(f"{path}.{os.getpid()}")',
        'os.chmod(f"{path}.{os.getpid()}", 0o700)',
        'server.listen()',
        'os.rename(f"{path}.{os.getpid()}", path)',
        'while True:',
        '    conn, _ = server.accept()',
        '    conn.sendall(f"served by {os.getpid()}".encode()); conn.close()',
      ].join('\n')
      const server = spawn('python3', ['-c', script, path], {stdio: 'ignore'})
      trackPid(server.pid!)
      await until(() => existsSync(path), 'the socket file is in place')
      const ck = await cli(['checkpoint', String(server.pid), '--name', 'renamed', '--kill', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      await until(() => !processExists(server.pid!), 'the original is gone')
      const run = await cli(['restore', 'renamed', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      const answer = spawnSync('python3', ['-c', 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print(s.recv(100).decode())', path], {encoding: 'utf8', timeout: 10_000})
      assert.equal(answer.stdout.trim(), `served by ${run.json.pid}`, answer.stderr)
      assert.equal(statSync(path).mode & 0o777, 0o700, 'the file keeps its mode')
      assert.deepEqual(readdirSync(dir), ['control.sock'], 'no file at the stale bind name')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('TCP sockets created and never connected (mosquitto keeps a spare one; one bound and not listening): the clone gets them fresh, bound again, and uses them', async () => {
    const pool = poolPath('sockets')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-spare-'))
    const out = join(dir, 'out')
    try {
      // On SIGUSR1 the process uses both: the bound one listens, the spare one connects to it.
      const script = [
        'import signal, socket, sys, time',
        'spare = socket.socket()',
        'bound = socket.socket(socket.AF_INET6)',
        'bound.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
        'bound.bind(("::1", 0))',
        'port = bound.getsockname()[1]',
        'def use(*_):',
        '    bound.listen()',
        '    client = socket.socket(socket.AF_INET6); client.connect(("::1", port)); peer, _ = bound.accept()',
        '    with open(sys.argv[1], "a") as f: f.write(f"{spare.getsockname()} {bound.getsockname()[1] == port} {peer.getpeername()[1] == client.getsockname()[1]}\\n")',
        'signal.signal(signal.SIGUSR1, use)',
        'open(sys.argv[1], "a").write(f"ready {port}\\n")',
        'while True: time.sleep(1)',
      ].join('\n')
      const child = spawn('python3', ['-c', script, out], {stdio: 'ignore'})
      trackPid(child.pid!)
      await until(() => existsSync(out) && readFileSync(out, 'utf8').startsWith('ready'), 'the sockets exist')
      const ck = await cli(['checkpoint', String(child.pid), '--name', 'spare', '--kill', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'spare', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      process.kill(run.json.pid, 'SIGUSR1')
      await until(() => readFileSync(out, 'utf8').split('\n').length > 2, 'the clone used its sockets')
      assert.equal(readFileSync(out, 'utf8').split('\n')[1], "('0.0.0.0', 0) True True", 'the spare one is unbound; the bound one keeps its port, listens and accepts')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('python3 -m http.server: a clone beside its original is ADDRESS_IN_USE; with --netns new (every policy) it answers HTTP inside its namespace', async () => {
    const pool = poolPath('sockets')
    const port = await freePort()
    const server = spawn('python3', ['-m', 'http.server', String(port), '--bind', '127.0.0.1'], {stdio: 'ignore', cwd: '/usr/share'})
    trackPid(server.pid!)
    await until(() => listeners(port) > 0 && allProcesses().every((p) => p.ppid !== server.pid), 'http.server listening')
    // A pipe a runner leaks into the server (this sandbox's runner leaks fd 251) is carried like any pipe, its writer gone.
    const ck = await cli(['checkpoint', String(server.pid), '--name', 'http', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const stubsBefore = allProcesses().filter((p) => p.comm.startsWith('cxlfork-')).map((p) => p.pid)
    const clash = await cli(['restore', 'http', '--json', '--pool', pool])
    assert.equal(clash.status, 7, describeRun(clash))
    assert.equal(clash.json.error.code, 'ADDRESS_IN_USE')
    assert.match(clash.json.error.message, new RegExp(`127\\.0\\.0\\.1:${port}, which is in use here \\(held by process ${server.pid} \\(python3\\)\\)`))
    assert.match(clash.json.error.hint, /--netns new/)
    assert.deepEqual(allProcesses().filter((p) => p.comm.startsWith('cxlfork-') && !stubsBefore.includes(p.pid)), [], 'the failed restore left no stub')
    const ls = await cli(['ls', '--json', '--pool', pool])
    assert.equal(ls.json.checkpoints[0].liveRefs, 0, 'and no reference')
    for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
      const run = await cli(['restore', 'http', '--netns', 'new', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      assert.equal(run.json.netns, 'new')
      trackPid(run.json.pid)
      assert.equal(httpStatusInside(run.json.pid, port), '200', `the ${policy} clone answers HTTP in its namespace`)
    }
    assert.equal((await fetch(`http://127.0.0.1:${port}/`)).status, 200, 'the original still answers here')
  })

  it('checkpoint --kill, then restore on the same host: the clone listens on the original port here and answers', async () => {
    const pool = poolPath('sockets')
    const port = await freePort()
    const fx = await startFixture('pyserver', {args: ['--port', String(port)]})
    assert.match(await ask(port), new RegExp(`^pid=${fx.pid} `))
    assert.equal(backlogOf(port), 64, 'pyserver listens with a backlog of 64 (ss Send-Q)')
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'srv', '--kill', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    await until(() => !processExists(fx.pid), 'the original gone')
    const run = await cli(['restore', 'srv', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    const clone = run.json.pid as number
    trackPid(clone)
    assert.match(await ask(port), new RegExp(`^pid=${clone} `), 'the clone answers on the original port')
    assert.equal(backlogOf(port), 64, 'with the same backlog')
    const check = await requestCheck(fx.logPath, clone)
    assert.equal(check.fields.ok, '1', `the clone's socket is bound where it was, listening, with its options: ${check.line}`)
  })

  it('a Perl socket server (IO::Socket::INET): checkpointed, its clone answers in its own network namespace beside the original', async () => {
    const pool = poolPath('sockets')
    const port = await freePort()
    // Answers each connection with its pid as the host sees it, then closes it.
    const script = `use IO::Socket::INET; use POSIX; POSIX::close($_) for 3..1023;
      my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => ${port}, Listen => 16, ReuseAddr => 1, Proto => 'tcp') or die "listen: $!";
      while (my $c = $s->accept) { my $me = readlink('/proc/self'); print $c "pid=$me perl\\n"; close $c }`
    const server = spawn('perl', ['-e', script], {stdio: 'ignore'})
    trackPid(server.pid!)
    await until(() => listeners(port) > 0 || undefined, 'the Perl server listening')
    assert.match(await ask(port), new RegExp(`^pid=${server.pid} perl`))
    const ck = await cli(['checkpoint', String(server.pid), '--name', 'perl', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const run = await cli(['restore', 'perl', '--netns', 'new', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    trackPid(run.json.pid)
    const inside = spawnSync('nsenter', ['-t', String(run.json.pid), '-n', 'python3', '-c', `import socket; print(socket.create_connection(("127.0.0.1", ${port})).recv(100).decode().strip())`], {encoding: 'utf8'})
    assert.equal(inside.stdout.trim(), `pid=${run.json.pid} perl`, inside.stderr)
    assert.match(await ask(port), new RegExp(`^pid=${server.pid} perl`), 'the original still answers here')
  })

  it('an SO_REUSEPORT server restored three times on its original port: original and clones all listen and serve', async () => {
    const pool = poolPath('sockets')
    const port = await freePort()
    const fx = await startFixture('pyserver', {args: ['--port', String(port), '--reuseport', '1']})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'rp', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const clones: number[] = []
    for (let i = 0; i < 3; i++) {
      const run = await cli(['restore', 'rp', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      clones.push(run.json.pid)
      trackPid(run.json.pid)
    }
    assert.equal(listeners(port), 4, 'four listeners share the port')
    const seen = new Set<number>()
    for (let i = 0; i < 60 && seen.size < 4; i++) {
      seen.add(Number(/^pid=(\d+)/.exec(await ask(port))?.[1]))
      await sleep(5)
    }
    note(`SO_REUSEPORT: ${seen.size} of 4 processes answered 60 connections`)
    assert.ok(seen.size >= 2, `connections are spread over the processes: ${[...seen].join(', ')}`)
    for (const pid of [...seen]) assert.ok([fx.pid, ...clones].includes(pid))
    for (const clone of clones) {
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', check.line)
    }
  })

  it('the socket fixture (a TCP listener, a Unix socketpair with queued bytes): restored with --netns new, its own check passes', async () => {
    const pool = poolPath('sockets')
    const fx = await startFixture('socket')
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'pair', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const run = await cli(['restore', 'pair', '--netns', 'new', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    trackPid(run.json.pid)
    const check = await requestCheck(fx.logPath, run.json.pid)
    assert.equal(check.fields.ok, '1', `the clone's listener and the bytes queued in its socketpair: ${check.line}`)
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', `the original's queued bytes were peeked, not consumed: ${original.line}`)
    // inspect says what each socket is, not only its inode.
    const inspect = await cli(['inspect', 'pair', '--json', '--pool', pool])
    const detail = (fd: string | undefined): string => inspect.json.process.fds.find((entry: {fd: number}) => entry.fd === Number(fd))?.detail ?? ''
    assert.match(detail(fx.ready.fields.listenfd), new RegExp(`^TCP/IPv4 listening on 127\\.0\\.0\\.1:${fx.ready.fields.port}, backlog \\d+$`))
    const [a, b] = fx.ready.fields.pairfds!.split(',')
    assert.match(detail(a), new RegExp(`^Unix stream pair, paired with fd ${b}`))
    assert.match(detail(b), new RegExp(`^Unix stream pair, paired with fd ${a}, 22 bytes waiting to be read$`), 'the queued message (cxlfork-socket-queued and its NUL) waits in the reading end')
    const human = await cli(['inspect', 'pair', '--pool', pool])
    assert.match(human.stdout + human.stderr, new RegExp(`fd ${fx.ready.fields.listenfd} socket socket:\\[\\d+\\]: TCP/IPv4 listening on 127\\.0\\.0\\.1:${fx.ready.fields.port}`))
  })

  it('a Unix listener at a path (mode 0666): ADDRESS_IN_USE while the original holds the path; once it is gone, the stale file is replaced and the clone listens there with the same mode', async () => {
    const pool = poolPath('sockets')
    const fx = await startFixture('socket', {args: ['--unix-listener', 'path']})
    const path = fx.ready.fields.unixpath!
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'upath', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    // In a network namespace of its own (its TCP listener would collide here): a path is the file system's, so it still collides.
    const busy = await cli(['restore', 'upath', '--netns', 'new', '--json', '--pool', pool])
    assert.equal(busy.status, 7, describeRun(busy))
    assert.equal(busy.json.error.code, 'ADDRESS_IN_USE')
    assert.ok(busy.json.error.message.includes(path), busy.json.error.message)
    assert.equal((await fx.check()).fields.ok, '1', 'the original still listens there')
    // The original ends (as with checkpoint --kill); its socket file stays behind, stale.
    process.kill(fx.pid, 'SIGKILL')
    await until(() => !processExists(fx.pid) || undefined, 'the original gone')
    assert.ok(statSync(path).isSocket(), 'a stale socket file is left')
    const run = await cli(['restore', 'upath', '--netns', 'new', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    trackPid(run.json.pid)
    const check = await requestCheck(fx.logPath, run.json.pid)
    assert.equal(check.fields.ok, '1', `the clone's listener is at the same path: ${check.line}`)
    assert.equal(statSync(path).mode & 0o777, 0o666, 'the new socket file has the original\'s mode')
    // A client connects to the path: the clone's listener takes it (into its backlog).
    await new Promise<void>((resolve, reject) => {
      const client = createConnection({path}, () => {
        client.destroy()
        resolve()
      })
      client.on('error', reject)
    })
  })

  it('a Unix listener at an abstract name: restored with --netns new beside its original; after the original ends, in the host\'s namespace at the same name', async () => {
    const pool = poolPath('sockets')
    const fx = await startFixture('socket', {args: ['--unix-listener', '1']})
    const name = `@cxlfork-fixture-${fx.pid}`
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'uabs', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const run = await cli(['restore', 'uabs', '--netns', 'new', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    trackPid(run.json.pid)
    const check = await requestCheck(fx.logPath, run.json.pid)
    assert.equal(check.fields.ok, '1', `the clone listens at the same abstract name in its own namespace: ${check.line}`)
    assert.equal((await fx.check()).fields.ok, '1', 'the original too')
    assert.ok(readFileSync('/proc/net/unix', 'utf8').includes(` ${name}`.replace(' @', ' @')), 'the original\'s name is in the host namespace')
    process.kill(fx.pid, 'SIGKILL')
    await until(() => !processExists(fx.pid) || undefined, 'the original gone')
    const here = await cli(['restore', 'uabs', '--json', '--pool', pool])
    assert.equal(here.status, 0, describeRun(here))
    trackPid(here.json.pid)
    assert.equal((await requestCheck(fx.logPath, here.json.pid)).fields.ok, '1', 'the clone listens at the name in the host namespace')
    // Connect to it by its exact abstract name (Node pads abstract names with NULs: python3 does not).
    const connect = spawnSync('python3', ['-c', `import socket; s = socket.socket(socket.AF_UNIX); s.connect("\\0${name.slice(1)}"); print("connected")`], {encoding: 'utf8'})
    assert.equal(connect.stdout.trim(), 'connected', connect.stderr)
  })

  it('a Unix datagram server bound to a path (python3): its clone, restored after the original ended, receives what clients send to the path', async () => {
    const pool = poolPath('sockets')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-dgram-'))
    const path = join(dir, 'server.sock')
    const out = join(dir, 'received')
    // It records each datagram with its own pid as the host sees it (a clone's getpid() may be the original's).
    const script = `import os, socket\nos.closerange(3, 1024)\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(${JSON.stringify(path)})\n`
      + `while True:\n    data = s.recv(256)\n    me = os.readlink("/proc/self")\n    open(${JSON.stringify(out)}, "a").write(me + " " + data.decode() + "\\n")\n`
    const server = spawn('python3', ['-c', script], {stdio: 'ignore'})
    trackPid(server.pid!)
    try {
      await until(() => existsSync(path) || undefined, 'the server bound')
      const send = (text: string): void => {
        const r = spawnSync('python3', ['-c', `import socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b${JSON.stringify(text)}, ${JSON.stringify(path)})`], {encoding: 'utf8'})
        assert.equal(r.status, 0, r.stderr)
      }
      send('before')
      await until(() => (existsSync(out) && readFileSync(out, 'utf8').includes('before')) || undefined, 'the original received')
      const ck = await cli(['checkpoint', String(server.pid), '--name', 'dgram', '--kill', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      await until(() => !processExists(server.pid!) || undefined, 'the original gone')
      const run = await cli(['restore', 'dgram', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      send('after')
      const line = await until(() => readFileSync(out, 'utf8').split('\n').find((l) => l.endsWith(' after')), 'the clone received')
      assert.equal(Number(line.split(' ')[0]), run.json.pid, `received by the clone: ${line}`)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a client of a named Unix datagram socket (a syslog()-style logger, python3): its clone is connected to the server again and its messages arrive; without the server, PEER_UNREACHABLE', async () => {
    const pool = poolPath('sockets')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-logger-'))
    const path = join(dir, 'log.sock')
    const out = join(dir, 'received')
    // The server (the test's stand-in for /dev/log) and a client that sends a line on each tick.
    const serverScript = `import os, socket\nos.closerange(3, 1024)\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind(${JSON.stringify(path)})\n`
      + `while True:\n    open(${JSON.stringify(out)}, "a").write(s.recv(256).decode() + "\\n")\n`
    const server = spawn('python3', ['-c', serverScript], {stdio: 'ignore'})
    trackPid(server.pid!)
    try {
      await until(() => existsSync(path) || undefined, 'the server bound')
      const clientScript = `import os, socket, time\nos.closerange(3, 1024)\nc = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); c.connect(${JSON.stringify(path)})\n`
        + `while True:\n    c.send(("from " + os.readlink("/proc/self")).encode())\n    time.sleep(0.05)\n`
      const client = spawn('python3', ['-c', clientScript], {stdio: 'ignore'})
      trackPid(client.pid!)
      const received = (pid: number): boolean => existsSync(out) && readFileSync(out, 'utf8').includes(`from ${pid}\n`)
      await until(() => received(client.pid!) || undefined, 'the client logging')
      const ck = await cli(['checkpoint', String(client.pid), '--name', 'logger', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'logger', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      await until(() => received(run.json.pid) || undefined, 'the clone\'s messages at the server')
      // With the server gone (its socket file removed), a restore cannot connect: a typed refusal, nothing left behind.
      server.kill('SIGKILL')
      await until(() => !processExists(server.pid!) || undefined, 'the server gone')
      rmSync(path, {force: true})
      const gone = await cli(['restore', 'logger', '--json', '--pool', pool])
      assert.equal(gone.status, 3, describeRun(gone))
      assert.equal(gone.json.error.code, 'PEER_UNREACHABLE')
      assert.ok(gone.json.error.message.includes(path), gone.json.error.message)
      const info = await cli(['inspect', 'logger', '--json', '--pool', pool])
      assert.deepEqual(info.json.references.map((r: {pid: number}) => r.pid), [run.json.pid], `only the first clone holds a reference: ${JSON.stringify(info.json.references)}`)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('UDP (python3): a connected client socket and a bound server socket; the clone (after checkpoint --kill) sends from the same local port to the same peer and receives on its port', async () => {
    const pool = poolPath('sockets')
    const {createSocket} = await import('node:dgram')
    const collector = createSocket('udp4')
    const messages: string[] = []
    collector.on('message', (data) => messages.push(data.toString()))
    await new Promise<void>((resolve) => collector.bind(0, '127.0.0.1', resolve))
    const peerPort = collector.address().port
    const script = `import os, socket, time\nos.closerange(3, 1024)\n`
      + `srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); srv.bind(("127.0.0.1", 0)); srv.setblocking(False)\n`
      + `cli = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); cli.connect(("127.0.0.1", ${peerPort}))\n`
      + `while True:\n    me = os.readlink("/proc/self")\n    cli.send(f"tick {me} {srv.getsockname()[1]} {cli.getsockname()[1]}".encode())\n`
      + `    try:\n        cli.send(f"got {me} {srv.recv(100).decode()}".encode())\n    except BlockingIOError:\n        pass\n    time.sleep(0.05)\n`
    const udp = spawn('python3', ['-c', script], {stdio: 'ignore'})
    trackPid(udp.pid!)
    try {
      const tick = (pid: number): string[] | undefined => messages.map((m) => m.split(' ')).find((m) => m[0] === 'tick' && Number(m[1]) === pid)
      const first = await until(() => tick(udp.pid!), 'the original sending')
      const ck = await cli(['checkpoint', String(udp.pid), '--name', 'udp', '--kill', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'udp', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      const again = await until(() => tick(clone), 'the clone sending to the same peer')
      assert.deepEqual(again.slice(2), first.slice(2), 'the same server port and the same local port of the connected socket')
      collector.send('hello', Number(again[2]), '127.0.0.1')
      await until(() => messages.includes(`got ${clone} hello`) || undefined, 'the clone receiving on its bound port')
    } finally {
      collector.close()
    }
  })

  it('a Unix connection made through a named listener, both ends in the process, bytes queued both ways: restored (mow, local) as a connected pair that carries them, beside its original', async () => {
    const pool = poolPath('sockets')
    const fx = await startFixture('socket', {args: ['--unix-listener', 'accepted']})
    assert.equal((await fx.check()).fields.ok, '1')
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'unix', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    for (const policy of ['mow', 'local'] as const) {
      // --netns new: the abstract listener's name is the original's, taken in the host's namespace.
      const run = await cli(['restore', 'unix', '--policy', policy, '--netns', 'new', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      const check = await requestCheck(fx.logPath, run.json.pid)
      assert.equal(check.fields.ok, '1', `${policy}: the clone's connection carries the queued bytes and a byte each way: ${check.line}`)
    }
    assert.equal((await fx.check()).fields.ok, '1', 'the original\'s connection works on')
  })

  it('an established TCP connection is refused by name, the target untouched', async () => {
    const pool = poolPath('sockets')
    const port = await freePort()
    const holder = spawn('python3', ['-c', `import socket, time, os\nos.closerange(3, 1024)\ns = socket.socket(); s.bind(("127.0.0.1", ${port})); s.listen(1)\nc = socket.create_connection(("127.0.0.1", ${port})); a, _ = s.accept(); s.close()\ntime.sleep(600)`], {stdio: 'ignore'})
    trackPid(holder.pid!)
    await until(() => readFileSync('/proc/net/tcp', 'utf8').includes(`:${port.toString(16).toUpperCase().padStart(4, '0')} `) && listeners(port) === 0, 'the connection established')
    await sleep(100)
    const tcp = await cli(['checkpoint', String(holder.pid), '--name', 'tcp', '--json', '--pool', pool])
    assert.equal(tcp.status, 5, describeRun(tcp))
    assert.equal(tcp.json.error.code, 'UNSUPPORTED_FD')
    assert.match(tcp.json.error.message, /an established TCP connection/)
  })
})

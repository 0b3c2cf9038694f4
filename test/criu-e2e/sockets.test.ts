/**
 * Sockets on the CRIU-format path, end to end on real servers: TCP listeners first: pyserver
 * (SO_REUSEADDR, a backlog of 64) and `python3 -m http.server` are dumped by `criu dump`
 * while they serve, crit reads their inet_sk_entry (LISTEN, address, port, backlog,
 * options), and their clones answer real requests on loopback: beside the original in a
 * network namespace of their own (`criu restore --netns new`), on the original port once the
 * original is gone (`criu dump --kill`), and through `criu import` + `restore`. A clone that
 * would collide with its original is ADDRESS_IN_USE naming the address. Then Unix sockets:
 * socketpairs with bytes and datagrams queued (unix_sk_entry peers, sk-queues.img), split
 * between the members of a tree (pyprefork) or held whole (the socket fixture), and Unix
 * listeners at an abstract name and at a path.
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {ask, freePort} from '../helpers/net.js'
import {processExists, requestCheck, startFixture, trackPid} from '../helpers/fixtures.js'
import {allProcesses, until} from '../restore/helpers.js'
import {cli, critDecode, expectCliError, imagesDir, installSuiteHooks, okJson, poolFile} from './helpers.js'

type Entry = Record<string, any>



/** What a client inside the network namespace of `pid` reads from 127.0.0.1:port (nsenter + python3): a line, or an HTTP status with `http`. */
function askInside(pid: number, port: number, http = false): string {
  const code = http
    ? `import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:${port}/", timeout=5).status)`
    : `import socket; s = socket.create_connection(("127.0.0.1", ${port}), timeout=5); print(s.recv(200).decode().strip())`
  const run = spawnSync('nsenter', ['-t', String(pid), '-n', 'python3', '-c', code], {encoding: 'utf8', timeout: 15_000})
  return `${run.stdout.trim()}${run.status === 0 ? '' : ` (exit ${run.status}: ${run.stderr.trim().split('\n').pop()})`}`
}

function listening(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0')
  return spawnSync('cat', ['/proc/net/tcp'], {encoding: 'utf8'}).stdout.split('\n').some((line) => line.includes(`:${hex} `) && / 0A /.test(line))
}

describe('criu-e2e: TCP, UDP and Unix sockets through criu dump, restore and import', function () {
  this.timeout(180_000)

  installSuiteHooks('criu-e2e sockets')

  it('pyserver: inet_sk_entry as crit reads it; beside the original ADDRESS_IN_USE, with --netns new the clone answers in its namespace; import + restore --netns new answers too', async () => {
    const port = await freePort()
    const fx = await startFixture('pyserver', {args: ['--port', String(port)]})
    assert.match(await ask(port), new RegExp(`^pid=${fx.pid} `))
    const images = imagesDir('pyserver')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json']))
    const files = (await critDecode(join(images, 'files.img'))).entries as Entry[]
    const sockets = files.filter((file) => file.type === 'INETSK').map((file) => file.isk)
    assert.equal(sockets.length, 1, JSON.stringify(files.map((f) => f.type)))
    const isk = sockets[0]
    assert.equal(isk.src_port, port)
    // crit's plain decode prints the address word as a number: 127.0.0.1 in network byte order, read as CRIU's u32.
    assert.deepEqual(isk.src_addr.map(Number), [0x0100007f], 'the bound address, 127.0.0.1')
    assert.equal(isk.backlog, 64)
    assert.equal(isk.opts.reuseaddr, true)
    assert.ok(['LISTEN', 10].includes(isk.state), `a listener: ${isk.state}`)

    const clash = await cli(['criu', 'restore', '--images', images, '--json'])
    expectCliError(clash, {exitCode: 7, code: 'ADDRESS_IN_USE', message: [`127.0.0.1:${port}`]})
    const restored = okJson(await cli(['criu', 'restore', '--images', images, '--netns', 'new', '--json']))
    trackPid(restored.pid)
    assert.equal(restored.netns, 'new')
    assert.match(askInside(restored.pid, port), new RegExp(`^pid=${restored.pid} `), 'the clone answers in its namespace')
    assert.equal((await requestCheck(fx.logPath, restored.pid)).fields.ok, '1', 'and finds its socket bound where it was, listening, with its options')

    const pool = poolFile('pyserver')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'srv', '--pool', pool, '--json']))
    const imported = okJson(await cli(['restore', 'srv', '--netns', 'new', '--pool', pool, '--json']))
    trackPid(imported.pid)
    assert.match(askInside(imported.pid, port), new RegExp(`^pid=${imported.pid} `), 'the imported clone answers in its namespace')
    assert.match(await ask(port), new RegExp(`^pid=${fx.pid} `), 'the original still answers here')
  })

  it('pyserver dumped with --kill: the criu restore clone listens on the original port here and answers', async () => {
    const port = await freePort()
    const fx = await startFixture('pyserver', {args: ['--port', String(port)]})
    const images = imagesDir('pyserver-kill')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--kill', '--json']))
    await until(() => !processExists(fx.pid) && !listening(port), 'the original gone')
    const restored = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
    trackPid(restored.pid)
    assert.match(await ask(port), new RegExp(`^pid=${restored.pid} `), 'the clone answers on the original port')
    assert.equal((await requestCheck(fx.logPath, restored.pid)).fields.ok, '1')
  })

  it('python3 -m http.server: dumped while serving, its criu restore clone answers HTTP in its own namespace', async () => {
    const port = await freePort()
    const server = spawn('python3', ['-m', 'http.server', String(port), '--bind', '127.0.0.1'], {stdio: 'ignore', cwd: '/usr/share'})
    trackPid(server.pid!)
    await until(() => listening(port) && allProcesses().every((p) => p.ppid !== server.pid), 'http.server listening')
    const images = imagesDir('http')
    okJson(await cli(['criu', 'dump', String(server.pid), '--images', images, '--json']))
    const restored = okJson(await cli(['criu', 'restore', '--images', images, '--netns', 'new', '--json']))
    trackPid(restored.pid)
    assert.equal(askInside(restored.pid, port, true), '200', 'the clone answers HTTP in its namespace')
    assert.equal((await fetch(`http://127.0.0.1:${port}/`)).status, 200, 'the original still answers here')
  })

  it('pyprefork (socketpairs split between a parent and its workers, bytes and a datagram in flight both ways, workers as nobody): dumped with --tree, sk-queues and unix_sk_entry as crit reads them; the restored and imported trees pass their checks twice', async () => {
    const fx = await startFixture('pyprefork')
    const workers = fx.ready.fields.workers!.split(',').map(Number)
    await until(() => workers.every((worker) => /^Uid:\s+65534\s/m.test(readFileSync(`/proc/${worker}/status`, 'utf8'))), 'the workers run as nobody')
    const images = imagesDir('prefork')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--tree', '--images', images, '--json']))
    const files = (await critDecode(join(images, 'files.img'))).entries as Entry[]
    const unix = files.filter((file) => file.type === 'UNIXSK').map((file) => file.usk)
    assert.equal(unix.length, 4 * workers.length, 'two pairs per worker, each end an entry')
    const inos = new Set(unix.map((sk) => sk.ino))
    for (const sk of unix) assert.ok(inos.has(sk.peer), `every end names its other end (ino ${sk.ino} -> ${sk.peer})`)
    const packets = (await critDecode(join(images, 'sk-queues.img'))).entries as Entry[]
    const ids = new Set(files.filter((file) => file.type === 'UNIXSK').map((file) => file.id))
    assert.ok(packets.length >= 2 * workers.length && packets.every((p) => ids.has(p.id_for)), `queued packets name their sockets: ${JSON.stringify(packets)}`)

    const pool = poolFile('prefork')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'prefork', '--pool', pool, '--json']))
    const runs = [
      {what: 'criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
      {what: 'import + restore mow', run: await cli(['restore', 'prefork', '--pool', pool, '--json'])},
    ]
    for (const {what, run} of runs) {
      const root = okJson(run).pid as number
      trackPid(root)
      assert.equal(okJson(run).processes, 1 + workers.length)
      // Two checks: the queued bytes of the dump first, then a round trip that queues them anew.
      for (let round = 0; round < 2; round++) {
        const check = await requestCheck(fx.logPath, root)
        assert.equal(check.fields.ok, '1', `${what}, check ${round + 1}: ${check.line}`)
        for (const answer of check.fields.creds!.split('|')) assert.match(answer, /^uid=65534\/65534\/65534;gid=65534\/65534\/65534;groups=65534$/)
      }
    }
    assert.equal((await fx.check()).fields.ok, '1', 'the original runs on')
  })

  for (const listener of ['1', 'path', 'accepted'] as const) {
    // A path belongs to the file system, whatever the network namespace: that clone comes after its original is gone (--kill).
    const live = listener !== 'path'
    it(`the socket fixture (a TCP listener, stream and datagram socketpairs with bytes and messages queued, a Unix listener ${listener === 'path' ? 'at a path, mode 0666' : listener === 'accepted' ? 'at an abstract name with a connection accepted, bytes queued both ways' : 'at an abstract name'}): ${live ? 'dumped live, its clone in its own network namespace' : 'dumped with --kill, its clone here'} passes its socket checks`, async () => {
      const fx = await startFixture('socket', {args: ['--unix-listener', listener]})
      const images = imagesDir(`unix-${listener}`)
      okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, ...(live ? [] : ['--kill']), '--json']))
      if (!live) await fx.exited()
      const unix = ((await critDecode(join(images, 'files.img'))).entries as Entry[]).filter((file) => file.type === 'UNIXSK').map((file) => file.usk)
      assert.equal(unix.filter((sk) => ['LISTEN', 10].includes(sk.state)).length, 1, `one Unix listener: ${JSON.stringify(unix.map((sk) => sk.state))}`)
      assert.equal(unix.length, listener === 'accepted' ? 7 : 5, 'and both ends of two socketpairs (and of the accepted connection)')
      if (listener === 'path') assert.equal(unix.find((sk) => ['LISTEN', 10].includes(sk.state)).file_perms.mode & 0o777, 0o666, 'the socket file\'s mode')
      assert.ok(((await critDecode(join(images, 'sk-queues.img'))).entries as Entry[]).length >= 4, 'the queued bytes and the three messages')
      const restored = okJson(await cli(['criu', 'restore', '--images', images, ...(live ? ['--netns', 'new'] : []), '--json']))
      trackPid(restored.pid)
      const check = await requestCheck(fx.logPath, restored.pid)
      assert.equal(check.fields.ok, '1', `the clone's own socket checks: ${check.line}`)
      if (live) assert.equal((await fx.check()).fields.ok, '1', 'the original is intact')
    })
  }

  it('socketpair ends whose peer was closed (stream and datagram, bytes and two messages left in them): dumped, the clone reads what waited, then EOF', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-criu-peerclosed-'))
    const out = join(dir, 'out')
    const code = [
      'import os, signal, socket, sys, time',
      'os.closerange(3, 1024)',
      'a, b = socket.socketpair()',
      'b.sendall(b"left-behind"); b.close()',
      'c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)',
      'd.send(b"one"); d.send(b"two"); d.close()',
      'def check(*_):',
      '    got = b""',
      '    while True:',
      '        chunk = a.recv(100)',
      '        if not chunk: break',
      '        got += chunk',
      '    c.setblocking(False)',
      '    msgs = []',
      '    try:',
      '        while True: msgs.append(c.recv(100))',
      '    except BlockingIOError: pass',
      `    with open(${JSON.stringify(out)}, "a") as f: f.write("%r %r\\n" % (got, msgs))`,
      'signal.signal(signal.SIGUSR1, check)',
      `open(${JSON.stringify(join(dir, 'ready'))}, "w").close()`,
      'while True: time.sleep(0.05)',
    ].join('\n')
    const child = spawn('python3', ['-c', code], {stdio: 'ignore'})
    trackPid(child.pid!)
    try {
      await until(() => existsSync(join(dir, 'ready')), 'the pairs are set up')
      const images = imagesDir('peer-closed')
      okJson(await cli(['criu', 'dump', String(child.pid), '--images', images, '--json']))
      const unix = ((await critDecode(join(images, 'files.img'))).entries as Entry[]).filter((file) => file.type === 'UNIXSK').map((file) => file.usk)
      assert.deepEqual(unix.map((sk) => sk.peer), [0, 0], 'two ends, each with its peer gone')
      const restored = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
      trackPid(restored.pid)
      process.kill(restored.pid, 'SIGUSR1')
      const line = await until(() => (existsSync(out) ? readFileSync(out, 'utf8').trim() : undefined), 'the clone\'s reads')
      assert.equal(line, "b'left-behind' [b'one', b'two']", 'the bytes, then EOF; both messages, whole and in order')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('an established TCP connection: refused by name without --tcp-close; with it dumped, and the clone finds the connection closed while its listener listens on', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-criu-tcpclose-'))
    const out = join(dir, 'out')
    const code = [
      'import os, signal, socket, time',
      'os.closerange(3, 1024)',
      'srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(8)',
      'cli = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()',
      'def check(*_):',
      '    try:',
      '        got = "recv %r" % cli.recv(10)',
      '    except OSError as e:',
      '        got = "errno %d" % e.errno',
      '    listening = srv.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)',
      `    with open(${JSON.stringify(out)}, "a") as f: f.write("%s listening=%d\\n" % (got, listening))`,
      'signal.signal(signal.SIGUSR1, check)',
      `open(${JSON.stringify(join(dir, 'ready'))}, "w").close()`,
      'while True: time.sleep(0.05)',
    ].join('\n')
    const child = spawn('python3', ['-c', code], {stdio: 'ignore'})
    trackPid(child.pid!)
    try {
      await until(() => existsSync(join(dir, 'ready')), 'the connection is up')
      const refused = await cli(['criu', 'dump', String(child.pid), '--images', imagesDir('tcp-refused'), '--json'])
      expectCliError(refused, {exitCode: 5, code: 'UNSUPPORTED_FD', message: [String(child.pid), /an established TCP connection/]})
      const images = imagesDir('tcp-close')
      okJson(await cli(['criu', 'dump', String(child.pid), '--tcp-close', '--images', images, '--json']))
      const restored = okJson(await cli(['criu', 'restore', '--images', images, '--netns', 'new', '--json']))
      trackPid(restored.pid)
      process.kill(restored.pid, 'SIGUSR1')
      const line = await until(() => (existsSync(out) ? readFileSync(out, 'utf8').trim() : undefined), 'the clone\'s check')
      assert.match(line, /^(errno 107|recv b'') listening=1$/, `the connection is closed (ENOTCONN or EOF), the listener listens: ${line}`)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
})

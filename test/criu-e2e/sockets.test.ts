/**
 * Listening TCP sockets on the CRIU-format path, end to end on real servers: pyserver
 * (SO_REUSEADDR, a backlog of 64) and `python3 -m http.server` are dumped by `criu dump`
 * while they serve, crit reads their inet_sk_entry (LISTEN, address, port, backlog,
 * options), and their clones answer real requests on loopback: beside the original in a
 * network namespace of their own (`criu restore --netns new`), on the original port once the
 * original is gone (`criu dump --kill`), and through `criu import` + `restore`. A clone that
 * would collide with its original is ADDRESS_IN_USE naming the address.
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
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

describe('criu-e2e: listening TCP sockets through criu dump, restore and import', function () {
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
})

/**
 * Issue 15, "The service": the porter started, asked and stopped; a restore
 * through it equals one by the CLI (the clone's memory checksum and its
 * counter going on); the CLI uses it by itself and --no-porter bypasses it;
 * malformed and oversized requests get typed errors and the porter stays up.
 */
import assert from 'node:assert/strict'
import {existsSync, rmSync, statSync} from 'node:fs'

import {porterRequest} from '../../src/porter/client.js'
import {socketName} from '../../src/porter/paths.js'
import {lastTick, processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, describeRun, installCleanupHooks, poolPath} from '../restore/helpers.js'
import {type RunningPorter, livingStubs, rawExchange, removeSocketDirs, replyBody, socketDir, startPorter, stopPorter} from './helpers.js'

describe('porter: a resident restore service (issue 15)', function () {
  this.timeout(180_000)
  installCleanupHooks('porter')
  let porter: RunningPorter | undefined

  afterEach(async () => {
    await stopPorter(porter)
    porter = undefined
  })
  after(() => removeSocketDirs())

  it('porter start (background, default socket) / status / a second start refused / stop; nothing left behind', async () => {
    const pool = poolPath('porter')
    assert.equal((await cli(['pool', 'init', '--size', '64M', '--pool', pool, '--json'])).status, 0)
    const started = await cli(['porter', 'start', '--pool', pool, '--ghosts', '2', '--json'])
    assert.equal(started.status, 0, describeRun(started))
    const socket = started.json.socket as string
    assert.ok(socket.endsWith(socketName(pool)), socket)
    assert.equal(started.json.pool, pool)
    assert.equal(statSync(socket).mode & 0o777, 0o600, 'the socket is private')
    const pid = started.json.pid as number
    trackPid(pid)
    try {
      const status = await cli(['porter', 'status', '--pool', pool, '--json'])
      assert.equal(status.status, 0, describeRun(status))
      assert.equal(status.json.pid, pid)
      assert.equal(status.json.ghosts.target, 2)
      const again = await cli(['porter', 'start', '--pool', pool, '--json'])
      assert.equal(again.status, 7, describeRun(again))
      assert.equal(again.json.error.code, 'PORTER_RUNNING')
      assert.match(again.json.error.message, new RegExp(`pid ${pid}`))
      // Ghosts ready (refilled in the background).
      let ghosts: number[] = []
      for (let i = 0; i < 100 && ghosts.length < 2; i++) {
        ghosts = (await porterRequest(socket, 'GET', '/v1/status')).body.ghostPids
        if (ghosts.length < 2) await new Promise((resolve) => setTimeout(resolve, 50))
      }
      assert.equal(livingStubs(ghosts).length, 2, `two ghosts: ${ghosts.join(', ')}`)
      const stop = await cli(['porter', 'stop', '--pool', pool, '--json'])
      assert.equal(stop.status, 0, describeRun(stop))
      assert.equal(stop.json.pid, pid)
      assert.equal(stop.json.signal, 'SIGTERM')
      assert.equal(processExists(pid), false, 'the porter is gone')
      assert.deepEqual(livingStubs(ghosts), [], 'its ghosts are gone')
      assert.equal(existsSync(socket), false, 'its socket is removed')
      assert.equal(existsSync(`${socket}.pid`), false, 'its pid file is removed')
      const none = await cli(['porter', 'status', '--pool', pool, '--json'])
      assert.equal(none.status, 3, describeRun(none))
      assert.equal(none.json.error.code, 'PORTER_NOT_RUNNING')
      const stopNone = await cli(['porter', 'stop', '--pool', pool, '--json'])
      assert.equal(stopNone.json.error.code, 'PORTER_NOT_RUNNING')
    } finally {
      if (processExists(pid)) process.kill(pid, 'SIGKILL')
      rmSync(`${socket}.log`, {force: true})
    }
  })

  it('restore through the porter equals the CLI restore: memory checksum, counter going on, servedBy; the CLI uses the porter unless --no-porter', async () => {
    const pool = poolPath('porter')
    const fx = await startFixture('memtouch', {mib: 16})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const before = Number(lastTick(fx.logPath, fx.pid)!.fields.n)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'web', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const socket = `${socketDir()}/p.sock`
    porter = await startPorter(pool, socket, {ghosts: 2})
    const env = {CXLFORK_PORTER_SOCKET: socket}

    const viaPorter = await cli(['restore', 'web', '--json', '--pool', pool], {env})
    assert.equal(viaPorter.status, 0, describeRun(viaPorter))
    trackPid(viaPorter.json.pid)
    assert.equal(viaPorter.json.servedBy, 'porter')
    assert.equal(viaPorter.json.ghost, true, 'built into a ghost')
    const viaCli = await cli(['restore', 'web', '--json', '--no-porter', '--pool', pool], {env})
    assert.equal(viaCli.status, 0, describeRun(viaCli))
    trackPid(viaCli.json.pid)
    assert.equal(viaCli.json.servedBy, 'cli')
    // Same result shape and numbers, whoever served it.
    for (const key of ['name', 'policy', 'threads', 'processes', 'netns', 'pidNamespace', 'verified', 'tiering'] as const) {
      assert.deepEqual(viaPorter.json[key], viaCli.json[key], key)
    }
    for (const key of ['pages_mapped', 'pages_restored', 'pages_lazy'] as const) assert.equal(viaPorter.json.stats[key], viaCli.json.stats[key], key)

    // The API directly, and the human output of the CLI through the porter.
    const direct = await porterRequest(socket, 'POST', '/v1/restore', {name: 'web', policy: 'local'})
    assert.equal(direct.status, 200, JSON.stringify(direct.body))
    trackPid(direct.body.pid)
    assert.equal(direct.body.stats.pages_mapped, 0, 'local copies every page')
    const human = await cli(['restore', 'web', '--pool', pool], {env})
    assert.equal(human.status, 0, describeRun(human))
    const humanPid = Number(/as pid (\d+)/.exec(human.stderr)?.[1])
    trackPid(humanPid)
    assert.match(human.stderr, /\(by the porter\)/)
    assert.equal(human.stdout, '')

    // Every clone has the original's memory and goes on counting from the checkpoint.
    const clones = [viaPorter.json.pid, viaCli.json.pid, direct.body.pid, humanPid]
    await Promise.all(clones.map((pid) => waitForTicks(fx.logPath, pid, 2)))
    for (const pid of clones) {
      const check = await requestCheck(fx.logPath, pid)
      assert.equal(check.fields.ok, '1', check.line)
      assert.equal(check.fields.crc, fx.ready.fields.crc, `clone ${pid}: ${check.line}`)
      assert.ok(Number(lastTick(fx.logPath, pid)!.fields.n) >= before)
    }
    // The pool holds a reference for every clone, whoever built it.
    const inspect = await cli(['inspect', 'web', '--json', '--pool', pool])
    assert.deepEqual(inspect.json.references.filter((r: any) => r.alive).map((r: any) => r.pid).sort(), [...clones].sort())

    // Same errors and exit codes both ways, JSON and human; --wait stays in the CLI.
    for (const args of [['restore', 'nope'], ['restore', 'web', '--pidns', 'new', '--policy', 'moa', '--fill-after', '-1']]) {
      const a = await cli([...args, '--json', '--pool', pool], {env})
      const b = await cli([...args, '--json', '--no-porter', '--pool', pool], {env})
      assert.equal(a.status, b.status, `${describeRun(a)}\n${describeRun(b)}`)
      assert.equal(a.json?.error?.code, b.json?.error?.code, `${describeRun(a)}\n${describeRun(b)}`)
    }
    const missing = await cli(['restore', 'nope', '--pool', pool], {env})
    assert.equal(missing.status, 3)
    assert.match(missing.stderr, /CHECKPOINT_NOT_FOUND/)
    const metrics = await porterRequest(socket, 'GET', '/v1/metrics')
    assert.equal(metrics.body.restores.count, 3, JSON.stringify(metrics.body))
    assert.ok(metrics.body.ghosts.used >= 2, JSON.stringify(metrics.body))

    // A checkpoint through the porter, listed and inspected through it, then removed.
    const ck2 = await porterRequest(socket, 'POST', '/v1/checkpoint', {pid: fx.pid, name: 'web2'})
    assert.equal(ck2.status, 200, JSON.stringify(ck2.body))
    assert.equal(ck2.body.servedBy, 'porter')
    const ls = await porterRequest(socket, 'GET', '/v1/checkpoints')
    assert.deepEqual(ls.body.checkpoints.map((c: any) => c.name).sort(), ['web', 'web2'])
    const details = await porterRequest(socket, 'GET', '/v1/checkpoints/web2')
    assert.equal(details.status, 200)
    assert.equal(details.body.process.pid, fx.pid)
    const cliDetails = await cli(['inspect', 'web2', '--json', '--pool', pool])
    assert.deepEqual({...details.body, servedBy: undefined}, {...cliDetails.json, servedBy: undefined})
    const removed = await porterRequest(socket, 'DELETE', '/v1/checkpoints/web2')
    assert.equal(removed.status, 200, JSON.stringify(removed.body))
    assert.equal(removed.body.state, 'removed')
    const inUse = await porterRequest(socket, 'DELETE', '/v1/checkpoints/web')
    assert.equal(inUse.status, 409)
    assert.equal(inUse.body.error.code, 'CHECKPOINT_IN_USE')

    // Clones the porter built and reaps give their references back with them (left to gc, they slow every restore).
    const porterClones = [viaPorter.json.pid, direct.body.pid, humanPid]
    for (const pid of porterClones) process.kill(pid, 'SIGKILL')
    let references: {pid: number; alive: boolean}[] = []
    for (let i = 0; i < 100; i++) {
      references = (await cli(['inspect', 'web', '--json', '--pool', pool])).json.references
      if (!references.some((r) => porterClones.includes(r.pid))) break
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    assert.deepEqual(references.map((r) => [r.pid, r.alive]), [[viaCli.json.pid, true]], 'only the CLI-built clone, alive, still holds a reference')
  })

  it('malformed, oversized and wrong requests get typed JSON errors; the porter stays up and serves on', async () => {
    const pool = poolPath('porter')
    assert.equal((await cli(['pool', 'init', '--size', '64M', '--pool', pool, '--json'])).status, 0)
    const socket = `${socketDir()}/p.sock`
    porter = await startPorter(pool, socket, {ghosts: 0})
    const cases: {what: string; send: () => Promise<{status: number; body: any}>; status: number; code: string}[] = [
      {what: 'not JSON', send: () => raw(socket, 'POST', '/v1/restore', '{bad'), status: 400, code: 'PORTER_BAD_REQUEST'},
      {what: 'JSON not an object', send: () => raw(socket, 'POST', '/v1/restore', '[1,2]'), status: 400, code: 'PORTER_BAD_REQUEST'},
      {what: 'unknown field', send: () => porterRequest(socket, 'POST', '/v1/restore', {name: 'x', wait: true}), status: 400, code: 'PORTER_BAD_REQUEST'},
      {what: 'wrong type', send: () => porterRequest(socket, 'POST', '/v1/restore', {name: 7}), status: 400, code: 'PORTER_BAD_REQUEST'},
      {what: 'bad policy', send: () => porterRequest(socket, 'POST', '/v1/restore', {name: 'x', policy: 'fast'}), status: 400, code: 'PORTER_BAD_REQUEST'},
      {what: 'bad name', send: () => porterRequest(socket, 'POST', '/v1/restore', {name: '../etc'}), status: 400, code: 'INVALID_NAME'},
      {what: 'unknown checkpoint', send: () => porterRequest(socket, 'POST', '/v1/restore', {name: 'nope'}), status: 404, code: 'CHECKPOINT_NOT_FOUND'},
      {what: 'no such process', send: () => porterRequest(socket, 'POST', '/v1/checkpoint', {pid: 2 ** 22 + 1, name: 'x'}), status: 404, code: 'PROCESS_NOT_FOUND'},
      {what: 'wrong method', send: () => porterRequest(socket, 'GET', '/v1/restore'), status: 405, code: 'PORTER_METHOD'},
      {what: 'unknown route', send: () => porterRequest(socket, 'GET', '/v2/anything'), status: 404, code: 'PORTER_NO_ROUTE'},
      {what: 'oversized body', send: () => raw(socket, 'POST', '/v1/restore', `{"name":"${'a'.repeat(200_000)}"}`), status: 413, code: 'PORTER_BODY_TOO_LARGE'},
      {what: 'not HTTP', send: async () => rawReply(await rawExchange(socket, 'GARBAGE\r\n\r\n')), status: 400, code: 'PORTER_BAD_REQUEST'},
      {what: 'oversized headers', send: async () => rawReply(await rawExchange(socket, `GET /v1/status HTTP/1.1\r\nX-Big: ${'b'.repeat(100_000)}\r\n\r\n`)), status: 431, code: 'PORTER_BODY_TOO_LARGE'},
    ]
    for (const c of cases) {
      const reply = await c.send()
      assert.equal(reply.status, c.status, `${c.what}: ${JSON.stringify(reply.body).slice(0, 300)}`)
      assert.equal(reply.body.error.code, c.code, c.what)
      assert.equal(typeof reply.body.error.message, 'string', c.what)
      assert.ok(reply.body.error.hint, `${c.what}: a hint`)
      assert.equal(typeof reply.body.error.exitCode, 'number', c.what)
      assert.doesNotMatch(JSON.stringify(reply.body), /\n\s+at /, `${c.what}: no stack trace`)
      const status = await porterRequest(socket, 'GET', '/v1/status')
      assert.equal(status.body.pid, porter.pid, `${c.what}: the porter is still up`)
    }
    // A client that connects and hangs up, or sends half a request, harms nothing.
    await rawExchange(socket, '')
    await rawExchange(socket, 'POST /v1/restore HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"na')
    assert.equal((await porterRequest(socket, 'GET', '/v1/status')).body.pid, porter.pid)
  })
})

async function raw(socket: string, method: string, path: string, body: string): Promise<{status: number; body: any}> {
  return rawReply(await rawExchange(socket, `${method} ${path} HTTP/1.1\r\nHost: porter\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`))
}

function rawReply(reply: string): {status: number; body: any} {
  return {status: Number(/^HTTP\/1\.1 (\d+)/.exec(reply)?.[1]), body: replyBody(reply)}
}

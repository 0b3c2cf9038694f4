/**
 * Issue 13 (whole CRIU-format commands at parity): `criu dump` and `criu
 * restore` served by a running porter, whose engine is loaded and warm, as
 * the CLI serves them. The image sets are the same files, the clone has the
 * original's memory and counts on, errors and exit codes are the CLI's,
 * --no-porter and --wait stay in the CLI, and the porter reaps its clones.
 */
import assert from 'node:assert/strict'
import {existsSync, mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'

import {porterRequest} from '../../src/porter/client.js'
import {lastTick, processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, describeRun, installCleanupHooks, poolPath} from '../restore/helpers.js'
import {type RunningPorter, removeSocketDirs, socketDir, startPorter, stopPorter} from './helpers.js'

function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
}

describe('porter: criu dump / criu restore through the porter (issue 13)', function () {
  this.timeout(180_000)
  installCleanupHooks('porter-criu')
  let porter: RunningPorter | undefined
  const imageRoots: string[] = []

  afterEach(async () => {
    await stopPorter(porter)
    porter = undefined
    for (const dir of imageRoots.splice(0)) rmSync(dir, {recursive: true, force: true})
  })
  after(() => removeSocketDirs())

  it('dump and restore are served by the porter with the CLI\'s results, files and errors; the clone passes its check and is reaped by the porter', async () => {
    const pool = poolPath('porter-criu')
    assert.equal((await cli(['pool', 'init', '--size', '64M', '--pool', pool, '--json'])).status, 0)
    const images = mkdtempSync('/dev/shm/cxlfork-porter-criu-')
    imageRoots.push(images)
    const fx = await startFixture('memtouch', {mib: 16})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const before = Number(lastTick(fx.logPath, fx.pid)!.fields.n)
    const socket = `${socketDir()}/p.sock`
    porter = await startPorter(pool, socket, {ghosts: 1})
    const env = {CXLFORK_PORTER_SOCKET: socket}

    const viaPorter = await cli(['criu', 'dump', String(fx.pid), '--images', `${images}/a`, '--json', '--pool', pool], {env})
    assert.equal(viaPorter.status, 0, describeRun(viaPorter))
    assert.equal(viaPorter.json.servedBy, 'porter')
    assert.equal(viaPorter.json.killed, false)
    assert.ok(processExists(fx.pid), 'the target runs on')
    const viaCli = await cli(['criu', 'dump', String(fx.pid), '--images', `${images}/b`, '--json', '--no-porter', '--pool', pool], {env})
    assert.equal(viaCli.status, 0, describeRun(viaCli))
    assert.equal(viaCli.json.servedBy, 'cli')
    // The same image set, whoever wrote it.
    assert.deepEqual(readdirSync(`${images}/a`).sort(), readdirSync(`${images}/b`).sort())
    assert.equal(viaPorter.json.pages, viaCli.json.pages)

    const restored = await cli(['criu', 'restore', '--images', `${images}/a`, '--json', '--pool', pool], {env})
    assert.equal(restored.status, 0, describeRun(restored))
    trackPid(restored.json.pid)
    assert.equal(restored.json.servedBy, 'porter')
    assert.equal(parentOf(restored.json.pid), porter.pid, 'the porter built the clone, and reaps it')
    const human = await cli(['criu', 'restore', '--images', `${images}/b`, '--pool', pool], {env})
    assert.equal(human.status, 0, describeRun(human))
    const humanPid = Number(/as pid (\d+)/.exec(human.stderr)?.[1])
    trackPid(humanPid)
    assert.match(human.stderr, /\(by the porter\)/)
    assert.equal(human.stdout, '')
    const local = await cli(['criu', 'restore', '--images', `${images}/a`, '--json', '--no-porter', '--pool', pool], {env})
    assert.equal(local.status, 0, describeRun(local))
    trackPid(local.json.pid)
    assert.equal(local.json.servedBy, 'cli')
    for (const key of ['threads', 'processes', 'netns', 'pidNamespace'] as const) assert.deepEqual(restored.json[key], local.json[key], key)
    assert.equal(restored.json.stats.pages_restored, local.json.stats.pages_restored)

    for (const pid of [restored.json.pid, humanPid, local.json.pid]) {
      await waitForTicks(fx.logPath, pid, 2)
      const check = await requestCheck(fx.logPath, pid)
      assert.equal(check.fields.ok, '1', check.line)
      assert.equal(check.fields.crc, fx.ready.fields.crc, `clone ${pid}: ${check.line}`)
      assert.ok(Number(lastTick(fx.logPath, pid)!.fields.n) >= before)
    }

    // The CLI's typed errors and exit codes, through the porter or not.
    for (const args of [['criu', 'restore', '--images', `${images}/none`], ['criu', 'dump', '999999999', '--images', `${images}/c`], ['criu', 'dump', String(fx.pid), '--images', `${images}/a`]]) {
      const a = await cli([...args, '--json', '--pool', pool], {env})
      const b = await cli([...args, '--json', '--no-porter', '--pool', pool], {env})
      assert.notEqual(a.status, 0, describeRun(a))
      assert.equal(a.status, b.status, `${describeRun(a)}\n${describeRun(b)}`)
      assert.equal(a.json?.error?.code, b.json?.error?.code, `${describeRun(a)}\n${describeRun(b)}`)
    }
    assert.ok(processExists(fx.pid), 'refused dumps left the target running')

    // A malformed request is refused by name and the porter serves on.
    const relative = await porterRequest(socket, 'POST', '/v1/criu/restore', {images: 'relative/dir'})
    assert.equal(relative.status, 400)
    assert.equal(relative.body.error.code, 'PORTER_BAD_REQUEST')

    // The porter reaps the clones it built: killed, they leave no zombie behind.
    for (const pid of [restored.json.pid, humanPid]) process.kill(pid, 'SIGKILL')
    const present = (): boolean => [restored.json.pid, humanPid].some((pid) => existsSync(`/proc/${pid}`))
    for (let i = 0; i < 100 && present(); i++) await new Promise((resolve) => setTimeout(resolve, 50))
    assert.ok(!present(), 'reaped by the porter (no zombie left)')
    const metrics = await porterRequest(socket, 'GET', '/v1/metrics')
    assert.equal(metrics.body.requests['POST /v1/criu/dump'], 3, JSON.stringify(metrics.body.requests))
  })
})

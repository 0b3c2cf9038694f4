/**
 * Issue 15: every request is authorized by its peer's credentials
 * (SO_PEERCRED) with the CLI's owner rules. Another user is refused by the
 * porter exactly what the CLI refuses it (same code), a user outside the
 * socket's group cannot connect at all, and what the porter cannot do as
 * that user (restore, checkpoint: the result would be root's) is
 * PORTER_UNSERVED, after which the CLI does it itself.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn, spawnSync} from 'node:child_process'
import {chmodSync, statSync} from 'node:fs'
import {randomBytes} from 'node:crypto'

import {CLI, PROJECT_ROOT} from '../helpers/cli.js'
import {trackPid} from '../helpers/fixtures.js'
import {cli, describeRun, installCleanupHooks, poolPath} from '../restore/helpers.js'
import {type RunningPorter, removeSocketDirs, socketDir, startPorter, stopPorter} from './helpers.js'

const suffix = randomBytes(3).toString('hex')
const MEMBER = `cxlpt-m-${suffix}`
const OTHER = `cxlpt-o-${suffix}`
const GROUP = `cxlpt-g-${suffix}`

function sh(command: string, args: string[]): number | null {
  return spawnSync(command, args, {encoding: 'utf8'}).status
}

interface Run {
  status: number | null
  stdout: string
  stderr: string
  json: any
}

function parse(result: {status: number | null; stdout: string; stderr: string}): Run {
  let json: unknown
  try {
    json = JSON.parse(result.stdout)
  } catch {
    json = undefined
  }
  return {status: result.status, stdout: result.stdout, stderr: result.stderr, json}
}

/** The CLI as `user`. */
function cliAs(user: string, args: string[], env: Record<string, string> = {}): Run {
  const envArgs = Object.entries(env).map(([k, v]) => `${k}=${v}`)
  return parse(spawnSync('runuser', ['-u', user, '--', 'env', ...envArgs, process.execPath, CLI, ...args], {encoding: 'utf8', cwd: PROJECT_ROOT}))
}

/** curl on the porter's socket as `user`: HTTP status and JSON body. */
function curlAs(user: string, socket: string, method: string, path: string, body?: unknown): Run & {http: number} {
  const args = ['-u', user, '--', 'curl', '-s', '-o', '-', '-w', '\n%{http_code}', '--unix-socket', socket, '-X', method, ...(body === undefined ? [] : ['-H', 'Content-Type: application/json', '-d', JSON.stringify(body)]), `http://porter${path}`]
  const result = spawnSync('runuser', args, {encoding: 'utf8'})
  const lines = result.stdout.trimEnd().split('\n')
  const http = Number(lines.pop())
  return {...parse({status: result.status, stdout: lines.join('\n'), stderr: result.stderr}), http}
}

const isRoot = process.getuid?.() === 0
const hasTools = sh('sh', ['-c', 'command -v runuser && command -v useradd && command -v groupadd && command -v curl']) === 0

describe('porter: peers are authorized as the CLI would authorize them (issue 15)', function () {
  this.timeout(180_000)
  installCleanupHooks('porter-peers')
  const porters: RunningPorter[] = []
  const targets: ChildProcess[] = []
  let usersMade = false

  before(function () {
    if (!isRoot || !hasTools) this.skip() // needs root, runuser, useradd, groupadd and curl
    if (sh('groupadd', [GROUP]) !== 0) this.skip()
    usersMade = sh('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', '-G', GROUP, MEMBER]) === 0
      && sh('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', OTHER]) === 0
    if (!usersMade) this.skip()
  })

  afterEach(async () => {
    for (const porter of porters.splice(0)) await stopPorter(porter)
  })

  after(() => {
    for (const child of targets) child.kill('SIGKILL')
    removeSocketDirs()
    sh('userdel', [MEMBER])
    sh('userdel', [OTHER])
    sh('groupdel', [GROUP])
  })

  /** A sleeping process with only fds 0-2 (as `user`, or root). */
  function target(user?: string): number {
    const script = 'for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec sleep 600'
    // Node sets the ids itself (runuser would stay the parent, as root).
    const ids = user ? {uid: Number(spawnSync('id', ['-u', user], {encoding: 'utf8'}).stdout), gid: Number(spawnSync('id', ['-g', user], {encoding: 'utf8'}).stdout)} : {}
    const child = spawn('bash', ['-c', script], {stdio: 'ignore', ...ids})
    targets.push(child)
    return child.pid!
  }

  /** A socket directory others may traverse (the socket's own mode decides who connects). */
  function sharedSocket(): string {
    const dir = socketDir()
    chmodSync(dir, 0o755)
    return `${dir}/p.sock`
  }

  it('a private pool: the socket is 0660 for --group; a non-member cannot connect; a member gets POOL_ACCESS, as from the CLI', async () => {
    const pool = poolPath('peers')
    assert.equal((await cli(['pool', 'init', '--size', '64M', '--pool', pool, '--json'])).status, 0)
    const socket = sharedSocket()
    porters.push(await startPorter(pool, socket, {ghosts: 0, group: GROUP}))
    const gid = Number(spawnSync('getent', ['group', GROUP], {encoding: 'utf8'}).stdout.split(':')[2])
    assert.equal(statSync(socket).mode & 0o777, 0o660)
    assert.equal(statSync(socket).gid, gid)

    const stranger = curlAs(OTHER, socket, 'GET', '/v1/status')
    assert.notEqual(stranger.status, 0, 'a user outside the group cannot connect')
    assert.equal(stranger.http, 0)

    const viaPorter = curlAs(MEMBER, socket, 'GET', '/v1/checkpoints')
    const viaCli = cliAs(MEMBER, ['ls', '--json', '--pool', pool])
    assert.equal(viaPorter.http, 403, viaPorter.stdout)
    assert.equal(viaPorter.json.error.code, 'POOL_ACCESS')
    assert.equal(viaCli.json?.error?.code, 'POOL_ACCESS', viaCli.stdout + viaCli.stderr)
    assert.equal(viaPorter.json.error.exitCode, viaCli.status)
    // Status is no secret to a member; the porter is unharmed.
    assert.equal(curlAs(MEMBER, socket, 'GET', '/v1/status').http, 200)
  })

  it('a shared pool: a member lists as through the CLI, and is refused restore, inspect, rm of root\'s checkpoint and a checkpoint of root\'s process with the CLI\'s codes; a checkpoint of its own process is PORTER_UNSERVED (it would be root\'s)', async () => {
    const pool = poolPath('peers')
    assert.equal((await cli(['pool', 'init', '--size', '64M', '--shared-group', GROUP, '--pool', pool, '--json'])).status, 0)
    const rootPid = target()
    const ck = await cli(['checkpoint', String(rootPid), '--name', 'root-ckpt', '--pool', pool, '--json'])
    assert.equal(ck.status, 0, describeRun(ck))
    const socket = sharedSocket()
    porters.push(await startPorter(pool, socket, {ghosts: 1, group: GROUP}))

    const ls = curlAs(MEMBER, socket, 'GET', '/v1/checkpoints')
    assert.equal(ls.http, 200, ls.stdout)
    const lsCli = cliAs(MEMBER, ['ls', '--json', '--pool', pool])
    assert.equal(lsCli.status, 0, lsCli.stdout + lsCli.stderr)
    assert.deepEqual(ls.json.checkpoints.map((c: any) => c.name), lsCli.json.checkpoints.map((c: any) => c.name))

    const refusals: {what: string; porter: () => Run & {http: number}; cli: string[]; code: string}[] = [
      {what: 'restore', porter: () => curlAs(MEMBER, socket, 'POST', '/v1/restore', {name: 'root-ckpt'}), cli: ['restore', 'root-ckpt', '--no-porter'], code: 'CHECKPOINT_ACCESS'},
      {what: 'inspect', porter: () => curlAs(MEMBER, socket, 'GET', '/v1/checkpoints/root-ckpt'), cli: ['inspect', 'root-ckpt'], code: 'CHECKPOINT_ACCESS'},
      {what: 'rm', porter: () => curlAs(MEMBER, socket, 'DELETE', '/v1/checkpoints/root-ckpt'), cli: ['rm', 'root-ckpt'], code: 'CHECKPOINT_ACCESS'},
      {what: "checkpoint of root's process", porter: () => curlAs(MEMBER, socket, 'POST', '/v1/checkpoint', {pid: rootPid, name: 'stolen'}), cli: ['checkpoint', String(rootPid), '--name', 'stolen'], code: 'NOT_PERMITTED'},
    ]
    for (const r of refusals) {
      const viaPorter = r.porter()
      const viaCli = cliAs(MEMBER, [...r.cli, '--json', '--pool', pool])
      assert.equal(viaPorter.json?.error?.code, r.code, `${r.what} via porter: ${viaPorter.stdout}`)
      assert.equal(viaPorter.http, 403, r.what)
      assert.equal(viaCli.json?.error?.code, r.code, `${r.what} via CLI: ${viaCli.stdout}${viaCli.stderr}`)
      assert.equal(viaPorter.json.error.exitCode, viaCli.status, r.what)
    }
    // The CLI as the member, with the porter found: the porter's refusal, same code and exit status as without it.
    const auto = cliAs(MEMBER, ['restore', 'root-ckpt', '--json', '--pool', pool], {CXLFORK_PORTER_SOCKET: socket})
    assert.equal(auto.json?.error?.code, 'CHECKPOINT_ACCESS', auto.stdout + auto.stderr)
    assert.equal(auto.status, 4)
    // Nothing was removed or taken.
    const after = await cli(['ls', '--json', '--pool', pool])
    assert.deepEqual(after.json.checkpoints.map((c: any) => c.name), ['root-ckpt'])

    // The member's own process: allowed by the rules, but a checkpoint taken by the porter would be root's.
    const own = target(MEMBER)
    const unserved = curlAs(MEMBER, socket, 'POST', '/v1/checkpoint', {pid: own, name: 'mine'})
    assert.equal(unserved.http, 422, unserved.stdout)
    assert.equal(unserved.json.error.code, 'PORTER_UNSERVED')
    assert.ok(unserved.json.error.hint)
    // Root is served (the porter's own user).
    const rootRestore = await cli(['restore', 'root-ckpt', '--json', '--pool', pool], {env: {CXLFORK_PORTER_SOCKET: socket}})
    assert.equal(rootRestore.status, 0, describeRun(rootRestore))
    trackPid(rootRestore.json.pid)
    assert.equal(rootRestore.json.servedBy, 'porter')
  })
})

/**
 * Issue 14, item 1: who owns the pool file. As root, a pool another user
 * created (or could have written) is refused before a byte of root's memory
 * goes into it; a symbolic link at the pool path is never followed; a pool
 * is shared between users only when `pool init --shared-group` made it so.
 * Acts as other users with runuser; the users, group, pools and processes
 * the suite creates are removed in after().
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn, spawnSync} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import * as fs from 'node:fs'

import {CLI, PROJECT_ROOT, removeTestPools, runCli, testPoolPath} from './helpers.js'
import type {CliRun} from './helpers.js'

const suffix = randomBytes(3).toString('hex')
const MEMBER = `cxlft-m-${suffix}`
const OTHER = `cxlft-o-${suffix}`
const GROUP = `cxlft-g-${suffix}`

function sh(command: string, args: string[]): {status: number | null; stderr: string} {
  const run = spawnSync(command, args, {encoding: 'utf8'})
  return {status: run.status, stderr: run.stderr}
}

/** The CLI as `user`, via runuser. */
function runAs(user: string, args: string[]): CliRun {
  const result = spawnSync('runuser', ['-u', user, '--', process.execPath, CLI, ...args], {encoding: 'utf8', cwd: PROJECT_ROOT})
  let json: unknown
  try {
    json = JSON.parse(result.stdout)
  } catch {
    json = undefined
  }
  return {status: result.status, stdout: result.stdout, stderr: result.stderr, json}
}

function expectRefused(run: CliRun, code: string, exitCode: number, what: string): void {
  assert.equal(run.json?.error?.code, code, `${what}: ${run.stdout}${run.stderr}`)
  assert.equal(run.status, exitCode, what)
  assert.equal(run.json.error.exitCode, exitCode)
  assert.ok(run.json.error.hint, `${what}: a hint`)
  assert.doesNotMatch(run.stdout + run.stderr, /\n\s+at /, `${what}: no stack trace`)
}

function digest(path: string): string {
  return createHash('sha256').update(fs.readFileSync(path)).digest('hex')
}

const isRoot = process.getuid?.() === 0
const hasTools = sh('sh', ['-c', 'command -v runuser && command -v useradd && command -v groupadd']).status === 0

describe('pool ownership (issue 14 item 1)', function () {
  const targets: ChildProcess[] = []
  const extraFiles: string[] = []
  let usersMade = false

  before(function () {
    if (!isRoot || !hasTools) this.skip() // needs root and runuser/useradd/groupadd to act as other users
    if (sh('groupadd', [GROUP]).status !== 0) this.skip()
    // Home-less users; MEMBER is in GROUP, OTHER is not.
    usersMade = sh('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', '-G', GROUP, MEMBER]).status === 0
      && sh('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', OTHER]).status === 0
    if (!usersMade) this.skip()
  })

  after(() => {
    for (const child of targets) child.kill('SIGKILL')
    for (const path of extraFiles) fs.rmSync(path, {force: true, recursive: true})
    removeTestPools()
    sh('userdel', [MEMBER])
    sh('userdel', [OTHER])
    sh('groupdel', [GROUP])
  })

  /**
   * A single-threaded target with only /dev/null fds, so every refusal is
   * about the pool. Fds the test runner inherited (not close-on-exec) are
   * closed first: the checkpoint would refuse them.
   */
  function target(): number {
    const closeInherited = 'for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec sleep 600'
    const child = spawn('bash', ['-c', closeInherited], {stdio: 'ignore'})
    targets.push(child)
    return child.pid!
  }

  it('as root, a pool another user created is refused for checkpoint, restore, ls and pool info (POOL_UNSAFE, exit 4)', () => {
    const path = testPoolPath()
    const init = runAs(OTHER, ['pool', 'init', '--size', '32M', '--pool', path, '--json'])
    assert.equal(init.status, 0, init.stderr)
    const before = digest(path)
    const pid = target()
    expectRefused(runCli(['checkpoint', String(pid), '--name', 'root-memory', '--pool', path, '--json']), 'POOL_UNSAFE', 4, 'checkpoint')
    expectRefused(runCli(['restore', 'root-memory', '--pool', path, '--json']), 'POOL_UNSAFE', 4, 'restore')
    expectRefused(runCli(['ls', '--pool', path, '--json']), 'POOL_UNSAFE', 4, 'ls')
    const info = runCli(['pool', 'info', '--pool', path, '--json'])
    expectRefused(info, 'POOL_UNSAFE', 4, 'pool info')
    assert.match(info.json.error.message, /belongs to uid \d+, neither you/)
    assert.equal(digest(path), before, 'not a byte written (not even a host lease)')
    // Its owner still uses it.
    assert.equal(runAs(OTHER, ['ls', '--pool', path, '--json']).status, 0)
  })

  it('a symbolic link at the pool path is refused and never followed (to a root file, and dangling)', () => {
    const victim = `/dev/shm/cxlfork-test-victim-${suffix}`
    extraFiles.push(victim)
    fs.writeFileSync(victim, randomBytes(64 * 1024), {mode: 0o600})
    const before = digest(victim)
    const link = testPoolPath()
    // Planted by another user, as in /dev/shm anyone can.
    assert.equal(sh('runuser', ['-u', OTHER, '--', 'ln', '-s', victim, link]).status, 0)
    const pid = target()
    for (const args of [['checkpoint', String(pid), '--name', 'x'], ['ls'], ['pool', 'info'], ['restore', 'x'], ['pool', 'init', '--size', '32M']]) {
      expectRefused(runCli([...args, '--pool', link, '--json']), 'POOL_UNSAFE', 4, args.join(' '))
    }
    assert.equal(digest(victim), before, 'the link target is unchanged')
    assert.ok(fs.lstatSync(link).isSymbolicLink())

    const dangling = testPoolPath()
    const nowhere = `/dev/shm/cxlfork-test-nowhere-${suffix}`
    extraFiles.push(nowhere)
    assert.equal(sh('runuser', ['-u', OTHER, '--', 'ln', '-s', nowhere, dangling]).status, 0)
    for (const args of [['checkpoint', String(pid), '--name', 'x'], ['ls'], ['pool', 'init', '--size', '32M']]) {
      expectRefused(runCli([...args, '--pool', dangling, '--json']), 'POOL_UNSAFE', 4, `${args.join(' ')} (dangling)`)
    }
    assert.equal(fs.existsSync(nowhere), false, 'the dangling link target is not created')
    assert.equal(fs.readdirSync('/dev/shm').some((name) => name.includes('.init-')), false, 'no temporary file left')
  })

  it('a planted symbolic link to a directory on the way to the pool is refused', () => {
    const realDir = `/dev/shm/cxlfork-test-dir-${suffix}`
    const linkDir = `/dev/shm/cxlfork-test-dirlink-${suffix}`
    extraFiles.push(realDir, linkDir)
    fs.mkdirSync(realDir, {mode: 0o700})
    assert.equal(sh('runuser', ['-u', OTHER, '--', 'ln', '-s', realDir, linkDir]).status, 0)
    const run = runCli(['pool', 'init', '--size', '32M', '--pool', `${linkDir}/x.pool`, '--json'])
    expectRefused(run, 'POOL_UNSAFE', 4, 'pool init through a planted directory link')
    assert.deepEqual(fs.readdirSync(realDir), [])
    // root's own link is followed as before.
    fs.rmSync(linkDir)
    fs.symlinkSync(realDir, linkDir)
    assert.equal(runCli(['pool', 'init', '--size', '32M', '--pool', `${linkDir}/x.pool`, '--json']).status, 0)
  })

  it('a pool group or others can access is refused unless pool init --shared-group made it so', () => {
    const path = testPoolPath()
    assert.equal(runCli(['pool', 'init', '--size', '32M', '--pool', path, '--json']).status, 0)
    for (const mode of [0o660, 0o620, 0o606, 0o644]) {
      fs.chmodSync(path, mode)
      const run = runCli(['ls', '--pool', path, '--json'])
      expectRefused(run, 'POOL_UNSAFE', 4, `mode 0${mode.toString(8)}`)
      assert.match(run.json.error.message, new RegExp(`mode is 0${mode.toString(8)}`))
    }
    fs.chmodSync(path, 0o600)
    assert.equal(runCli(['ls', '--pool', path, '--json']).status, 0)
  })

  it('pool init --shared-group G: mode 0660 group G, members use it, others and a changed group are refused', () => {
    const path = testPoolPath()
    const init = runCli(['pool', 'init', '--size', '32M', '--shared-group', GROUP, '--pool', path, '--json'])
    assert.equal(init.status, 0, init.stderr)
    const gid = Number(spawnSync('getent', ['group', GROUP], {encoding: 'utf8'}).stdout.split(':')[2])
    assert.equal(init.json.sharedGid, gid)
    const stat = fs.statSync(path)
    assert.equal(stat.mode & 0o7777, 0o660)
    assert.equal(stat.gid, gid)

    // root checkpoints into it; a member sees the checkpoint, may write the pool (gc), and may not restore root's checkpoint.
    const pid = target()
    const checkpoint = runCli(['checkpoint', String(pid), '--name', 'root-ckpt', '--pool', path, '--json'])
    assert.equal(checkpoint.status, 0, checkpoint.stdout + checkpoint.stderr)
    const ls = runAs(MEMBER, ['ls', '--pool', path, '--json'])
    assert.equal(ls.status, 0, ls.stdout + ls.stderr)
    assert.deepEqual(ls.json.checkpoints.map((c: {name: string}) => c.name), ['root-ckpt'])
    assert.equal(runAs(MEMBER, ['pool', 'info', '--pool', path, '--json']).json.sharedGid, gid)
    assert.equal(runAs(MEMBER, ['pool', 'gc', '--pool', path, '--json']).status, 0)
    expectRefused(runAs(MEMBER, ['restore', 'root-ckpt', '--pool', path, '--json']), 'CHECKPOINT_ACCESS', 4, 'member restores root checkpoint')
    expectRefused(runAs(MEMBER, ['rm', 'root-ckpt', '--pool', path, '--json']), 'CHECKPOINT_ACCESS', 4, 'member removes root checkpoint')
    // A non-member cannot even open it.
    expectRefused(runAs(OTHER, ['ls', '--pool', path, '--json']), 'POOL_ACCESS', 4, 'non-member')

    // The group changed behind the pool's back: refused.
    fs.chownSync(path, 0, 0)
    expectRefused(runCli(['ls', '--pool', path, '--json']), 'POOL_UNSAFE', 4, 'group changed')
    fs.chownSync(path, 0, gid)
    fs.chmodSync(path, 0o664)
    expectRefused(runCli(['ls', '--pool', path, '--json']), 'POOL_UNSAFE', 4, 'readable by others')
    fs.chmodSync(path, 0o660)
    assert.equal(runCli(['ls', '--pool', path, '--json']).status, 0)
  })

  it('a member may create a shared pool; a non-member may not; root refuses a member-owned pool of a group it is not in', () => {
    const path = testPoolPath()
    const made = runAs(MEMBER, ['pool', 'init', '--size', '32M', '--shared-group', GROUP, '--pool', path, '--json'])
    assert.equal(made.status, 0, made.stdout + made.stderr)
    expectRefused(runCli(['ls', '--pool', path, '--json']), 'POOL_UNSAFE', 4, 'root and a member-owned shared pool')
    const denied = runAs(OTHER, ['pool', 'init', '--size', '32M', '--shared-group', GROUP, '--pool', testPoolPath(), '--json'])
    expectRefused(denied, 'NOT_PERMITTED', 4, 'non-member shares with a group')
    expectRefused(runCli(['pool', 'init', '--size', '32M', '--shared-group', `no-such-${suffix}`, '--pool', testPoolPath(), '--json']),
      'GROUP_NOT_FOUND', 3, 'unknown group')
  })

  it('pool init --force over another user\'s pool: POOL_NOT_OWNER (exit 4) for a user, the pool unchanged', () => {
    const path = testPoolPath()
    assert.equal(runAs(MEMBER, ['pool', 'init', '--size', '32M', '--pool', path, '--json']).status, 0)
    const before = digest(path)
    expectRefused(runAs(OTHER, ['pool', 'init', '--force', '--size', '32M', '--pool', path, '--json']), 'POOL_NOT_OWNER', 4, 'init --force')
    assert.equal(digest(path), before)
    assert.equal(fs.readdirSync('/dev/shm').some((name) => name.includes('.init-')), false, 'no temporary file left')
    // root may replace it: the new pool is root's.
    assert.equal(runCli(['pool', 'init', '--force', '--size', '32M', '--pool', path, '--json']).status, 0)
    assert.equal(fs.statSync(path).uid, 0)
  })

  it('a user checkpointing a process that runs as another uid (set-user-ID style) gets NOT_PERMITTED, exit 4, with a hint', function () {
    if (sh('sh', ['-c', 'command -v perl']).status !== 0) this.skip() // perl sets the real uid alone
    const uid = Number(spawnSync('id', ['-u', MEMBER], {encoding: 'utf8'}).stdout)
    // Real uid MEMBER, effective and saved uid root: what `passwd` run by MEMBER looks like.
    const closeInherited = 'for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null'
    const child = spawn('bash', ['-c', `${closeInherited}; exec perl -e '$< = ${uid}; sleep 600'`], {stdio: 'ignore'})
    targets.push(child)
    const deadline = Date.now() + 5000
    const realUidSet = (): boolean => new RegExp(`^Uid:\\s+${uid}\\s+0\\s+0\\s`, 'm').test(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8'))
    while (Date.now() < deadline && !realUidSet()) spawnSync('sleep', ['0.05'])
    assert.ok(realUidSet(), 'the target runs with real uid MEMBER and effective uid root')
    const path = testPoolPath()
    const run = runAs(MEMBER, ['checkpoint', String(child.pid), '--name', 'setuid', '--pool', path, '--json'])
    expectRefused(run, 'NOT_PERMITTED', 4, 'checkpoint of a set-user-ID style process')
    assert.match(run.json.error.message, new RegExp(`real/effective/saved uids ${uid}/0/0`))
    const dump = runAs(MEMBER, ['criu', 'dump', String(child.pid), '--images', `/dev/shm/cxlfork-test-img-${suffix}`, '--json'])
    extraFiles.push(`/dev/shm/cxlfork-test-img-${suffix}`)
    expectRefused(dump, 'NOT_PERMITTED', 4, 'criu dump of a set-user-ID style process')
  })
})

/**
 * Issue 14, item 6: inputs that gave an untyped INTERNAL error, a
 * SYSCALL_FAILED, or no JSON at all now give a typed error with a hint and
 * the exit status the README's table gives its code; the registry in
 * src/errors.ts is the one source of codes.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, statfsSync} from 'node:fs'
import {join} from 'node:path'

import {ERROR_CODES, ExitCode} from '../../src/errors.js'
import {parseSize} from '../../src/pool/size.js'
import {projectRoot} from '../../src/paths.js'
import {type CliRun, runCli} from '../pool/helpers.js'

const CLI = join(projectRoot(), 'bin', 'run.js')
const PREFIX = `/dev/shm/cxlfork-errors-${process.pid}`

type Run = CliRun

/** The CLI with --json appended (test/pool/helpers.ts runs it as a user would). */
function run(args: string[]): Run {
  return runCli([...args, '--json'])
}

function expectTyped(result: Run, code: string, exitCode: number): void {
  assert.equal(result.json?.error?.code, code, `${result.stdout}${result.stderr}`)
  assert.equal(result.status, exitCode)
  assert.equal(result.json.error.exitCode, exitCode)
  assert.equal(ERROR_CODES[code as keyof typeof ERROR_CODES], exitCode, 'the registry gives this exit status')
  assert.ok(result.json.error.hint, 'a hint')
}

describe('cli: typed errors for bad pools, images and sizes (issue 14 item 6)', function () {
  this.timeout(60_000)
  const targets: ChildProcess[] = []
  after(() => {
    for (const child of targets) child.kill('SIGKILL')
    for (const suffix of ['.dir', '.link', '.big.pool']) rmSync(PREFIX + suffix, {force: true, recursive: true})
  })

  /** A target whose only fds are /dev/null (fds the runner inherited are closed first). */
  function target(): number {
    const child = spawn('bash', ['-c', 'for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec sleep 600'], {stdio: 'ignore'})
    targets.push(child)
    return child.pid!
  }

  it('--pool in a directory that does not exist: POOL_DIR_NOT_FOUND, exit 3, for checkpoint, pool init and ls', () => {
    const pool = '/nonexistent/dir/x.pool'
    expectTyped(run(['checkpoint', String(target()), '--name', 'x', '--pool', pool]), 'POOL_DIR_NOT_FOUND', 3)
    expectTyped(run(['pool', 'init', '--size', '16M', '--pool', pool]), 'POOL_DIR_NOT_FOUND', 3)
    expectTyped(run(['ls', '--pool', pool]), 'POOL_DIR_NOT_FOUND', 3)
  })

  it('a dangling symbolic link as the pool: POOL_UNSAFE, exit 4, its target not created', () => {
    const link = PREFIX + '.link'
    spawnSync('ln', ['-s', PREFIX + '.nowhere', link])
    expectTyped(run(['checkpoint', String(target()), '--name', 'x', '--pool', link]), 'POOL_UNSAFE', 4)
    expectTyped(run(['ls', '--pool', link]), 'POOL_UNSAFE', 4)
    assert.equal(existsSync(PREFIX + '.nowhere'), false)
  })

  it('a directory as the pool: POOL_NOT_A_FILE, exit 2', () => {
    const dir = PREFIX + '.dir'
    mkdirSync(dir, {recursive: true})
    expectTyped(run(['ls', '--pool', dir]), 'POOL_NOT_A_FILE', 2)
    expectTyped(run(['checkpoint', String(target()), '--name', 'x', '--pool', dir]), 'POOL_NOT_A_FILE', 2)
    expectTyped(run(['pool', 'init', '--force', '--size', '16M', '--pool', dir]), 'POOL_NOT_A_FILE', 2)
    // Without --force it said POOL_EXISTS (exit 7): a directory is no pool.
    expectTyped(run(['pool', 'init', '--size', '16M', '--pool', dir]), 'POOL_NOT_A_FILE', 2)
  })

  it('criu dump --images naming a file: IMAGES_NOT_A_DIRECTORY, exit 2, the file untouched', () => {
    const before = readFileSync('/etc/passwd')
    expectTyped(run(['criu', 'dump', String(target()), '--images', '/etc/passwd']), 'IMAGES_NOT_A_DIRECTORY', 2)
    expectTyped(run(['criu', 'dump', String(target()), '--images', '/etc/passwd/x']), 'IMAGES_NOT_A_DIRECTORY', 2)
    assert.deepEqual(readFileSync('/etc/passwd'), before)
  })

  it('sizes with blanks are refused: INVALID_SIZE, exit 2', () => {
    for (const size of [' 8G', '16M ', '8 G', '\t32M']) {
      expectTyped(run(['pool', 'init', '--size', size, '--pool', PREFIX + '.big.pool']), 'INVALID_SIZE', 2)
      assert.throws(() => parseSize(size), /cannot parse size/)
    }
    assert.equal(parseSize('16MiB'), 16n << 20n)
    assert.equal(existsSync(PREFIX + '.big.pool'), false)
  })

  it('a pool larger than its file system: POOL_NO_SPACE, exit 7, with the numbers; --force makes it sparse', function () {
    const fs = statfsSync('/dev/shm', {bigint: true})
    const total = fs.blocks * fs.bsize
    if (total === 0n || total >= 4n << 40n) this.skip() // /dev/shm reports no limit, or holds 4 TiB
    const path = PREFIX + '.big.pool'
    const refused = run(['pool', 'init', '--size', '4T', '--pool', path])
    expectTyped(refused, 'POOL_NO_SPACE', 7)
    assert.match(refused.json.error.message, /4\.0 TiB \(4398046511104 bytes\) does not fit .* in all/)
    assert.equal(existsSync(path), false)
    const forced = run(['pool', 'init', '--size', '4T', '--force', '--pool', path])
    assert.equal(forced.status, 0, forced.stdout + forced.stderr)
    rmSync(path, {force: true})
  })

  it('an unknown command under --json prints a JSON error envelope: COMMAND_NOT_FOUND, exit 2', () => {
    for (const args of [['frobnicate'], ['pool', 'frobnicate']]) {
      const result = run(args)
      expectTyped(result, 'COMMAND_NOT_FOUND', 2)
      assert.match(result.json.error.message, new RegExp(`command ${args.join(' ')} not found`))
    }
    const human = spawnSync(process.execPath, [CLI, 'frobnicate'], {encoding: 'utf8'})
    assert.equal(human.status, 2)
    assert.match(human.stderr, /command frobnicate not found/)
  })
})

/**
 * As an unprivileged user (made with useradd, acting through setpriv): a
 * checkpoint of one's own process needs CAP_CHECKPOINT_RESTORE for
 * /proc/PID/map_files and is refused with NOT_PERMITTED naming it, before the
 * target is touched or a pool created; `check` says the same; with that one
 * capability (as CRIU's unprivileged mode has it) checkpoint and restore work.
 */
describe('cli: an unprivileged user (issue 14 item 6)', function () {
  this.timeout(120_000)
  const user = `cxlfh-${process.pid}`
  let uid = 0
  let gid = 0
  const children: ChildProcess[] = []
  const clones: number[] = []
  const pool = `${PREFIX}.user.pool`
  const images = `${PREFIX}.user.img`

  before(function () {
    const tools = spawnSync('sh', ['-c', 'command -v setpriv && command -v useradd && command -v userdel'])
    if (process.getuid?.() !== 0 || tools.status !== 0) this.skip() // needs root and util-linux to act as a user
    if (spawnSync('useradd', ['-M', '-N', '-s', '/usr/sbin/nologin', user]).status !== 0) this.skip()
    uid = Number(spawnSync('id', ['-u', user], {encoding: 'utf8'}).stdout)
    gid = Number(spawnSync('id', ['-g', user], {encoding: 'utf8'}).stdout)
  })

  after(() => {
    for (const child of children) child.kill('SIGKILL')
    for (const pid of clones) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // already gone
      }
    }
    rmSync(pool, {force: true})
    rmSync(images, {force: true, recursive: true})
    spawnSync('userdel', [user])
  })

  /** setpriv's arguments to become `user`, with CAP_CHECKPOINT_RESTORE when asked. */
  function asUser(withCapability: boolean): string[] {
    const caps = withCapability ? ['--inh-caps=+checkpoint_restore', '--ambient-caps=+checkpoint_restore'] : []
    return [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', ...caps]
  }

  function runAsUser(args: string[], withCapability = false): Run {
    const result = spawnSync('setpriv', [...asUser(withCapability), process.execPath, CLI, ...args, '--json'],
      {encoding: 'utf8', cwd: projectRoot(), env: {...process.env, HOME: '/tmp'}})
    let json: any
    try {
      json = JSON.parse(result.stdout)
    } catch {
      json = undefined
    }
    return {status: result.status, stdout: result.stdout, stderr: result.stderr, json}
  }

  /** A process of the user's own, with only /dev/null fds. */
  function ownTarget(): number {
    const close = 'for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done 2>/dev/null; exec sleep 600'
    const child = spawn('setpriv', [...asUser(false), 'bash', '-c', close], {stdio: 'ignore'})
    children.push(child)
    return child.pid!
  }

  async function running(pid: number): Promise<void> {
    for (let i = 0; i < 100 && !/^Name:\s+sleep$/m.test(readFileSync(`/proc/${pid}/status`, 'utf8')); i++) await new Promise((resolve) => setTimeout(resolve, 20))
    assert.match(readFileSync(`/proc/${pid}/status`, 'utf8'), new RegExp(`^Uid:\\s+${uid}\\s`, 'm'))
  }

  /** `sleep` children of this process (a fork snapshot of the target would be one: clone(CLONE_PARENT)). */
  function sleepChildren(): string[] {
    return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).filter((entry) => {
      try {
        return /^sleep$/m.test(readFileSync(`/proc/${entry}/comm`, 'utf8')) && new RegExp(`^PPid:\\s+${process.pid}$`, 'm').test(readFileSync(`/proc/${entry}/status`, 'utf8'))
      } catch {
        return false // gone meanwhile
      }
    })
  }

  /** The target's state letter and tracer: it was never stopped or left traced. */
  function untouched(pid: number): void {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8')
    assert.match(status, /^State:\s+S/m)
    assert.match(status, /^TracerPid:\s+0$/m)
  }

  it('checkpoint and criu dump of its own process without CAP_CHECKPOINT_RESTORE: NOT_PERMITTED, exit 4, naming the capability; nothing created', async () => {
    const pid = ownTarget()
    await running(pid)
    const before = sleepChildren() // other suites in this mocha process may have left some
    for (const args of [['checkpoint', String(pid), '--name', 'mine', '--pool', pool], ['criu', 'dump', String(pid), '--images', images]]) {
      const refused = runAsUser(args)
      expectTyped(refused, 'NOT_PERMITTED', 4)
      assert.match(refused.json.error.message, /map_files.*CAP_CHECKPOINT_RESTORE/)
      assert.match(refused.json.error.hint, /CAP_CHECKPOINT_RESTORE/)
      assert.doesNotMatch(refused.stdout + refused.stderr, /INTERNAL|\n\s+at /)
    }
    assert.equal(existsSync(pool), false, 'a refused checkpoint creates no pool')
    assert.equal(existsSync(images), false)
    untouched(pid)
    // No fork snapshot was made: the target's parent (this process) has no new child.
    assert.deepEqual(sleepChildren().filter((child) => !before.includes(child)), [])
  })

  it('check as that user names the same missing capability and exits 1', () => {
    const result = runAsUser(['check'])
    assert.equal(result.status, 1, result.stdout + result.stderr)
    const mapFiles = result.json.items.find((item: {name: string}) => /map_files/.test(item.name))
    assert.equal(mapFiles?.ok, false, result.stdout)
    assert.match(mapFiles.detail, /^NOT_PERMITTED: reading the file mappings of this process .* needs CAP_CHECKPOINT_RESTORE/)
    const mm = result.json.items.find((item: {name: string}) => /PR_SET_MM_MAP/.test(item.name))
    assert.match(mm.detail, /NOT_PERMITTED: .*CAP_CHECKPOINT_RESTORE/)
    // With the capability, check passes that probe.
    const granted = runAsUser(['check'], true)
    assert.equal(granted.json.items.find((item: {name: string}) => /map_files/.test(item.name))?.ok, true, granted.stdout)
  })

  it('with CAP_CHECKPOINT_RESTORE alone, checkpoint and restore of its own process work; restore without it is NOT_PERMITTED', async () => {
    const pid = ownTarget()
    await running(pid)
    const taken = runAsUser(['checkpoint', String(pid), '--name', 'mine', '--pool', pool], true)
    assert.equal(taken.status, 0, taken.stdout + taken.stderr)
    assert.equal(statSync(pool).uid, uid, 'the pool is the user\'s')
    untouched(pid)

    const refused = runAsUser(['restore', 'mine', '--pool', pool])
    expectTyped(refused, 'NOT_PERMITTED', 4)
    assert.match(refused.json.error.message, /PR_SET_MM_MAP.*CAP_CHECKPOINT_RESTORE/)
    const moa = runAsUser(['restore', 'mine', '--policy', 'moa', '--pool', pool])
    expectTyped(moa, 'NOT_PERMITTED', 4)
    assert.match(moa.json.error.message, /PID namespace.*CAP_SYS_ADMIN/)

    const restored = runAsUser(['restore', 'mine', '--pool', pool], true)
    assert.equal(restored.status, 0, restored.stdout + restored.stderr)
    clones.push(restored.json.pid)
    assert.match(readFileSync(`/proc/${restored.json.pid}/status`, 'utf8'), new RegExp(`^Uid:\\s+${uid}\\s`, 'm'))
    process.kill(restored.json.pid, 'SIGKILL')
  })
})

describe('errors: one registry of codes and exit statuses', () => {
  it('has each exit status of the README table and no second code for "process not found"', () => {
    const statuses = new Set(Object.values(ERROR_CODES))
    for (const status of Object.values(ExitCode)) assert.ok(statuses.has(status), `some code exits ${status}`)
    assert.equal(ERROR_CODES.PROCESS_NOT_FOUND, ExitCode.notFound)
    assert.equal('NO_SUCH_PROCESS' in ERROR_CODES, false)
    // A zombie was PROCESS_ZOMBIE (exit 5) in preflight and ZOMBIE_PROCESS (exit 3) when it died just before the seize.
    assert.equal('ZOMBIE_PROCESS' in ERROR_CODES, false)
    assert.equal(ERROR_CODES.PROCESS_ZOMBIE, ExitCode.unsupported)
    assert.equal(ERROR_CODES.SYSCALL_FAILED, ExitCode.failure, 'SYSCALL_FAILED always exits 1, as the README says')
  })

  it('no source file throws a code the registry does not hold (the bundle as built)', () => {
    const bundle = readFileSync(join(projectRoot(), 'dist', 'cxlfork.cjs'), 'utf8')
    assert.equal(bundle.includes('NO_SUCH_PROCESS'), false)
    assert.equal(bundle.includes('ZOMBIE_PROCESS'), false)
  })
})

/**
 * Issue 14, item 6: inputs that gave an untyped INTERNAL error, a
 * SYSCALL_FAILED, or no JSON at all now give a typed error with a hint and
 * the exit status the README's table gives its code; the registry in
 * src/errors.ts is the one source of codes.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, readFileSync, rmSync, statfsSync} from 'node:fs'
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

describe('errors: one registry of codes and exit statuses', () => {
  it('has each exit status of the README table and no second code for "process not found"', () => {
    const statuses = new Set(Object.values(ERROR_CODES))
    for (const status of Object.values(ExitCode)) assert.ok(statuses.has(status), `some code exits ${status}`)
    assert.equal(ERROR_CODES.PROCESS_NOT_FOUND, ExitCode.notFound)
    assert.equal('NO_SUCH_PROCESS' in ERROR_CODES, false)
    assert.equal(ERROR_CODES.SYSCALL_FAILED, ExitCode.failure, 'SYSCALL_FAILED always exits 1, as the README says')
  })

  it('no source file throws a code the registry does not hold (the bundle as built)', () => {
    const bundle = readFileSync(join(projectRoot(), 'dist', 'cxlfork.cjs'), 'utf8')
    assert.equal(bundle.includes('NO_SUCH_PROCESS'), false)
  })
})

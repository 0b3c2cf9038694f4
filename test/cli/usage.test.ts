/** Usage errors: exit 2 with a typed JSON envelope, never an internal error, and nothing touched. */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, readFileSync, rmSync} from 'node:fs'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'

const CLI = join(projectRoot(), 'bin', 'run.js')
const POOL = `/dev/shm/cxlfork-usage-${process.pid}.pool`

function run(args: string[]): {status: number | null; json: {error?: {code: string; message: string; exitCode: number}}; stderr: string} {
  const result = spawnSync(process.execPath, [CLI, ...args, '--pool', POOL, '--json'], {encoding: 'utf8'})
  return {status: result.status, json: JSON.parse(result.stdout || '{}'), stderr: result.stderr}
}

describe('cli: usage errors', function () {
  this.timeout(30_000)
  // Only a failing assertion leaves one behind; never leave it on /dev/shm.
  after(() => rmSync(POOL, {force: true}))

  const cases: [string, string[], string][] = [
    ['a pid that is not a number', ['checkpoint', 'abc', '--name', 'x'], 'INVALID_PID'],
    ['a pid of zero', ['checkpoint', '0', '--name', 'x'], 'INVALID_PID'],
    ['a missing --name', ['checkpoint', '1'], 'USAGE'],
    ['an unknown flag', ['checkpoint', '1', '--name', 'x', '--nme', 'y'], 'USAGE'],
    ['a policy that does not exist', ['restore', 'x', '--policy', 'fast'], 'USAGE'],
    ['an invalid checkpoint name', ['checkpoint', String(process.pid), '--name', '../etc'], 'INVALID_NAME'],
  ]
  for (const [what, args, code] of cases) {
    it(`${what}: exit 2, ${code}, no pool created`, () => {
      const result = run(args)
      assert.equal(result.status, 2, JSON.stringify(result))
      assert.equal(result.json.error?.code, code)
      assert.equal(result.json.error?.exitCode, 2)
      assert.ok((result.json.error?.message.length ?? 0) > 0)
      assert.equal(existsSync(POOL), false, 'a usage error creates no pool')
    })
  }
})

describe('cli: human output on a terminal', function () {
  this.timeout(30_000)
  after(() => rmSync(POOL, {force: true}))

  // script(1) gives the CLI a pty with zero columns, as some CI runners do; the spinner must not spin forever there.
  for (const [what, setup] of [['a zero-width pty', ''], ['an 80-column pty', 'stty cols 80; ']] as const) {
    it(`${what}: a failing checkpoint ends with its exit code and the error, not a hung spinner`, () => {
      const command = `${setup}exec ${process.execPath} ${CLI} checkpoint 999999 --name tty --pool ${POOL}`
      const result = spawnSync('script', ['-qec', command, '/dev/null'], {encoding: 'utf8', timeout: 20_000})
      assert.equal(result.error, undefined, `script ran and finished: ${result.error?.message}`)
      assert.equal(result.status, 3, `exit code of the CLI, through script -e: ${result.stdout}`)
      assert.match(result.stdout, /no such process: 999999/)
      assert.match(result.stdout, /PROCESS_NOT_FOUND/)
      assert.equal(existsSync(POOL), false, 'no pool created for a pid that does not exist')
    })
  }
})

describe('cli: the bundle bin/run.js loads', function () {
  this.timeout(60_000)
  const root = projectRoot()

  it('holds no import() of a module by name: one would fail in a script compiled from the code cache', () => {
    const bundle = readFileSync(join(root, 'dist', 'cxlfork.cjs'), 'utf8')
    // esbuild leaves import("x") only for modules it does not bundle (builtins, externals).
    const named = bundle.match(/(?<![\w$.])import\("[^"]*"\)/g) ?? []
    assert.deepEqual(named, [], 'import these statically instead')
  })

  it('is compiled with the code cache the build wrote (V8 accepts it)', () => {
    const probe = [
      "const {readFileSync} = require('node:fs'); const Module = require('node:module'); const vm = require('node:vm')",
      `const file = ${JSON.stringify(join(root, 'dist', 'cxlfork.cjs'))}`,
      "const script = new vm.Script(Module.wrap(readFileSync(file, 'utf8')), {filename: file, cachedData: readFileSync(file + '.cache')})",
      'process.stdout.write(String(script.cachedDataRejected))',
    ].join('\n')
    const run = spawnSync(process.execPath, ['-e', probe], {encoding: 'utf8'})
    assert.equal(run.status, 0, run.stderr)
    assert.equal(run.stdout, 'false', 'the cache matches this bundle and this Node')
  })
})

/** Usage errors: exit 2 with a typed JSON envelope, never an internal error, and nothing touched. */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync} from 'node:fs'
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

/** `cxlfork check`: real probes, "Looks good." and exit 0 here; a named failure and exit 1 otherwise. */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {statfsSync} from 'node:fs'
import {homedir} from 'node:os'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'

const CLI = join(projectRoot(), 'bin', 'run.js')

function run(args: string[]): {status: number | null; stdout: string; stderr: string} {
  const result = spawnSync(process.execPath, [CLI, ...args], {encoding: 'utf8', env: {...process.env, CXLFORK_POOL: ''}})
  return {status: result.status, stdout: result.stdout, stderr: result.stderr}
}

describe('cxlfork check', function () {
  this.timeout(60_000)

  it('passes every probe on this machine and says "Looks good."', () => {
    const human = run(['check', '--pool', '/dev/shm/cxlfork-check-test.pool'])
    assert.equal(human.status, 0, human.stderr)
    assert.match(human.stdout, /Looks good\./)
    assert.match(human.stdout, /^ok {3}ptrace/m, 'the findings go to stdout, for a pipe')
    const json = run(['check', '--pool', '/dev/shm/cxlfork-check-test.pool', '--json'])
    assert.equal(json.status, 0)
    const result = JSON.parse(json.stdout) as {ok: boolean; items: {name: string; ok: boolean; detail: string}[]}
    assert.equal(result.ok, true)
    const names = result.items.map((item) => item.name).join('\n')
    for (const probe of [/ptrace and syscall injection/, /PR_SET_MM_MAP/, /userfaultfd/, /pool file system/]) assert.match(names, probe)
    assert.ok(result.items.every((item) => item.ok && item.detail.length > 0))
  })

  it('names a pool location hosts cannot share and exits 1', function () {
    // A directory on a disk file system (not tmpfs, hugetlbfs or DAX).
    const TMPFS = 0x01021994
    const HUGETLBFS = 0x958458f6
    const disk = [projectRoot(), '/var/tmp', '/tmp', homedir()].find((dir) => {
      try {
        const type = statfsSync(dir).type
        return type !== TMPFS && type !== HUGETLBFS
      } catch {
        return false
      }
    })
    if (disk === undefined) this.skip()
    const pool = join(disk!, 'not-shared.pool')
    const json = run(['check', '--pool', pool, '--json'])
    assert.equal(json.status, 1)
    const result = JSON.parse(json.stdout) as {ok: boolean; items: {name: string; ok: boolean; detail: string}[]}
    assert.equal(result.ok, false)
    const fs = result.items.find((item) => item.name.startsWith('pool file system'))!
    assert.equal(fs.ok, false)
    assert.match(fs.detail, /cannot share|tmpfs/)
    assert.ok(result.items.filter((item) => !item.name.startsWith('pool file system')).every((item) => item.ok), 'the other probes still pass')
    const human = run(['check', '--pool', pool])
    assert.equal(human.status, 1)
    assert.doesNotMatch(human.stdout, /Looks good/)
    assert.match(human.stdout, /FAIL pool file system/)
  })
})

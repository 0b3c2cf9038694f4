/**
 * checkpoint --kill and criu dump --kill: the target stops at the checkpoint's instant and
 * never runs again, as `criu dump` without --leave-running leaves it. What it would have
 * done while its pages were written would otherwise happen twice: once by it, once again
 * by its clone (found with a loop appending to a file, and with xargs -P2).
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {procStat, trackPid} from '../helpers/fixtures.js'
import {allProcesses, cli, cmdline, describeRun, installCleanupHooks, poolPath, sleep, until} from './helpers.js'

const lines = (path: string): number => (existsSync(path) ? readFileSync(path, 'utf8').split('\n').length : 0)

/** The numbers in `path`, one per line, checked to count up by one with no line twice or missing. */
function assertCountsOnce(path: string, what: string): number[] {
  const numbers = readFileSync(path, 'utf8').split('\n').filter(Boolean).map(Number)
  numbers.forEach((n, i) => {
    if (i > 0) assert.equal(n, numbers[i - 1]! + 1, `${what}: line ${i + 1} is ${n} after ${numbers[i - 1]} (${numbers.slice(Math.max(0, i - 3), i + 3).join(', ')})`)
  })
  return numbers
}

describe('checkpoint --kill: the target never runs past the checkpoint', function () {
  this.timeout(120_000)

  installCleanupHooks('kill')

  for (const command of ['checkpoint', 'criu dump'] as const) {
    it(`${command} --kill of a process appending to a file while 64 MiB are written: its clone appends each number once`, async () => {
      const pool = poolPath('kill')
      const dir = mkdtempSync(join(tmpdir(), 'cxlfork-kill-'))
      const out = join(dir, 'out')
      try {
        // 64 MiB of state makes the page write take long enough for a running target to append a few more.
        const script = `import os, sys, time\nheap = bytearray(os.urandom(64 << 20))\nf = open(sys.argv[1], "a")\ni = 0\nwhile True:\n    i += 1\n    f.write(f"{i}\\n"); f.flush()\n    time.sleep(0.002)\n`
        const loop = spawn('python3', ['-c', script, out], {stdio: 'ignore'})
        trackPid(loop.pid!)
        await until(() => lines(out) > 50, 'the loop appends')
        const images = join(dir, 'images')
        const dumped = command === 'checkpoint'
          ? await cli(['checkpoint', String(loop.pid), '--name', 'appender', '--kill', '--json', '--pool', pool])
          : await cli(['criu', 'dump', String(loop.pid), '--images', images, '--kill', '--json', '--no-porter'])
        assert.equal(dumped.status, 0, describeRun(dumped))
        assert.equal(dumped.json.killed, true)
        await until(() => [undefined, 'Z'].includes(procStat(loop.pid!)?.state), 'the target is gone')
        const before = assertCountsOnce(out, 'the original')
        const run = command === 'checkpoint'
          ? await cli(['restore', 'appender', '--json', '--pool', pool, '--no-porter'])
          : await cli(['criu', 'restore', '--images', images, '--json', '--no-porter'])
        assert.equal(run.status, 0, describeRun(run))
        trackPid(run.json.pid)
        await until(() => lines(out) > before.length + 20, 'the clone appends')
        process.kill(run.json.pid, 'SIGKILL')
        // What the original wrote, then what its clone wrote from the checkpoint's instant on: each number once.
        assertCountsOnce(out, 'the original, then its clone')
      } finally {
        rmSync(dir, {recursive: true, force: true})
      }
    })
  }

  it('checkpoint --tree --kill of a shell loop forking a child per line: no child forked after the instant outlives it, each line once', async () => {
    const pool = poolPath('kill')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-killtree-'))
    const out = join(dir, 'out')
    try {
      // A child per line (the subshell), as xargs and make run theirs.
      const loop = spawn('bash', ['-c', 'i=0; while true; do i=$((i+1)); (echo $i >> "$0"); done', out], {stdio: 'ignore'})
      trackPid(loop.pid!)
      await until(() => lines(out) > 50, 'the loop appends')
      const ck = await cli(['checkpoint', String(loop.pid), '--tree', '--name', 'forker', '--kill', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      await sleep(200)
      const strays = allProcesses().filter((p) => p.comm === 'bash' && cmdline(p.pid).includes(out))
      assert.deepEqual(strays.map((p) => p.pid), [], 'no member of the tree runs on, and none was forked after the checkpoint')
      const before = assertCountsOnce(out, 'the original')
      const run = await cli(['restore', 'forker', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      if (run.json.pidNamespace) trackPid(run.json.pidNamespace.initPid)
      await until(() => lines(out) > before.length + 20, 'the clone appends')
      process.kill(run.json.pidNamespace?.initPid ?? run.json.pid, 'SIGKILL')
      assertCountsOnce(out, 'the original, then its clone')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
})

/**
 * End to end: `cxlfork bench --sizes 16M --runs 2 --json` through bin/run.js.
 * Checks the result's shape, that its figures are sane, and that the run
 * leaves nothing behind (targets, clones, fork children, the pool file).
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'
import type {BenchResult, Summary} from '../../src/bench/types.js'

function assertSummary(summary: Summary, what: string, runs: number): void {
  assert.deepEqual(Object.keys(summary).sort(), ['max', 'median', 'min', 'n'], what)
  assert.equal(summary.n, runs, `${what}: n`)
  assert.ok(summary.min > 0, `${what}: min ${summary.min} > 0`)
  assert.ok(summary.min <= summary.median && summary.median <= summary.max, `${what}: min <= median <= max`)
}

/** pids whose comm is the benchmark target's (targets and their clones keep it). */
function targetsAlive(): number[] {
  const alive: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      if (stat.includes('(cxlbench-target)') && !/\) [ZX] /.test(stat)) alive.push(Number(entry))
    } catch {
      // exited meanwhile
    }
  }
  return alive
}

function alive(pid: number): boolean {
  try {
    return !/\) [ZX] /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

describe('cxlfork bench (end to end)', function () {
  this.timeout(90_000)

  it('--sizes 16M --runs 2 --json returns a sane typed result and leaves nothing behind', () => {
    const before = new Set(targetsAlive())
    const run = spawnSync(process.execPath, [join(projectRoot(), 'bin', 'run.js'), 'bench', '--sizes', '16M', '--runs', '2', '--json'],
      {encoding: 'utf8', maxBuffer: 64 << 20, timeout: 80_000})
    assert.equal(run.status, 0, `exit status ${run.status}\n${run.stderr}\n${run.stdout}`)
    const result = JSON.parse(run.stdout) as BenchResult

    assert.deepEqual(Object.keys(result).sort(),
      ['cliVersionMs', 'command', 'config', 'date', 'durationS', 'machine', 'nodeStartupMs', 'pass', 'pids', 'sizes', 'targets'])
    assert.match(result.command, /bench --sizes 16M --runs 2 --json$/)
    assert.ok(!Number.isNaN(Date.parse(result.date)))
    assert.ok(result.machine.cores > 0 && result.machine.ramBytes > 0 && result.machine.kernel.length > 0 && result.machine.node.startsWith('v'))
    assert.ok(Number.isFinite(result.machine.stealMs) && result.machine.stealMs >= 0, `steal during the run: ${result.machine.stealMs} ms`)
    assert.deepEqual(result.config.sizes, [16 << 20])
    assert.equal(result.config.runs, 2)
    assert.deepEqual(result.config.policies, ['mow', 'local'])
    assert.equal(result.config.poolTemporary, true)
    assertSummary(result.nodeStartupMs, 'nodeStartupMs', 2)
    assertSummary(result.cliVersionMs, 'cliVersionMs', 2)

    assert.equal(result.sizes.length, 1)
    const size = result.sizes[0]!
    assert.equal(size.size, 16 << 20)
    assert.equal(size.label, '16M')
    for (const key of ['coldStartMs', 'plainWriteMs', 'plainMmapMs', 'plainWriteAllocatedMs', 'forkMs', 'forkInjectionMs', 'noopInjectionMs'] as const) assertSummary(size[key], key, 2)
    assert.equal(size.plainAnchor, 'memory')
    assertSummary(size.plainWriteMemoryMs, 'plainWriteMemoryMs', 2)
    assert.deepEqual(size.paths.map((path) => [path.path, path.poolKind]), [['pool', 'provisioned'], ['pool-sparse', 'sparse'], ['criu', undefined]])
    const [pool, sparse, criu] = size.paths as [typeof size.paths[0], typeof size.paths[0], typeof size.paths[0]]
    // The sparse pool is checkpointed into, the same pages, and never restored from.
    assertSummary(sparse.checkpointMs, 'pool-sparse checkpointMs', 2)
    assert.equal(sparse.bytes, pool.bytes)
    assert.deepEqual(sparse.restores, [])
    assertSummary(pool.checkpointMs, 'checkpointMs', 2)
    assertSummary(pool.downtimeMs, 'downtimeMs', 2)
    assert.ok(pool.downtimeMs.median < pool.checkpointMs.median)
    // Exactly the touched memory, plus a few pages of stack.
    assert.ok(pool.bytes >= 16 << 20 && pool.bytes < (16 << 20) + (1 << 20), `checkpointed bytes ${pool.bytes}`)
    assert.equal(pool.engineStats['pages_written']?.median, pool.bytes / 4096)
    assert.deepEqual(pool.restores.map((row) => row.id), ['pool/mow', 'pool/local'])
    for (const row of pool.restores) {
      assertSummary(row.engineMs, `${row.id} engineMs`, 2)
      assertSummary(row.commandMs, `${row.id} commandMs`, 2)
      assertSummary(row.rssAnonKb, `${row.id} rssAnonKb`, 2)
      assert.ok(row.commandMs.median > row.engineMs.median, `${row.id}: a whole command includes the engine`)
      for (const key of ['restore_time', 'forking_time', 'open_time', 'memory_time', 'state_time', 'injected_syscalls']) {
        assert.ok((row.engineStats[key]?.median ?? 0) > 0, `${row.id} ${key}`)
      }
    }
    const [mow, local] = pool.restores
    assert.ok(mow!.rssAnonKb.max < local!.rssAnonKb.min, `mow RssAnon ${mow!.rssAnonKb.max} kB < local ${local!.rssAnonKb.min} kB`)
    assert.ok(local!.rssAnonKb.median * 1024 >= 16 << 20, 'a local clone holds all its memory')
    assert.ok(mow!.rssAnonPct < 1)

    // The CRIU-format baseline, measured in the same run: images hold every page plus metadata; restore copies all.
    assertSummary(criu.checkpointMs, 'criu checkpointMs', 2)
    assert.ok(criu.bytes > 16 << 20, `criu image bytes ${criu.bytes}`)
    assert.equal(criu.engineStats['pages_written']?.median, pool.bytes / 4096)
    assert.deepEqual(criu.restores.map((row) => row.id), ['criu/copy'])
    const copy = criu.restores[0]!
    assertSummary(copy.engineMs, 'criu/copy engineMs', 2)
    assertSummary(copy.commandMs, 'criu/copy commandMs', 2)
    assert.ok(copy.rssAnonKb.min * 1024 >= 16 << 20, 'a CRIU-restored clone holds all its memory')
    assert.ok((copy.engineStats['pages_restored']?.median ?? 0) >= (16 << 20) / 4096)

    assert.ok(result.targets.length >= 5)
    assert.deepEqual(result.targets.filter((target) => target.id.startsWith('checkpoint-vs-write')).map((target) => target.id),
      ['checkpoint-vs-write@16M', 'checkpoint-vs-write-sparse@16M'])
    for (const target of result.targets) {
      assert.deepEqual(Object.keys(target).sort(), ['description', 'id', 'limit', 'measured', 'pass', 'unit'])
      assert.equal(target.pass, target.measured <= target.limit, target.id)
    }
    assert.equal(result.pass, result.targets.every((target) => target.pass))

    // Nothing left behind: every process the run created is gone, and the temporary pool too.
    assert.ok(result.pids.length >= 2 + 2 * 4 + 2 * 2 + 2 * 2, `pids recorded: ${result.pids.length}`)
    assert.deepEqual(result.pids.filter(alive), [])
    assert.deepEqual(targetsAlive().filter((pid) => !before.has(pid)), [])
    assert.equal(existsSync(result.config.pool), false, `${result.config.pool} removed`)
    assert.equal(existsSync(result.config.pool.replace(/\.pool$/, '-sparse.pool')), false, 'the sparse pool removed')
  })
})

/**
 * End to end: `cxlfork bench --sizes 16M --runs 2 --threads '' --trees '' --json`
 * through bin/run.js, then a small run of the threads and trees sections. Checks the
 * result's shape, that its figures are sane, and that the run leaves nothing
 * behind (targets, clones and their inits, fork children, the pool file).
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'
import type {BenchResult, Summary, ThreadRow, TreeRow} from '../../src/bench/types.js'

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

  it("--sizes 16M --runs 2 --threads '' --trees '' --json returns a sane typed result and leaves nothing behind", () => {
    const before = new Set(targetsAlive())
    // The threads and trees sections are skipped here (the next test runs them small): the JSON is then exactly what it was before them.
    const run = spawnSync(process.execPath, [join(projectRoot(), 'bin', 'run.js'), 'bench', '--sizes', '16M', '--runs', '2', '--threads', '', '--trees', '', '--json'],
      {encoding: 'utf8', maxBuffer: 64 << 20, timeout: 80_000})
    assert.equal(run.status, 0, `exit status ${run.status}\n${run.stderr}\n${run.stdout}`)
    const result = JSON.parse(run.stdout) as BenchResult

    assert.deepEqual(Object.keys(result).sort(),
      ['cliVersionMs', 'command', 'config', 'date', 'durationS', 'machine', 'nodeStartupMs', 'pass', 'pids', 'realCriu', 'sizes', 'targets'])
    // Real CRIU is measured only when a criu 4.x on PATH passes `criu check` (Debian's 3.17 does not qualify); else the result says why.
    const realCriu = 'bin' in result.realCriu
    if (!realCriu) assert.match((result.realCriu as {missing: string}).missing, /criu/i)
    assert.match(result.command, /bench --sizes 16M --runs 2 --threads '' --trees '' --json$/)
    assert.equal(result.config.threads, undefined)
    assert.equal(result.config.threadsSize, undefined)
    assert.equal(result.config.trees, undefined)
    assert.equal(result.config.treeSize, undefined)
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
    assert.deepEqual(size.paths.map((path) => [path.path, path.poolKind]),
      [['pool', 'provisioned'], ['pool-sparse', 'sparse'], ['criu', undefined], ...(realCriu ? [['real-criu', undefined]] : [])])
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
    assert.ok(criu.checkpointCommandMs, 'the whole `cxlfork criu dump` command is timed too')
    assertSummary(criu.checkpointCommandMs, 'criu checkpointCommandMs', 2)
    assert.ok(criu.checkpointCommandPorterMs, 'and through a porter started for the run')
    assertSummary(criu.checkpointCommandPorterMs, 'criu checkpointCommandPorterMs', 2)
    assert.ok(criu.bytes > 16 << 20, `criu image bytes ${criu.bytes}`)
    // pages-1.img also holds the [vdso] pages (2 on x86_64), as CRIU stores them for its restore.
    const criuPages = criu.engineStats['pages_written']?.median ?? 0
    assert.ok(criuPages > pool.bytes / 4096 && criuPages <= pool.bytes / 4096 + 4, `criu pages_written ${criuPages}: the pool's ${pool.bytes / 4096} + [vdso]`)
    assert.deepEqual(criu.restores.map((row) => row.id), ['criu/copy'])
    const copy = criu.restores[0]!
    assertSummary(copy.engineMs, 'criu/copy engineMs', 2)
    assertSummary(copy.commandMs, 'criu/copy commandMs', 2)
    assert.ok(copy.commandPorterMs, 'the whole `criu restore` through the porter is timed')
    assertSummary(copy.commandPorterMs, 'criu/copy commandPorterMs', 2)
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
    // With a real CRIU, the CRIU-format path is held to parity with it (issue 13), at every size.
    assert.deepEqual(result.targets.filter((target) => target.id.startsWith('criu-')).map((target) => target.id),
      realCriu ? ['criu-dump-vs-real@16M', 'criu-restore-vs-real@16M', 'criu-dump-command@16M', 'criu-restore-command@16M'] : [])

    // Nothing left behind: every process the run created is gone, and the temporary pool too.
    assert.ok(result.pids.length >= 2 + 2 * 4 + 2 * 2 + 2 * 2, `pids recorded: ${result.pids.length}`)
    assert.deepEqual(result.pids.filter(alive), [])
    assert.deepEqual(targetsAlive().filter((pid) => !before.has(pid)), [])
    assert.equal(existsSync(result.config.pool), false, `${result.config.pool} removed`)
    assert.equal(existsSync(result.config.pool.replace(/\.pool$/, '-sparse.pool')), false, 'the sparse pool removed')
  })

  it('--threads 1,4 --threads-size 8M --trees 1,2 --tree-size 8M --runs 1: checkpoint and mow restore by thread and process count, every clone checked, nothing left behind', () => {
    const before = new Set(targetsAlive())
    // Kept small: one repetition, mow only, no CRIU path, a 4M size row; the threads and trees sections at a size of their own
    // (8M, larger; a 2-process tree holds twice that, so the temporary pool must be sized for it too).
    const run = spawnSync(process.execPath, [join(projectRoot(), 'bin', 'run.js'), 'bench', '--sizes', '4M', '--runs', '1', '--policies', 'mow', '--no-criu',
      '--threads', '1,4', '--threads-size', '8M', '--trees', '1,2', '--tree-size', '8M', '--json'], {encoding: 'utf8', maxBuffer: 64 << 20, timeout: 80_000})
    assert.equal(run.status, 0, `exit status ${run.status}\n${run.stderr}\n${run.stdout}`)
    const result = JSON.parse(run.stdout) as BenchResult

    assert.deepEqual(Object.keys(result).sort(),
      ['cliVersionMs', 'command', 'config', 'date', 'durationS', 'machine', 'nodeStartupMs', 'pass', 'pids', 'realCriu', 'sizes', 'targets', 'threads', 'trees'])
    assert.deepEqual(result.config.threads, [1, 4])
    assert.equal(result.config.threadsSize, 8 << 20)
    const threads = result.threads!
    assert.equal(threads.size, 8 << 20)
    assert.equal(threads.label, '8M')
    assert.equal(threads.policy, 'mow')
    assert.deepEqual(threads.rows.map((row) => row.threads), [1, 4])
    for (const row of threads.rows) {
      const what = `${row.threads} thread(s)`
      assertSummary(row.downtimeMs, `${what} downtimeMs`, 1)
      assertSummary(row.checkpointMs, `${what} checkpointMs`, 1)
      assertSummary(row.engineMs, `${what} engineMs`, 1)
      assert.ok(row.downtimeMs.median < row.checkpointMs.median, `${what}: downtime is part of the checkpoint`)
      // Every clone had the target's memory pattern and one /proc task per thread (a failed check ends the run with an error).
      assert.equal(row.clonesVerified, 1, `${what}: the clone was checked`)
      // The touched memory plus a few pages of stack (the extra threads' stacks stay untouched but for what a checkpoint writes there).
      assert.ok(row.bytes >= 8 << 20 && row.bytes < (8 << 20) + (1 << 20), `${what}: checkpointed bytes ${row.bytes}`)
      assert.equal(row.checkpointStats['frozen_time']?.median, Math.round(row.downtimeMs.median * 1000), `${what}: downtime is frozen_time`)
      assert.equal(row.restoreStats['restore_time']?.median, Math.round(row.engineMs.median * 1000), `${what}: engine restore is restore_time`)
      for (const key of ['freezing_time', 'pages_written']) assert.ok((row.checkpointStats[key]?.median ?? 0) > 0, `${what} ${key}`)
      for (const key of ['forking_time', 'state_time', 'injected_syscalls']) assert.ok((row.restoreStats[key]?.median ?? 0) > 0, `${what} ${key}`)
    }
    const [one, four] = threads.rows as [ThreadRow, ThreadRow]
    assert.deepEqual(threads.ratios.map((ratio) => ratio.id), ['mow-restore-threads-4-vs-1@8M'])
    assert.ok(Math.abs(threads.ratios[0]!.value - four.engineMs.median / one.engineMs.median) < 0.001, 'the ratio is of the two rows')
    const downtime = result.targets.find((target) => target.id === 'downtime-4-threads@8M')
    assert.ok(downtime, `a downtime target for the most threads: ${result.targets.map((target) => target.id).join(', ')}`)
    assert.equal(downtime.measured, four.downtimeMs.median)
    assert.equal(downtime.limit, 50)
    assert.equal(downtime.pass, downtime.measured <= downtime.limit)

    assert.deepEqual(result.config.trees, [1, 2])
    assert.equal(result.config.treeSize, 8 << 20)
    const trees = result.trees!
    assert.equal(trees.size, 8 << 20)
    assert.equal(trees.label, '8M')
    assert.equal(trees.policy, 'mow')
    assert.deepEqual(trees.rows.map((row) => row.processes), [1, 2])
    for (const row of trees.rows) {
      const what = `${row.processes} process(es)`
      assertSummary(row.downtimeMs, `${what} downtimeMs`, 1)
      assertSummary(row.checkpointMs, `${what} checkpointMs`, 1)
      assertSummary(row.engineMs, `${what} engineMs`, 1)
      assert.ok(row.downtimeMs.median < row.checkpointMs.median, `${what}: the root's downtime is part of the checkpoint`)
      // The members built, the root's children in /proc and every member's memory pattern were checked (a failed check ends the run).
      assert.equal(row.clonesVerified, 1, `${what}: the clone tree was checked`)
      // Every member's pages: a child's are its parent's (copy-on-write), so the tree holds 8M per process plus a few pages of stack.
      assert.ok(row.bytes >= row.processes * (8 << 20) && row.bytes < row.processes * ((8 << 20) + (1 << 20)), `${what}: checkpointed bytes ${row.bytes}`)
      assert.equal((row.checkpointStats['pages_written']?.median ?? 0) * 4096, row.bytes, `${what}: pages_written counts every member's`)
      assert.equal(row.checkpointStats['frozen_time']?.median, Math.round(row.downtimeMs.median * 1000), `${what}: root downtime is frozen_time`)
      assert.equal(row.restoreStats['restore_time']?.median, Math.round(row.engineMs.median * 1000), `${what}: engine restore is restore_time`)
      for (const key of ['forking_time', 'state_time', 'injected_syscalls']) assert.ok((row.restoreStats[key]?.median ?? 0) > 0, `${what} ${key}`)
    }
    const [single, pair] = trees.rows as [TreeRow, TreeRow]
    // One process stops no descendant and is restored as any single process; two are restored in a PID namespace of their own.
    assert.equal(single.treeDowntimeMs.n, 0)
    assert.equal(single.pidNamespace, false)
    assertSummary(pair.treeDowntimeMs, '2 processes treeDowntimeMs', 1)
    assert.ok(pair.treeDowntimeMs.median < pair.checkpointMs.median, 'the child is stopped within the checkpoint')
    assert.equal(pair.pidNamespace, true)
    assert.deepEqual(trees.ratios.map((ratio) => ratio.id), ['downtime-tree-2-vs-1@8M'])
    assert.ok(Math.abs(trees.ratios[0]!.value - pair.downtimeMs.median / single.downtimeMs.median) < 0.001, 'the ratio is of the two rows')
    const treeRestore = result.targets.find((target) => target.id === 'mow-restore-tree-2-vs-1@8M')
    assert.ok(treeRestore, `a tree restore target: ${result.targets.map((target) => target.id).join(', ')}`)
    assert.ok(Math.abs(treeRestore.measured - pair.engineMs.median / single.engineMs.median) < 0.001, 'the target is of the two rows')
    assert.equal(treeRestore.limit, 2)
    assert.equal(treeRestore.pass, treeRestore.measured <= treeRestore.limit)
    assert.equal(result.pass, result.targets.every((target) => target.pass))

    // Targets and their children, clones, clone trees and the inits of their namespaces are all gone, and the pools too.
    assert.deepEqual(result.pids.filter(alive), [])
    assert.deepEqual(targetsAlive().filter((pid) => !before.has(pid)), [])
    assert.equal(existsSync(result.config.pool), false, `${result.config.pool} removed`)
    assert.equal(existsSync(result.config.pool.replace(/\.pool$/, '-sparse.pool')), false, 'the sparse pool removed')
  })

  it('SIGTERM during a run stops it after the current step: exit 143, INTERRUPTED, its targets stopped and its pools and images removed', async () => {
    const before = new Set(targetsAlive())
    const bench = spawn(process.execPath, [join(projectRoot(), 'bin', 'run.js'), 'bench', '--sizes', '16M', '--runs', '20', '--threads', '', '--trees', '', '--json'],
      {stdio: ['ignore', 'pipe', 'pipe']})
    let stdout = ''
    let stderr = ''
    bench.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk))
    const exited = new Promise<number | null>((resolve) => bench.on('exit', (code) => resolve(code)))
    // Its first timed checkpoint: by then the targets run and both pools exist.
    await new Promise<void>((resolve, reject) => {
      bench.stderr.setEncoding('utf8').on('data', (chunk: string) => {
        stderr += chunk
        if (/\[16M 1\/20\] pool checkpoint/.test(stderr)) resolve()
      })
      void exited.then(() => reject(new Error(`bench exited before its first checkpoint:\n${stderr}`)))
    })
    const started = targetsAlive().filter((pid) => !before.has(pid))
    const temporaries = () => readdirSync('/dev/shm').filter((entry) => entry.startsWith(`cxlfork-bench-${bench.pid}-`) || entry.endsWith(`-${bench.pid}`))
    assert.ok(started.length > 0, 'the bench runs a target')
    assert.ok(temporaries().length >= 2, `its pools exist: ${temporaries().join(', ')}`)
    bench.kill('SIGTERM')
    assert.equal(await exited, 143, stderr)
    const {error} = JSON.parse(stdout) as {error: {code: string; message: string; exitCode: number}}
    assert.equal(error.code, 'INTERRUPTED')
    assert.equal(error.exitCode, 143)
    assert.match(error.message, /SIGTERM received: the benchmark was stopped/)
    assert.deepEqual(started.filter(alive), [], 'every target it started is gone')
    assert.deepEqual(targetsAlive().filter((pid) => !before.has(pid)), [], 'and no clone is left')
    assert.deepEqual(temporaries(), [], 'its pools and image directories are removed')
  })
})

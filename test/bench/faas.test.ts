/**
 * The FaaS section of `cxlfork bench` (issue 12), end to end on small sizes: two Python functions
 * (fixtures/faas/) cold-started, checkpointed, recorded, restored under every policy beside a local
 * fork, each clone invoked and its result's crc checked against the function's own; then the
 * result's shape, the policies' page accounting, the verdicts, and that nothing is left behind.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync} from 'node:fs'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'
import {parseFaasSelection, type FaasFunctionResult, type FaasRow} from '../../src/bench/faas-spec.js'
import type {BenchResult, Summary} from '../../src/bench/types.js'
import {UsageError} from '../../src/errors.js'

function assertSummary(summary: Summary | undefined, what: string, n: number): void {
  assert.ok(summary, what)
  assert.deepEqual(Object.keys(summary).sort(), ['max', 'median', 'min', 'n'], what)
  assert.equal(summary.n, n, `${what}: n`)
  if (n > 0) assert.ok(summary.min > 0 && summary.min <= summary.median && summary.median <= summary.max, `${what}: 0 < min <= median <= max (${JSON.stringify(summary)})`)
}

/** Live processes running a FaaS fixture. */
function functionsAlive(): number[] {
  const alive: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      if (!readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes('fixtures/faas/')) continue
      if (!/\) [ZX] /.test(readFileSync(`/proc/${entry}/stat`, 'utf8'))) alive.push(Number(entry))
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

describe('cxlfork bench --faas', function () {
  this.timeout(120_000)

  it('parses --faas: all, none, FUNCTION[:MIB]; refuses unknown functions and sizes', () => {
    assert.deepEqual(parseFaasSelection(''), [])
    assert.deepEqual(parseFaasSelection('none'), [])
    assert.deepEqual(parseFaasSelection('all').map((fn) => `${fn.name}:${fn.mib}`), ['float:24', 'linpack:32', 'json:64', 'html:128', 'bfs:512'])
    assert.deepEqual(parseFaasSelection('bfs:64, float'), [{name: 'bfs', mib: 64}, {name: 'float', mib: 24}])
    assert.deepEqual(parseFaasSelection('all,bfs:16').find((fn) => fn.name === 'bfs'), {name: 'bfs', mib: 16})
    for (const bad of ['numpy', 'bfs:0', 'bfs:x', 'float:99999']) {
      assert.throws(() => parseFaasSelection(bad), (error: unknown) => error instanceof UsageError && error.code === 'INVALID_FAAS', bad)
    }
  })

  it('--faas float:4,bfs:16 --runs 1 --faas-clones 2: every policy, a local fork and a cold start per function, every crc checked, nothing left behind', () => {
    const before = new Set(functionsAlive())
    const run = spawnSync(process.execPath, [join(projectRoot(), 'bin', 'run.js'), 'bench', '--sizes', '4M', '--runs', '1', '--policies', 'mow', '--no-criu',
      '--threads', '', '--trees', '', '--faas', 'float:4,bfs:16', '--faas-clones', '2', '--faas-warm', '2', '--json'], {encoding: 'utf8', maxBuffer: 64 << 20, timeout: 110_000})
    assert.equal(run.status, 0, `exit status ${run.status}\n${run.stderr}\n${run.stdout}`)
    const result = JSON.parse(run.stdout) as BenchResult
    const faas = result.faas!
    assert.ok(faas, 'a faas section')
    assert.equal(faas.clones, 2)
    assert.equal(faas.warm, 2)
    assert.match(faas.python, /python3.* \(3\.\d+/)
    assert.deepEqual(faas.functions.map((fn) => [fn.name, fn.mib, fn.readMostly]), [['float', 4, true], ['bfs', 16, true]])

    for (const fn of faas.functions as FaasFunctionResult[]) {
      const what = fn.name
      // The checkpoint holds the state and the interpreter.
      assert.ok(fn.bytes > fn.mib << 20 && fn.bytes < (fn.mib + 64) << 20, `${what}: checkpointed ${fn.bytes} bytes`)
      for (const key of ['coldStartMs', 'initMs', 'originalRssAnonKb', 'checkpointMs', 'recordedAccessed', 'recordedDirty'] as const) assertSummary(fn[key], `${what} ${key}`, 1)
      assert.ok(fn.coldStartMs.median > fn.initMs.median, `${what}: the cold start includes init`)
      // Per repetition: 7 rows x (first + 2 warm), the recording clone's one, 6 sets x 2 clones; a wrong crc ends the run.
      assert.equal(fn.invocationsChecked, 7 * 3 + 1 + 6 * 2, `${what}: every invocation's crc was checked`)
      assert.deepEqual(fn.rows.map((row) => row.id), ['fork', 'mow-unrecorded', 'mow', 'moa', 'moa-64k', 'hybrid', 'local'])
      const row = (id: string): FaasRow => fn.rows.find((item) => item.id === id)!
      for (const r of fn.rows) {
        const rw = `${what}/${r.id}`
        for (const key of ['restoreMs', 'firstMs', 'firstRoundTripMs', 'rssAnonKb', 'pssKb', 'pssAnonKb'] as const) assertSummary(r[key], `${rw} ${key}`, 1)
        assertSummary(r.warmMs, `${rw} warmMs`, 2)
        assert.equal(r.commandMs.n, r.id === 'fork' || r.id === 'mow-unrecorded' ? 0 : 1, `${rw}: whole command timed per policy`)
        assert.ok(r.firstRoundTripMs.median >= r.firstMs.median, `${rw}: the round trip includes the invocation`)
      }
      // What each policy does, from the engine's counts and the clones' own memory.
      const [mow, moa, hybrid, local, fork] = ['mow', 'moa', 'hybrid', 'local', 'fork'].map(row) as [FaasRow, FaasRow, FaasRow, FaasRow, FaasRow]
      assert.equal(moa.pagesMapped.median, 0, `${what}: moa maps nothing from the pool`)
      assert.ok(moa.pagesLazy.median > 0, `${what}: moa leaves pages to its fault server`)
      assertSummary(moa.faultServerRssKb, `${what} moa fault server RSS`, 1)
      // Strict moa copies what is touched; by 64 KiB blocks it copies at least as much, still from a fault server.
      const block = row('moa-64k')
      assert.equal(block.pagesMapped.median, 0, `${what}: moa-64k maps nothing from the pool`)
      assertSummary(block.faultServerRssKb, `${what} moa-64k fault server RSS`, 1)
      assert.equal(local.pagesMapped.median, 0, `${what}: local maps nothing from the pool`)
      assert.ok(mow.pagesMapped.median > local.pagesRestored.median / 2, `${what}: mow maps most pages zero-copy`)
      assert.ok(hybrid.pagesRestored.median >= fn.recordedAccessed.median, `${what}: hybrid copies the recorded-hot pages (${hybrid.pagesRestored.median} >= ${fn.recordedAccessed.median})`)
      assert.ok(mow.pagesRestored.median >= fn.recordedDirty.median, `${what}: mow copies the recorded-dirty pages`)
      assert.ok(mow.rssAnonKb.median < moa.rssAnonKb.median && moa.rssAnonKb.median < local.rssAnonKb.median, `${what}: RssAnon mow < moa < local`)
      assert.ok(local.rssAnonKb.median * 1024 >= fn.mib << 20, `${what}: a local clone holds its whole state`)
      assert.ok(fork.pssKb.median < fork.rssAnonKb.median, `${what}: a forked child shares its pages with the function`)

      assert.deepEqual(fn.concurrent.map((set) => [set.id, set.clones]), [['mow', 2], ['moa', 2], ['moa-64k', 2], ['hybrid', 2], ['local', 2], ['fork', 2]])
      for (const set of fn.concurrent) {
        assert.ok(set.rssAnonKb > 0 && set.pssKb > 0 && set.firstMs > 0, `${what} ${set.id} x2`)
        assert.equal(set.faultServersRssKb !== undefined, set.id.startsWith('moa'), `${what} ${set.id}: fault servers reported for moa only`)
      }
    }

    const ids = result.targets.filter((target) => target.id.startsWith('faas-')).map((target) => target.id)
    assert.deepEqual(ids, ['float:4M', 'bfs:16M'].flatMap((at) => [
      `faas-mow-first-vs-fork@${at}`, `faas-mow-memory@${at}`, `faas-moa-memory-below-local@${at}`, `faas-moa-memory-above-mow@${at}`,
      `faas-hybrid-warm-vs-mow@${at}`, `faas-hybrid-memory@${at}`,
    ]))
    for (const target of result.targets) assert.equal(target.pass, target.measured <= target.limit, target.id)
    assert.equal(result.pass, result.targets.every((target) => target.pass))

    // Functions, clones, their inits and fault servers, forked children: all gone, and the pools too.
    assert.deepEqual(result.pids.filter(alive), [])
    assert.deepEqual(functionsAlive().filter((pid) => !before.has(pid)), [])
    assert.equal(existsSync(result.config.pool), false, `${result.config.pool} removed`)
  })
})

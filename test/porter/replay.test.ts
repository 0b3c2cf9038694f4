/**
 * Issue 15, `porter replay`: the Azure Functions 2019 per-minute trace
 * format read (and refused when malformed, with typed errors), a synthetic
 * trace with that trace's shape (seeded), and a small trace replayed on real
 * function instances under `cold`, `mow` and `criu`: every invocation answered,
 * starts counted by kind, nothing left running, no checkpoint left behind,
 * and its HTML report drawn by headless Chromium (as the bench report is).
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'
import {parseAzureTrace, syntheticTrace, toAzureCsv, totalInvocations} from '../../src/porter/replay/trace.js'
import {cli, describeRun, installCleanupHooks, note, poolPath} from '../restore/helpers.js'

/** Processes serving the porter's function protocol (floatmath.py ... --stdio 1). */
function functionProcesses(): number[] {
  const found: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
      if (argv.some((arg) => arg.endsWith('floatmath.py')) && argv.includes('--stdio')) found.push(Number(entry))
    } catch {
      // gone
    }
  }
  return found
}

describe('porter replay: invocation traces (issue 15)', function () {
  this.timeout(240_000)
  installCleanupHooks('porter-replay')
  let dir: string

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'cxlfork-replay-test-'))
  })
  after(() => rmSync(dir, {recursive: true, force: true}))

  it('reads the Azure per-minute CSV; refuses a malformed one, a missing file and an unknown policy with typed errors', async () => {
    const csv = 'HashOwner,HashApp,HashFunction,Trigger,1,2,3\no1,a1,f1,http,0,4,1\no2,a2,f2,timer,1,0,0\n'
    const trace = parseAzureTrace(csv)
    assert.equal(trace.minutes, 3)
    assert.deepEqual(trace.functions.map((fn) => [fn.id, fn.trigger, fn.counts]), [['f1', 'http', [0, 4, 1]], ['f2', 'timer', [1, 0, 0]]])
    assert.deepEqual(parseAzureTrace(csv, 2).functions[0]!.counts, [0, 4])
    const pool = poolPath('replay-bad')
    const cases: [string, string, number, string][] = [
      ['bad-header.csv', 'Owner,App,Function,Trigger,1\nx,y,z,http,1\n', 2, 'INVALID_TRACE'],
      ['bad-count.csv', 'HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,x\n', 2, 'INVALID_TRACE'],
      ['short-row.csv', 'HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1\n', 2, 'INVALID_TRACE'],
    ]
    for (const [file, text, status, code] of cases) {
      writeFileSync(join(dir, file), text)
      const run = await cli(['porter', 'replay', join(dir, file), '--pool', pool, '--json'])
      assert.equal(run.status, status, describeRun(run))
      assert.equal(run.json.error.code, code, describeRun(run))
      assert.ok(run.json.error.hint)
    }
    const missing = await cli(['porter', 'replay', join(dir, 'none.csv'), '--pool', pool, '--json'])
    assert.equal(missing.status, 3, describeRun(missing))
    assert.equal(missing.json.error.code, 'FILE_NOT_FOUND')
    const policy = await cli(['porter', 'replay', 'synthetic', '--policies', 'cold,warp', '--pool', pool, '--json'])
    assert.equal(policy.status, 2, describeRun(policy))
    assert.equal(policy.json.error.code, 'INVALID_POLICY')
  })

  it('a synthetic trace has the Azure trace\'s shape: most functions rare, a few taking most invocations; seeded; CSV round trip', () => {
    const trace = syntheticTrace({functions: 1000, minutes: 60, seed: 7})
    const perFunction = trace.functions.map((fn) => fn.counts.reduce((a, b) => a + b, 0)).sort((a, b) => a - b)
    const atMostHourly = perFunction.filter((n) => n <= 1).length / perFunction.length
    const atMostPerMinute = perFunction.filter((n) => n <= 60).length / perFunction.length
    const total = totalInvocations(trace)
    const top10 = perFunction.slice(-100).reduce((a, b) => a + b, 0) / total
    note(`synthetic 1000 functions x 60 min: ${(atMostHourly * 100).toFixed(0)}% at most hourly, ${(atMostPerMinute * 100).toFixed(0)}% at most once a minute, top 10% take ${(top10 * 100).toFixed(0)}% of ${total} invocations`)
    assert.ok(atMostHourly > 0.35 && atMostHourly < 0.6, `about half invoked at most once an hour: ${atMostHourly}`)
    assert.ok(atMostPerMinute > 0.7 && atMostPerMinute < 0.9, `about four in five at most once a minute: ${atMostPerMinute}`)
    assert.ok(top10 > 0.8, `heavy-tailed: the top 10% take most invocations (${top10})`)
    assert.deepEqual(syntheticTrace({functions: 1000, minutes: 60, seed: 7}), trace, 'the same seed gives the same trace')
    assert.notDeepEqual(syntheticTrace({functions: 1000, minutes: 60, seed: 8}), trace)
    assert.deepEqual(parseAzureTrace(toAzureCsv(trace)).functions.map((fn) => fn.counts), trace.functions.map((fn) => fn.counts))
  })

  it('replays a trace file on real instances under cold, mow and criu: every invocation answered, starts by kind, mow compared with cold and criu, nothing left behind', async () => {
    const pool = poolPath('replay')
    assert.equal((await cli(['pool', 'init', '--size', '512M', '--pool', pool, '--json'])).status, 0)
    const file = join(dir, 'small.csv')
    // Two busy functions and a rare one, 2 minutes.
    writeFileSync(file, 'HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,busy1,http,8,6\no,a,busy2,queue,5,7\no,a,rare,timer,1,0\no,a,idle,timer,0,0\n')
    const before = functionProcesses()
    const imageSets = (): string[] => readdirSync('/dev/shm').filter((name) => name.startsWith('cxlfork-fn-images-'))
    const setsBefore = imageSets()
    const out = join(dir, 'report')
    const run = await cli(['porter', 'replay', file, '--speedup', '30', '--policies', 'cold,mow,criu', '--mib', '2', '--out', out, '--pool', pool, '--json'])
    assert.equal(run.status, 0, describeRun(run))
    const report = run.json
    assert.equal(report.invocations, 27)
    assert.equal(report.functions, 4)
    assert.equal(report.deployed, 3, 'a function without invocations is not deployed')
    const [cold, mow, criu] = report.policies
    for (const p of [cold, mow, criu]) {
      assert.equal(p.invocations, 27)
      assert.equal(p.failures, 0, JSON.stringify(p))
      assert.equal(p.starts.cold + p.starts.warm + p.starts.restored, 27)
      assert.ok(p.latencyMs.p50 > 0 && p.latencyMs.p99 >= p.latencyMs.p50)
      assert.ok(p.memory.samples > 0 && p.memory.peakGB > 0)
    }
    assert.equal(cold.starts.restored, 0, 'cold never restores')
    assert.equal(cold.starts.warm, 0, 'cold instances serve one invocation each')
    assert.ok(cold.starts.cold > mow.starts.cold, `cold starts more (${cold.starts.cold}) than mow (${mow.starts.cold})`)
    assert.ok(mow.starts.cold >= 3, 'each function starts cold once under mow')
    assert.ok(mow.starts.restored + mow.starts.warm > 0)
    assert.equal(criu.skipped, undefined, 'criu runs')
    assert.ok(criu.starts.cold >= 3 && criu.checkpoints === 3, `each function starts cold once and is dumped under criu: ${JSON.stringify(criu)}`)
    assert.deepEqual(criu.checkpointErrors, [])
    assert.ok(criu.starts.restored + criu.starts.warm > 0)
    // The acceptance's ratios, computed in the report.
    assert.deepEqual(report.comparisons.map((c: any) => `${c.figure} ${c.against}`), ['p99 ms cold', 'p99 ms criu'])
    for (const c of report.comparisons) assert.equal(c.ratio, Math.round((c.other / c.mow) * 1000) / 1000)
    assert.deepEqual(imageSets().filter((name) => !setsBefore.includes(name)), [], 'no image set left on /dev/shm')
    note(`small trace (27 invocations, x30): cold p50 ${cold.latencyMs.p50} ms p99 ${cold.latencyMs.p99} ms (${cold.starts.cold} cold); mow p50 ${mow.latencyMs.p50} ms p99 ${mow.latencyMs.p99} ms (${mow.starts.cold} cold, ${mow.starts.warm} warm, ${mow.starts.restored} restored); criu p50 ${criu.latencyMs.p50} ms p99 ${criu.latencyMs.p99} ms (${criu.starts.cold} cold, ${criu.starts.warm} warm, ${criu.starts.restored} restored)`)
    assert.deepEqual(functionProcesses().filter((pid) => !before.includes(pid)), [], 'no instance left running')
    const ls = await cli(['ls', '--pool', pool, '--json'])
    assert.equal(ls.status, 0, describeRun(ls))
    assert.deepEqual(ls.json.checkpoints, [], 'no checkpoint left')

    // The report: the same figures as --json, and a page whose four charts headless Chromium draws.
    assert.deepEqual(JSON.parse(readFileSync(join(out, 'replay.json'), 'utf8')).policies, report.policies)
    assert.equal(mow.memory.perMinuteGB.length, 2, 'memory by trace minute')
    const page = join(out, 'index.html')
    const html = readFileSync(page, 'utf8')
    assert.ok(!/\b(src|href)\s*=\s*["']?(https?:)?\/\//i.test(html), 'nothing loaded from the network')
    assert.ok(html.includes(file), 'the page names the trace')
    assert.ok(html.includes('mow against the others') && html.includes('<td>criu</td>'), 'the page compares mow with criu')
    const browser = ['chromium', 'chromium-browser', 'google-chrome'].map((name) => spawnSync('sh', ['-c', `command -v ${name}`], {encoding: 'utf8'}).stdout.trim()).find(Boolean)
    assert.ok(browser, 'chromium on PATH (Debian\'s chromium package, as .ci/run installs)')
    const profile = mkdtempSync(join(tmpdir(), 'cxlfork-chromium-'))
    try {
      const common = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', `--user-data-dir=${profile}`, '--virtual-time-budget=3000']
      const dom = spawnSync(browser, [...common, '--dump-dom', `file://${page}`], {encoding: 'utf8', maxBuffer: 64 << 20, timeout: 60_000})
      assert.equal(dom.status, 0, dom.stderr)
      const check = /<pre id="render-check">([^<]*)<\/pre>/.exec(dom.stdout)?.[1]
      assert.ok(check && check.startsWith('['), `the page's render check ran: ${check}`)
      const charts = JSON.parse(check.replaceAll('&quot;', '"')) as {id: string; width: number; height: number; bars: number}[]
      assert.deepEqual(charts.map((chart) => chart.id).sort(), ['chart-latency', 'chart-memory', 'chart-memory-time', 'chart-starts'])
      for (const chart of charts) {
        assert.ok(chart.width >= 400 && chart.height >= 200, `${chart.id} is laid out with a size: ${chart.width}x${chart.height}`)
        assert.ok(chart.bars >= 2, `${chart.id} draws bars with data: ${chart.bars}`)
      }
      const shots = join(projectRoot(), 'dist', 'test-output')
      mkdirSync(shots, {recursive: true})
      const png = join(shots, 'replay-report.png')
      rmSync(png, {force: true})
      const shot = spawnSync(browser, [...common, '--window-size=1200,2400', `--screenshot=${png}`, `file://${page}`], {encoding: 'utf8', timeout: 60_000})
      assert.equal(shot.status, 0, shot.stderr)
      assert.ok(existsSync(png) && statSync(png).size > 20_000, `a screenshot of the report at ${png}`)
    } finally {
      rmSync(profile, {recursive: true, force: true})
    }
  })
})

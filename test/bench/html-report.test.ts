/**
 * `cxlfork bench --out DIR`: a small real run writes DIR/index.html and DIR/bench.json; the page
 * is self-contained (nothing fetched from the network) and, opened in headless Chromium
 * (Debian's `chromium`, which .ci/run installs), draws every chart: each SVG is laid out with a
 * size and holds bars with a height, as the page's own render check reports after layout. A
 * screenshot goes to dist/test-output/bench-report.png.
 */
import assert from 'node:assert/strict'
import {spawnSync} from 'node:child_process'
import {existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'
import type {BenchResult} from '../../src/bench/types.js'

function chromium(): string {
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    const found = spawnSync('sh', ['-c', `command -v ${name}`], {encoding: 'utf8'}).stdout.trim()
    if (found) return found
  }
  throw new Error('no chromium on PATH: install Debian\'s chromium package (apt-get install chromium), as .ci/run and bin/quickstart.sh do')
}

describe('cxlfork bench --out: the HTML report', function () {
  this.timeout(180_000)

  it('a small run writes a self-contained page whose charts headless Chromium draws (each sized, each with bars), and a screenshot', () => {
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-report-'))
    const profile = mkdtempSync(join(tmpdir(), 'cxlfork-chromium-'))
    try {
      const out = join(dir, 'report')
      const run = spawnSync(process.execPath, [join(projectRoot(), 'bin', 'run.js'), 'bench', '--sizes', '8M,16M', '--runs', '1', '--threads', '1,2', '--threads-size', '8M',
        '--trees', '', '--no-criu', '--out', out, '--json'], {encoding: 'utf8', maxBuffer: 64 << 20, timeout: 150_000})
      assert.equal(run.status, 0, `exit status ${run.status}\n${run.stderr}`)
      const page = join(out, 'index.html')
      assert.ok(existsSync(page) && existsSync(join(out, 'bench.json')), 'index.html and bench.json written')
      const result = JSON.parse(readFileSync(join(out, 'bench.json'), 'utf8')) as BenchResult
      assert.deepEqual(result.sizes.map((size) => size.label), ['8M', '16M'])
      const html = readFileSync(page, 'utf8')
      // Self-contained: no script, style, image or font from anywhere (the SVG namespace is a name, not a fetch).
      assert.ok(!/\b(src|href)\s*=\s*["']?(https?:)?\/\//i.test(html), 'nothing loaded from the network')
      assert.ok(!/@import|url\(/i.test(html), 'no imported style')
      for (const fact of [result.command, result.machine.kernel, result.date]) assert.ok(html.includes(fact.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;')), `the page names ${fact}`)

      const browser = chromium()
      const common = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', `--user-data-dir=${profile}`, '--virtual-time-budget=3000']
      const dom = spawnSync(browser, [...common, '--dump-dom', `file://${page}`], {encoding: 'utf8', maxBuffer: 64 << 20, timeout: 60_000})
      assert.equal(dom.status, 0, dom.stderr)
      const check = /<pre id="render-check">([^<]*)<\/pre>/.exec(dom.stdout)?.[1]
      assert.ok(check && check.startsWith('['), `the page's render check ran: ${check}`)
      const charts = JSON.parse(check.replaceAll('&quot;', '"')) as {id: string; width: number; height: number; bars: number}[]
      assert.deepEqual(charts.map((chart) => chart.id).sort(), ['chart-checkpoint', 'chart-downtime', 'chart-memory', 'chart-restore', 'chart-threads'].sort())
      for (const chart of charts) {
        assert.ok(chart.width >= 400 && chart.height >= 200, `${chart.id} is laid out with a size: ${chart.width}x${chart.height}`)
        assert.ok(chart.bars >= 2, `${chart.id} draws bars with data: ${chart.bars}`)
      }
      const shots = join(projectRoot(), 'dist', 'test-output')
      mkdirSync(shots, {recursive: true})
      const png = join(shots, 'bench-report.png')
      rmSync(png, {force: true})
      const shot = spawnSync(browser, [...common, '--window-size=1200,2600', `--screenshot=${png}`, `file://${page}`], {encoding: 'utf8', timeout: 60_000})
      assert.equal(shot.status, 0, shot.stderr)
      assert.ok(existsSync(png) && statSync(png).size > 20_000, `a screenshot of the report at ${png}`)
      assert.deepEqual([...readFileSync(png).subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG')
    } finally {
      rmSync(dir, {recursive: true, force: true})
      rmSync(profile, {recursive: true, force: true})
    }
  })
})

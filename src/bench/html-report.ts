/**
 * `bench --out DIR`: the run as one self-contained HTML page (no script,
 * font or style from the network), its charts drawn as inline SVG from the
 * result: time by size for every method, the targets' downtime, local memory
 * of the clones, the verdicts and ratios, and the machine, kernel, date and
 * exact command. A small inline script measures each chart once laid out and
 * writes what it found into #render-check, so a headless browser can tell
 * that the charts are drawn (the test does).
 */
import type {BenchResult, SizeResult, Summary} from './types.js'

/** One bar series: a name and a value per group (undefined: not measured there). */
interface Series {
  name: string
  values: (number | undefined)[]
}

export interface ChartSpec {
  id: string
  title: string
  unit: string
  groups: string[]
  series: Series[]
  /** Logarithmic value axis (times spanning milliseconds to seconds). */
  log: boolean
  note?: string
}

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf', '#393b79', '#637939']

export function escapeHtml(text: string): string {
  return text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll('"', '&quot;')
}

function formatValue(value: number, unit: string): string {
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : value >= 1 ? 2 : 3
  return `${value.toFixed(digits)} ${unit}`
}

/** A grouped bar chart as SVG: one group per size, one bar per series, a value axis with ticks. */
export function barChartSvg(spec: ChartSpec): string {
  const width = 920
  const height = 360
  const left = 70
  const right = 190
  const top = 36
  const bottom = 40
  const plotW = width - left - right
  const plotH = height - top - bottom
  const values = spec.series.flatMap((s) => s.values).filter((v): v is number => v !== undefined && Number.isFinite(v) && v > 0)
  const max = values.length > 0 ? Math.max(...values) : 1
  const min = values.length > 0 ? Math.min(...values) : 1
  let lo: number
  let hi: number
  let ticks: number[]
  if (spec.log) {
    lo = 10 ** Math.floor(Math.log10(min))
    hi = 10 ** Math.ceil(Math.log10(max))
    if (hi === lo) hi = lo * 10
    ticks = []
    for (let t = lo; t <= hi * 1.0001; t *= 10) ticks.push(t)
  } else {
    lo = 0
    const step = 10 ** Math.floor(Math.log10(max || 1))
    hi = Math.ceil((max || 1) / step) * step
    ticks = []
    for (let t = 0; t <= hi * 1.0001; t += hi / 5) ticks.push(t)
  }
  const y = (v: number): number => {
    const f = spec.log ? (Math.log10(v) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo)) : (v - lo) / (hi - lo)
    return top + plotH - Math.max(0, Math.min(1, f)) * plotH
  }
  const parts: string[] = []
  parts.push(`<svg class="chart" id="${spec.id}" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(spec.title)}">`)
  parts.push(`<text x="${left}" y="20" class="title">${escapeHtml(spec.title)}</text>`)
  for (const t of ticks) {
    const ty = y(t)
    parts.push(`<line x1="${left}" x2="${left + plotW}" y1="${ty.toFixed(1)}" y2="${ty.toFixed(1)}" class="grid"/>`)
    parts.push(`<text x="${left - 6}" y="${(ty + 4).toFixed(1)}" class="tick" text-anchor="end">${escapeHtml(formatValue(t, spec.unit))}</text>`)
  }
  const groupW = plotW / Math.max(1, spec.groups.length)
  const barW = Math.max(2, (groupW * 0.8) / Math.max(1, spec.series.length))
  spec.groups.forEach((group, g) => {
    const gx = left + g * groupW + groupW * 0.1
    parts.push(`<text x="${(left + g * groupW + groupW / 2).toFixed(1)}" y="${height - bottom + 18}" class="tick" text-anchor="middle">${escapeHtml(group)}</text>`)
    spec.series.forEach((series, s) => {
      const value = series.values[g]
      if (value === undefined || !Number.isFinite(value) || value <= 0) return
      const by = y(value)
      const x = gx + s * barW
      parts.push(`<rect class="bar" x="${x.toFixed(1)}" y="${by.toFixed(1)}" width="${(barW - 1).toFixed(1)}" height="${(top + plotH - by).toFixed(1)}" fill="${PALETTE[s % PALETTE.length]}" data-series="${escapeHtml(series.name)}" data-value="${value}"><title>${escapeHtml(`${series.name}, ${group}: ${formatValue(value, spec.unit)}`)}</title></rect>`)
    })
  })
  parts.push(`<line x1="${left}" x2="${left}" y1="${top}" y2="${top + plotH}" class="axis"/><line x1="${left}" x2="${left + plotW}" y1="${top + plotH}" y2="${top + plotH}" class="axis"/>`)
  spec.series.forEach((series, s) => {
    const ly = top + 6 + s * 18
    parts.push(`<rect x="${left + plotW + 14}" y="${ly}" width="12" height="12" fill="${PALETTE[s % PALETTE.length]}"/><text x="${left + plotW + 32}" y="${ly + 10}" class="legend">${escapeHtml(series.name)}</text>`)
  })
  parts.push('</svg>')
  return parts.join('')
}

const median = (summary: Summary | undefined): number | undefined => (summary && summary.n > 0 ? summary.median : undefined)

/** The charts a run has data for. */
export function chartsOf(result: BenchResult): ChartSpec[] {
  const groups = result.sizes.map((size) => size.label)
  const pathIds = [...new Set(result.sizes.flatMap((size) => size.paths.map((path) => path.path)))]
  const restoreIds = [...new Set(result.sizes.flatMap((size) => size.paths.flatMap((path) => path.restores.map((row) => row.id))))]
  const pathOf = (size: SizeResult, id: string) => size.paths.find((path) => path.path === id)
  const restoreOf = (size: SizeResult, id: string) => size.paths.flatMap((path) => path.restores).find((row) => row.id === id)
  const charts: ChartSpec[] = [
    {
      id: 'chart-checkpoint', title: 'Checkpoint, whole (ms, log scale)', unit: 'ms', groups, log: true,
      series: [
        ...pathIds.map((id) => ({name: `checkpoint ${id}`, values: result.sizes.map((size) => median(pathOf(size, id)?.checkpointMs))})),
        {name: 'plain write (anchor)', values: result.sizes.map((size) => median(size.plainWriteMemoryMs))},
      ],
    },
    {
      id: 'chart-downtime', title: 'Downtime: target stopped (ms, log scale)', unit: 'ms', groups, log: true,
      series: pathIds.map((id) => ({name: id, values: result.sizes.map((size) => median(pathOf(size, id)?.downtimeMs))})),
    },
    {
      id: 'chart-restore', title: 'Restore, engine and whole command, with the anchors (ms, log scale)', unit: 'ms', groups, log: true,
      series: [
        ...restoreIds.map((id) => ({name: `${id} engine`, values: result.sizes.map((size) => median(restoreOf(size, id)?.engineMs))})),
        ...restoreIds.map((id) => ({name: `${id} command`, values: result.sizes.map((size) => median(restoreOf(size, id)?.commandMs))})),
        {name: 'local fork()', values: result.sizes.map((size) => median(size.forkMs))},
        {name: 'cold start', values: result.sizes.map((size) => median(size.coldStartMs))},
      ].filter((series) => series.values.some((v) => v !== undefined)),
    },
    {
      id: 'chart-memory', title: 'Local memory of a fresh clone: RssAnon (MiB, log scale)', unit: 'MiB', groups, log: true,
      series: restoreIds.map((id) => ({name: id, values: result.sizes.map((size) => {
        const kb = median(restoreOf(size, id)?.rssAnonKb)
        return kb === undefined ? undefined : kb / 1024
      })})),
    },
  ]
  if (result.threads) {
    const rows = result.threads.rows
    charts.push({
      id: 'chart-threads', title: `Threads at ${result.threads.label}: downtime and mow engine restore (ms)`, unit: 'ms', groups: rows.map((row) => `${row.threads} thr`), log: false,
      series: [{name: 'downtime', values: rows.map((row) => median(row.downtimeMs))}, {name: 'engine restore', values: rows.map((row) => median(row.engineMs))}],
    })
  }
  if (result.trees) {
    const rows = result.trees.rows
    charts.push({
      id: 'chart-trees', title: `Trees at ${result.trees.label}: root downtime and mow engine restore (ms)`, unit: 'ms', groups: rows.map((row) => `${row.processes} proc`), log: false,
      series: [{name: 'root downtime', values: rows.map((row) => median(row.downtimeMs))}, {name: 'engine restore', values: rows.map((row) => median(row.engineMs))}],
    })
  }
  if (result.faas && result.faas.functions.length > 0) {
    const functions = result.faas.functions
    const ids = [...new Set(functions.flatMap((fn) => fn.rows.map((row) => row.id)))]
    const rowOf = (fn: (typeof functions)[number], id: string) => fn.rows.find((row) => row.id === id)
    const groupsOf = functions.map((fn) => `${fn.name} ${fn.mib}M`)
    charts.push({
      id: 'chart-faas-first', title: 'FaaS: first invocation of a clone, by policy, beside a local fork (ms, log scale)', unit: 'ms', groups: groupsOf, log: true,
      series: ids.map((id) => ({name: id, values: functions.map((fn) => median(rowOf(fn, id)?.firstMs))})),
    })
    charts.push({
      id: 'chart-faas-memory', title: 'FaaS: local memory of a clone after its first invocation, RssAnon (MiB, log scale)', unit: 'MiB', groups: groupsOf, log: true,
      series: ids.map((id) => ({name: id, values: functions.map((fn) => {
        const kb = median(rowOf(fn, id)?.rssAnonKb)
        return kb === undefined ? undefined : kb / 1024
      })})),
    })
  }
  return charts.filter((chart) => chart.series.some((series) => series.values.some((v) => v !== undefined)))
}

export const STYLE = `body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}.pass{color:#176b1f}.fail{color:#a40e0e;font-weight:bold}
code{background:#f3f3f3;padding:1px 4px}.chart{display:block;margin:10px 0 22px}.chart .title{font-size:14px;font-weight:bold}.chart .tick{font-size:11px;fill:#444}
.chart .legend{font-size:11px}.chart .grid{stroke:#e4e4e4}.chart .axis{stroke:#333}#render-check{font-size:11px;color:#777;white-space:pre-wrap}`

/** After layout: each chart's drawn size and its bars with a height, for a headless browser to read back. */
export const CHECK_SCRIPT = `(function(){var out=[];document.querySelectorAll('svg.chart').forEach(function(svg){var r=svg.getBoundingClientRect();var bars=0;
svg.querySelectorAll('rect.bar').forEach(function(b){var br=b.getBoundingClientRect();if(br.height>0&&br.width>0)bars++});
out.push({id:svg.id,width:Math.round(r.width),height:Math.round(r.height),bars:bars})});
document.getElementById('render-check').textContent=JSON.stringify(out)})();`

export function renderHtmlReport(result: BenchResult): string {
  const charts = chartsOf(result)
  const m = result.machine
  const verdicts = result.targets.map((t) => `<tr><td>${escapeHtml(t.description)}</td><td>${escapeHtml(formatValue(t.measured, t.unit))}</td><td>${escapeHtml(formatValue(t.limit, t.unit))}</td><td class="${t.pass ? 'pass' : 'fail'}">${t.pass ? 'PASS' : 'FAIL'}</td></tr>`).join('')
  const criu = 'missing' in result.realCriu ? `not measured: ${escapeHtml(result.realCriu.missing)}` : `${escapeHtml(result.realCriu.bin)} (${escapeHtml(result.realCriu.version)})`
  const ratios = [...(result.threads?.ratios ?? []), ...(result.trees?.ratios ?? [])]
    .map((r) => `<tr><td>${escapeHtml(r.description)}</td><td>${escapeHtml(formatValue(r.value, r.unit))}</td></tr>`).join('')
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxlfork bench, ${escapeHtml(result.date)}</title><style>${STYLE}</style></head>
<body>
<h1>cxlfork bench</h1>
<p>Every figure is a median of ${result.config.runs} repetition(s) taken in one run; bars are medians, hover for values.</p>
<table>
<tr><th>date</th><td>${escapeHtml(result.date)} (${result.durationS.toFixed(0)} s)</td></tr>
<tr><th>command</th><td><code>${escapeHtml(result.command)}</code></td></tr>
<tr><th>machine</th><td>${escapeHtml(m.cpu)}, ${m.cores} cores, ${(m.ramBytes / 2 ** 30).toFixed(1)} GiB; THP ${escapeHtml(m.thp)}; load ${m.loadAverage[0].toFixed(2)} at start, ${m.loadAverage[1].toFixed(2)} at end; steal ${m.stealMs} ms</td></tr>
<tr><th>kernel</th><td>${escapeHtml(m.kernel)}; Node ${escapeHtml(m.node)}</td></tr>
<tr><th>real CRIU</th><td>${criu}</td></tr>
<tr><th>Node start-up</th><td>${escapeHtml(formatValue(result.nodeStartupMs.median, 'ms'))} (<code>node -e 0</code>); cxlfork --version ${escapeHtml(formatValue(result.cliVersionMs.median, 'ms'))}</td></tr>
</table>
<h2>Charts</h2>
${charts.map((chart) => barChartSvg(chart)).join('\n')}
<h2>Targets (${result.targets.filter((t) => t.pass).length} of ${result.targets.length} pass)</h2>
<table><tr><th>target</th><th>measured</th><th>limit</th><th>verdict</th></tr>${verdicts}</table>
${ratios ? `<h2>Ratios</h2><table><tr><th>ratio</th><th>value</th></tr>${ratios}</table>` : ''}
<h2>Render check</h2>
<pre id="render-check">(not run: scripts disabled)</pre>
<script>${CHECK_SCRIPT}</script>
</body></html>
`
}

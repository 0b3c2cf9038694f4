/**
 * `porter replay --out DIR`: the replay as one self-contained HTML page
 * (the bench report's charts, style and render check): latency
 * percentiles, starts by kind and local memory (GB·s, and over trace time)
 * per policy, with the trace, the command and the date.
 */
import {CHECK_SCRIPT, type ChartSpec, STYLE, barChartSvg, escapeHtml} from '../../bench/html-report.js'
import type {ReplayReport} from './replay.js'

export function renderReplayReport(report: ReplayReport): string {
  const ran = report.policies.filter((p) => p.skipped === undefined)
  const series = (value: (p: (typeof ran)[number]) => (number | null)[]): ChartSpec['series'] =>
    ran.map((p) => ({name: p.policy, values: value(p).map((v) => (v === null ? undefined : v))}))
  // Memory over time: the trace's minutes in at most 30 groups.
  const bucket = Math.max(1, Math.ceil(report.minutes / 30))
  const groups = Array.from({length: Math.ceil(report.minutes / bucket)}, (_, i) => `${i * bucket + 1}${bucket > 1 ? `-${Math.min(report.minutes, (i + 1) * bucket)}` : ''}`)
  const charts: ChartSpec[] = [
    {id: 'chart-latency', title: 'Invocation latency, scheduled instant to response', unit: 'ms', groups: ['p50', 'p99', 'p99.9'], log: true,
      series: series((p) => [p.latencyMs.p50, p.latencyMs.p99, p.latencyMs.p999])},
    {id: 'chart-starts', title: 'How invocations were served', unit: '', groups: ['cold', 'warm', 'restored'], log: true,
      series: series((p) => [p.starts.cold, p.starts.warm, p.starts.restored])},
    {id: 'chart-memory', title: 'Local memory over the trace (GB·s of trace time) and its peak (GB)', unit: '', groups: ['GB·s', 'peak GB'], log: true,
      series: series((p) => [p.memory.traceGbSeconds, p.memory.peakGB])},
    {id: 'chart-memory-time', title: 'Local memory by trace minute (mean GB)', unit: 'GB', groups, log: false,
      series: series((p) => groups.map((_, i) => {
        const slice = p.memory.perMinuteGB.slice(i * bucket, (i + 1) * bucket)
        return slice.length === 0 ? null : slice.reduce((a, b) => a + b, 0) / slice.length
      }))},
  ]
  const rows = report.policies.map((p) => (p.skipped === undefined
    ? `<tr><td>${escapeHtml(p.policy)}</td><td>${p.latencyMs.p50 ?? '-'}</td><td>${p.latencyMs.p99 ?? '-'}</td><td>${p.latencyMs.p999 ?? '-'}</td><td>${p.starts.cold}</td><td>${p.starts.warm}</td><td>${p.starts.restored}</td><td>${p.failures}</td><td>${p.memory.traceGbSeconds}</td><td>${p.memory.peakGB}</td><td>${p.keepAliveMs}</td></tr>`
    : `<tr><td>${escapeHtml(p.policy)}</td><td colspan="10">not run: ${escapeHtml(p.skipped)}</td></tr>`)).join('')
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxlfork porter replay, ${escapeHtml(report.date)}</title><style>${STYLE}</style></head>
<body>
<h1>cxlfork porter replay</h1>
<table>
<tr><th>date</th><td>${escapeHtml(report.date)}</td></tr>
<tr><th>command</th><td><code>${escapeHtml(report.command)}</code></td></tr>
<tr><th>trace</th><td>${escapeHtml(report.trace)}: ${report.functions} functions (${report.deployed} invoked), ${report.minutes} minutes, ${report.invocations} invocations, replayed at x${report.speedup}; each function floatmath.py with ${report.mib} MiB of state</td></tr>
</table>
<h2>Policies</h2>
<table><tr><th>policy</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>cold</th><th>warm</th><th>restored</th><th>failed</th><th>GB·s (trace time)</th><th>peak GB</th><th>keep-alive ms (real)</th></tr>${rows}</table>
${report.comparisons.length === 0 ? '' : `<h2>mow against the others</h2>
<table><tr><th>figure</th><th>against</th><th>mow</th><th>other</th><th>other / mow</th><th>mow better</th></tr>${report.comparisons.map((c) => `<tr><td>${escapeHtml(c.figure)}</td><td>${escapeHtml(c.against)}</td><td>${c.mow}</td><td>${c.other}</td><td>${c.ratio}x</td><td>${c.mowBetter ? 'yes' : 'no'}</td></tr>`).join('')}</table>`}
<h2>Charts</h2>
${charts.map((chart) => barChartSvg(chart)).join('\n')}
<h2>Render check</h2>
<pre id="render-check">(not run: scripts disabled)</pre>
<script>${CHECK_SCRIPT}</script>
</body></html>
`
}

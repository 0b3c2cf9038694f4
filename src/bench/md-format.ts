/** Cells and tables of the Markdown report (BENCHMARKS.md), shared by its sections. */
import type {Summary} from './types.js'

export function fmt(value: number): string {
  if (!Number.isFinite(value)) return '–'
  const abs = Math.abs(value)
  return abs >= 100 ? value.toFixed(0) : abs >= 10 ? value.toFixed(1) : abs >= 1 ? value.toFixed(2) : value.toFixed(3)
}

/** "median (min–max)" */
export function cell(summary: Summary | undefined, scale = 1): string {
  if (!summary || summary.n === 0) return '–'
  return `${fmt(summary.median * scale)} (${fmt(summary.min * scale)}–${fmt(summary.max * scale)})`
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n')
}

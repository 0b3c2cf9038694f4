import type {Summary} from './types.js'

/** Median (mean of the middle two for even n), min and max; rounded to 3 decimals. */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) return {median: Number.NaN, min: Number.NaN, max: Number.NaN, n: 0}
  const sorted = [...samples].sort((a, b) => a - b)
  const mid = sorted.length >> 1
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2
  const round = (value: number): number => Math.round(value * 1000) / 1000
  return {median: round(median), min: round(sorted[0]!), max: round(sorted[sorted.length - 1]!), n: sorted.length}
}

/** Samples grouped by key, summarized at the end. */
export class Samples {
  private readonly byKey = new Map<string, number[]>()

  add(key: string, value: number): void {
    let list = this.byKey.get(key)
    if (!list) this.byKey.set(key, (list = []))
    list.push(value)
  }

  addAll(prefix: string, values: Readonly<Record<string, number>>): void {
    for (const [key, value] of Object.entries(values)) this.add(prefix + key, value)
  }

  summary(key: string): Summary {
    return summarize(this.byKey.get(key) ?? [])
  }

  /** Summaries of every key starting with `prefix`, keyed without it. */
  group(prefix: string): Record<string, Summary> {
    const out: Record<string, Summary> = {}
    for (const [key, values] of this.byKey) if (key.startsWith(prefix)) out[key.slice(prefix.length)] = summarize(values)
    return out
  }
}

/**
 * Invocation traces for `porter replay`: the Azure Functions 2019 public
 * trace's per-minute format (invocations_per_function_md.anon.d*.csv:
 * HashOwner,HashApp,HashFunction,Trigger,1,...,1440, one row per function,
 * column N the invocations in minute N of the day), and a seeded generator
 * of synthetic traces with that trace's published shape (Shahrad et al.,
 * "Serverless in the Wild", ATC'20): invocation rates spread over about
 * eight orders of magnitude, most functions rare (about half invoked at
 * most once an hour, four in five at most once a minute), a few taking
 * most invocations, and bursts.
 */
import {UsageError} from '../../errors.js'

export interface TraceFunction {
  /** HashFunction (or a synthetic id). */
  id: string
  trigger: string
  /** Invocations per minute, minute 1 first. */
  counts: number[]
}

export interface Trace {
  minutes: number
  functions: TraceFunction[]
}

function invalid(message: string): UsageError {
  return new UsageError('INVALID_TRACE', message, 'Give an Azure Functions 2019 per-minute CSV (HashOwner,HashApp,HashFunction,Trigger,1,2,...), or `synthetic`.')
}

/** Parse the CSV text; `minutes` keeps only the first N minute columns. */
export function parseAzureTrace(text: string, minutes?: number): Trace {
  const lines = text.split(/\r?\n/).filter((line) => line.trim() !== '')
  if (lines.length === 0) throw invalid('the trace is empty')
  const header = lines[0]!.split(',')
  if (header.length < 5 || header[0] !== 'HashOwner' || header[1] !== 'HashApp' || header[2] !== 'HashFunction' || header[3] !== 'Trigger') {
    throw invalid(`line 1 is not the trace's header (HashOwner,HashApp,HashFunction,Trigger,1,2,...): ${lines[0]!.slice(0, 80)}`)
  }
  header.slice(4).forEach((column, i) => {
    if (column !== String(i + 1)) throw invalid(`header column ${i + 5} is ${JSON.stringify(column)}, expected minute ${i + 1}`)
  })
  const available = header.length - 4
  const keep = Math.min(minutes ?? available, available)
  const functions = lines.slice(1).map((line, row): TraceFunction => {
    const cells = line.split(',')
    if (cells.length !== header.length) throw invalid(`line ${row + 2} has ${cells.length} columns, the header ${header.length}`)
    const counts = cells.slice(4, 4 + keep).map((cell, i) => {
      const n = Number(cell)
      if (!/^\d+$/.test(cell) || !Number.isSafeInteger(n)) throw invalid(`line ${row + 2}, minute ${i + 1}: ${JSON.stringify(cell)} is not a count`)
      return n
    })
    return {id: cells[2]!, trigger: cells[3]!, counts}
  })
  if (functions.length === 0) throw invalid('the trace has a header but no function')
  return {minutes: keep, functions}
}

export function toAzureCsv(trace: Trace): string {
  const header = ['HashOwner', 'HashApp', 'HashFunction', 'Trigger', ...Array.from({length: trace.minutes}, (_, i) => String(i + 1))]
  const rows = trace.functions.map((fn) => [`owner-${fn.id}`, `app-${fn.id}`, fn.id, fn.trigger, ...fn.counts].join(','))
  return [header.join(','), ...rows].join('\n') + '\n'
}

/** mulberry32: a small seeded generator, so a synthetic trace is the same for the same seed. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296
  }
}

function normal(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
}

function poisson(random: () => number, mean: number): number {
  if (mean > 30) return Math.max(0, Math.round(mean + Math.sqrt(mean) * normal(random)))
  const limit = Math.exp(-mean)
  let k = 0
  let p = random()
  while (p > limit) {
    k++
    p *= random()
  }
  return k
}

/**
 * `functions` functions over `minutes` minutes. Each function's mean rate
 * (invocations per minute) is log-normal: log10(rate) ~ N(-1.7, 1.5), which
 * puts about half of the functions at most once an hour and four in five at
 * most once a minute, as the Azure trace does, capped at 600 a minute. In
 * any minute a function may burst (probability 3%: 5-20x its rate for 1-3
 * minutes). Counts are Poisson around the rate of the minute.
 */
export function syntheticTrace(options: {functions: number; minutes: number; seed: number}): Trace {
  const random = seededRandom(options.seed)
  const triggers = ['http', 'queue', 'event', 'timer', 'storage']
  const functions: TraceFunction[] = []
  for (let f = 0; f < options.functions; f++) {
    const rate = Math.min(600, 10 ** (-1.7 + 1.5 * normal(random)))
    const counts: number[] = []
    let burstLeft = 0
    let burstFactor = 1
    for (let m = 0; m < options.minutes; m++) {
      if (burstLeft === 0 && random() < 0.03) {
        burstLeft = 1 + Math.floor(random() * 3)
        burstFactor = 5 + random() * 15
      }
      const now = burstLeft > 0 ? rate * burstFactor : rate
      if (burstLeft > 0) burstLeft--
      counts.push(poisson(random, now))
    }
    functions.push({id: `syn${String(f).padStart(4, '0')}`, trigger: triggers[Math.floor(random() * triggers.length)]!, counts})
  }
  return {minutes: options.minutes, functions}
}

/** Invocations in the trace. */
export function totalInvocations(trace: Trace): number {
  return trace.functions.reduce((sum, fn) => sum + fn.counts.reduce((a, b) => a + b, 0), 0)
}

/**
 * What the FaaS section of a benchmark run measures (issue 12): the functions
 * (fixtures/faas/*.py), the --faas selection, and the shape of its results.
 * The measurement is faas.ts, the verdicts and the report faas-report.ts.
 */
import {UsageError} from '../errors.js'
import type {Pool} from '../pool/index.js'
import type {Summary} from './types.js'

/** A function of the section: its fixture and what it does with its state. */
export interface FaasFunction {
  name: string
  /** File under fixtures/faas/. */
  file: string
  /** Default state size, MiB. */
  mib: number
  /** Its invocations read the state without writing it (raw arrays, no refcounts): the memory target applies. */
  readMostly: boolean
  /** What an invocation does, for the report. */
  invocation: string
}

export const FAAS_FUNCTIONS: readonly FaasFunction[] = [
  {name: 'float', file: 'floatmath.py', mib: 24, readMostly: true, invocation: 'sin·cos+sqrt over every 16th double of an array(\'d\') (every page of it)'},
  {name: 'linpack', file: 'linpack.py', mib: 32, readMostly: true, invocation: 'LU solve (partial pivoting, pure Python) of 2 of a bank of 96x96 systems in one array(\'d\')'},
  {name: 'json', file: 'jsondoc.py', mib: 64, readMostly: false, invocation: 'json.dumps of 1,500 records spread over a store of dicts, json.loads back (writes the refcounts of what it encodes)'},
  {name: 'html', file: 'htmlrender.py', mib: 128, readMostly: false, invocation: 'str.format + html.escape of 2,000 catalog tuples spread over the catalog into an HTML table (writes refcounts)'},
  {name: 'bfs', file: 'graphbfs.py', mib: 512, readMostly: true, invocation: 'BFS from node 0 until 50,000 nodes are visited, over 8 array(\'i\') of out-edges (a fresh bytearray marks visits)'},
]

export interface FaasSelection {
  name: string
  mib: number
}

/** --faas: `all`, `''`/`none`, or `FN[:MIB],...` with FN one of FAAS_FUNCTIONS. */
export function parseFaasSelection(text: string): FaasSelection[] {
  const trimmed = text.trim()
  if (trimmed === '' || trimmed.toLowerCase() === 'none') return []
  const names = FAAS_FUNCTIONS.map((fn) => fn.name)
  const out: FaasSelection[] = []
  for (const part of trimmed.split(',').map((item) => item.trim()).filter(Boolean)) {
    if (part.toLowerCase() === 'all') {
      for (const fn of FAAS_FUNCTIONS) if (!out.some((have) => have.name === fn.name)) out.push({name: fn.name, mib: fn.mib})
      continue
    }
    const m = /^([a-z]+)(?::(\d+))?$/.exec(part)
    const fn = m ? FAAS_FUNCTIONS.find((item) => item.name === m[1]) : undefined
    const mib = m?.[2] === undefined ? fn?.mib : Number(m[2])
    if (!fn || mib === undefined || !Number.isSafeInteger(mib) || mib < 1 || mib > 65536) {
      throw new UsageError('INVALID_FAAS', `--faas: ${part} is not FUNCTION[:MIB] with FUNCTION one of ${names.join(', ')} and MIB from 1 to 65536`,
        "Use e.g. --faas all, --faas float,bfs:64, or --faas '' to skip the FaaS section.")
    }
    const known = out.findIndex((have) => have.name === fn.name)
    if (known >= 0) out[known] = {name: fn.name, mib}
    else out.push({name: fn.name, mib})
  }
  return out
}

/** Bytes a checkpoint of the selected functions may need at most: the state plus the interpreter and slack. */
export function faasCheckpointBytes(selection: readonly FaasSelection[]): number {
  return selection.length === 0 ? 0 : Math.max(...selection.map((fn) => Math.ceil(fn.mib * 1.2) + 64)) * 1048576
}

/** One measured row of a function: a policy's clones, or the local fork's children. */
export interface FaasRow {
  /** `mow-unrecorded` (before any access bits), `mow`, `moa`, `hybrid`, `local`, or `fork`. */
  id: string
  /** Engine restore (stats.restore_time), ms; for `fork`: os.fork() in the function, parent side. */
  restoreMs: Summary
  /** Whole `cxlfork restore` command, wall clock, ms (n = 0 for `fork` and `mow-unrecorded`). */
  commandMs: Summary
  /** The clone's first invocation, as the function timed it (perf_counter around the call), ms. */
  firstMs: Summary
  /** The same, from SIGUSR1 sent until its DONE line was read (1 ms polling), ms. */
  firstRoundTripMs: Summary
  /** Invocations after the first (`warm` per clone, every repetition pooled), as the function timed them, ms. */
  warmMs: Summary
  /** /proc/CLONE/status RssAnon after the first invocation: the clone's local memory, kB. */
  rssAnonKb: Summary
  /** smaps_rollup Pss (pool pages shared with other mappers counted in part), Pss_Anon, and Pss_Shmem (the pool pages it maps), kB. */
  pssKb: Summary
  pssAnonKb: Summary
  pssShmemKb: Summary
  /** Engine statistics: pages copied at restore, mapped from the pool, left to the fault server. */
  pagesRestored: Summary
  pagesMapped: Summary
  pagesLazy: Summary
  /** `moa`: the clone's fault server (a Node process of its own), VmRSS and Pss after the first invocation, kB. */
  faultServerRssKb?: Summary
  faultServerPssKb?: Summary
}

/** `clones` clones of one policy (or forked children) alive together, each invoked once at the same time. */
export interface FaasConcurrent {
  id: string
  clones: number
  /** Sums over the clones after their invocation, kB. */
  rssAnonKb: number
  pssKb: number
  /** Median first invocation under that contention, ms. */
  firstMs: number
  /** `moa`: the fault servers together (one per clone), VmRSS and Pss, kB. */
  faultServersRssKb?: number
  faultServersPssKb?: number
}

export interface FaasFunctionResult {
  name: string
  file: string
  mib: number
  readMostly: boolean
  invocation: string
  /** Bytes of memory the checkpoint held. */
  bytes: number
  /** Spawn of the interpreter until READY (init, one invocation, gc.freeze), ms. */
  coldStartMs: Summary
  /** Init as the function timed it (READY init_us), ms. */
  initMs: Summary
  /** The function's own process after init: RssAnon, kB. */
  originalRssAnonKb: Summary
  checkpointMs: Summary
  /** What the --record clone's exit recorded: pages accessed and written. */
  recordedAccessed: Summary
  recordedDirty: Summary
  rows: FaasRow[]
  concurrent: FaasConcurrent[]
  /** Invocations whose crc was checked against init's (every one; a mismatch ends the run). */
  invocationsChecked: number
}

export interface FaasResult {
  /** The interpreter (resolved path) and its version. */
  python: string
  /** Clones per policy in the concurrent set. */
  clones: number
  /** Warm invocations per clone. */
  warm: number
  functions: FaasFunctionResult[]
}

export interface FaasContext {
  pool: Pool
  engine: {
    checkpointToPool: typeof import('../checkpoint/checkpoint.js').checkpointToPool
    restoreFromPool: typeof import('../restore/restore.js').restoreFromPool
    loadCheckpoint: typeof import('../restore/restore.js').loadCheckpoint
  }
  /** `node bin/run.js` of this installation. */
  cli: {node: string; entry: string}
  functions: readonly FaasSelection[]
  runs: number
  clones: number
  warm: number
  track: (pid: number) => void
  stop: (pid: number) => void
  log: (line: string) => void
}

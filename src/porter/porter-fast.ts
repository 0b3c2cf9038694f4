/**
 * The fast path of `cxlfork restore` (bin/run.js): when a porter's socket
 * exists for the pool, this small bundle (dist/porter-client.cjs) asks it
 * for the restore without loading oclif or the engine, and prints what the
 * restore command prints. Anything it does not know for certain how to
 * handle (help, --wait, --no-porter, an unknown or malformed flag, no
 * porter, a porter that does not serve this user) returns undefined, and
 * bin/run.js runs the full CLI, which parses and decides as always.
 */
import {existsSync, writeSync} from 'node:fs'
import {resolve} from 'node:path'

import {CxlforkError} from '../errors.js'
import {validateCheckpointName} from '../pool/names.js'
import {candidateSockets} from './paths.js'
import {type PorterCriuDumpRequest, type PorterCriuRestoreRequest, criuDumpSummary, criuDumpThroughPorter, criuRestoreSummary, criuRestoreThroughPorter} from './criu-client.js'
import {type PorterRestoreRequest, restoreSummary, restoreThroughPorter} from './restore-client.js'

const DEFAULT_POOL = '/dev/shm/cxlfork.pool'
const VALUE_FLAGS = new Set(['--policy', '--pidns', '--netns', '--fill-after', '--fault-pages', '--pool'])
const BOOLEAN_FLAGS = new Set(['--verify', '--record', '--json'])

interface Parsed {
  request: PorterRestoreRequest
  pool: string
  json: boolean
}

interface SimpleArgs {
  positional: string | undefined
  values: Map<string, string>
  booleans: Set<string>
}

/** One positional at most, the given flags each once; undefined for anything else (the full CLI decides). */
function splitArgs(argv: readonly string[], valueFlags: ReadonlySet<string>, booleanFlags: ReadonlySet<string>): SimpleArgs | undefined {
  let positional: string | undefined
  const values = new Map<string, string>()
  const booleans = new Set<string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith('-')) {
      if (positional !== undefined) return undefined
      positional = arg
      continue
    }
    const eq = arg.indexOf('=')
    const flag = eq < 0 ? arg : arg.slice(0, eq)
    if (valueFlags.has(flag)) {
      const value = eq < 0 ? argv[++i] : arg.slice(eq + 1)
      if (value === undefined || value.length === 0 || values.has(flag)) return undefined
      values.set(flag, value)
    } else if (booleanFlags.has(arg) && !booleans.has(arg)) booleans.add(arg)
    else return undefined
  }
  return {positional, values, booleans}
}

/** argv after `restore`, or undefined when the full CLI should parse it. */
export function parseRestoreArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Parsed | undefined {
  const split = splitArgs(argv, VALUE_FLAGS, BOOLEAN_FLAGS)
  if (!split) return undefined
  const {positional: name, values, booleans} = split
  if (name === undefined) return undefined
  try {
    validateCheckpointName(name)
  } catch {
    return undefined
  }
  const policy = values.get('--policy') ?? 'mow'
  if (!['mow', 'moa', 'hybrid', 'local'].includes(policy)) return undefined
  const pidns = values.get('--pidns')
  if (pidns !== undefined && pidns !== 'new' && pidns !== 'host') return undefined
  const fillAfter = values.get('--fill-after')
  if (fillAfter !== undefined && (!/^\d{1,9}$/.test(fillAfter) || policy !== 'moa')) return undefined
  const faultPages = values.get('--fault-pages')
  if (faultPages !== undefined && (!/^[1-9]\d{0,2}$/.test(faultPages) || Number(faultPages) > 512 || policy !== 'moa')) return undefined
  const netns = values.get('--netns')
  return {
    pool: values.get('--pool') ?? env.CXLFORK_POOL ?? DEFAULT_POOL, json: booleans.has('--json'),
    request: {
      name, policy, verify: booleans.has('--verify'), ...(pidns === undefined ? {} : {pidns}), ...(netns === undefined ? {} : {netns}),
      ...(fillAfter === undefined ? {} : {fillAfterMs: Number(fillAfter)}), ...(faultPages === undefined ? {} : {faultPages: Number(faultPages)}), ...(booleans.has('--record') ? {record: true} : {}),
    },
  }
}

function out(fd: number, text: string): void {
  writeSync(fd, text)
}

type ParsedCriu = {pool: string; json: boolean} & ({command: 'dump'; request: PorterCriuDumpRequest} | {command: 'restore'; request: PorterCriuRestoreRequest})

/** argv after `criu`, for `dump PID --images DIR` and `restore --images DIR` (no --wait); undefined when the full CLI should parse it. */
export function parseCriuArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): ParsedCriu | undefined {
  const [command, ...rest] = argv
  if (command === 'dump') {
    const split = splitArgs(rest, new Set(['--images', '--pool']), new Set(['--kill', '--tree', '--tcp-close', '--json']))
    // The default images directory is the engine's to name: without --images the full CLI runs.
    if (!split || split.positional === undefined || !/^[1-9]\d{0,9}$/.test(split.positional) || !split.values.has('--images')) return undefined
    const pid = Number(split.positional)
    if (!Number.isSafeInteger(pid) || pid > 0x7fff_ffff) return undefined
    const flag = (name: string): boolean => split.booleans.has(name)
    return {
      command, pool: split.values.get('--pool') ?? env.CXLFORK_POOL ?? DEFAULT_POOL, json: flag('--json'),
      request: {pid, images: split.values.get('--images')!, kill: flag('--kill'), tree: flag('--tree'), tcpClose: flag('--tcp-close')},
    }
  }
  if (command === 'restore') {
    const split = splitArgs(rest, new Set(['--images', '--pool', '--pidns', '--netns']), new Set(['--json']))
    if (!split || split.positional !== undefined || !split.values.has('--images')) return undefined
    const pidns = split.values.get('--pidns')
    if (pidns !== undefined && pidns !== 'new' && pidns !== 'host') return undefined
    const netns = split.values.get('--netns')
    return {
      command, pool: split.values.get('--pool') ?? env.CXLFORK_POOL ?? DEFAULT_POOL, json: split.booleans.has('--json'),
      request: {images: split.values.get('--images')!, ...(pidns === undefined ? {} : {pidns}), ...(netns === undefined ? {} : {netns})},
    }
  }
  return undefined
}

/** Print a served result, or the CLI's error envelope for a typed error; undefined to run the full CLI. */
async function served<T>(json: boolean, work: () => Promise<T | undefined>, summary: (result: T) => string): Promise<number | undefined> {
  try {
    const result = await work()
    if (result === undefined) return undefined
    if (json) out(1, JSON.stringify(result, null, 2) + '\n')
    else out(2, summary(result) + '\n')
    return 0
  } catch (error) {
    if (!(error instanceof CxlforkError)) return undefined
    if (json) out(1, JSON.stringify({error: error.toJSON()}, null, 2) + '\n')
    else out(2, ` ›   Error: ${error.message}\n ›   Code: ${error.code}\n${error.hint === undefined ? '' : ` ›   Try this: ${error.hint}\n`}`)
    return error.exitCode
  }
}

function porterMayServe(pool: string): boolean {
  return candidateSockets(resolve(pool), process.geteuid?.() ?? 0).some((socket) => existsSync(socket))
}

/** Serve `cxlfork criu dump|restore ARGS` through the porter: the exit status, or undefined to run the full CLI. */
export async function fastCriu(argv: readonly string[]): Promise<number | undefined> {
  const parsed = parseCriuArgs(argv)
  if (!parsed || !porterMayServe(parsed.pool)) return undefined
  if (parsed.command === 'dump') {
    const request = parsed.request
    return served(parsed.json, () => criuDumpThroughPorter(parsed.pool, request), criuDumpSummary)
  }
  const request = parsed.request
  return served(parsed.json, () => criuRestoreThroughPorter(parsed.pool, request), criuRestoreSummary)
}

/** Serve `cxlfork restore ARGS` through the porter: the exit status, or undefined to run the full CLI. Output is written synchronously. */
export async function fastRestore(argv: readonly string[]): Promise<number | undefined> {
  const parsed = parseRestoreArgs(argv)
  if (!parsed || !porterMayServe(parsed.pool)) return undefined
  return served(parsed.json, () => restoreThroughPorter(parsed.pool, parsed.request), restoreSummary)
}

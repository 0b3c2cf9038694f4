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
import {type PorterRestoreRequest, restoreSummary, restoreThroughPorter} from './restore-client.js'

const DEFAULT_POOL = '/dev/shm/cxlfork.pool'
const VALUE_FLAGS = new Set(['--policy', '--pidns', '--netns', '--fill-after', '--fault-pages', '--pool'])
const BOOLEAN_FLAGS = new Set(['--verify', '--record', '--json'])

interface Parsed {
  request: PorterRestoreRequest
  pool: string
  json: boolean
}

/** argv after `restore`, or undefined when the full CLI should parse it. */
export function parseRestoreArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Parsed | undefined {
  let name: string | undefined
  const values = new Map<string, string>()
  const booleans = new Set<string>()
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!
    if (!arg.startsWith('-')) {
      if (name !== undefined) return undefined
      name = arg
      continue
    }
    const eq = arg.indexOf('=')
    const flag = eq < 0 ? arg : arg.slice(0, eq)
    if (VALUE_FLAGS.has(flag)) {
      const value = eq < 0 ? argv[++i] : arg.slice(eq + 1)
      if (value === undefined || value.length === 0 || values.has(flag)) return undefined
      values.set(flag, value)
    } else if (BOOLEAN_FLAGS.has(arg)) booleans.add(arg)
    else return undefined
  }
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

/** Serve `cxlfork restore ARGS` through the porter: the exit status, or undefined to run the full CLI. Output is written synchronously. */
export async function fastRestore(argv: readonly string[]): Promise<number | undefined> {
  const parsed = parseRestoreArgs(argv)
  if (!parsed) return undefined
  const uid = process.geteuid?.() ?? 0
  if (!candidateSockets(resolve(parsed.pool), uid).some((socket) => existsSync(socket))) return undefined
  try {
    const result = await restoreThroughPorter(parsed.pool, parsed.request)
    if (!result) return undefined
    if (parsed.json) out(1, JSON.stringify(result, null, 2) + '\n')
    else out(2, restoreSummary(result) + '\n')
    return 0
  } catch (error) {
    if (!(error instanceof CxlforkError)) return undefined
    if (parsed.json) out(1, JSON.stringify({error: error.toJSON()}, null, 2) + '\n')
    else out(2, ` ›   Error: ${error.message}\n ›   Code: ${error.code}\n${error.hint === undefined ? '' : ` ›   Try this: ${error.hint}\n`}`)
    return error.exitCode
  }
}

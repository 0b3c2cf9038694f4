/**
 * The porter's function endpoints (README, "Serverless functions"):
 *
 *   GET    /v1/functions                 fn ls
 *   POST   /v1/functions                 fn deploy   {name, argv, cwd, policy?, checkpointAfter?, keepAliveMs?, maxInstances?, checkpoint?}
 *   GET    /v1/functions/NAME            one function
 *   DELETE /v1/functions/NAME            fn rm
 *   POST   /v1/functions/NAME/invoke     fn invoke   {data?}
 *
 * Bodies are checked field by field (unknown fields refused) before the
 * manager sees them; errors are the CLI's typed errors.
 */
import {isAbsolute} from 'node:path'

import {NotFoundError, UsageError} from '../../errors.js'
import type {PeerCredentials} from '../peer.js'
import type {FunctionManager} from './manager.js'
import {FUNCTION_POLICIES, type FunctionPolicy, type FunctionSpec} from './spec.js'

export interface FunctionReply {
  status: number
  body: unknown
}

function badRequest(message: string): UsageError {
  return new UsageError('PORTER_BAD_REQUEST', message, 'See the README, "Serverless functions", for the request bodies.')
}

function objectBody(body: unknown): Record<string, unknown> {
  if (body === undefined) return {}
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw badRequest('the request body must be a JSON object')
  return body as Record<string, unknown>
}

function integer(record: Record<string, unknown>, key: string, min: number, max: number, fallback: number): number {
  const value = record[key]
  if (value === undefined) return fallback
  if (!Number.isSafeInteger(value) || (value as number) < min || (value as number) > max) throw badRequest(`field ${key} must be an integer from ${min} to ${max}`)
  return value as number
}

/** Defaults of `fn deploy`. */
export const DEPLOY_DEFAULTS = {policy: 'mow' as FunctionPolicy, checkpointAfter: 16, keepAliveMs: 60_000, maxInstances: 8}

function deploySpec(body: unknown): FunctionSpec {
  const record = objectBody(body)
  const allowed = ['name', 'argv', 'cwd', 'policy', 'checkpointAfter', 'keepAliveMs', 'maxInstances', 'checkpoint']
  for (const key of Object.keys(record)) if (!allowed.includes(key)) throw badRequest(`unknown field ${JSON.stringify(key)} (expected ${allowed.join(', ')})`)
  const {name, argv, cwd, policy} = record
  if (typeof name !== 'string') throw badRequest('field name is required, a string')
  if (!Array.isArray(argv) || argv.length === 0 || argv.length > 4096 || argv.some((arg) => typeof arg !== 'string' || arg.includes('\0'))) throw badRequest('field argv is required: a non-empty array of strings')
  if (typeof cwd !== 'string' || !isAbsolute(cwd)) throw badRequest('field cwd is required: an absolute path')
  if (policy !== undefined && !(FUNCTION_POLICIES as readonly unknown[]).includes(policy)) throw badRequest(`field policy must be one of ${FUNCTION_POLICIES.join(', ')}`)
  return {
    name, argv: argv as string[], cwd, policy: (policy as FunctionPolicy | undefined) ?? DEPLOY_DEFAULTS.policy,
    checkpointAfter: integer(record, 'checkpointAfter', 0, 1_000_000, DEPLOY_DEFAULTS.checkpointAfter),
    keepAliveMs: integer(record, 'keepAliveMs', 1, 7 * 24 * 3_600_000, DEPLOY_DEFAULTS.keepAliveMs),
    maxInstances: integer(record, 'maxInstances', 1, 256, DEPLOY_DEFAULTS.maxInstances),
  }
}

/** Deploy's optional `checkpoint`: an existing checkpoint to serve the function from. */
function adoptedCheckpoint(body: unknown): string | undefined {
  const {checkpoint} = objectBody(body)
  if (checkpoint === undefined) return undefined
  if (typeof checkpoint !== 'string' || checkpoint.length === 0) throw badRequest('field checkpoint must be a checkpoint name')
  return checkpoint
}

function methodNotAllowed(method: string, path: string, allowed: string[]): UsageError {
  return new UsageError('PORTER_METHOD', `${method} is not allowed on ${path} (allowed: ${allowed.join(', ')})`, 'See the README, "Serverless functions", for the API.')
}

export async function handleFunctions(manager: FunctionManager, method: string, path: string, body: unknown, peer: PeerCredentials): Promise<FunctionReply> {
  if (path === '/v1/functions') {
    if (method === 'GET') return {status: 200, body: {functions: manager.list(peer), servedBy: 'porter'}}
    if (method === 'POST') return {status: 201, body: {...manager.deploy(deploySpec(body), peer, adoptedCheckpoint(body)), servedBy: 'porter'}}
    throw methodNotAllowed(method, path, ['GET', 'POST'])
  }
  const m = /^\/v1\/functions\/([^/]+)(\/invoke)?$/.exec(path)
  if (!m) throw new NotFoundError('PORTER_NO_ROUTE', `no such endpoint: ${method} ${path}`, 'Function endpoints are /v1/functions, /v1/functions/NAME and /v1/functions/NAME/invoke.')
  let name: string
  try {
    name = decodeURIComponent(m[1]!)
  } catch {
    throw badRequest('the function name in the path is not valid percent-encoding')
  }
  if (m[2]) {
    if (method !== 'POST') throw methodNotAllowed(method, path, ['POST'])
    const record = objectBody(body)
    for (const key of Object.keys(record)) if (key !== 'data') throw badRequest(`unknown field ${JSON.stringify(key)} (expected data)`)
    return {status: 200, body: await manager.invoke(name, record.data ?? null, peer)}
  }
  if (method === 'GET') return {status: 200, body: {...manager.show(name, peer), servedBy: 'porter'}}
  if (method === 'DELETE') return {status: 200, body: {...manager.remove(name, peer), servedBy: 'porter'}}
  throw methodNotAllowed(method, path, ['GET', 'DELETE'])
}

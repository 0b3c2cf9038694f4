/**
 * The `fn` commands' side: one request to the pool's porter, which owns the
 * functions. No porter: PORTER_NOT_RUNNING (functions need the resident
 * service; there is no in-process fallback). The porter's typed errors come
 * back as the same CxlforkErrors.
 */
import {existsSync} from 'node:fs'
import {resolve} from 'node:path'

import {CxlforkError, NotFoundError} from '../../errors.js'
import {PorterUnreachable, porterRequest} from '../client.js'
import {candidateSockets} from '../paths.js'
import {errorFromReply} from '../restore-client.js'

export async function functionsRequest(poolPath: string, socket: string | undefined, method: string, path: string, body?: unknown, timeoutMs = 600_000): Promise<unknown> {
  const sockets = socket === undefined ? candidateSockets(resolve(poolPath), process.geteuid?.() ?? 0).filter((candidate) => existsSync(candidate)) : [socket]
  for (const candidate of sockets) {
    let reply
    try {
      reply = await porterRequest(candidate, method, path, body, timeoutMs)
    } catch (error) {
      if (error instanceof PorterUnreachable && !error.requestSent) continue // a stale socket: a porter that died
      throw new CxlforkError('PORTER_FAILED', `the porter at ${candidate} did not answer: ${(error as Error).message}`,
        'It may have died in the middle (its function instances die with it). Restart it with `cxlfork porter start` and try again.')
    }
    if (reply.status >= 200 && reply.status < 300) return reply.body
    throw errorFromReply(reply.body, candidate)
  }
  throw new NotFoundError('PORTER_NOT_RUNNING', `no porter runs for pool ${resolve(poolPath)}${socket === undefined ? '' : ` at ${socket}`}`,
    'Functions are run by the porter: start it with `cxlfork porter start` (same --pool).')
}

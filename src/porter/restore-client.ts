/**
 * A restore asked of the pool's porter, for `cxlfork restore` and for the
 * fast path of bin/run.js (porter-fast.ts). The porter's typed errors come
 * back as the same CxlforkErrors the CLI would throw. `undefined` means
 * "do it yourself": no porter answers, or it does not serve this user
 * (PORTER_UNSERVED). A request that may have reached a porter that then died
 * is never redone: that is PORTER_FAILED.
 */
import {existsSync} from 'node:fs'
import {resolve} from 'node:path'

import {CxlforkError, isErrorCode} from '../errors.js'
import {PorterUnreachable, porterRequest} from './client.js'
import {candidateSockets} from './paths.js'

export interface PorterRestoreRequest {
  name: string
  policy?: string
  pidns?: string
  netns?: string
  verify?: boolean
  record?: boolean
  fillAfterMs?: number
  faultPages?: number
  memoryMax?: number
  cpuMax?: number
}

/** What the porter returns: a restore result (restore/restore.ts RestoreResult) with servedBy and ghost. */
export type PorterRestoreResult = Record<string, any> & {pid: number; servedBy: 'porter'}

export function errorFromReply(body: any, socket: string): CxlforkError {
  const error = body?.error
  if (error && typeof error.code === 'string' && isErrorCode(error.code) && typeof error.message === 'string') {
    return new CxlforkError(error.code, error.message, typeof error.hint === 'string' ? error.hint : undefined)
  }
  return new CxlforkError('PORTER_FAILED', `the porter at ${socket} gave an unexpected answer: ${JSON.stringify(body).slice(0, 300)}`, 'See its log (SOCKET.log), or restore with --no-porter.')
}

/**
 * Ask the pool's porter to do `route` for us: its reply body (which says servedBy: 'porter'),
 * or undefined when no porter answers or it does not serve this user. `what` names the work in errors.
 */
export async function askPorter(poolPath: string, route: string, request: object, what: string): Promise<Record<string, any> | undefined> {
  for (const socket of candidateSockets(resolve(poolPath), process.geteuid?.() ?? 0)) {
    if (!existsSync(socket)) continue
    let reply
    try {
      reply = await porterRequest(socket, 'POST', route, request)
    } catch (error) {
      if (error instanceof PorterUnreachable && !error.requestSent) continue // a stale socket: a porter that died
      throw new CxlforkError('PORTER_FAILED', `the porter at ${socket} did not finish the ${what}: ${(error as Error).message}`,
        `It may have died in the middle (a half-built clone dies with it; \`cxlfork pool gc\` releases its reference). Run it again, or with --no-porter.`)
    }
    if (reply.status === 200 && reply.body?.servedBy === 'porter') return reply.body as Record<string, any>
    const error = errorFromReply(reply.body, socket)
    if (error.code === 'PORTER_UNSERVED') return undefined
    throw error
  }
  return undefined
}

export async function restoreThroughPorter(poolPath: string, request: PorterRestoreRequest): Promise<PorterRestoreResult | undefined> {
  // The porter has a cwd of its own: a namespace path means what it means here.
  if (request.netns !== undefined && request.netns !== 'new') request = {...request, netns: resolve(request.netns)}
  return await askPorter(poolPath, '/v1/restore', request, 'restore') as PorterRestoreResult | undefined
}

const STDIO_NAMES = ['stdin', 'stdout', 'stderr']

/** A clone whose stdin was a pipe reads end of input at once: said where an operator sees it ('' when nothing was left on /dev/null). */
export function stdioNote(restored: {stdioOnDevNull?: {fd: number; was: string}[]; processes?: number}): string {
  const devNull = restored.stdioOnDevNull ?? []
  if (devNull.length === 0) return ''
  const what = [...new Map(devNull.map(({fd, was}) => [`${fd}${was}`, `${STDIO_NAMES[fd]} on a ${was === 'tty' ? 'terminal' : 'pipe'}`])).values()].join(', ')
  return `\nNote: the original had ${what}${(restored.processes ?? 1) > 1 ? ' (in the tree)' : ''}; the clone has /dev/null there${devNull.some(({fd}) => fd === 0) ? ': reading stdin, it sees end of input at once' : ''}. Run restore with --wait to give it this command's stdio.`
}

/** The restore command's human line for a result, whoever served it. */
export function restoreSummary(restored: object): string {
  const result = restored as Record<string, any>
  const stats = result.stats
  const warning = stdioNote(result)
  return `Restored ${result.name} as pid ${result.pid}${result.pidNamespace ? ` (pid ${result.pidNamespace.pid} in its own PID namespace)` : ''} (${result.policy}, ${result.threads} thread(s)): ${stats.pages_mapped} pages mapped, ${stats.pages_restored} copied${stats.pages_lazy > 0 ? `, ${stats.pages_lazy} on first touch (fault server ${result.faultServerPid})` : ''}, ${(stats.restore_time / 1000).toFixed(2)} ms${result.verified ? `, page data verified in ${((stats.verify_time ?? 0) / 1000).toFixed(2)} ms` : ''}${result.servedBy === 'porter' ? ' (by the porter)' : ''}${warning}`
}

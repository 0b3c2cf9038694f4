/**
 * `criu dump` and `criu restore` asked of a running porter, as `restore` is
 * (restore-client.ts): the porter keeps the CRIU-format engine loaded and
 * warm, as CRIU's own RPC service keeps criu resident, so the command costs
 * Node's start-up plus the work, without oclif or a cold engine. Paths are
 * made absolute here: the porter has a cwd of its own. Kept free of koffi
 * and of the engine, for the fast path of bin/run.js.
 */
import {resolve} from 'node:path'

import {askPorter, stdioNote} from './restore-client.js'

export interface PorterCriuDumpRequest {
  pid: number
  images: string
  kill?: boolean
  tree?: boolean
  tcpClose?: boolean
}

export interface PorterCriuRestoreRequest {
  images: string
  pidns?: string
  netns?: string
}

/** What the summary lines read of a CriuDumpResult (criu/dump.ts), whoever dumped. */
export interface DumpSummaryFields {
  files: readonly string[]
  imageBytes: number
  pages: number
  downtimeUs: number
  totalUs: number
  killed: boolean
  servedBy?: string
}

/** What the summary lines read of a CriuRestoreResult (criu/restore.ts), whoever restored. */
export interface RestoreSummaryFields {
  images: string
  pid: number
  stats: {pages_restored: number; restore_time: number}
  processes?: number
  stdioOnDevNull?: {fd: number; was: string}[]
  servedBy?: string
}

/** The porter's replies: the command's --json result with servedBy: 'porter'. */
export type PorterCriuDumpResult = DumpSummaryFields & {servedBy: 'porter'}
export type PorterCriuRestoreResult = RestoreSummaryFields & {servedBy: 'porter'}

export async function criuDumpThroughPorter(poolPath: string, request: PorterCriuDumpRequest): Promise<PorterCriuDumpResult | undefined> {
  return await askPorter(poolPath, '/v1/criu/dump', {...request, images: resolve(request.images)}, 'CRIU-format dump') as PorterCriuDumpResult | undefined
}

export async function criuRestoreThroughPorter(poolPath: string, request: PorterCriuRestoreRequest): Promise<PorterCriuRestoreResult | undefined> {
  const netns = request.netns === undefined || request.netns === 'new' ? request.netns : resolve(request.netns)
  return await askPorter(poolPath, '/v1/criu/restore', {...request, images: resolve(request.images), ...(netns === undefined ? {} : {netns})}, 'CRIU-format restore') as PorterCriuRestoreResult | undefined
}

/** The human line of `criu dump`, whoever dumped. */
export function criuDumpSummary(result: DumpSummaryFields): string {
  return `${result.files.length} images, ${result.imageBytes} bytes, ${result.pages} pages; downtime ${(result.downtimeUs / 1000).toFixed(2)} ms, total ${(result.totalUs / 1000).toFixed(1)} ms${result.killed ? '; target killed' : ''}${result.servedBy === 'porter' ? ' (by the porter)' : ''}`
}

/** The human line of `criu restore`, whoever restored. */
export function criuRestoreSummary(result: RestoreSummaryFields): string {
  return `Restored ${result.images} as pid ${result.pid}: ${result.stats.pages_restored} pages copied, ${(result.stats.restore_time / 1000).toFixed(2)} ms${result.servedBy === 'porter' ? ' (by the porter)' : ''}${stdioNote(result)}`
}

/**
 * `porter start` (in the background or the foreground), `porter stop`,
 * `porter status`: what the commands call.
 */
import {spawn} from 'node:child_process'
import {closeSync, constants, openSync, readFileSync} from 'node:fs'
import {join} from 'node:path'

import {ConflictError, CxlforkError, NotFoundError, isErrorCode} from '../errors.js'
import {projectRoot} from '../paths.js'
import {PorterUnreachable, porterRequest} from './client.js'
import {sweepRecorded} from './cgroups.js'
import {candidateSockets, defaultSocketPath, logFilePath} from './paths.js'
import {pidFileHolder, prepareSocketDir} from './socket-file.js'

export interface PorterStatus {
  running: true
  pid: number
  uid: number
  pool: string
  socket: string
  startedAt: string
  uptimeMs: number
  ghostPids: number[]
  ghosts: {target: number; kinds: string[]; ready: number; readyByKind: Record<string, number>; used: number; unfit: number; empty: number; spawned: number; lost: number; spawnFailures: number}
  recovered: {referencesReleased: number; buildsReleased: number; cgroupsRemoved: number}
  cgroups: {enabled: boolean; memory: string | null; cpu: string | null; parents: string[]; notes: string[]}
  log?: string
}

/** For `pool gc`: the cgroups left by a porter of this pool that no longer runs (a running one sweeps its own). */
export function sweepPorterCgroups(poolPath: string): number {
  let removed = 0
  for (const socket of candidateSockets(poolPath, process.geteuid?.() ?? 0)) {
    if (!pidFileHolder(socket).running) removed += sweepRecorded(`${socket}.cgroups`)
  }
  return removed
}

export function socketFor(poolPath: string, socket: string | undefined): {socket: string; isDefault: boolean} {
  return socket === undefined ? {socket: defaultSocketPath(poolPath, process.geteuid?.() ?? 0), isDefault: true} : {socket, isDefault: false}
}

function notRunning(socket: string): NotFoundError {
  return new NotFoundError('PORTER_NOT_RUNNING', `no porter runs at ${socket}`, 'Start one with `cxlfork porter start` (same --pool, or --socket).')
}

/** The running porter's status, or PORTER_NOT_RUNNING. */
export async function porterStatus(socket: string): Promise<PorterStatus> {
  try {
    const reply = await porterRequest(socket, 'GET', '/v1/status', undefined, 10_000)
    if (reply.status !== 200) throw new CxlforkError('PORTER_FAILED', `the porter at ${socket} answered ${reply.status}: ${JSON.stringify(reply.body)}`)
    return {running: true, ...reply.body} as PorterStatus
  } catch (error) {
    if (error instanceof PorterUnreachable) throw notRunning(socket)
    throw error
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Start a porter in the background: this same CLI with --foreground, in a
 * session of its own, its output appended to SOCKET.log. Resolves once it
 * answers on the socket; a porter that exits first is PORTER_FAILED with the
 * end of its log (or its own typed error, which it logs as JSON).
 */
export async function startInBackground(args: {pool: string; socket: string; isDefault: boolean; ghosts: number; ghostKinds?: string; cgroups?: boolean; group?: string}): Promise<PorterStatus> {
  // Judged (and the default directory made) before the log is created beside the socket.
  prepareSocketDir(args.socket, args.isDefault)
  const holder = pidFileHolder(args.socket)
  if (holder.running) throw new ConflictError('PORTER_RUNNING', `a porter already serves ${args.socket}${holder.pid ? ` (pid ${holder.pid})` : ''}`, 'Use it, or stop it first: `cxlfork porter stop`.')
  const log = logFilePath(args.socket)
  const out = openSync(log, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600)
  const argv = [join(projectRoot(), 'bin', 'run.js'), 'porter', 'start', '--foreground', '--json', '--pool', args.pool, '--socket', args.socket, '--ghosts', String(args.ghosts),
    ...(args.group === undefined ? [] : ['--group', args.group]), ...(args.ghostKinds === undefined ? [] : ['--ghost-kinds', args.ghostKinds]), ...(args.cgroups === false ? ['--no-cgroups'] : [])]
  const child = spawn(process.execPath, argv, {detached: true, stdio: ['ignore', out, out], env: process.env})
  closeSync(out)
  let exited: number | null | undefined
  child.on('exit', (code) => {
    exited = code
  })
  child.unref()
  const deadline = Date.now() + 20_000
  for (;;) {
    if (exited !== undefined) {
      const tail = readTail(log)
      // Its own typed error, as --json printed it last in the log.
      const at = tail.lastIndexOf('{\n  "error":')
      if (at >= 0) {
        let error: {code?: string; message?: string; hint?: string} | undefined
        try {
          error = (JSON.parse(tail.slice(at)) as {error?: typeof error}).error
        } catch {
          error = undefined
        }
        if (error?.code && error.message && isErrorCode(error.code)) throw new CxlforkError(error.code, error.message, error.hint)
      }
      throw new CxlforkError('PORTER_FAILED', `the porter exited (${exited}) before it listened on ${args.socket}: ${tail.trim().split('\n').slice(-3).join(' | ')}`, `Its log: ${log}`)
    }
    try {
      const status = await porterStatus(args.socket)
      // Only our porter counts: another one that took the socket meanwhile makes ours exit (PORTER_RUNNING, above).
      if (status.pid === child.pid) return {...status, log}
    } catch (error) {
      if (!(error instanceof NotFoundError)) throw error
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new CxlforkError('PORTER_FAILED', `the porter did not answer on ${args.socket} within 20 s`, `Its log: ${log}`)
    }
    await sleep(50)
  }
}

function readTail(path: string): string {
  try {
    const text = readFileSync(path, 'utf8')
    return text.slice(-4000)
  } catch {
    return ''
  }
}

/** Stop the porter at `socket`: SIGTERM, then SIGKILL after 10 s. Released clones are not touched. */
export async function stopPorter(socket: string): Promise<{socket: string; pid: number; signal: 'SIGTERM' | 'SIGKILL'}> {
  const holder = pidFileHolder(socket)
  if (!holder.running || holder.pid === undefined) throw notRunning(socket)
  const pid = holder.pid
  process.kill(pid, 'SIGTERM')
  const deadline = Date.now() + 10_000
  while (Date.now() < deadline) {
    if (!pidFileHolder(socket).running) return {socket, pid, signal: 'SIGTERM'}
    await sleep(25)
  }
  process.kill(pid, 'SIGKILL')
  while (pidFileHolder(socket).running) await sleep(25)
  return {socket, pid, signal: 'SIGKILL'}
}

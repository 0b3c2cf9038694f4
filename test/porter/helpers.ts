/**
 * Porter test helpers: a porter started in the foreground as a child of the
 * test (so it can be SIGKILLed and is reaped by libuv), on a socket in a
 * private directory, with requests sent straight to its socket.
 */
import {type ChildProcess, spawn} from 'node:child_process'
import {existsSync, mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {connect} from 'node:net'

import {awaitPorter} from '../../src/porter/client.js'
import {CLI, PROJECT_ROOT} from '../helpers/cli.js'

export interface RunningPorter {
  child: ChildProcess
  pid: number
  socket: string
  output: () => string
  exited: Promise<{code: number | null; signal: NodeJS.Signals | null}>
}

const dirs: string[] = []

/** A private directory (mode 0700) for sockets, removed by removeSocketDirs(). */
export function socketDir(): string {
  const dir = mkdtempSync('/tmp/cxlfork-porter-test-')
  dirs.push(dir)
  return dir
}

export function removeSocketDirs(): void {
  for (const dir of dirs.splice(0)) rmSync(dir, {recursive: true, force: true})
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** `cxlfork porter start --foreground`; resolves once it answers /v1/status. */
export async function startPorter(pool: string, socket: string, options: {ghosts?: number; env?: Record<string, string>; group?: string} = {}): Promise<RunningPorter> {
  const args = [CLI, 'porter', 'start', '--foreground', '--pool', pool, '--socket', socket, '--ghosts', String(options.ghosts ?? 2), ...(options.group ? ['--group', options.group] : [])]
  const child = spawn(process.execPath, args, {cwd: PROJECT_ROOT, env: {...process.env, ...options.env}, stdio: ['ignore', 'pipe', 'pipe']})
  let out = ''
  child.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()))
  child.stderr!.on('data', (chunk: Buffer) => (out += chunk.toString()))
  const exited = new Promise<{code: number | null; signal: NodeJS.Signals | null}>((resolve) => child.on('exit', (code, signal) => resolve({code, signal})))
  let gone = false
  void exited.then(() => (gone = true))
  const state = await awaitPorter(socket, child.pid!, () => gone)
  if (state === 'gone') throw new Error(`porter exited before it listened: ${out}`)
  if (state === 'timeout') {
    child.kill('SIGKILL')
    throw new Error(`porter did not answer within 30 s: ${out}`)
  }
  return {child, pid: child.pid!, socket, output: () => out, exited}
}

/** Stop a test's porter (SIGTERM, SIGKILL after 10 s) and wait for it. */
export async function stopPorter(porter: RunningPorter | undefined): Promise<void> {
  if (!porter || porter.child.exitCode !== null || porter.child.signalCode !== null) return
  porter.child.kill('SIGTERM')
  const timer = setTimeout(() => porter.child.kill('SIGKILL'), 10_000)
  await porter.exited
  clearTimeout(timer)
}

/** Raw bytes to the socket, the whole reply back (for malformed requests). */
export function rawExchange(socket: string, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const conn = connect(socket)
    let reply = ''
    conn.on('connect', () => conn.end(bytes))
    conn.on('data', (chunk) => (reply += chunk.toString()))
    conn.on('error', (error: NodeJS.ErrnoException) => (error.code === 'EPIPE' || error.code === 'ECONNRESET' ? resolve(reply) : reject(error)))
    conn.on('close', () => resolve(reply))
  })
}

/** The JSON body of a raw HTTP reply. */
export function replyBody(reply: string): any {
  return JSON.parse(reply.slice(reply.indexOf('\r\n\r\n') + 4))
}

/** Processes named cxlfork-stub / cxlfork-init whose pid is in `pids` and still exist (zombies excluded). */
export function livingStubs(pids: readonly number[]): number[] {
  return pids.filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
      return state !== 'Z' && /\((cxlfork-stub|cxlfork-init)\)/.test(stat)
    } catch {
      return false
    }
  })
}

/** Children of `pid` (from /proc), with their comm. */
export function childrenOf(pid: number): {pid: number; comm: string; state: string}[] {
  const found: {pid: number; comm: string; state: string}[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1')
      const close = stat.lastIndexOf(')')
      const fields = stat.slice(close + 2).split(' ')
      if (Number(fields[1]) === pid) found.push({pid: Number(entry), comm: stat.slice(stat.indexOf('(') + 1, close), state: fields[0]!})
    } catch {
      // gone
    }
  }
  return found
}

export {existsSync}

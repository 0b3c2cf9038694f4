/**
 * A porter for the bench's own pool, on a private socket, for the rows that
 * time whole commands served by it (the CRIU-format path's `criu dump` and
 * `criu restore`, as CRIU's resident RPC service would serve them). Started
 * as `cxlfork porter start --foreground`, the command a user runs, with no
 * ghosts (the CRIU-format restore does not use them), and stopped at the end.
 */
import {type ChildProcess, spawn} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {connect} from 'node:net'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {CxlforkError} from '../errors.js'

export interface BenchPorter {
  socket: string
  pool: string
  pid: number
  stop(): Promise<void>
}

/**
 * Until the socket accepts a connection (a porter binds it only once it serves). Not the porter's
 * client (porter/client.ts): the porter's replay report draws with bench's charts, and bench must
 * not import the porter back.
 */
async function listening(socket: string, gone: () => boolean, timeoutMs = 30_000): Promise<'listening' | 'gone' | 'timeout'> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (gone()) return 'gone'
    const accepted = await new Promise<boolean>((resolve) => {
      const conn = connect(socket)
      conn.once('connect', () => {
        conn.destroy()
        resolve(true)
      })
      conn.once('error', () => resolve(false))
    })
    if (accepted) return 'listening'
    if (Date.now() > deadline) return 'timeout'
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

export async function startBenchPorter(cli: {node: string; entry: string}, pool: string): Promise<BenchPorter> {
  const dir = mkdtempSync(join(tmpdir(), 'cxlfork-bench-porter-'))
  const socket = join(dir, 'porter.sock')
  const child: ChildProcess = spawn(cli.node, [cli.entry, 'porter', 'start', '--foreground', '--pool', pool, '--socket', socket, '--ghosts', '0'], {stdio: ['ignore', 'ignore', 'pipe']})
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  let gone = false
  void exited.then(() => (gone = true))
  const stop = async (): Promise<void> => {
    if (!gone) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
    }
    rmSync(dir, {recursive: true, force: true})
  }
  const state = await listening(socket, () => gone)
  if (state !== 'listening') {
    await stop()
    throw new CxlforkError('BENCH_COMMAND_FAILED', `the bench's porter ${state === 'gone' ? 'exited before it listened' : 'did not answer within 30 s'}: ${stderr.trim().slice(0, 400)}`)
  }
  return {socket, pool, pid: child.pid!, stop}
}

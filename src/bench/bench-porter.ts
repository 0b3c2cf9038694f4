/**
 * A porter for the bench's own pool, on a private socket, for the rows that
 * time whole commands served by it (the CRIU-format path's `criu dump` and
 * `criu restore`, as CRIU's resident RPC service would serve them). Started
 * as `cxlfork porter start --foreground`, the command a user runs, with no
 * ghosts (the CRIU-format restore does not use them), and stopped at the end.
 */
import {type ChildProcess, spawn} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {CxlforkError} from '../errors.js'
import {PorterUnreachable, porterRequest} from '../porter/client.js'

export interface BenchPorter {
  socket: string
  pool: string
  pid: number
  stop(): Promise<void>
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
  const deadline = Date.now() + 30_000
  for (;;) {
    if (gone) {
      await stop()
      throw new CxlforkError('BENCH_COMMAND_FAILED', `the bench's porter exited before it listened: ${stderr.trim().slice(0, 400)}`)
    }
    try {
      const reply = await porterRequest(socket, 'GET', '/v1/status', undefined, 5000)
      if (reply.status === 200 && reply.body.pid === child.pid) break
    } catch (error) {
      if (!(error instanceof PorterUnreachable)) throw error
    }
    if (Date.now() > deadline) {
      await stop()
      throw new CxlforkError('BENCH_COMMAND_FAILED', `the bench's porter did not answer within 30 s: ${stderr.trim().slice(0, 400)}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return {socket, pool, pid: child.pid!, stop}
}

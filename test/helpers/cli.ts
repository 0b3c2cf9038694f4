/**
 * The CLI run as a user runs it: `node bin/run.js ...args` in a separate
 * process, asynchronously (so a test can signal processes meanwhile), stdin
 * ignored, stdout and stderr collected. Shared by the end-to-end suites.
 */
import {type ChildProcess, spawn} from 'node:child_process'
import {join} from 'node:path'

import {projectRoot} from '../../src/paths.js'
import {trackPid} from './fixtures.js'

export const PROJECT_ROOT = projectRoot()
export const CLI = join(PROJECT_ROOT, 'bin', 'run.js')

export interface CliResult {
  args: string[]
  /** pid of the CLI process itself. */
  cliPid: number
  status: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** stdout parsed as JSON, when it is JSON. */
  json: any
  /** Wall-clock ms from spawn to exit. */
  ms: number
}

export interface CliProcess {
  child: ChildProcess
  done: Promise<CliResult>
}

export interface CliOptions {
  env?: Record<string, string>
  /** Run the CLI restricted to these CPUs (taskset -c LIST, which execs it: same pid). */
  cpus?: string
}

/** Starts the CLI; `done` settles when it exits. */
export function startCli(args: string[], options: CliOptions = {}): CliProcess {
  const t0 = performance.now()
  const argv = [process.execPath, CLI, ...args]
  if (options.cpus !== undefined) argv.unshift('taskset', '-c', options.cpus)
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: PROJECT_ROOT,
    env: {...process.env, ...options.env},
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let stdout = ''
  let stderr = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    stdout += chunk.toString()
  })
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString()
  })
  const cliPid = child.pid ?? -1
  // 'exit', not 'close': a detached clone, or the clone of `restore --wait`, inherits our pipes.
  const done = new Promise<CliResult>((resolve) => {
    child.on('error', (error) => resolve({args, cliPid, json: undefined, ms: performance.now() - t0, signal: null, status: null, stderr: String(error), stdout}))
    child.on('exit', (status, signal) => {
      // give the pipes a moment to drain what was written before exit
      setTimeout(() => {
        let json: unknown
        try {
          json = JSON.parse(stdout)
        } catch {
          json = undefined
        }
        // A moa clone's fault server (or a --record clone's recorder) is a process the test started too.
        const server = (json as {faultServerPid?: unknown} | undefined)?.faultServerPid
        if (typeof server === 'number') trackPid(server)
        resolve({args, cliPid, json, ms: performance.now() - t0, signal, status, stderr, stdout})
      }, 20)
    })
  })
  return {child, done}
}

/** Runs the CLI to completion. */
export function cli(args: string[], options: CliOptions = {}): Promise<CliResult> {
  return startCli(args, options).done
}

/** A CLI run described for assertion messages. */
export function describeRun(run: CliResult): string {
  return `cxlfork ${run.args.join(' ')} -> status ${run.status} signal ${run.signal} (${run.ms.toFixed(0)} ms)\nstdout: ${run.stdout.slice(0, 3000)}\nstderr: ${run.stderr.slice(0, 3000)}`
}

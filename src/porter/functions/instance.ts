/**
 * One running instance of a function: a real process whose fds 0-2 are pipes
 * to the porter, spoken to with the line-delimited JSON protocol (README,
 * "Serverless functions"): one request line in, one response line out, one
 * request at a time. An instance is either cold-started (the program spawned
 * from its command) or restored from the function's checkpoint into new
 * pipes. Either way it dies with the porter: a cold one is started through
 * setpriv --pdeathsig KILL, a restored one keeps its stub's death signal
 * (RestoreRequest.dieWithParent); and its stdin reaches end-of-file then.
 *
 * Spawned with posix_spawn, never child_process: the porter checkpoints the
 * instance (ptrace), and libuv, which reaps its own children, could swallow
 * the stops. The porter reaps it itself (poll()).
 */
import {existsSync, statSync} from 'node:fs'
import {Socket} from 'node:net'
import {delimiter, isAbsolute, join} from 'node:path'

import {criuRestore} from '../../criu/restore.js'
import {CxlforkError, NotFoundError} from '../../errors.js'
import type {Pool} from '../../pool/index.js'
import {type RestoreRequest, restoreFromPool} from '../../restore/restore.js'
import {close, pipe2} from '../../sys/file-io.js'
import {wait4} from '../../sys/ptrace.js'
import {posixSpawn} from '../../sys/spawn.js'
import {SIG, WNOHANG, killQuiet} from '../../sys/syscall.js'
import type {PoolFunctionPolicy} from './spec.js'

export type InstanceOrigin = 'cold' | 'restored'

/** Largest response line read from a function. */
const MAX_LINE_BYTES = 16 * 1024 * 1024
const STDERR_TAIL = 2000

/** `argv0` as execvp would find it in $PATH, or EXECUTABLE_NOT_FOUND. */
export function resolveProgram(argv0: string, cwd: string): string {
  const candidates = argv0.includes('/') ? [isAbsolute(argv0) ? argv0 : join(cwd, argv0)] : (process.env.PATH ?? '/usr/bin:/bin').split(delimiter).filter(Boolean).map((dir) => join(dir, argv0))
  for (const path of candidates) {
    try {
      if (statSync(path).isFile()) return path
    } catch {
      // not there
    }
  }
  throw new NotFoundError('EXECUTABLE_NOT_FOUND', `the function's program ${JSON.stringify(argv0)} is not ${argv0.includes('/') ? 'a file' : `in PATH (${process.env.PATH ?? ''})`}`,
    'Give a program that exists for the porter\'s user (an absolute path, or one in the porter\'s PATH).')
}

const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((path) => existsSync(path))

function failed(name: string, message: string, hint = 'See the function\'s stderr in the porter\'s log, or run its command by hand.'): CxlforkError {
  return new CxlforkError('FUNCTION_FAILED', `function ${name}: ${message}`, hint)
}

export class Instance {
  /** Invocations this instance answered. */
  served = 0
  busy = false
  /** performance.now() when it last became idle. */
  idleSince = performance.now()
  /** Set when the process ended (or was stopped): it takes no more requests. */
  ended = false
  private readonly stdin: Socket
  private readonly stdout: Socket
  private readonly stderr: Socket
  private buffered: Buffer[] = []
  private bufferedBytes = 0
  private stderrTail = ''
  private pending: {resolve: (value: unknown) => void; reject: (error: Error) => void; timer: NodeJS.Timeout} | undefined

  private constructor(readonly fn: string, readonly pid: number, readonly origin: InstanceOrigin, fds: {stdin: number; stdout: number; stderr: number},
    /** A `moa` clone's fault server, ours to reap. */
    readonly faultServerPid: number | undefined,
    /** The restore's engine statistics, for a restored instance. */
    readonly restoreStats?: Record<string, number>) {
    this.stdin = new Socket({fd: fds.stdin, readable: false, writable: true})
    this.stdout = new Socket({fd: fds.stdout, readable: true, writable: false})
    this.stderr = new Socket({fd: fds.stderr, readable: true, writable: false})
    // A function that died under a write: the EPIPE is its end, which poll() reports.
    this.stdin.on('error', () => {})
    this.stdout.on('error', () => {})
    this.stderr.on('error', () => {})
    this.stdout.on('data', (chunk: Buffer) => this.onData(chunk))
    this.stderr.on('data', (chunk: Buffer) => {
      this.stderrTail = (this.stderrTail + chunk.toString('utf8')).slice(-STDERR_TAIL)
    })
    // Its last words on stderr are read first (they say why), unless something else holds stderr open.
    const stderrEnded = new Promise<void>((resolveEnd) => {
      this.stderr.once('end', resolveEnd)
      this.stderr.once('close', resolveEnd)
    })
    this.stdout.on('end', () => {
      void Promise.race([stderrEnded, new Promise((resolveLater) => {
        setTimeout(resolveLater, 500).unref()
      })]).then(() => this.fail(failed(fn, `instance ${pid} closed its stdout${this.stderrNote()}`)))
    })
  }

  /** Spawn the function's program: fds 0-2 new pipes to us, a session of its own, SIGKILL at our death. */
  static cold(fn: string, argv: readonly string[], cwd: string): Instance {
    const program = resolveProgram(argv[0]!, cwd)
    const spawnArgv = SETPRIV ? [SETPRIV, '--pdeathsig', 'KILL', '--', program, ...argv.slice(1)] : [program, ...argv.slice(1)]
    const {result: pid, ours} = withStdioPipes((childFds) => posixSpawn({path: spawnArgv[0]!, argv: SETPRIV ? spawnArgv : [argv[0]!, ...argv.slice(1)],
      env: process.env as Record<string, string>, fds: childFds, cwd, setsid: true}))
    return new Instance(fn, pid, 'cold', ours, undefined)
  }

  /** Restore the function's checkpoint with its policy into a clone whose fds 0-2 are new pipes to us. */
  static restored(fn: string, pool: Pool, checkpoint: string, policy: PoolFunctionPolicy, stubSource?: RestoreRequest['stubSource']): Instance {
    const {result, ours} = withStdioPipes((childFds) => restoreFromPool(pool, {name: checkpoint, policy, wait: false, pidns: 'host', stdio: childFds, dieWithParent: true, ...(stubSource ? {stubSource} : {})}))
    return new Instance(fn, result.pid, 'restored', ours, result.faultServerPid, result.stats as unknown as Record<string, number>)
  }

  /** Restore the function's CRIU-format image set (`criu restore`'s engine: deserialize, copy every page) into a clone whose fds 0-2 are new pipes to us. */
  static criuRestored(fn: string, images: string): Instance {
    const {result, ours} = withStdioPipes((childFds) => criuRestore({images, wait: false, pidns: 'host', stdio: childFds, dieWithParent: true}))
    return new Instance(fn, result.pid, 'restored', ours, undefined, result.stats)
  }

  private stderrNote(): string {
    const tail = this.stderrTail.trim().split('\n').slice(-3).join(' | ')
    return tail ? ` (stderr: ${tail})` : ''
  }

  private onData(chunk: Buffer): void {
    let newline = chunk.indexOf(10)
    if (newline < 0) {
      this.buffered.push(chunk)
      this.bufferedBytes += chunk.length
      if (this.bufferedBytes > MAX_LINE_BYTES) this.fail(failed(this.fn, `instance ${this.pid} wrote a line over ${MAX_LINE_BYTES} bytes`), true)
      return
    }
    while (newline >= 0) {
      const line = Buffer.concat([...this.buffered, chunk.subarray(0, newline)]).toString('utf8')
      this.buffered = []
      this.bufferedBytes = 0
      chunk = chunk.subarray(newline + 1)
      this.onLine(line)
      newline = chunk.indexOf(10)
    }
    if (chunk.length > 0) {
      this.buffered.push(chunk)
      this.bufferedBytes = chunk.length
    }
  }

  private onLine(line: string): void {
    const pending = this.pending
    if (!pending) {
      // Output nobody asked for breaks the one-request-one-response pairing: this instance can no longer be trusted.
      this.fail(failed(this.fn, `instance ${this.pid} wrote a line without a request: ${line.slice(0, 200)}`), true)
      return
    }
    let value: unknown
    try {
      value = JSON.parse(line)
    } catch {
      this.fail(failed(this.fn, `instance ${this.pid} answered a line that is not JSON: ${JSON.stringify(line.slice(0, 200))}`,
        'A function writes exactly one JSON line per request on stdout (README, "Serverless functions"); its other output belongs on stderr.'), true)
      return
    }
    this.pending = undefined
    clearTimeout(pending.timer)
    this.served++
    pending.resolve(value)
  }

  /** Send one request; resolves with the response's JSON value. */
  invoke(request: unknown, timeoutMs: number): Promise<unknown> {
    if (this.ended) return Promise.reject(failed(this.fn, `instance ${this.pid} has ended`))
    if (this.pending) return Promise.reject(new CxlforkError('INTERNAL', `instance ${this.pid} is busy`))
    return new Promise((resolvePromise, reject) => {
      const timer = setTimeout(() => this.fail(failed(this.fn, `instance ${this.pid} did not answer within ${timeoutMs} ms${this.stderrNote()}`), true), timeoutMs)
      this.pending = {resolve: resolvePromise, reject, timer}
      this.stdin.write(JSON.stringify(request) + '\n')
    })
  }

  /** The pending request fails with `error`; `stop`: and the instance is killed (it broke the protocol). */
  private fail(error: Error, stop = false): void {
    const pending = this.pending
    this.pending = undefined
    if (pending) {
      clearTimeout(pending.timer)
      pending.reject(error)
    }
    if (stop) this.stop()
    else this.ended = true
  }

  /** Reap the instance if it ended: true once it is gone. */
  poll(): boolean {
    let status
    try {
      status = wait4(this.pid, WNOHANG)
    } catch {
      status = {} // ECHILD: reaped already
    }
    if (!status) return false
    this.fail(failed(this.fn, `instance ${this.pid} exited${this.stderrNote()}`))
    this.release()
    return true
  }

  /** SIGKILL and reap it (and its fault server); closes our pipe ends. */
  stop(): void {
    this.ended = true
    killQuiet(this.pid, SIG.KILL)
    try {
      wait4(this.pid, 0)
    } catch {
      // reaped already
    }
    this.fail(failed(this.fn, `instance ${this.pid} was stopped`))
    this.release()
  }

  private release(): void {
    this.ended = true
    if (this.faultServerPid !== undefined) {
      killQuiet(this.faultServerPid, SIG.KILL)
      try {
        wait4(this.faultServerPid, 0)
      } catch {
        // reaped already
      }
    }
    this.stdin.destroy()
    this.stdout.destroy()
    this.stderr.destroy()
  }
}

/**
 * Three new pipes: `start` gets the child's ends (its fds 0, 1, 2) and makes the child;
 * ours are kept, the child's closed here once it has them (all six on failure).
 */
function withStdioPipes<T>(start: (childFds: [number, number, number]) => T): {result: T; ours: {stdin: number; stdout: number; stderr: number}} {
  const pipes = [pipe2(), pipe2(), pipe2()] as const
  let result: T
  try {
    result = start([pipes[0][0], pipes[1][1], pipes[2][1]])
  } catch (error) {
    for (const pair of pipes) for (const fd of pair) close(fd)
    throw error
  }
  close(pipes[0][0])
  close(pipes[1][1])
  close(pipes[2][1])
  return {result, ours: {stdin: pipes[0][1], stdout: pipes[1][0], stderr: pipes[2][0]}}
}

/**
 * Test helpers for the real-process fixtures in fixtures/ (protocol: fixtures/README.md).
 *
 * The test process only STARTS fixtures (child_process is fine for that: nothing in this
 * process ever ptraces them; the separate `cxlfork` CLI process does). Everything a helper
 * starts, plus any pid/dir registered with trackPid()/trackDir(), is killed and removed by
 * cleanupAll(), meant for an afterEach hook; a process 'exit' hook is the last resort.
 */
import {type ChildProcess, execFile, spawn} from 'node:child_process'
import {createHash} from 'node:crypto'
import {closeSync, existsSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync} from 'node:fs'
import {mkdir, mkdtemp, readdir, readFile, rename, rm} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {basename, join} from 'node:path'
import {promisify} from 'node:util'

import {projectRoot} from '../../src/paths.js'

const execFileP = promisify(execFile)
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** gcc flags for every fixture; threads.c additionally gets -pthread. */
export const FIXTURE_CFLAGS: readonly string[] = ['-O1', '-g', '-Wall', '-Wextra']

// ---------------------------------------------------------------------------------------
// Log parsing

/** One line of a fixture log: `KIND pid=<pid> key=value ...`. */
export interface LogEvent {
  /** READY, TICK, CHECK, GREW, EXIT or FATAL. */
  kind: string
  /** Value of the pid= field (the pid of the process that wrote the line); -1 if absent. */
  pid: number
  /** Every key=value token of the line, values as strings. */
  fields: Record<string, string>
  /** The raw line without its newline. */
  line: string
  /** 0-based line number in the log. */
  index: number
}

export function parseLogLine(line: string, index = 0): LogEvent {
  const [kind = '', ...tokens] = line.trim().split(/\s+/)
  const fields: Record<string, string> = {}
  for (const t of tokens) {
    const eq = t.indexOf('=')
    if (eq > 0) fields[t.slice(0, eq)] = t.slice(eq + 1)
  }
  const pid = fields.pid === undefined ? -1 : Number(fields.pid)
  return {fields, index, kind, line, pid: Number.isInteger(pid) ? pid : -1}
}

/**
 * All complete lines of a fixture log (a trailing line without its newline is still being
 * written and is left out). A missing file reads as no events.
 */
export function readLog(logPath: string): LogEvent[] {
  let text: string
  try {
    text = readFileSync(logPath, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw error
  }
  const end = text.lastIndexOf('\n')
  if (end < 0) return []
  return text
    .slice(0, end)
    .split('\n')
    .map((line, i) => parseLogLine(line, i))
}

function logTail(logPath: string, lines = 8): string {
  const events = readLog(logPath)
  if (events.length === 0) return '  (log empty or missing)'
  return events
    .slice(-lines)
    .map((e) => '  ' + e.line)
    .join('\n')
}

export interface WaitOptions {
  /** Only consider lines with index >= fromIndex (e.g. readLog(p).length before a signal). */
  fromIndex?: number | undefined
  /** Words for the timeout message, e.g. "CHECK from pid 123". */
  what?: string | undefined
}

/** The first event (at or after fromIndex) matching predicate; rejects after timeoutMs. */
export async function waitForLine(
  logPath: string,
  predicate: (e: LogEvent) => boolean,
  timeoutMs = 10_000,
  options: WaitOptions = {},
): Promise<LogEvent> {
  const from = options.fromIndex ?? 0
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const hit = readLog(logPath).find((e) => e.index >= from && predicate(e))
    if (hit) return hit
    if (Date.now() > deadline) {
      throw new Error(
        `waitForLine: no ${options.what ?? 'matching line'} in ${logPath} within ${timeoutMs} ms; last lines:\n` +
          logTail(logPath),
      )
    }
    await sleep(20)
  }
}

/** The last TICK written by pid, if any. */
export function lastTick(logPath: string, pid: number): LogEvent | undefined {
  return readLog(logPath)
    .filter((e) => e.kind === 'TICK' && e.pid === pid)
    .pop()
}

/** Waits for `count` new TICK lines from pid (written after the call) and returns them. */
export async function waitForTicks(logPath: string, pid: number, count = 2, timeoutMs = 5000): Promise<LogEvent[]> {
  const from = readLog(logPath).length
  const ticks = () => readLog(logPath).filter((e) => e.index >= from && e.kind === 'TICK' && e.pid === pid)
  await waitForLine(logPath, () => ticks().length >= count, timeoutMs, {what: `${count} TICKs from pid ${pid}`})
  return ticks().slice(0, count)
}

/**
 * Sends `signal` to pid and waits for the first `kind` line from that pid written after
 * the signal was sent. Works for any pid writing to logPath, e.g. a restored clone.
 */
export async function signalAndWait(
  logPath: string,
  pid: number,
  signal: NodeJS.Signals,
  kind: string,
  timeoutMs = 10_000,
): Promise<LogEvent> {
  const fromIndex = readLog(logPath).length
  process.kill(pid, signal)
  return waitForLine(logPath, (e) => e.kind === kind && e.pid === pid, timeoutMs, {
    fromIndex,
    what: `${kind} from pid ${pid} after ${signal}`,
  })
}

/** SIGUSR1 -> the CHECK line (look at fields.ok: "1" or "0", fields.why). */
export const requestCheck = (logPath: string, pid: number, timeoutMs = 20_000) =>
  signalAndWait(logPath, pid, 'SIGUSR1', 'CHECK', timeoutMs)
/** SIGUSR2 -> the GREW line. */
export const requestGrow = (logPath: string, pid: number, timeoutMs = 10_000) =>
  signalAndWait(logPath, pid, 'SIGUSR2', 'GREW', timeoutMs)
/** SIGTERM -> the EXIT line (the process then exits 0; reaping is its parent's business). */
export const requestExit = (logPath: string, pid: number, timeoutMs = 10_000) =>
  signalAndWait(logPath, pid, 'SIGTERM', 'EXIT', timeoutMs)

// ---------------------------------------------------------------------------------------
// /proc

export interface ProcStat {
  /** R, S, D, T, t, Z, X, ... */
  state: string
  ppid: number
  /** Number of threads. */
  threads: number
  /** Process group and session ids (as the host sees them). */
  pgrp: number
  session: number
  /** Start time in clock ticks since boot: with the pid, identifies a process across pid reuse. */
  starttime: string
}

/** Parsed /proc/PID/stat, or undefined when the pid does not exist. */
export function procStat(pid: number): ProcStat | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8')
  } catch {
    return undefined
  }
  // comm (field 2) may contain spaces and parentheses: split after the last ')'
  const f = text.slice(text.lastIndexOf(')') + 2).split(' ')
  // f[0] is field 3 (state); field N is f[N - 3]
  return {ppid: Number(f[1]), pgrp: Number(f[2]), session: Number(f[3]), starttime: f[19] ?? '', state: f[0] ?? '?', threads: Number(f[17])}
}

/** True while pid is a live process; false once it is gone OR a zombie (dead, not yet reaped). */
export function processExists(pid: number): boolean {
  const st = procStat(pid)
  return st !== undefined && st.state !== 'Z' && st.state !== 'X'
}

/** fd number -> readlink target (e.g. "/dev/null", "socket:[1234]") of every open fd of pid. */
export function fdTargets(pid: number): Map<number, string> {
  const out = new Map<number, string>()
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.set(Number(name), readlinkSync(`/proc/${pid}/fd/${name}`))
    } catch {
      // closed while listing
    }
  }
  return out
}

/** Live processes (not zombies), other than `except`, holding `path` open: a fixture's log names the target and every clone or leftover of it. */
export function holdersOf(path: string, except: readonly number[] = []): number[] {
  const out: number[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || except.includes(Number(name))) continue
    let fds: string[]
    try {
      fds = readdirSync(`/proc/${name}/fd`)
    } catch {
      continue
    }
    if (fds.some((fd) => {
      try {
        return readlinkSync(`/proc/${name}/fd/${fd}`) === path
      } catch {
        return false // closed meanwhile
      }
    })) out.push(Number(name))
  }
  return out.filter((pid) => processExists(pid))
}

/** Polls until pid is gone or a zombie. Resolves true if it ended within timeoutMs. */
export async function waitForExit(pid: number, timeoutMs = 5000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs
  while (processExists(pid)) {
    if (Date.now() > deadline) return false
    await sleep(10)
  }
  return true
}

/** SIGKILL a child_process child that is still running and wait until it has exited (and is reaped). */
export async function killChild(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGKILL')
  await exited
}

// ---------------------------------------------------------------------------------------
// Tracking and cleanup

interface SpawnedChild {
  child: ChildProcess
  reaped: Promise<ExitStatus>
}

export interface ExitStatus {
  code: number | null
  signal: NodeJS.Signals | null
}

const spawned = new Map<number, SpawnedChild>()
/** pid -> starttime when tracked; a pid whose starttime changed was reused: never kill it. */
const trackedPids = new Map<number, string>()
const trackedDirs = new Set<string>()
let exitHookInstalled = false

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  // Last resort (mocha runs with --exit): synchronous, so it cannot await anything.
  process.on('exit', () => {
    for (const pid of [...spawned.keys(), ...trackedPids.keys()]) killIfSame(pid)
    for (const dir of trackedDirs) rmSync(dir, {force: true, recursive: true})
  })
}

function killIfSame(pid: number): boolean {
  const st = procStat(pid)
  const want = trackedPids.get(pid)
  if (!st || (want !== undefined && st.starttime !== want)) return false
  try {
    process.kill(pid, 'SIGKILL')
    return true
  } catch {
    return false
  }
}

/**
 * Registers a process that cleanupAll() must SIGKILL, e.g. a restored clone. Its start time
 * is recorded, so a pid that is reused by an unrelated process later is left alone.
 * No-op for a pid that does not exist.
 */
export function trackPid(pid: number): void {
  installExitHook()
  const st = procStat(pid)
  if (st) trackedPids.set(pid, st.starttime)
}

/** Alias of trackPid: "reap this later". */
export const reapLater = trackPid

/** Stops tracking pid (e.g. after a test reaped it itself). */
export function untrackPid(pid: number): void {
  trackedPids.delete(pid)
}

/** Registers a directory for cleanupAll() to remove recursively. */
export function trackDir(dir: string): void {
  installExitHook()
  trackedDirs.add(dir)
}

/** pids and directories currently tracked (started by a helper or registered). */
export function tracked(): {pids: number[]; dirs: string[]} {
  return {dirs: [...trackedDirs], pids: [...new Set([...spawned.keys(), ...trackedPids.keys()])]}
}

export interface CleanupReport {
  /** pids that were still alive and got SIGKILL. */
  killed: number[]
  /** pids still alive (not counting zombies) after the grace period: a leak. */
  survivors: number[]
  removedDirs: string[]
}

/**
 * SIGKILLs every process a helper started or trackPid() registered, reaps the ones that are
 * this process's children, waits for the others to die, and removes every tracked directory.
 * Never throws; look at the report (survivors should be empty).
 */
export async function cleanupAll(graceMs = 5000): Promise<CleanupReport> {
  const report: CleanupReport = {killed: [], removedDirs: [], survivors: []}
  const children = [...spawned.entries()]
  const others = [...trackedPids.keys()].filter((pid) => !spawned.has(pid))
  for (const [pid, s] of children) {
    if (s.child.exitCode === null && s.child.signalCode === null && processExists(pid)) {
      s.child.kill('SIGKILL')
      report.killed.push(pid)
    }
  }
  for (const pid of others) {
    if (processExists(pid) && killIfSame(pid)) report.killed.push(pid)
  }
  const timeout = sleep(graceMs).then(() => undefined)
  await Promise.all(children.map(([, s]) => Promise.race([s.reaped, timeout])))
  for (const [pid, s] of children) {
    const reaped = s.child.exitCode !== null || s.child.signalCode !== null
    if (!reaped && processExists(pid)) {
      report.survivors.push(pid)
    } else {
      spawned.delete(pid)
      trackedPids.delete(pid)
    }
  }
  for (const pid of others) {
    const want = trackedPids.get(pid)
    const ended = (await waitForExit(pid, graceMs)) || procStat(pid)?.starttime !== want
    if (ended) trackedPids.delete(pid)
    else report.survivors.push(pid)
  }
  for (const dir of [...trackedDirs]) {
    await rm(dir, {force: true, recursive: true})
    trackedDirs.delete(dir)
    report.removedDirs.push(dir)
  }
  return report
}

// ---------------------------------------------------------------------------------------
// Compiling and starting fixtures

/** The fixtures/ directory of the project. */
export function fixturesDir(): string {
  return join(projectRoot(), 'fixtures')
}

/** Names of every fixture: fixtures/*.c and fixtures/*.py without extension. */
export function fixtureNames(): string[] {
  return readdirSync(fixturesDir())
    .filter((f) => (f.endsWith('.c') || f.endsWith('.py') || f.endsWith('.cjs')) && f !== 'fxproto.py') // fxproto.py is the Python fixtures' shared module
    .map((f) => f.replace(/\.(c|py|cjs)$/, ''))
    .sort()
}

let compiled: Promise<string> | undefined

/**
 * Compiles every fixtures/*.c once per test run (memoized) into
 * os.tmpdir()/cxlfork-fixtures-<hash of sources, flags and gcc version>, reused across runs
 * while nothing changes. Resolves to that directory, which holds one binary per .c file.
 */
export function compileFixtures(): Promise<string> {
  compiled ??= doCompile().catch((error: unknown) => {
    compiled = undefined
    throw error
  })
  return compiled
}

async function doCompile(): Promise<string> {
  const src = fixturesDir()
  const files = (await readdir(src)).filter((f) => /\.(c|h)$/.test(f)).sort()
  const cfiles = files.filter((f) => f.endsWith('.c'))
  const hash = createHash('sha256')
  hash.update((await execFileP('gcc', ['--version'])).stdout)
  hash.update(FIXTURE_CFLAGS.join(' '))
  for (const f of files) hash.update(`\0${f}\0`).update(await readFile(join(src, f)))
  const out = join(tmpdir(), `cxlfork-fixtures-${hash.digest('hex').slice(0, 16)}`)
  const binaries = cfiles.map((f) => join(out, basename(f, '.c')))
  if (binaries.every((b) => existsSync(b))) return out

  // Build into a private staging dir and rename it into place: concurrent runs never see
  // a half-written binary, and the loser of a rename race simply uses the winner's.
  await mkdir(tmpdir(), {recursive: true})
  const stage = await mkdtemp(`${out}.tmp-`)
  try {
    await Promise.all(
      cfiles.map(async (f) => {
        const args = [...FIXTURE_CFLAGS, ...(f === 'threads.c' ? ['-pthread'] : []), '-I', src]
        args.push('-o', join(stage, basename(f, '.c')), join(src, f))
        try {
          await execFileP('gcc', args)
        } catch (error) {
          const e = error as {stderr?: string; message: string}
          throw new Error(`compileFixtures: gcc ${args.join(' ')} failed:\n${e.stderr ?? e.message}`)
        }
      }),
    )
    try {
      await rename(stage, out)
    } catch (error) {
      if (!binaries.every((b) => existsSync(b))) throw error
    }
  } finally {
    await rm(stage, {force: true, recursive: true})
  }
  return out
}

export interface StartOptions {
  /** Extra arguments after LOGFILE, e.g. ['--seed', '7']. */
  args?: readonly string[] | undefined
  /** Adds `--mib N` (memtouch, pyheap). */
  mib?: number | undefined
  /** How long to wait for READY (default 30 s). */
  timeoutMs?: number | undefined
  /**
   * 'null' (default): stdin, stdout and stderr are /dev/null.
   * 'file': stdout and stderr go to DIR/stdio.txt (then a restore must reopen that file too).
   */
  stdio?: 'file' | 'null' | undefined
}

export interface Fixture {
  readonly name: string
  readonly pid: number
  /** DIR/NAME.log: the fixture's log, opened by it once with O_APPEND. */
  readonly logPath: string
  /** The fixture's private temp dir (cwd, log, memtouch's .map file); removed by stop(). */
  readonly dir: string
  readonly readyLine: string
  readonly ready: LogEvent
  readonly child: ChildProcess
  /** Sends a signal (default SIGTERM) to the original process; false if it is gone. */
  kill(signal?: NodeJS.Signals | number): boolean
  /** SIGKILL (if still running), reap, remove the temp dir, stop tracking. */
  stop(): Promise<void>
  /** Resolves once the original process has exited and been reaped. */
  exited(): Promise<ExitStatus>
  /** requestCheck / requestGrow / requestExit for this fixture's own pid. */
  check(timeoutMs?: number): Promise<LogEvent>
  grow(timeoutMs?: number): Promise<LogEvent>
  terminate(timeoutMs?: number): Promise<LogEvent>
}

/**
 * Starts fixture `name` (fixtures/NAME.c, compiled on demand, or fixtures/NAME.py run by
 * python3) in its own temp dir and waits for its READY line.
 */
export async function startFixture(name: string, options: StartOptions = {}): Promise<Fixture> {
  const src = fixturesDir()
  let command: string
  let prefix: string[] = []
  if (existsSync(join(src, `${name}.c`))) {
    command = join(await compileFixtures(), name)
  } else if (existsSync(join(src, `${name}.py`))) {
    command = 'python3'
    prefix = ['-B', join(src, `${name}.py`)]
  } else if (existsSync(join(src, `${name}.cjs`))) {
    // Node cannot close what it inherited without risking its own fds: a shell closes every fd above 2, then execs it.
    command = 'bash'
    prefix = ['-c', 'for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-"; done 2>/dev/null; exec "$0" "$@"',
      process.execPath, join(src, `${name}.cjs`)]
  } else {
    throw new Error(`startFixture: no fixture '${name}' in ${src} (have: ${fixtureNames().join(', ')})`)
  }

  installExitHook()
  const dir = await mkdtemp(join(tmpdir(), `cxlfork-fx-${name}-`))
  trackDir(dir)
  const logPath = join(dir, `${name}.log`)
  const args = [...prefix, logPath, ...(options.mib === undefined ? [] : ['--mib', String(options.mib)])]
  args.push(...(options.args ?? []))

  const stdioPath = join(dir, 'stdio.txt')
  const outFd = options.stdio === 'file' ? openSync(stdioPath, 'a') : undefined
  let child: ChildProcess
  try {
    child = spawn(command, args, {
      cwd: dir,
      env: {...process.env, PYTHONDONTWRITEBYTECODE: '1', PYTHONHASHSEED: '0'},
      stdio: outFd === undefined ? ['ignore', 'ignore', 'ignore'] : ['ignore', outFd, outFd],
    })
  } finally {
    if (outFd !== undefined) closeSync(outFd)
  }

  let spawnError: Error | undefined
  child.on('error', (error) => {
    spawnError = error
  })
  const reaped = new Promise<ExitStatus>((resolve) => {
    child.on('exit', (code, signal) => resolve({code, signal}))
    child.on('error', () => resolve({code: null, signal: null}))
  })
  const pid = child.pid
  if (pid === undefined) {
    await reaped
    throw new Error(`startFixture(${name}): spawn ${command} failed: ${spawnError?.message ?? 'no pid'}`)
  }
  spawned.set(pid, {child, reaped})

  const describeFailure = (what: string) => {
    const stdio = existsSync(stdioPath) ? `\nstdio:\n${readFileSync(stdioPath, 'utf8')}` : ''
    return `startFixture(${name}) pid ${pid}: ${what}\n${command} ${args.join(' ')}\nlog ${logPath}:\n${logTail(logPath)}${stdio}`
  }

  const timeoutMs = options.timeoutMs ?? 30_000
  const deadline = Date.now() + timeoutMs
  let ready: LogEvent | undefined
  while (!ready) {
    ready = readLog(logPath).find((e) => e.kind === 'READY' && e.pid === pid)
    if (ready) break
    if (child.exitCode !== null || child.signalCode !== null || spawnError) {
      const st = child.exitCode === null ? `signal ${child.signalCode}` : `exit code ${child.exitCode}`
      await stopChild(pid)
      throw new Error(describeFailure(spawnError ? spawnError.message : `exited with ${st} before READY`))
    }
    if (Date.now() > deadline) {
      await stopChild(pid)
      throw new Error(describeFailure(`no READY within ${timeoutMs} ms`))
    }
    await sleep(20)
  }

  const readyEvent = ready
  return {
    check: (t?: number) => requestCheck(logPath, pid, t),
    child,
    dir,
    exited: () => reaped,
    grow: (t?: number) => requestGrow(logPath, pid, t),
    kill(signal: NodeJS.Signals | number = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return false
      return child.kill(signal)
    },
    logPath,
    name,
    pid,
    ready: readyEvent,
    readyLine: readyEvent.line,
    async stop() {
      await stopChild(pid)
      await rm(dir, {force: true, recursive: true})
      trackedDirs.delete(dir)
    },
    terminate: (t?: number) => requestExit(logPath, pid, t),
  }
}

async function stopChild(pid: number): Promise<void> {
  const s = spawned.get(pid)
  if (!s) return
  if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL')
  await s.reaped
  spawned.delete(pid)
  trackedPids.delete(pid)
}

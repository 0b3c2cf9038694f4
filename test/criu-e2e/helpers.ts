/**
 * Helpers of the CRIU-format end-to-end tests (test/criu-e2e/*.test.ts): the CLI run as a
 * user runs it (a separate process), per-test image directories and pool files on /dev/shm
 * (own names, removed by cleanupAll()), crit, /proc readings and leak checks.
 * The CLI runner is test/helpers/cli.ts, shared with the restore suites.
 */
import assert from 'node:assert/strict'
import {execFile, spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {type Fixture, type LogEvent, lastTick, procStat, readLog, startFixture, trackDir, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {printMeasurements} from '../helpers/measurements.js'
import {type CliResult, cli, describeRun} from '../helpers/cli.js'
import {comm, statusBytes, until} from '../restore/helpers.js'

const execFileP = promisify(execFile)

export const MIB = 1 << 20
export const PAGE = 4096

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------
// Scratch paths: /dev/shm/cxlfork-criu-e2e-<test pid>-<tag>-<n>[.pool]

const PREFIX = `cxlfork-criu-e2e-${process.pid}-`
let counter = 0

/** A fresh (not yet existing) image directory path on /dev/shm; cleanupAll() removes it. */
export function imagesDir(tag: string): string {
  const path = `/dev/shm/${PREFIX}${tag}-${counter++}`
  trackDir(path)
  return path
}

/** A fresh pool file path on /dev/shm; cleanupAll() removes it. */
export function poolFile(tag: string): string {
  const path = `/dev/shm/${PREFIX}${tag}-${counter++}.pool`
  trackDir(path)
  return path
}

/** Safety net for an after() hook: removes anything this test process left on /dev/shm. */
export function removeScratch(): void {
  for (const name of readdirSync('/dev/shm')) {
    if (name.startsWith(PREFIX)) rmSync(join('/dev/shm', name), {force: true, recursive: true})
  }
}

// ---------------------------------------------------------------------------------------
// The CLI

export {CLI, PROJECT_ROOT, type CliResult, cli, describeRun} from '../helpers/cli.js'

/** Asserts a successful --json run and returns its JSON. */
export function okJson(run: CliResult): any {
  assert.equal(run.status, 0, describeRun(run))
  assert.ok(run.json && typeof run.json === 'object' && !('error' in run.json), describeRun(run))
  return run.json
}

export interface ExpectedError {
  exitCode: number
  code: string | RegExp
  /** Every pattern must match the message. */
  message: (string | RegExp)[]
}

/** Asserts a failed --json run with a typed error envelope; returns the error object. */
export function expectCliError(run: CliResult, want: ExpectedError): {code: string; message: string; hint?: string; exitCode: number} {
  assert.equal(run.status, want.exitCode, `exit status ${want.exitCode} expected\n${describeRun(run)}`)
  assert.ok(run.json && run.json.error, `a JSON error envelope on stdout\n${describeRun(run)}`)
  const error = run.json.error
  if (typeof want.code === 'string') assert.equal(error.code, want.code, describeRun(run))
  else assert.match(error.code, want.code, describeRun(run))
  assert.equal(error.exitCode, want.exitCode, 'the envelope carries the exit status')
  assert.equal(typeof error.message, 'string')
  for (const pattern of want.message) {
    if (typeof pattern === 'string') assert.ok(error.message.includes(pattern), `message names ${pattern}: ${error.message}`)
    else assert.match(error.message, pattern)
  }
  assert.ok(error.hint, `the error carries a hint: ${JSON.stringify(error)}`)
  assert.notEqual(error.code, 'INTERNAL', 'a typed error, not an internal one')
  return error
}

// ---------------------------------------------------------------------------------------
// crit

/** Oldest CRIU major version the real-CRIU tests take. */
const CRIU_MIN_MAJOR = 4

/** CRIU_BIN's version if it is a runnable CRIU >= 4, else why not. */
export function realCriu(): {bin: string; version: string} | {skip: string} {
  const bin = process.env['CRIU_BIN']
  if (!bin) return {skip: 'CRIU_BIN is not set'}
  const run = spawnSync(bin, ['--version'], {encoding: 'utf8'})
  const match = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(run.stdout ?? '')
  if (run.status !== 0 || !match) return {skip: `${bin} --version failed: ${run.error?.message ?? run.stderr}`}
  const version = match.slice(1).filter((part) => part !== undefined).join('.')
  if (Number(match[1]) < CRIU_MIN_MAJOR) return {skip: `${bin} is CRIU ${version}, not ${CRIU_MIN_MAJOR}.x`}
  return {bin, version}
}

/** CRIU's errors from its log (-o LOG -v4 in DIR), for assertion messages. */
export function criuErrors(dir: string, log: string): string {
  try {
    return readFileSync(join(dir, log), 'utf8').split('\n').filter((line) => /Error|Warn/.test(line)).slice(-12).join('\n')
  } catch {
    return '(no log)'
  }
}

/**
 * Start `fixture`, dump it with `cxlfork criu dump --kill` into a new images dir `tag`, and have
 * real CRIU restore it detached under its own pid. Returns the fixture and the restored process's
 * start time (to kill only that process afterwards).
 */
export async function cxlforkDumpRealRestore(criuBin: string, fixture: string, tag: string, options: Parameters<typeof startFixture>[1] = {}): Promise<{fx: Fixture; started: string | undefined}> {
  const fx = await startFixture(fixture, options)
  await waitForTicks(fx.logPath, fx.pid, 2)
  const images = imagesDir(tag)
  okJson(await cli(['criu', 'dump', String(fx.pid), '--kill', '--images', images, '--json']))
  await fx.exited()
  const restore = spawnSync(criuBin, ['restore', '-D', images, '-d', '--shell-job', '-v4', '-o', 'restore.log'], {encoding: 'utf8'})
  assert.equal(restore.status, 0, `criu restore -D ${images} failed:\n${criuErrors(images, 'restore.log')}`)
  return {fx, started: procStat(fx.pid)?.starttime}
}

export type Json = any

/** Runs crit, resolves with {status, stdout, stderr} (never throws on a non-zero exit). */
export async function critRun(...args: string[]): Promise<{status: number; stdout: string; stderr: string}> {
  try {
    const {stdout, stderr} = await execFileP('crit', args, {encoding: 'utf8', maxBuffer: 256 << 20})
    return {status: 0, stderr, stdout}
  } catch (error) {
    const e = error as {code?: number; stdout?: string; stderr?: string; message: string}
    return {status: typeof e.code === 'number' ? e.code : -1, stderr: e.stderr ?? e.message, stdout: e.stdout ?? ''}
  }
}

/** Runs crit and asserts it succeeded; returns stdout. */
export async function crit(...args: string[]): Promise<string> {
  const run = await critRun(...args)
  assert.equal(run.status, 0, `crit ${args.join(' ')} failed:\n${run.stderr.slice(-2000)}`)
  return run.stdout
}

/** JSON with every integer of 15+ digits kept as a string (crit prints u64 values beyond 2^53). */
export function parseBigJson(text: string): Json {
  return JSON.parse(text.replace(/([:[,]\s*)(-?\d{15,})(?=\s*[,\]}])/g, '$1"$2"'))
}

/** `crit decode -i FILE` (plain, numeric) parsed; throws with crit's stderr on failure. */
export async function critDecode(file: string): Promise<Json> {
  return parseBigJson(await crit('decode', '-i', file))
}

/** A decoded number (number, decimal or 0x-hex string) as bigint. */
export function big(value: unknown): bigint {
  if (typeof value === 'bigint') return value
  if (typeof value === 'number') return BigInt(value)
  if (typeof value === 'string') return BigInt(value)
  throw new TypeError(`not a number: ${JSON.stringify(value)}`)
}

// ---------------------------------------------------------------------------------------
// /proc


export {comm, statusBytes}

export interface MapsEntry {
  start: bigint
  end: bigint
  perms: string
  offset: bigint
  path: string
}

export function readMaps(pid: number): MapsEntry[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$/.exec(line)
      if (!m) throw new Error(`unparsable maps line: ${line}`)
      return {end: BigInt('0x' + m[2]), offset: BigInt('0x' + m[4]), path: m[5]!.trim(), perms: m[3]!, start: BigInt('0x' + m[1])}
    })
}

/** /proc/PID/syscall: [nr, ...args, sp, pc] when blocked in a syscall, undefined otherwise. */
export function procSyscall(pid: number): {nr: number; sp: bigint; pc: bigint} | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/syscall`, 'utf8').trim()
  } catch {
    return undefined
  }
  const f = text.split(/\s+/)
  if (f.length !== 9 || !/^\d+$/.test(f[0]!)) return undefined
  return {nr: Number(f[0]), pc: BigInt(f[8]!), sp: BigInt(f[7]!)}
}

function linksOf(pid: number): string[] {
  const out: string[] = []
  try {
    out.push(readlinkSync(`/proc/${pid}/cwd`))
  } catch {
    // gone or not ours to read
  }
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        out.push(readlinkSync(`/proc/${pid}/fd/${fd}`))
      } catch {
        // closed meanwhile
      }
    }
  } catch {
    // gone
  }
  return out
}

/**
 * Live (non-zombie) processes other than `except` whose cwd or any fd lies in `dir` (a
 * fixture's private temp dir): a restored clone of that fixture, finished or half-built,
 * always has its cwd there and its log reopened from there.
 */
export function processesUsing(dir: string, except: readonly number[]): {pid: number; comm: string; links: string[]}[] {
  const out: {pid: number; comm: string; links: string[]}[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    if (except.includes(pid) || pid === process.pid) continue
    const st = procStat(pid)
    if (!st || st.state === 'Z' || st.state === 'X') continue
    const links = linksOf(pid).filter((link) => link === dir || link.startsWith(dir + '/'))
    if (links.length > 0) out.push({comm: comm(pid) ?? '?', links, pid})
  }
  return out
}

/** pids of live processes named `name` (e.g. the restore stub, "cxlfork-stub"). */
export function pidsNamed(name: string): number[] {
  const out: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const pid = Number(entry)
    if (comm(pid) !== name) continue
    const st = procStat(pid)
    if (st && st.state !== 'Z' && st.state !== 'X') out.push(pid)
  }
  return out
}

export const STUB_COMM = 'cxlfork-stub'

/**
 * Stubs that appeared since `before` and are orphans (parent = init or the finished CLI).
 * Other sessions' restores running concurrently own stubs whose parent is their live CLI:
 * those are not counted.
 */
export function orphanStubs(before: readonly number[], cliPid: number): number[] {
  return pidsNamed(STUB_COMM).filter((pid) => {
    if (before.includes(pid)) return false
    const ppid = procStat(pid)?.ppid
    return ppid === 1 || ppid === cliPid || (ppid !== undefined && procStat(ppid) === undefined)
  })
}

// ---------------------------------------------------------------------------------------
// Log

/** Every TICK line written by pid. */
export function ticksOf(logPath: string, pid: number): LogEvent[] {
  return readLog(logPath).filter((e) => e.kind === 'TICK' && e.pid === pid)
}

export function assertOk(event: LogEvent, what: string): void {
  assert.equal(event.fields.ok, '1', `${what}: ${event.line}`)
}

/**
 * The clone continues the original's counter from the checkpoint: its first TICK's n is at
 * least the original's last n before the dump, and at most a little past the original's
 * last n when the dump ended (a restart would begin near 1, a wrong snapshot could be way
 * off). Its clocks are fine and its counter moves.
 */
export async function assertContinues(logPath: string, clone: number, before: LogEvent, afterDump: LogEvent): Promise<{first: number}> {
  const ticks = await waitForTicks(logPath, clone, 3)
  const first = Number(ticksOf(logPath, clone)[0]!.fields.n)
  const lo = Number(before.fields.n)
  // Counter: +1 per ~10 ms; the clone ticks within ~50 ms of running. 100 = ~1 s of slack.
  const hi = Number(afterDump.fields.n) + 100
  assert.ok(first >= lo, `the clone's first TICK n=${first} continues from the original's n=${lo} before the dump (a restart begins near 1)`)
  assert.ok(first <= hi, `the clone's first TICK n=${first} is close to the checkpointed value (original's n=${afterDump.fields.n} when the dump ended)`)
  const originalNow = Number(lastTick(logPath, before.pid)?.fields.n ?? Number.POSITIVE_INFINITY)
  assert.ok(first <= originalNow, `clone n=${first} is not ahead of the original's n=${originalNow}`)
  for (const t of ticks) assert.equal(t.fields.clock, 'ok', `clocks in the clone: ${t.line}`)
  assert.ok(Number(ticks[2]!.fields.n) > Number(ticks[0]!.fields.n), `the clone's counter moves: ${ticks.map((t) => t.fields.n).join(', ')}`)
  return {first}
}

// ---------------------------------------------------------------------------------------
// Measurements

export {note, printMeasurements} from '../helpers/measurements.js'

/**
 * The hooks of a criu-e2e suite: after each test every process it started is gone;
 * after the suite its image dirs and pools are removed and its measurements printed.
 */
export function installSuiteHooks(title: string): void {
  afterEach(async () => {
    const {cleanupAll} = await import('../helpers/fixtures.js')
    const report = await cleanupAll()
    assert.deepEqual(report.survivors, [], 'every process a test started is gone')
  })
  after(() => {
    removeScratch()
    printMeasurements(title)
  })
}

// A memfd of 3 pages and 100 bytes, sealed against shrinking, its fd at offset 123, mapped
// MAP_SHARED over its 3 whole pages with a pattern. On SIGUSR1 the process checks the pattern and its
// offset, writes through the fd and reads through the mapping and the other way round, and
// logs its verdict under its own pid.
export const MEMFD_PROGRAM = `
import fcntl, mmap, os, signal, sys
log = sys.argv[1]
fd = os.memfd_create('cxl-arena', os.MFD_ALLOW_SEALING)
os.ftruncate(fd, 3 * 4096 + 100)
fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
m = mmap.mmap(fd, 3 * 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
m[0:4096] = b'A' * 4096
m[8192:8200] = b'pattern!'
os.lseek(fd, 123, os.SEEK_SET)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
def say(line):
    with open(log, 'a') as out:
        out.write(line + '\\n')
say('ready pid=%d fd=%d' % (os.getpid(), fd))
while True:
    signal.sigwait({signal.SIGUSR1})
    bad = []
    if m[0:4096] != b'A' * 4096 or m[8192:8200] != b'pattern!': bad.append('pattern')
    if os.lseek(fd, 0, os.SEEK_CUR) != 123: bad.append('offset')
    os.pwrite(fd, b'ZZZZZZZZ', 8192)
    if m[8192:8200] != b'ZZZZZZZZ': bad.append('fd-to-mapping')
    m[100:104] = b'mmmm'
    if os.pread(fd, 4, 100) != b'mmmm': bad.append('mapping-to-fd')
    m[8192:8200] = b'pattern!'
    m[100:104] = b'AAAA'
    say('check pid=%d ok=%d bad=%s' % (os.getpid(), 0 if bad else 1, ','.join(bad)))
`

/**
 * MEMFD_PROGRAM started (setsid, stdio /dev/null, so real CRIU takes it as a shell job):
 * its pid, the fd of its memfd, check(pid) sends SIGUSR1 to it or to a clone and asserts
 * that process's verdict (each process checks once), stop() kills it and removes its log.
 */
export async function startMemfdProgram(): Promise<{pid: number; fd: number; check(pid: number, what: string): Promise<void>; stop(): void}> {
  const dir = mkdtempSync(join(tmpdir(), 'cxlfork-memfd-'))
  const log = join(dir, 'log')
  const lines = () => (existsSync(log) ? readFileSync(log, 'utf8').split('\n') : [])
  const child = spawn('python3', ['-c', MEMFD_PROGRAM, log], {stdio: 'ignore', detached: true})
  const pid = child.pid!
  trackPid(pid)
  const stop = () => {
    child.kill('SIGKILL')
    rmSync(dir, {recursive: true, force: true})
  }
  try {
    const ready = await until(() => lines().find((line) => line.startsWith(`ready pid=${pid} `)), 'the memfd program is ready')
    return {
      pid, fd: Number(/fd=(\d+)/.exec(ready)![1]), stop,
      async check(target: number, what: string): Promise<void> {
        process.kill(target, 'SIGUSR1')
        const line = await until(() => lines().find((candidate) => candidate.startsWith(`check pid=${target} `)), `${what} checks its memfd`)
        assert.match(line, / ok=1 /, `${what}: ${line}`)
      },
    }
  } catch (error) {
    stop()
    throw error
  }
}

/**
 * Helpers of the end-to-end restore tests (test/restore/*.test.ts): the CLI run as a user
 * runs it (a separate process, asynchronously, so the test can signal processes meanwhile),
 * per-file pool paths on /dev/shm, /proc readings.
 */
import assert from 'node:assert/strict'
import {readdirSync, readFileSync, readlinkSync, rmSync} from 'node:fs'

import {type LogEvent, procStat, readLog} from '../helpers/fixtures.js'
import {printMeasurements} from '../helpers/measurements.js'

// ---------------------------------------------------------------------------------------
// Pools

let poolCounter = 0
const pools: string[] = []

/** A fresh pool path /dev/shm/cxlfork-rt-<test pid>-<tag>-<n>.pool, removed by removePools(). */
export function poolPath(tag: string): string {
  const path = `/dev/shm/cxlfork-rt-${process.pid}-${tag}-${poolCounter++}.pool`
  pools.push(path)
  return path
}

/** Removes every pool file poolPath() handed out (for an after hook). */
export function removePools(): void {
  for (const path of pools.splice(0)) rmSync(path, {force: true})
}

// ---------------------------------------------------------------------------------------
// The CLI

export {CLI, PROJECT_ROOT, type CliProcess, type CliResult, cli, describeRun, startCli} from '../helpers/cli.js'

// ---------------------------------------------------------------------------------------
// Log and /proc

/** Every TICK line written by pid. */
export function ticksOf(logPath: string, pid: number): LogEvent[] {
  return readLog(logPath).filter((e) => e.kind === 'TICK' && e.pid === pid)
}

/** A field of /proc/PID/status in bytes (e.g. RssAnon), or undefined if the process is gone. */
export function statusBytes(pid: number, field: string): number | undefined {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/status`, 'utf8')
  } catch {
    return undefined
  }
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)
  return m ? Number(m[1]) * 1024 : undefined
}

/** The pids of `pid`'s children (of its main thread), [] once it is gone. */
export function childPids(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
  } catch {
    return []
  }
}

/** Where fd `fd` of `pid` points (/proc/PID/fd), undefined once it is closed or the process gone. */
export function fdTarget(pid: number, fd: number | string): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/fd/${fd}`)
  } catch {
    return undefined
  }
}

export function comm(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
  } catch {
    return undefined
  }
}

/** /proc/PID/cmdline, arguments joined by NUL; '' for a process gone meanwhile. */
export function cmdline(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8')
  } catch {
    return ''
  }
}

export interface ProcEntry {
  pid: number
  ppid: number
  state: string
  comm: string
}

/** Every process visible in /proc. */
export function allProcesses(): ProcEntry[] {
  const out: ProcEntry[] = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    const st = procStat(pid)
    const c = comm(pid)
    if (st && c !== undefined) out.push({comm: c, pid, ppid: st.ppid, state: st.state})
  }
  return out
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Polls fn until it returns a truthy value; rejects with `what` after timeoutMs. */
export async function until<T>(fn: () => T | undefined | false | null, what: string, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = fn()
    if (value) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(20)
  }
}

export {note, printMeasurements} from '../helpers/measurements.js'

// ---------------------------------------------------------------------------------------
// Zombies of fork snapshots

const FIXTURE_COMMS = /^(memtouch|sighandler|timers|threads|tree|socket|zombie|python3?(\.\d+)?)$/

/**
 * Zombie children of this (test) process that look like fixtures but are not the fixtures a
 * helper started: cxlfork's fork snapshots (clone(CLONE_PARENT) makes them children of the
 * target's parent, which must reap them).
 */
export function strayZombieChildren(known: readonly number[]): ProcEntry[] {
  return allProcesses().filter((p) => p.ppid === process.pid && p.state === 'Z' && FIXTURE_COMMS.test(p.comm) && !known.includes(p.pid))
}

/** Reaps the zombies strayZombieChildren() finds (libuv only reaps children it spawned). Returns how many. */
export async function reapStrayZombies(known: readonly number[]): Promise<number> {
  const stray = strayZombieChildren(known)
  if (stray.length === 0) return 0
  const {WNOHANG} = await import('../../src/sys/syscall.js')
  const {wait4} = await import('../../src/sys/ptrace.js')
  let reaped = 0
  for (const p of stray) {
    try {
      if (wait4(p.pid, WNOHANG)) reaped++
    } catch {
      // not ours after all
    }
  }
  return reaped
}

/**
 * The hooks every restore suite needs: after each test every process it started
 * is killed and reaped (stray snapshot zombies included); after the suite its
 * pools are removed and its measurements printed under `title`.
 */
export function installCleanupHooks(title: string): void {
  afterEach(async () => {
    const {cleanupAll, tracked} = await import('../helpers/fixtures.js')
    const report = await cleanupAll()
    await reapStrayZombies(tracked().pids)
    assert.deepEqual(report.survivors, [], 'every process a test started is gone')
  })
  after(() => {
    removePools()
    printMeasurements(title)
  })
}

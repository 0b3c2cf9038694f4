/**
 * Test helpers: real processes started with posix_spawn (never child_process:
 * they may be traced), all killed and reaped by cleanupProcs().
 */
import * as fs from 'node:fs'
import {close, pipe2, read} from '../../src/sys/file-io.js'
import {wait4} from '../../src/sys/ptrace.js'
import {posixSpawn} from '../../src/sys/spawn.js'
import {killQuiet, SIG, WNOHANG} from '../../src/sys/syscall.js'
import {readStat} from '../../src/sys/proc.js'

export const PYTHON = '/usr/bin/python3'

const started = new Set<number>()
const openFds = new Set<number>()

export interface Proc {
  pid: number
  /** read end of the child's stdout pipe, if requested */
  out?: number
  /** write end of the child's stdin pipe, if requested */
  in?: number
}

export function spawnProc(path: string, argv: string[], opts: {pipeOut?: boolean; pipeIn?: boolean} = {}): Proc {
  let outR: number | undefined
  let outW: number | undefined
  let inR: number | undefined
  let inW: number | undefined
  if (opts.pipeOut) [outR, outW] = pipe2()
  if (opts.pipeIn) [inR, inW] = pipe2()
  const pid = posixSpawn({path, argv, env: ['PATH=/usr/bin:/bin', 'PYTHONUNBUFFERED=1'], fds: [inR ?? null, outW ?? null, 2]})
  started.add(pid)
  if (outW !== undefined) close(outW)
  if (inR !== undefined) close(inR)
  if (outR !== undefined) openFds.add(outR)
  if (inW !== undefined) openFds.add(inW)
  const p: Proc = {pid}
  if (outR !== undefined) p.out = outR
  if (inW !== undefined) p.in = inW
  return p
}

export function spawnPython(code: string, opts: {pipeIn?: boolean} = {}): Proc {
  return spawnProc(PYTHON, ['python3', '-c', code], {pipeOut: true, ...opts})
}

/** Blocking read of one line from fd. */
export function readLine(fd: number): string {
  const chunks: number[] = []
  const b = new Uint8Array(1)
  for (;;) {
    const n = read(fd, b)
    if (n === 0) break
    if (b[0] === 10) break
    chunks.push(b[0]!)
  }
  return Buffer.from(chunks).toString('utf8')
}

/** Reads exactly n bytes (or until EOF). */
export function readN(fd: number, n: number): Buffer {
  const b = new Uint8Array(n)
  let got = 0
  while (got < n) {
    const r = read(fd, b.subarray(got))
    if (r === 0) break
    got += r
  }
  return Buffer.from(b.subarray(0, got))
}

export function track(pid: number): void {
  started.add(pid)
}

export function sleepMs(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms)
}

/** Waits until pid's /proc state satisfies pred (polling). */
export function waitState(pid: number, pred: (state: string) => boolean, timeoutMs = 5000): string {
  const end = Date.now() + timeoutMs
  for (;;) {
    const s = readStat(pid).state
    if (pred(s)) return s
    if (Date.now() > end) throw new Error(`pid ${pid} stayed in state ${s}`)
    sleepMs(2)
  }
}

/** Wait until `pid` is blocked in one of the system calls `nrs` (the first field of /proc/PID/syscall). */
export function waitInSyscall(pid: number, nrs: readonly number[], timeoutMs = 5000): number {
  const end = Date.now() + timeoutMs
  for (;;) {
    let nr = -1
    try {
      nr = Number(fs.readFileSync(`/proc/${pid}/syscall`, 'latin1').split(' ')[0])
    } catch {
      // gone or not readable yet: the deadline decides
    }
    if (nrs.includes(nr)) return nr
    if (Date.now() > end) throw new Error(`pid ${pid} is not blocked in syscall ${nrs.join(' or ')} (last: ${nr})`)
    sleepMs(2)
  }
}

/** SIGKILL and reap every process started by the tests; close pipes. */
export function cleanupProcs(): void {
  for (const pid of started) {
    killQuiet(pid, SIG.KILL)
    for (let i = 0; i < 100; i++) {
      let w
      try {
        w = wait4(pid, WNOHANG)
      } catch {
        break // reaped already (ECHILD)
      }
      if (w && (w.exited || w.signaled)) continue
      sleepMs(2)
    }
  }
  started.clear()
  for (const fd of openFds) {
    try {
      close(fd)
    } catch {
      /* already closed */
    }
  }
  openFds.clear()
}

/** Pids of live (non-zombie) children of this process, per /proc. */
export function liveChildren(): number[] {
  const out: number[] = []
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      const st = readStat(Number(d))
      if (st.ppid === process.pid) out.push(st.pid)
    } catch {
      /* gone */
    }
  }
  return out
}

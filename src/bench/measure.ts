/**
 * The anchors the pool path is compared with, each measured the plain way:
 * writing the same bytes to a file, local fork(), Node's start-up, and the
 * wall clock of a whole command.
 */
import {closeSync, constants, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync, writeSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {CxlforkError} from '../errors.js'
import {CLONE, Tracee} from '../inject/tracee.js'
import {fallocateRaw} from '../sys/file-io.js'
import {PTRACE_O, wait4} from '../sys/ptrace.js'
import {posixSpawn} from '../sys/spawn.js'
import {MAP, PROT, SIG, SYS} from '../sys/syscall.js'
import {mmap, munmap, view} from '../sys/vm-io.js'
import type {WholeCommand} from './paths.js'

const CHUNK = 1 << 20

/** A 1 MiB buffer of the target's kind of content (non-zero, varying per word). */
export function patternBuffer(): Buffer {
  const buffer = Buffer.alloc(CHUNK)
  for (let i = 0; i < CHUNK; i += 8) buffer.writeBigUInt64LE(0x6378_6c66_6f72_6b00n + BigInt(i), i)
  return buffer
}

function scratchFile(dir: string): string {
  return join(dir, `.cxlfork-bench-plain-${process.pid}-${Math.random().toString(16).slice(2, 10)}`)
}

/**
 * Plain write, method 1: open(O_CREAT|O_EXCL), write(2) `size` bytes from a
 * 1 MiB buffer, close; no fsync. Timed from open to close; the file is removed after.
 */
export function plainWrite(dir: string, size: number, buffer: Buffer): number {
  const path = scratchFile(dir)
  const t0 = performance.now()
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600)
  try {
    for (let offset = 0; offset < size; offset += buffer.length) {
      const len = Math.min(buffer.length, size - offset)
      let done = 0
      while (done < len) done += writeSync(fd, buffer, done, len - done)
    }
  } finally {
    closeSync(fd)
  }
  const ms = performance.now() - t0
  unlinkSync(path)
  return ms
}

/** The same bytes as a target of `size` holds, in memory: one SIZE-byte buffer (filled outside any timing). */
export function sameBytesBuffer(size: number, pattern: Buffer): Buffer {
  const source = Buffer.allocUnsafe(size)
  for (let offset = 0; offset < size; offset += pattern.length) pattern.copy(source, offset, 0, Math.min(pattern.length, size - offset))
  return source
}

/**
 * Plain write, method 3 (the anchor): write(2) of SIZE distinct bytes held in
 * memory, 1 MiB per call from consecutive offsets. Like a checkpoint, it has to
 * read bytes that do not fit in any cache; method 1 rewrites one cache-hot
 * 1 MiB buffer, which is not writing "the same bytes".
 */
export function plainWriteFromMemory(dir: string, source: Buffer): number {
  const path = scratchFile(dir)
  const t0 = performance.now()
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600)
  try {
    writeInChunks(fd, source)
  } finally {
    closeSync(fd)
  }
  const ms = performance.now() - t0
  unlinkSync(path)
  return ms
}

/** write(2) all of `source` from the fd's offset on, 1 MiB per call (the anchor's loop). */
function writeInChunks(fd: number, source: Buffer): void {
  for (let offset = 0; offset < source.length; offset += CHUNK) {
    const len = Math.min(CHUNK, source.length - offset)
    let done = 0
    while (done < len) done += writeSync(fd, source, offset + done, len - done)
  }
}

/**
 * The anchor's write(2) loop into a file whose pages were allocated first
 * (fallocate, not timed): what a checkpoint into a provisioned pool is up
 * against once page allocation is out of both. Shown, not the anchor.
 */
export function plainWriteIntoAllocated(dir: string, source: Buffer): number {
  const path = scratchFile(dir)
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600)
  let ms: number
  try {
    const r = fallocateRaw(fd, 0, 0, source.length)
    if (r !== 0) throw new CxlforkError('BENCH_FALLOCATE', `fallocate of ${source.length} bytes in ${dir} failed (${r})`)
    // fallocate leaves the file offset at 0: the same loop as the anchor's.
    const t0 = performance.now()
    writeInChunks(fd, source)
    ms = performance.now() - t0
  } finally {
    closeSync(fd)
    unlinkSync(path)
  }
  return ms
}

/**
 * Plain write, method 2: open, ftruncate, mmap(MAP_SHARED), copy 1 MiB at a
 * time into the mapping, munmap, close (the way the pool itself is written).
 */
export function plainMmap(dir: string, size: number, buffer: Buffer): number {
  const path = scratchFile(dir)
  const t0 = performance.now()
  const fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600)
  try {
    ftruncateSync(fd, size)
    const base = mmap(null, size, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0)
    try {
      for (let offset = 0; offset < size; offset += buffer.length) {
        const len = Math.min(buffer.length, size - offset)
        view(base + BigInt(offset), len).set(buffer.subarray(0, len))
      }
    } finally {
      munmap(base, size)
    }
  } finally {
    closeSync(fd)
  }
  const ms = performance.now() - t0
  unlinkSync(path)
  return ms
}

/**
 * Wall clock of spawning a command and waiting for it to exit. posix_spawn
 * (glibc: CLONE_VM|CLONE_VFORK), not child_process, whose fork() copies this
 * process's page tables: with the 1 GiB anchor buffer held that added ~28 ms
 * to every spawn (measured), a cost no shell starting cxlfork pays and one
 * that grew with the size under test. Output goes to files read afterwards.
 */
export function timedSpawn(argv: readonly string[], extraEnv: Readonly<Record<string, string>> = {}): {ms: number; stdout: string; stderr: string; status: number | null} {
  const dir = mkdtempSync(join(tmpdir(), 'cxlfork-bench-run-'))
  const outPath = join(dir, 'stdout')
  const errPath = join(dir, 'stderr')
  const outFd = openSync(outPath, 'w')
  const errFd = openSync(errPath, 'w')
  try {
    const env = Object.entries({...process.env, ...extraEnv}).flatMap(([key, value]) => (value === undefined ? [] : [`${key}=${value}`]))
    const t0 = performance.now()
    const pid = posixSpawn({path: argv[0]!, argv: [...argv], env, fds: [null, outFd, errFd]})
    const status = wait4(pid, 0)
    const ms = performance.now() - t0
    return {ms, stdout: readFileSync(outPath, 'utf8'), stderr: readFileSync(errPath, 'utf8'), status: status?.exited ? status.exitCode ?? null : null}
  } finally {
    closeSync(outFd)
    closeSync(errFd)
    rmSync(dir, {recursive: true, force: true})
  }
}

/**
 * Touch `bytes` of fresh anonymous memory (MAP_POPULATE, in the kernel) and free it again, so that
 * the operation timed next takes pages the host backs. On a VM with free page reporting (this
 * one: virtio-balloon, page_reporting_order=11) memory freed more than ~2 s ago is handed back to
 * the host, and touching it again runs at ~0.45 GB/s instead of ~2 GB/s (1 GiB: 2.25 s after 5 s
 * idle, 0.55 s right after a free; measured with a C loop on this VM, 2026-12-05). Whichever operation of a
 * repetition came first, or right after a kill that freed memory (real CRIU's restore follows its
 * own dump's kill), would otherwise win or lose by the host's state, not by its own work.
 */
export function primeFreePages(bytes: number): number {
  const t0 = performance.now()
  const length = Math.max(4096, Math.ceil(bytes / 4096) * 4096)
  const addr = mmap(null, length, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.POPULATE | MAP.NORESERVE)
  munmap(addr, length)
  return performance.now() - t0
}

/** `node -e 0`: the floor of any command written in Node. */
export function nodeStartup(node: string): number {
  const run = timedSpawn([node, '-e', '0'])
  if (run.status !== 0) throw new CxlforkError('BENCH_NODE_FAILED', `${node} -e 0 exited with ${run.status}`)
  return run.ms
}

/** Wall clock of a command that must succeed (e.g. `cxlfork --version`, the floor of any oclif command). */
export function commandWallMs(argv: readonly string[]): number {
  const run = timedSpawn(argv)
  if (run.status !== 0) throw new CxlforkError('BENCH_COMMAND_FAILED', `${argv.join(' ')} exited with ${run.status}`)
  return run.ms
}

/** Run a whole restore command; returns its wall clock and the clone it left running. */
export function wholeCommand(command: WholeCommand): {ms: number; pid: number; engineUs?: number} {
  const run = timedSpawn(command.argv, command.env)
  if (run.status !== 0) {
    throw new CxlforkError('BENCH_COMMAND_FAILED', `${command.argv.slice(1).join(' ')} exited with ${run.status}: ${(run.stderr || run.stdout).trim().slice(0, 400)}`)
  }
  return {ms: run.ms, ...command.parse(run.stdout)}
}

export interface ForkSample {
  /** Injected clone minus the median injected no-op, ms. */
  forkMs: number
  cloneInjectionMs: number
  noopInjectionMs: number
  childPid: number
}

/**
 * Local fork() of a running process, parent side: seize it (options 0: no
 * EXITKILL, so it outlives us), time injected getpid() five times (after one
 * warm-up) and one injected clone(CLONE_PARENT|SIGCHLD), i.e. fork(); the
 * difference is the kernel's fork work plus one extra ptrace event stop
 * (PTRACE_EVENT_FORK, tens of µs). The child (our child, by CLONE_PARENT)
 * is killed and reaped, the target detached and running on.
 */
export function localFork(pid: number): ForkSample {
  const tracee = Tracee.seize(pid, {options: 0})
  let child: Tracee | undefined
  try {
    tracee.syscall(SYS.getpid) // warm-up: injection site, blocked mask
    const noop: number[] = []
    for (let i = 0; i < 5; i++) {
      const t = performance.now()
      tracee.syscall(SYS.getpid)
      noop.push(performance.now() - t)
    }
    noop.sort((a, b) => a - b)
    const noopMs = noop[2]!
    tracee.setOptions(PTRACE_O.TRACEFORK | PTRACE_O.TRACEVFORK | PTRACE_O.TRACECLONE)
    tracee.takeNewChildren()
    const t = performance.now()
    const ret = tracee.syscall(SYS.clone, CLONE.PARENT | SIG.CHLD, 0, 0, 0, 0)
    const cloneMs = performance.now() - t
    const kids = tracee.takeNewChildren()
    if (ret <= 0n) throw new CxlforkError('BENCH_FORK_FAILED', `fork injected into ${pid} returned ${ret}`)
    const childPid = Number(ret)
    child = Tracee.adopt(childPid, tracee.options, false)
    for (const kid of kids) if (kid !== childPid) Tracee.adopt(kid, tracee.options, false).kill()
    child.kill()
    child = undefined
    tracee.setOptions(0)
    return {forkMs: Math.max(0, cloneMs - noopMs), cloneInjectionMs: cloneMs, noopInjectionMs: noopMs, childPid}
  } finally {
    child?.kill()
    tracee.detach()
  }
}

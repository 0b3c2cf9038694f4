/** Shared by the pool tests: pool paths, data patterns, subprocess helpers. */
import {spawn, spawnSync} from 'node:child_process'
import type {ChildProcess} from 'node:child_process'
import {closeSync, openSync, readSync, rmSync, writeSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

import {koffi} from '../../src/sys/ffi.js'
import {crc32} from '../../src/pool/index.js'

const here = dirname(fileURLToPath(import.meta.url))
export const WORKER = join(here, 'pool-worker.js')
export const PROJECT_ROOT = join(here, '..', '..', '..')
export const CLI = join(PROJECT_ROOT, 'bin', 'run.js')

let poolCounter = 0
const created: string[] = []

/** A fresh pool path under /dev/shm, removed by removeTestPools(). */
export function testPoolPath(): string {
  const path = `/dev/shm/cxlfork-test-${process.pid}-${poolCounter++}.pool`
  created.push(path)
  return path
}

export function removeTestPools(): void {
  for (const path of created.splice(0)) rmSync(path, {force: true})
}

/** Seed of the data pattern of checkpoint `name`. */
export function patternSeed(name: string): number {
  return crc32(new TextEncoder().encode(name))
}

/** Fill `length` bytes at `address` with the pattern of `seed`: word i holds seed + i. */
export function fillPattern(address: bigint, length: number, seed: number): void {
  const words = new Uint32Array(koffi.view(address, length))
  for (let i = 0; i < words.length; i++) words[i] = (seed + i) >>> 0
}

/** Index of the first word that breaks the pattern, or -1. */
export function checkPattern(address: bigint, length: number, seed: number): number {
  const words = new Uint32Array(koffi.view(address, length))
  for (let i = 0; i < words.length; i++) if (words[i] !== ((seed + i) >>> 0)) return i
  return -1
}

export function startWorker(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [WORKER, ...args], {stdio: ['ignore', 'pipe', 'pipe'], env: {...process.env, ...env}})
}

export function exited(child: ChildProcess): Promise<{code: number | null; signal: NodeJS.Signals | null}> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({code: child.exitCode, signal: child.signalCode})
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({code, signal})))
}

/** Resolves when the child prints `line` on stdout. */
export function waitForLine(child: ChildProcess, line: string): Promise<void> {
  return new Promise((resolve, reject) => {
    let buffer = ''
    const onData = (chunk: Buffer): void => {
      buffer += chunk.toString()
      if (buffer.split('\n').includes(line)) {
        child.stdout?.off('data', onData)
        resolve()
      }
    }
    child.stdout?.on('data', onData)
    child.once('exit', (code) => reject(new Error(`worker exited (${code}) before printing ${line}`)))
  })
}

export interface CliRun {
  status: number | null
  stdout: string
  stderr: string
  json: any
}

/** Run the CLI as a user would; --json output parsed when present. */
export function runCli(args: string[], env: Record<string, string> = {}): CliRun {
  const result = spawnSync(process.execPath, [CLI, ...args], {encoding: 'utf8', env: {...process.env, ...env}, cwd: PROJECT_ROOT})
  let json: unknown
  try {
    json = JSON.parse(result.stdout)
  } catch {
    json = undefined
  }
  return {status: result.status, stdout: result.stdout, stderr: result.stderr, json}
}

/** Read the u32 (little-endian) of the pool file at byte `offset`, through the file: the pool's mapping shares these pages. */
export function readPoolWord32(path: string, offset: number): number {
  const fd = openSync(path, 'r')
  try {
    const word = Buffer.alloc(4)
    readSync(fd, word, 0, 4, offset)
    return word.readUInt32LE(0)
  } finally {
    closeSync(fd)
  }
}

/** Write a u32 (little-endian) into the pool file at byte `offset`, as a stray writer would. */
export function writePoolWord32(path: string, offset: number, value: number): void {
  const fd = openSync(path, 'r+')
  try {
    const word = Buffer.alloc(4)
    word.writeUInt32LE(value >>> 0, 0)
    writeSync(fd, word, 0, 4, offset)
  } finally {
    closeSync(fd)
  }
}

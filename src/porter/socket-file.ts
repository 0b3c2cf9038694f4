/**
 * The porter's socket and pid file, made without trusting their directory
 * (the world-writable-directory threat model of the pool, issue 14): the
 * directory must be a real directory (no planted link on the way, see
 * pool-file.refusePlantedSymlinks), owned by us or root, and writable by
 * others only if sticky (then nobody else can remove or replace what we
 * create there). The pid file is opened with O_NOFOLLOW and judged on its
 * descriptor; its flock is held for the porter's life, so it tells a running
 * porter from a stale one (a SIGKILLed porter's lock goes with it). A stale
 * socket is removed only if it is a socket of ours.
 */
import {closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, statSync, unlinkSync, writeSync, ftruncateSync} from 'node:fs'
import {dirname} from 'node:path'

import {PermissionError, ConflictError} from '../errors.js'
import {refusePlantedSymlinks} from '../pool/pool-file.js'
import {libc} from '../sys/ffi.js'
import {ROOT_SOCKET_DIR, pidFilePath} from './paths.js'

const cFlock = libc.func('int flock(int fd, int operation)')
const LOCK_EX = 2
const LOCK_NB = 4

function unsafe(path: string, why: string): PermissionError {
  return new PermissionError('PORTER_SOCKET_UNSAFE', `refusing porter socket ${path}: ${why}`,
    'Give --socket a path in a directory only you (or root) can write, or a sticky one such as /dev/shm; remove what is planted there.')
}

/** Create the default directory (mode 0755 for root's /run/cxlfork, else 0700) and judge whichever directory holds `socket`. */
export function prepareSocketDir(socket: string, createDefault: boolean): void {
  const dir = dirname(socket)
  refusePlantedSymlinks(socket)
  if (createDefault) {
    try {
      mkdirSync(dir, {recursive: true, mode: dir === ROOT_SOCKET_DIR ? 0o755 : 0o700})
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw unsafe(socket, `cannot create ${dir}: ${(error as Error).message}`)
    }
  }
  // A link on the way was judged above (as the pool's path is); the directory itself is judged where it leads.
  const stat = statSync(dir, {throwIfNoEntry: false})
  if (!stat) throw unsafe(socket, `${dir} does not exist`)
  const me = process.geteuid?.() ?? 0
  if (!stat.isDirectory()) throw unsafe(socket, `${dir} is not a directory`)
  if (stat.uid !== me && stat.uid !== 0) throw unsafe(socket, `${dir} belongs to uid ${stat.uid}, neither you (uid ${me}) nor root`)
  if ((stat.mode & 0o022) !== 0 && (stat.mode & 0o1000) === 0) throw unsafe(socket, `${dir} (mode 0${(stat.mode & 0o7777).toString(8)}) is writable by others and not sticky`)
}

export interface PidFile {
  fd: number
  path: string
  release(): void
}

/**
 * Take the pid file of `socket`: exclusive flock, our pid written. A held
 * lock means a porter runs: PORTER_RUNNING with its pid.
 */
export function lockPidFile(socket: string): PidFile {
  const path = pidFilePath(socket)
  let fd: number
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW, 0o600)
  } catch (error) {
    throw unsafe(socket, `cannot open ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`)
  }
  const stat = fstatSync(fd)
  const me = process.geteuid?.() ?? 0
  if (!stat.isFile() || stat.uid !== me) {
    closeSync(fd)
    throw unsafe(socket, `${path} is not a file of uid ${me}`)
  }
  if (cFlock(fd, LOCK_EX | LOCK_NB) !== 0) {
    let pid = ''
    try {
      pid = readFileSync(path, 'utf8').trim()
    } catch {
      // unreadable: say nothing of it
    }
    closeSync(fd)
    throw new ConflictError('PORTER_RUNNING', `a porter already serves ${socket}${pid ? ` (pid ${pid})` : ''}`, 'Use it, or stop it first: `cxlfork porter stop`.')
  }
  ftruncateSync(fd, 0)
  writeSync(fd, `${process.pid}\n`, 0)
  return {
    fd, path,
    release: () => {
      try {
        unlinkSync(path)
      } catch {
        // already gone
      }
      closeSync(fd)
    },
  }
}

/** Whether some process holds the pid file's lock (a porter runs), and its pid. */
export function pidFileHolder(socket: string): {running: boolean; pid?: number} {
  const path = pidFilePath(socket)
  let fd: number
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW)
  } catch {
    return {running: false}
  }
  try {
    // Only a pid file of ours (or root's) names a porter: a planted one must not make `porter stop` signal a stranger.
    const stat = fstatSync(fd)
    const me = process.geteuid?.() ?? 0
    if (!stat.isFile() || (stat.uid !== me && stat.uid !== 0)) return {running: false}
    const pid = Number(readFileSync(fd, 'utf8').trim())
    // A shared lock taken is an exclusive lock not held.
    const free = cFlock(fd, 1 /* LOCK_SH */ | LOCK_NB) === 0
    return {running: !free, ...(Number.isInteger(pid) && pid > 0 ? {pid} : {})}
  } finally {
    closeSync(fd)
  }
}

/** Remove a stale socket left by a porter that died: only a socket, and only one of ours. */
export function removeStaleSocket(socket: string): void {
  const stat = lstatSync(socket, {throwIfNoEntry: false})
  if (!stat) return
  const me = process.geteuid?.() ?? 0
  if (!stat.isSocket() || stat.uid !== me) throw unsafe(socket, `something else is at that path (${stat.isSocket() ? `a socket of uid ${stat.uid}` : 'not a socket'})`)
  unlinkSync(socket)
}

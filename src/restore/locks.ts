/**
 * File locks a clone takes again: the advisory locks its original held through each open file
 * description (fdinfo's 'lock:' lines, taken at checkpoint), each on the same byte range, with
 * calls injected into the clone so that the clone owns them. One another process holds on the
 * same file (the original itself, beside which a clone runs) is refused by name: a clone that
 * believed it held a lock it did not would write a database outside it.
 */
import {readFileSync} from 'node:fs'

import {ConflictError, SyscallError} from '../errors.js'
import {type FdImage, type ProcessImage} from '../image/process-image.js'
import {parseLockLine} from '../sys/proc.js'
import {SYS} from '../sys/syscall.js'
import {type Injector} from './injector.js'

const SYS_FLOCK = 73
const F_SETLK = 6
const F_OFD_SETLK = 37
const F_RDLCK = 0
const F_WRLCK = 1
const LOCK_SH = 1
const LOCK_EX = 2
const LOCK_NB = 4
const EAGAIN = 11
const EACCES = 13

/** struct flock: l_type, l_whence (SEEK_SET), l_start, l_len (0: to the end), l_pid (0: OFD locks need it so). */
function flockStruct(lock: NonNullable<FdImage['locks']>[number]): Uint8Array {
  const bytes = new Uint8Array(32)
  const view = new DataView(bytes.buffer)
  view.setInt16(0, lock.write ? F_WRLCK : F_RDLCK, true)
  view.setInt16(2, 0, true)
  view.setBigInt64(8, BigInt(lock.start), true)
  view.setBigInt64(16, lock.end === null ? 0n : BigInt(lock.end - lock.start + 1), true)
  return bytes
}

/** Pids holding a lock on the file open as `fd` of process `pid` now (/proc/locks, by inode); OFD locks show no pid (-1). */
function holderPids(pid: number, fd: number): number[] {
  try {
    const inode = /^ino:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'))?.[1]
    if (!inode) return []
    const pids = new Set<number>()
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      if (!line.trim()) continue
      const lock = parseLockLine(line)
      if (lock.inode === inode && lock.pid > 0 && lock.pid !== pid) pids.add(lock.pid)
    }
    return [...pids]
  } catch {
    return []
  }
}

/** `pids`, named for the refusal. */
function holders(pids: readonly number[]): string {
  try {
    const named = pids.slice(0, 3).map((holder) => {
      try {
        return `process ${holder} (${readFileSync(`/proc/${holder}/comm`, 'utf8').trim()})`
      } catch {
        return `process ${holder}`
      }
    })
    return named.length > 0 ? named.join(', ') : 'another process'
  } catch {
    return 'another process'
  }
}

/** Take every lock of the image's fds in the clone `inject` builds (its fds in place). `pid`: the clone's pid here. */
export function takeLocks(inject: Injector, image: ProcessImage, pid: number, clonePids: readonly number[] = []): void {
  for (const fd of image.fds) {
    for (const lock of fd.locks ?? []) {
      const r = lock.kind === 'flock'
        ? inject.tracee.syscall(SYS_FLOCK, fd.fd, (lock.write ? LOCK_EX : LOCK_SH) | LOCK_NB)
        : inject.tracee.syscall(SYS.fcntl, fd.fd, lock.kind === 'ofd' ? F_OFD_SETLK : F_SETLK, inject.put(flockStruct(lock)))
      if (r === -BigInt(EAGAIN) || r === -BigInt(EACCES)) {
        // A flock or OFD lock belongs to an open file description that members of a tree shared (inherited by a fork);
        // each clone member opens the file anew, and the member restored first took it already: the tree holds it.
        const others = holderPids(pid, fd.fd)
        if (lock.kind !== 'posix' && others.length > 0 && others.every((holder) => clonePids.includes(holder))) continue
        const range = `bytes ${lock.start} to ${lock.end ?? 'EOF'}`
        throw new ConflictError('FILE_LOCK_HELD', `fd ${fd.fd} must hold ${lock.kind === 'flock' ? 'a flock() lock' : lock.kind === 'ofd' ? 'an OFD lock' : 'a POSIX record lock'} for ${lock.write ? 'write' : 'read'} on ${fd.path} (${range}), which ${holders(others)} holds here`,
          'Restore once the original has ended (checkpoint --kill), or where the file is not the original\'s.')
      }
      if (r < 0n) throw new SyscallError(`lock of fd ${fd.fd} (${fd.path}) in the new process`, Number(-r))
    }
  }
}

/**
 * The capabilities checkpoint and restore need beyond ptrace, probed for
 * real where the kernel offers a harmless probe. A user without them is
 * refused with NOT_PERMITTED naming the capability before anything is
 * touched, and `cxlfork check` reports the same sentence.
 */
import {readdirSync, statSync} from 'node:fs'

import {PermissionError} from '../errors.js'
import {readProcText} from './proc.js'

export const CAP_SYS_PTRACE = 19n
export const CAP_SYS_ADMIN = 21n
export const CAP_CHECKPOINT_RESTORE = 40n

/** The caller's effective capability set (in its own user namespace). */
export function effectiveCapabilities(): bigint {
  const line = /^CapEff:\s*([0-9a-f]+)/m.exec(readProcText('self', 'status'))
  return line ? BigInt('0x' + line[1]) : 0n
}

export function hasCapability(bit: bigint, caps = effectiveCapabilities()): boolean {
  return ((caps >> bit) & 1n) === 1n
}

const GRANT_HINT = 'Run as root, or give cxlfork CAP_CHECKPOINT_RESTORE as CRIU\'s unprivileged mode needs it '
  + '(e.g. `setpriv --inh-caps=+checkpoint_restore --ambient-caps=+checkpoint_restore cxlfork ...` started by root, or `setcap cap_checkpoint_restore+ep` on the node binary).'

export function mapFilesRefusal(pid: number | 'self'): PermissionError {
  return new PermissionError('NOT_PERMITTED',
    `reading the file mappings of ${pid === 'self' ? 'this process' : `process ${pid}`} (/proc/${pid}/map_files) needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), which you lack`, GRANT_HINT)
}

/**
 * A checkpoint identifies each mapped file through /proc/PID/map_files,
 * which the kernel opens only to CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in
 * the initial user namespace (a capability bit in a user namespace is not
 * enough, hence a real stat). Listing the directory is allowed to anyone
 * who may trace the process; following an entry is not.
 */
export function requireMapFilesAccess(pid: number | 'self'): void {
  let entries: string[]
  try {
    entries = readdirSync(`/proc/${pid}/map_files`)
  } catch {
    return // the process is gone or not ours: refused where that is decided
  }
  for (const entry of entries.slice(0, 8)) {
    try {
      statSync(`/proc/${pid}/map_files/${entry}`)
      return
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code
      if (code === 'EPERM' || code === 'EACCES') throw mapFilesRefusal(pid)
      // ENOENT: the mapping went away meanwhile; try the next one
    }
  }
}

export function pidNamespaceRefusal(): PermissionError {
  return new PermissionError('NOT_PERMITTED', 'a PID namespace for the clone (threads, trees, --policy moa, --pidns new) needs CAP_SYS_ADMIN, which you lack',
    'Restore as root, or a single-threaded checkpoint with --policy mow, hybrid or local and --pidns host.')
}

export function setMmMapRefusal(): PermissionError {
  return new PermissionError('NOT_PERMITTED', 'restoring the clone\'s exe link and memory layout (prctl PR_SET_MM_MAP) needs CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN), which you lack', GRANT_HINT)
}

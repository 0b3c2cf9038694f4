/**
 * Creating a child in a new PID namespace from this (multi-threaded) Node
 * process. unshare(CLONE_NEWPID) changes only the calling thread's namespace
 * for the children it creates next: the first one becomes pid 1 of the new
 * namespace. setns() back to our own namespace right after keeps every later
 * child of ours (and of Node) where it was.
 */
import {CxlforkError} from '../errors.js'
import {pidNamespaceRefusal} from './capabilities.js'
import {close, open} from './file-io.js'
import {O, SYS, check, syscallRaw} from './syscall.js'

export const CLONE_NEWPID = 0x20000000

/** Run `spawn` (which creates exactly one child) so that its child is pid 1 of a fresh PID namespace. */
export function inNewPidNamespace<T>(spawn: () => T): T {
  const ours = open('/proc/thread-self/ns/pid', O.RDONLY | O.CLOEXEC)
  try {
    const r = syscallRaw(SYS.unshare, CLONE_NEWPID)
    if (r === -1n) throw pidNamespaceRefusal() // EPERM: no CAP_SYS_ADMIN
    if (r < 0n) {
      check('unshare(CLONE_NEWPID)', r, undefined, 'A PID namespace per clone needs CAP_SYS_ADMIN; restore as root, or checkpoint a single-threaded process.')
    }
    try {
      return spawn()
    } finally {
      const back = syscallRaw(SYS.setns, ours, CLONE_NEWPID)
      // Children of ours created later would land in the clone's namespace: never continue like that,
      // not even with spawn()'s own error, which this one replaces on purpose.
      // eslint-disable-next-line no-unsafe-finally -- see above
      if (back < 0n) throw new CxlforkError('PIDNS_RESTORE_FAILED', `setns back to our own PID namespace failed (${-back})`)
    }
  } finally {
    close(ours)
  }
}

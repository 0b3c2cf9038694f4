/**
 * A process's credentials, as the clone must have them: user and group ids
 * (real, effective, saved, filesystem), supplementary groups, the five
 * capability sets, no_new_privs, and (asked by an injected prctl) securebits
 * and the dumpable flag. Without them a clone would run as whoever restores
 * it: an nginx worker that dropped to `nobody` would come back as root.
 *
 * Credentials belong to each thread. glibc changes them in every thread at
 * once (setxid broadcast), so threads that differ are a process caught in the
 * middle of such a change, or one that used raw syscalls on purpose: refused
 * by name rather than flattened to the leader's.
 *
 * A seccomp filter cannot be read back without CAP_SYS_ADMIN-only
 * interfaces and is not recreated, so a process under seccomp is refused:
 * its clone would otherwise run unconfined.
 */
import {readFileSync, readdirSync} from 'node:fs'

import {UnsupportedError} from '../errors.js'
import {type CredentialsImage} from '../image/process-image.js'
import {parseStatus} from '../sys/proc.js'

const CRED_FIELDS = ['Uid', 'Gid', 'Groups', 'CapInh', 'CapPrm', 'CapEff', 'CapBnd', 'CapAmb', 'NoNewPrivs'] as const

/** Every field of a status file (/proc/PID/status or a thread's), as text. */
function statusFields(path: string): Record<string, string> {
  return parseStatus(readFileSync(path, 'utf8')).raw
}

/** Refuse by name what the clone could not carry: a seccomp filter, threads with credentials of their own. */
export function refuseUnsupportedCredentials(pid: number): void {
  const leader = statusFields(`/proc/${pid}/status`)
  const seccomp = Number(leader['Seccomp'] ?? 0)
  if (seccomp !== 0) {
    throw new UnsupportedError('SECCOMP', `process ${pid} runs under seccomp (${seccomp === 1 ? 'strict mode' : `${leader['Seccomp_filters'] ?? 'some'} filter(s)`}), which cxlfork does not restore: its clone would run unconfined`,
      'Checkpoint a process that does not confine itself with seccomp (systemd\'s SystemCallFilter=, container runtimes and sandboxes install filters).')
  }
  let tids: string[]
  try {
    tids = readdirSync(`/proc/${pid}/task`)
  } catch {
    return // gone: the caller finds out
  }
  for (const tid of tids) {
    if (Number(tid) === pid) continue
    let thread: Record<string, string>
    try {
      thread = statusFields(`/proc/${pid}/task/${tid}/status`)
    } catch {
      continue // exited meanwhile
    }
    const differs = CRED_FIELDS.find((field) => thread[field] !== leader[field])
    if (differs !== undefined) {
      throw new UnsupportedError('THREAD_CREDENTIALS', `thread ${tid} of process ${pid} has other credentials than its main thread (${differs}: ${thread[differs]} against ${leader[differs]})`,
        'Threads normally share their credentials (glibc changes them in all threads at once); checkpoint again once the change is done.')
    }
  }
}

/**
 * The credentials of `pid` from /proc (for a fork snapshot: the target's at
 * the fork, which copied them), with what only the process itself can say.
 */
export function readCredentials(pid: number, asked: {securebits: number; dumpable: number}): CredentialsImage {
  const status = parseStatus(readFileSync(`/proc/${pid}/status`, 'utf8'))
  const {raw} = status
  const caps = (field: string): bigint => BigInt('0x' + (raw[field] || '0'))
  return {
    uids: status.uid, gids: status.gid,
    groups: (raw['Groups'] ?? '').split(/\s+/).filter(Boolean).map(Number),
    capInheritable: caps('CapInh'), capPermitted: caps('CapPrm'), capEffective: caps('CapEff'), capBounding: caps('CapBnd'), capAmbient: caps('CapAmb'),
    noNewPrivs: raw['NoNewPrivs'] === '1',
    securebits: asked.securebits, dumpable: asked.dumpable,
  }
}

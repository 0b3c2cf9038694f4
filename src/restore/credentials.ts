/**
 * Give every thread of a built member its checkpointed credentials, last,
 * once nothing more needs the stub's privileges (fds are open, limits set,
 * threads created). Credentials are per thread, so each thread makes the
 * calls itself. The order matters, as each step needs what the next drops:
 * supplementary groups and gids while still root; the bounding set while
 * CAP_SETPCAP is effective; setresuid with PR_SET_KEEPCAPS so that the
 * permitted set survives; capabilities back into effective to set
 * securebits; then the checkpointed sets, ambient capabilities,
 * no_new_privs, and the dumpable flag (setresuid reset it).
 *
 * Steps whose value the stub already has are skipped, so that a user who
 * restores their own checkpoint without privileges is not refused for
 * setting what is already so. A step the restorer may not take is
 * NOT_PERMITTED, naming the credential.
 */
import {readFileSync} from 'node:fs'

import {PermissionError} from '../errors.js'
import {type CredentialsImage} from '../image/process-image.js'
import {type Tracee} from '../inject/tracee.js'
import {readStatus} from '../sys/proc.js'
import {SYS} from '../sys/syscall.js'
import {type Injector} from './injector.js'

const SYS_SETRESUID = 117
const SYS_SETRESGID = 119
const SYS_SETGROUPS = 116
const SYS_SETFSUID = 122
const SYS_SETFSGID = 123
const SYS_CAPSET = 126
const PR_SET_DUMPABLE = 4
const PR_SET_KEEPCAPS = 8
const PR_CAPBSET_DROP = 24
const PR_SET_SECUREBITS = 28
const PR_SET_NO_NEW_PRIVS = 38
const PR_CAP_AMBIENT = 47
const PR_CAP_AMBIENT_RAISE = 2
const LINUX_CAPABILITY_VERSION_3 = 0x20080522

function lastCap(): number {
  try {
    return Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim())
  } catch {
    return 40
  }
}

/** struct __user_cap_header_struct + two __user_cap_data_struct (low and high 32 bits of each set). */
function capsetArgs(effective: bigint, permitted: bigint, inheritable: bigint): {header: Uint8Array; data: Uint8Array} {
  const header = new Uint8Array(8)
  new DataView(header.buffer).setUint32(0, LINUX_CAPABILITY_VERSION_3, true)
  const data = new Uint8Array(24)
  const view = new DataView(data.buffer)
  const sets = [effective, permitted, inheritable]
  for (let half = 0; half < 2; half++) {
    sets.forEach((set, i) => view.setUint32(half * 12 + i * 4, Number((set >> BigInt(32 * half)) & 0xffff_ffffn), true))
  }
  return {header, data}
}

/** `stubPid`: the member's pid as we see it, to read what it has now. */
export function restoreCredentials(inject: Injector, threads: readonly Tracee[], stubPid: number, creds: CredentialsImage): void {
  const now = readStatus(stubPid).raw
  const last = lastCap()
  const sameIds = (field: string, ids: readonly number[]): boolean => now[field]?.split(/\s+/).map(Number).join(' ') === ids.join(' ')
  const caps = (field: string): bigint => BigInt('0x' + (now[field] || '0'))
  const groupsSame = (now['Groups'] ?? '').split(/\s+/).filter(Boolean).map(Number).sort((a, b) => a - b).join(' ') === [...creds.groups].sort((a, b) => a - b).join(' ')
  const gidsSame = sameIds('Gid', creds.gids)
  const uidsSame = sameIds('Uid', creds.uids)
  const permittedNow = caps('CapPrm')
  const boundingNow = caps('CapBnd')
  const capsSame = permittedNow === creds.capPermitted && caps('CapEff') === creds.capEffective && caps('CapInh') === creds.capInheritable
  const check = (what: string, r: bigint): void => {
    if (r >= 0n) return
    throw new PermissionError('NOT_PERMITTED', `the clone cannot be given its ${what} (errno ${-r})`,
      'Restoring a process as another user, or with capabilities the restorer lacks, needs root (CAP_SETUID, CAP_SETGID, CAP_SETPCAP).')
  }
  const groups = new Uint8Array(4 * Math.max(1, creds.groups.length))
  creds.groups.forEach((gid, i) => new DataView(groups.buffer).setUint32(4 * i, gid, true))
  const groupsAt = inject.put(groups)
  const full = capsetArgs(permittedNow, permittedNow, creds.capInheritable)
  const fullHeader = inject.put(full.header)
  const fullData = inject.put(full.data)
  const final = capsetArgs(creds.capEffective, creds.capPermitted, creds.capInheritable)
  const finalHeader = inject.put(final.header)
  const finalData = inject.put(final.data)
  const [ruid, euid, suid, fsuid] = creds.uids
  const [rgid, egid, sgid, fsgid] = creds.gids
  for (const tracee of threads) {
    const call = (what: string, nr: number, ...args: (number | bigint)[]): void => check(what, tracee.syscall(nr, ...args))
    if (!groupsSame) call(`supplementary groups (${creds.groups.join(',') || 'none'})`, SYS_SETGROUPS, creds.groups.length, groupsAt)
    if (!gidsSame) {
      call(`gids ${rgid}/${egid}/${sgid}`, SYS_SETRESGID, rgid, egid, sgid)
      tracee.syscall(SYS_SETFSGID, fsgid) // returns the previous fsgid, never an error
    }
    // Dropped from the bounding set while CAP_SETPCAP is still effective.
    for (let cap = 0; cap <= last; cap++) {
      const bit = 1n << BigInt(cap)
      if ((boundingNow & bit) !== 0n && (creds.capBounding & bit) === 0n) call(`bounding set (dropping capability ${cap})`, SYS.prctl, PR_CAPBSET_DROP, cap)
    }
    if (!uidsSame) {
      call('PR_SET_KEEPCAPS', SYS.prctl, PR_SET_KEEPCAPS, 1)
      call(`uids ${ruid}/${euid}/${suid}`, SYS_SETRESUID, ruid, euid, suid)
      tracee.syscall(SYS_SETFSUID, fsuid)
      // A non-root euid cleared the effective set: back, to set securebits (KEEPCAPS is one of them).
      call('capabilities', SYS_CAPSET, fullHeader, fullData)
    }
    if (!uidsSame || creds.securebits !== 0) call(`securebits 0x${creds.securebits.toString(16)}`, SYS.prctl, PR_SET_SECUREBITS, creds.securebits)
    if (!capsSame || !uidsSame) call(`capabilities (effective ${creds.capEffective.toString(16)}, permitted ${creds.capPermitted.toString(16)})`, SYS_CAPSET, finalHeader, finalData)
    for (let cap = 0; cap <= last; cap++) {
      if ((creds.capAmbient & (1n << BigInt(cap))) !== 0n) call(`ambient capability ${cap}`, SYS.prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
    }
    if (creds.noNewPrivs) call('no_new_privs', SYS.prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
  }
  // Per mm (one call serves every thread); setresuid to another user set it to the suid_dumpable default.
  if (creds.dumpable === 0 || creds.dumpable === 1) check('dumpable flag', threads[0]!.syscall(SYS.prctl, PR_SET_DUMPABLE, creds.dumpable))
}

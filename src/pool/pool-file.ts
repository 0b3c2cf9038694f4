/**
 * Opening and creating the pool file without trusting the path.
 *
 * A pool usually lives in /dev/shm, a sticky world-writable directory where
 * any user can create the pool's name first, or plant a symbolic link there.
 * So: the last component is never followed (O_NOFOLLOW, and O_EXCL when
 * creating), a symbolic link earlier in the path that sits in a sticky
 * world-writable directory is followed only when the kernel's
 * fs.protected_symlinks would follow it (it is off on some hosts), and every
 * decision about the file is made on the open descriptor (fstat), never on
 * the path again. Who may use a pool is decided by trustPool().
 */
import {closeSync, constants, fstatSync, lstatSync, openSync, readFileSync, readlinkSync} from 'node:fs'
import type {BigIntStats} from 'node:fs'
import {dirname, join, sep} from 'node:path'

import {NotFoundError, PermissionError, SyscallError, UsageError} from '../errors.js'

/** Mode bits a private pool may have: owner read and write. */
const PRIVATE_MODE_MASK = 0o077n
/** Mode bits no pool may have: any access for others. */
const OTHER_MASK = 0o007n
const S_ISVTX = 0o1000n

export function callerUid(): number {
  return process.geteuid?.() ?? 0
}

function callerGroups(): Set<number> {
  return new Set([process.getegid?.() ?? 0, ...(process.getgroups?.() ?? [])])
}

export function poolUnsafe(path: string, why: string, hint: string): PermissionError {
  return new PermissionError('POOL_UNSAFE', `refusing pool ${path}: ${why}`, hint)
}

function notAFile(path: string, what: string): UsageError {
  return new UsageError('POOL_NOT_A_FILE', `${path} is ${what}, not a pool file`, 'Pass --pool the path of a pool file, e.g. /dev/shm/cxlfork.pool.')
}

/** What is at `path` already, when it is neither a regular file nor a symbolic link (both judged elsewhere): POOL_NOT_A_FILE. */
export function refuseNotAFile(path: string): void {
  const stat = lstatSync(path, {bigint: true, throwIfNoEntry: false})
  if (stat !== undefined && !stat.isFile() && !stat.isSymbolicLink()) throw notAFile(path, describeKind(stat))
}

function describeKind(stat: BigIntStats): string {
  if (stat.isDirectory()) return 'a directory'
  if (stat.isSymbolicLink()) return 'a symbolic link'
  if (stat.isCharacterDevice() || stat.isBlockDevice()) return 'a device'
  if (stat.isFIFO()) return 'a FIFO'
  if (stat.isSocket()) return 'a socket'
  return 'not a regular file'
}

/**
 * Refuse a symbolic link in the directories leading to `file` that the
 * kernel's fs.protected_symlinks would refuse: one in a sticky,
 * world-writable directory, owned neither by the caller nor by that
 * directory's owner. Anyone can plant such a link; root following it would
 * create or open the pool where the planter chose. Checked component by
 * component on lstat; the file itself is then opened with O_NOFOLLOW and
 * judged by fstat, so a swap after this check can misplace the pool but not
 * make cxlfork trust a file it should not.
 */
export function refusePlantedSymlinks(file: string, depth = 0): void {
  if (depth > 40) return // a loop: open(2) fails with ELOOP, reported as POOL_UNSAFE
  const caller = BigInt(callerUid())
  const parts = dirname(file).split(sep).filter((part) => part !== '')
  let parent: string = sep
  let parentStat = lstatSync(parent, {bigint: true})
  for (let i = 0; i < parts.length; i++) {
    const current = join(parent, parts[i]!)
    let stat: BigIntStats
    try {
      stat = lstatSync(current, {bigint: true})
    } catch {
      return // a missing directory is reported when the pool is opened or created
    }
    if (stat.isSymbolicLink()) {
      const stickyShared = (parentStat.mode & S_ISVTX) !== 0n && (parentStat.mode & 0o002n) !== 0n
      if (stickyShared && stat.uid !== caller && stat.uid !== parentStat.uid) {
        throw poolUnsafe(file, `${current} is a symbolic link owned by uid ${stat.uid} in the sticky, world-writable directory ${parent}`,
          'A link there can be planted by any user. Give the real directory in --pool.')
      }
      // A trusted link: continue from what it points to (relative to where it lives).
      const target = readlinkSync(current)
      const resolved = join(target.startsWith(sep) ? target : join(parent, target), ...parts.slice(i + 1))
      return refusePlantedSymlinks(join(resolved, 'x'), depth + 1)
    }
    parent = current
    parentStat = stat
  }
}

/**
 * Open an existing pool file for reading and writing, never through a
 * symbolic link. Returns undefined when nothing is at `path` (the caller
 * decides whether that means create or POOL_NOT_FOUND).
 */
export function openExistingPool(path: string): {fd: number; stat: BigIntStats} | undefined {
  refusePlantedSymlinks(path)
  let fd: number
  try {
    fd = openSync(path, constants.O_RDWR | constants.O_NOFOLLOW)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'ENOENT') {
      requireDirectory(path)
      return undefined
    }
    throw openFailure(path, error as NodeJS.ErrnoException)
  }
  try {
    const stat = fstatSync(fd, {bigint: true})
    if (!stat.isFile()) throw notAFile(path, describeKind(stat))
    return {fd, stat}
  } catch (error) {
    closeQuietly(fd)
    throw error
  }
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd)
  } catch {
    // already closed
  }
}

/** The directory that should hold `path` exists and is a directory, else a typed error naming it. */
export function requireDirectory(path: string): void {
  const directory = dirname(path)
  let stat: BigIntStats
  try {
    stat = lstatSync(directory, {bigint: true, throwIfNoEntry: true})
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EACCES') throw accessDenied(path)
    throw new NotFoundError('POOL_DIR_NOT_FOUND', `the directory of pool ${path} does not exist (${directory})`,
      `Create ${directory} first, or pass --pool a path on a shared-memory file system such as /dev/shm/cxlfork.pool.`)
  }
  // lstat: a symlinked directory is fine here (refusePlantedSymlinks judged it); a file is not.
  if (!stat.isDirectory() && !stat.isSymbolicLink()) {
    throw new NotFoundError('POOL_DIR_NOT_FOUND', `${directory}, the directory of pool ${path}, is not a directory`,
      'Pass --pool a path on a shared-memory file system such as /dev/shm/cxlfork.pool.')
  }
}

function accessDenied(path: string): PermissionError {
  return new PermissionError('POOL_ACCESS', `no permission to open pool ${path}`,
    'A pool is private to the user who created it (mode 0600) unless `pool init --shared-group` shared it: run as that user, as root, or as a member of its group.')
}

/** A typed error for a failed open(2) of the pool path. */
export function openFailure(path: string, error: NodeJS.ErrnoException): Error {
  switch (error.code) {
    case 'ELOOP': // O_NOFOLLOW met a symbolic link as the last component
      return poolUnsafe(path, 'it is a symbolic link, and cxlfork never follows one to a pool',
        `Anyone can plant a link in a shared directory such as /dev/shm. Pass the real path, or remove the link (rm ${path}) if it is stale.`)
    case 'EISDIR':
      return notAFile(path, 'a directory')
    case 'ENOTDIR':
    case 'ENOENT':
      requireDirectory(path)
      return new NotFoundError('POOL_NOT_FOUND', `no pool at ${path}`)
    case 'EACCES':
    case 'EPERM':
      return accessDenied(path)
    default:
      return new SyscallError('open', error.errno === undefined ? 0 : Math.abs(error.errno), path)
  }
}

/** Group id of `group`: a number, or a name looked up in /etc/group. */
export function resolveGroup(group: string): number {
  if (/^\d+$/.test(group)) return Number(group)
  let text = ''
  try {
    text = readFileSync('/etc/group', 'utf8')
  } catch {
    // no group database: only numeric groups
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':')
    if (name === group && gid !== undefined && /^\d+$/.test(gid)) return Number(gid)
  }
  throw new NotFoundError('GROUP_NOT_FOUND', `no group named ${JSON.stringify(group)}`, 'Give a group name from /etc/group or a numeric gid.')
}

/** A file owned by neither the caller nor root (and not shared on purpose) is not trusted, whatever it holds. */
export function refuseForeignOwner(path: string, stat: BigIntStats, uid = callerUid()): void {
  const caller = BigInt(uid)
  if (stat.uid === caller || stat.uid === 0n) return
  throw poolUnsafe(path, `it belongs to uid ${stat.uid}, neither you (uid ${caller}) nor root`,
    `That user can read and change everything checkpointed into it. Remove it (rm ${path}) or pass another --pool; share a pool between users only with \`pool init --shared-group\`.`)
}

/**
 * Decide, on the open file, whether this caller may trust the pool. Private
 * pools (the default): owned by the caller or root, no access for group or
 * others. Shared pools: made by `pool init --shared-group G`, so the header
 * records G, the file's group is G and others have no access; the caller
 * must own it, be root, or be a member of G. Anything else could be read or
 * written by a user the caller never chose to trust, so it is refused before
 * cxlfork writes a byte into it.
 */
export function trustPool(path: string, stat: BigIntStats, sharedGid: number | undefined, as?: {uid: number; groups: readonly number[]}): void {
  // `as`: judged for another user (the porter, for the peer of a request); default: this process.
  const caller = BigInt(as?.uid ?? callerUid())
  const ownerTrusted = stat.uid === caller || stat.uid === 0n
  const mode = stat.mode & 0o7777n
  const octal = `0${mode.toString(8)}`
  if (sharedGid === undefined) {
    refuseForeignOwner(path, stat, Number(caller))
    if ((mode & PRIVATE_MODE_MASK) !== 0n) {
      throw poolUnsafe(path, `its mode is ${octal}: group or others can access it, and it was not created with --shared-group`,
        `Make it private (chmod 600 ${path}) or recreate it with \`pool init --force --shared-group GROUP\`.`)
    }
    return
  }
  if ((mode & OTHER_MASK) !== 0n) {
    throw poolUnsafe(path, `its mode is ${octal}: others can access a pool shared only with gid ${sharedGid}`, `Restore its mode: chmod 660 ${path}.`)
  }
  if (stat.gid !== BigInt(sharedGid)) {
    throw poolUnsafe(path, `it was shared with gid ${sharedGid}, but the file's group is now gid ${stat.gid}`,
      `Restore its group (chgrp ${sharedGid} ${path}) or recreate it with \`pool init --force --shared-group GROUP\`.`)
  }
  if (!ownerTrusted && !(as ? new Set(as.groups) : callerGroups()).has(sharedGid)) {
    throw poolUnsafe(path, `it belongs to uid ${stat.uid} and is shared with gid ${sharedGid}, which you (uid ${caller}) are not a member of`,
      'Use a pool you or root created, or join that group.')
  }
}

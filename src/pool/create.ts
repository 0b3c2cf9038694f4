/**
 * Creating a pool file: checks that need no file, then the file built under a
 * temporary name and linked (or renamed) into place complete.
 */
import {randomBytes} from 'node:crypto'
import {closeSync, constants, fchmodSync, fchownSync, ftruncateSync, linkSync, lstatSync, openSync, renameSync, statfsSync, unlinkSync} from 'node:fs'
import {basename, dirname, join, resolve} from 'node:path'

import {ConflictError, PermissionError, SyscallError, UnsupportedError, UsageError} from '../errors.js'
import {fallocateRaw} from '../sys/file-io.js'
import {controlAreaEnd, reserveRange} from './catalog.js'
import {requireShareableFileSystem} from './filesystem.js'
import {POOL_FLAG_PROVISIONED, POOL_FLAG_SHARED_GROUP, computeLayout, encodeHeader} from './layout.js'
import {PAGE_SIZE} from '../sys/page.js'
import {PoolMapping} from './mapping.js'
import {callerUid, openFailure, refuseNotAFile, refusePlantedSymlinks, requireDirectory} from './pool-file.js'
import {formatSize} from './size.js'

const EINTR = 4
const ENOSPC = 28
const EOPNOTSUPP = 95

export interface CreateFileOptions {
  size: bigint
  force: boolean
  oversize?: boolean
  provision?: boolean
  sharedGid?: number
}

/**
 * Everything about creating a pool at `path` that can be checked without
 * creating it: no planted symbolic link on the way, the directory exists,
 * the file system shares memory. Commands that create the pool late (a
 * checkpoint, after its target passed every check) call it first.
 */
export function checkCreatable(path: string): void {
  const absolute = resolve(path)
  refusePlantedSymlinks(absolute)
  requireDirectory(absolute)
  requireShareableFileSystem(absolute, false)
}

/**
 * Build the pool under a temporary name, then link it into place: the pool
 * appears complete or not at all, and two first users racing to create it
 * end up sharing whichever won. The temporary file is created O_EXCL and
 * O_NOFOLLOW (never through a planted link), and link(2) and rename(2)
 * replace a name without following it.
 */
export function createPoolFile(path: string, options: CreateFileOptions, tolerateExisting: boolean): void {
  checkCreatable(path)
  const layout = computeLayout(options.size)
  if (!options.oversize) refuseOversize(path, layout.totalSize)
  if (options.force) refuseForeignReplacement(path)
  const temporary = join(dirname(path), `.${basename(path)}.init-${process.pid}-${randomBytes(4).toString('hex')}`)
  let fd: number
  try {
    fd = openSync(temporary, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600)
  } catch (error) {
    throw openFailure(temporary, error as NodeJS.ErrnoException)
  }
  try {
    if (options.sharedGid !== undefined) shareWithGroup(fd, path, options.sharedGid)
    else fchmodSync(fd, 0o600)
    try {
      ftruncateSync(fd, Number(layout.totalSize))
    } catch (error) {
      throw new SyscallError('ftruncate', -((error as NodeJS.ErrnoException).errno ?? 0), `${temporary} to ${layout.totalSize} bytes`)
    }
    if (options.provision) provisionFile(fd, temporary, layout.totalSize)
    else reserveRange(fd, temporary, 0n, BigInt(controlAreaEnd(layout)), 'the pool\'s control area')
    // Written through a mapping: hugetlbfs files do not support write(2).
    const mapping = PoolMapping.map(fd, layout.totalSize, PAGE_SIZE)
    const flags = (options.provision ? POOL_FLAG_PROVISIONED : 0) | (options.sharedGid === undefined ? 0 : POOL_FLAG_SHARED_GROUP)
    new Uint8Array(mapping.control).set(encodeHeader(layout, randomBytes(16), Date.now(), flags, options.sharedGid ?? 0))
    mapping.unmap()
    if (options.force) {
      try {
        renameSync(temporary, path)
      } catch (error) {
        throw replaceFailure(path, error as NodeJS.ErrnoException)
      }
      return
    }
    try {
      linkSync(temporary, path)
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw openFailure(path, error as NodeJS.ErrnoException)
      if (!tolerateExisting) {
        refuseNotAFile(path) // a directory is no pool that exists (it said POOL_EXISTS)
        if (lstatSync(path, {throwIfNoEntry: false})?.isSymbolicLink()) throw openFailure(path, Object.assign(new Error('symbolic link'), {code: 'ELOOP'}))
        throw new ConflictError('POOL_EXISTS', `a pool already exists at ${path}`, 'Pass --force to replace it (its checkpoints are lost; running clones are unaffected).')
      }
    }
    unlinkSync(temporary)
  } catch (error) {
    try {
      unlinkSync(temporary)
    } catch {
      // already renamed or unlinked
    }
    throw error
  } finally {
    closeSync(fd)
  }
}


/**
 * A sparse pool larger than its whole file system is accepted by ftruncate
 * and fails later, in the middle of a checkpoint: refuse it here (pool init
 * --force accepts it). A file system that reports no size limit is not judged.
 */
function refuseOversize(path: string, size: bigint): void {
  const fs = statfsSync(dirname(path), {bigint: true})
  const total = fs.blocks * fs.bsize
  if (total === 0n || size <= total) return
  throw new ConflictError('POOL_NO_SPACE',
    `a pool of ${formatSize(size)} (${size} bytes) does not fit the file system of ${dirname(path)}: ${formatSize(total)} in all (${total} bytes), ${formatSize(fs.bavail * fs.bsize)} free`,
    `Pass a smaller --size (at most ${formatSize(total)}), or \`pool init --force\` to create it sparse anyway (checkpoints fail once the file system is full).`)
}

/** `pool init --force` replaces only the caller's own pool (or anything, for root): a sticky directory would refuse the rename anyway. */
function refuseForeignReplacement(path: string): void {
  const existing = lstatSync(path, {bigint: true, throwIfNoEntry: false})
  if (existing === undefined) return
  if (existing.isDirectory()) throw new UsageError('POOL_NOT_A_FILE', `${path} is a directory, not a pool file`, 'Pass --pool the path of a pool file, e.g. /dev/shm/cxlfork.pool.')
  const caller = BigInt(callerUid())
  if (caller !== 0n && existing.uid !== caller) {
    throw new PermissionError('POOL_NOT_OWNER', `${path} belongs to uid ${existing.uid}; uid ${caller} may not replace it`,
      'Only its owner or root may replace a pool; pass another --pool for a pool of your own.')
  }
}

function replaceFailure(path: string, error: NodeJS.ErrnoException): Error {
  if (error.code === 'EPERM' || error.code === 'EACCES') {
    return new PermissionError('POOL_NOT_OWNER', `no permission to replace ${path}`, 'Only its owner or root may replace a pool; pass another --pool for a pool of your own.')
  }
  if (error.code === 'EISDIR') return new UsageError('POOL_NOT_A_FILE', `${path} is a directory, not a pool file`, 'Pass --pool the path of a pool file.')
  return new SyscallError('rename', Math.abs(error.errno ?? 0), path)
}

/** Give the new pool file to group `gid`, mode 0660. chown(2) lets a user give a file only to a group they are in. */
function shareWithGroup(fd: number, path: string, gid: number): void {
  try {
    fchownSync(fd, -1, gid)
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EPERM' || code === 'EINVAL') {
      throw new PermissionError('NOT_PERMITTED', `cannot share ${path} with gid ${gid}: you are not a member of that group`,
        'Share a pool only with a group you belong to (see `id`), or create it as root.')
    }
    throw new SyscallError('fchown', Math.abs((error as NodeJS.ErrnoException).errno ?? 0), `${path} to gid ${gid}`)
  }
  fchmodSync(fd, 0o660)
}

/**
 * Allocate every byte of a new pool file. tmpfs gives up on a pending signal
 * with EINTR, keeping what it allocated: the call is repeated.
 */
function provisionFile(fd: number, path: string, size: bigint): void {
  let r: number
  do r = fallocateRaw(fd, 0, 0n, size)
  while (r === -EINTR)
  if (r === 0) return
  if (r === -ENOSPC) {
    throw new ConflictError('POOL_NO_SPACE', `the file system of ${dirname(path)} has no room to provision ${size} bytes`,
      'Free memory there or pass a smaller --size; without --provision the pool is sparse and takes memory as checkpoints are written.')
  }
  if (r === -EOPNOTSUPP) {
    throw new UnsupportedError('PROVISION_UNSUPPORTED', `the file system of ${dirname(path)} cannot allocate a file ahead (fallocate)`, 'Create the pool without --provision.')
  }
  throw new SyscallError('fallocate', -r, `${path}, ${size} bytes`)
}

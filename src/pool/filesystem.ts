/**
 * Only file systems whose pages really are shared between every mapper may
 * hold a pool: tmpfs and hugetlbfs on one host, DAX (CXL/pmem) and famfs
 * across hosts. A pool on a disk file system would "work" through the page
 * cache on one host and silently diverge across hosts, so it is refused.
 */
import {readFileSync, readlinkSync, realpathSync, statfsSync} from 'node:fs'
import {dirname, resolve} from 'node:path'

import {UnsupportedError} from '../errors.js'

const TMPFS_MAGIC = 0x01021994
const HUGETLBFS_MAGIC = 0x958458f6

export interface FileSystemVerdict {
  shareable: boolean
  /** What made it acceptable or not: tmpfs, hugetlbfs, dax, famfs, or the fstype found. */
  kind: string
  mountPoint: string
}

interface MountEntry {
  mountPoint: string
  fsType: string
  options: string[]
}

function unescapeMountPath(path: string): string {
  return path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)))
}

function mountOf(path: string): MountEntry | undefined {
  let best: MountEntry | undefined
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const separator = line.indexOf(' - ')
    if (separator < 0) continue
    const before = line.slice(0, separator).split(' ')
    const after = line.slice(separator + 3).split(' ')
    const mountPoint = unescapeMountPath(before[4] ?? '')
    const inside = path === mountPoint || path.startsWith(mountPoint === '/' ? '/' : mountPoint + '/')
    // Later lines over-mount earlier ones at the same point, so >= keeps the last.
    if (inside && (!best || mountPoint.length >= best.mountPoint.length)) {
      best = {mountPoint, fsType: after[0] ?? '', options: [...(before[5] ?? '').split(','), ...(after[2] ?? '').split(',')]}
    }
  }
  return best
}

/**
 * Classify the file system holding `path` (the file itself, or for a file
 * yet to be created its directory), or holding the open file `fd`: the
 * descriptor is what was checked, so nothing is looked up by path again.
 */
export function classifyFileSystem(path: string, exists: boolean, fd?: number): FileSystemVerdict {
  const byFd = fd === undefined ? undefined : `/proc/self/fd/${fd}`
  const target = byFd === undefined ? realpathSync(exists ? path : dirname(resolve(path))) : readlinkSync(byFd)
  const type = statfsSync(byFd ?? target).type >>> 0
  const mount = mountOf(target)
  const mountPoint = mount?.mountPoint ?? '/'
  if (type === TMPFS_MAGIC) return {shareable: true, kind: 'tmpfs', mountPoint}
  if (type === HUGETLBFS_MAGIC) return {shareable: true, kind: 'hugetlbfs', mountPoint}
  if (mount?.fsType === 'famfs') return {shareable: true, kind: 'famfs', mountPoint}
  if (mount?.options.some((option) => option === 'dax' || option === 'dax=always')) return {shareable: true, kind: 'dax', mountPoint}
  return {shareable: false, kind: mount?.fsType ?? `statfs type 0x${type.toString(16)}`, mountPoint}
}

/** Throw FS_NOT_SHAREABLE unless `path` lives on a file system every mapper shares. */
export function requireShareableFileSystem(path: string, exists: boolean, fd?: number): FileSystemVerdict {
  const verdict = classifyFileSystem(path, exists, fd)
  if (!verdict.shareable) {
    throw new UnsupportedError('FS_NOT_SHAREABLE',
      `${path} is on ${verdict.kind} (mounted at ${verdict.mountPoint}), which cannot share memory between processes and hosts`,
      'Put the pool on tmpfs (e.g. --pool /dev/shm/cxlfork.pool), hugetlbfs, a DAX mount (-o dax) or famfs.')
  }
  return verdict
}

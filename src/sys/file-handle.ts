/**
 * The path of a file known only by its file handle, as /proc/PID/fdinfo names
 * what an inotify watch watches: `sdev` (the kernel's dev_t of its file
 * system), the handle type and bytes. open_by_handle_at(2) opens it through
 * any mount of that file system (it needs CAP_DAC_READ_SEARCH), and the
 * opened fd's /proc link says where it is in our mount namespace.
 */
import {closeSync, constants, openSync, readFileSync, readlinkSync} from 'node:fs'

import {syscallRaw} from './syscall.js'

const SYS_NAME_TO_HANDLE_AT = 303
const SYS_OPEN_BY_HANDLE_AT = 304
const MAX_HANDLE_SZ = 128
const AT_FDCWD = -100
const O_PATH = 0o10000000
const O_CLOEXEC = 0o2000000

/** Mount points of the file system `major:minor`, those that show its root first. */
function mountsOf(major: number, minor: number): string[] {
  const found: {root: string; point: string}[] = []
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ')
    if (fields[2] !== `${major}:${minor}`) continue
    // mountinfo escapes space, tab, newline and backslash as octal.
    const unescape = (text: string): string => text.replace(/\\([0-7]{3})/g, (_m, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)))
    found.push({root: unescape(fields[3]!), point: unescape(fields[4]!)})
  }
  return [...found.filter((m) => m.root === '/'), ...found.filter((m) => m.root !== '/')].map((m) => m.point)
}

/** The path of the file behind a handle, or undefined when no mount here reaches it. */
export function pathOfHandle(sdev: number, handleType: number, handle: Uint8Array): string | undefined {
  // The kernel's dev_t: major in the bits above 20, minor below.
  const major = sdev >>> 20
  const minor = sdev & 0xf_ffff
  const struct = new Uint8Array(8 + handle.length)
  const view = new DataView(struct.buffer)
  view.setUint32(0, handle.length, true)
  view.setInt32(4, handleType, true)
  struct.set(handle, 8)
  for (const point of mountsOf(major, minor)) {
    let mount: number
    try {
      mount = openSync(point, constants.O_RDONLY | constants.O_DIRECTORY)
    } catch {
      continue
    }
    try {
      const fd = Number(syscallRaw(SYS_OPEN_BY_HANDLE_AT, mount, struct, O_PATH | O_CLOEXEC))
      if (fd < 0) continue
      try {
        return readlinkSync(`/proc/self/fd/${fd}`)
      } finally {
        closeSync(fd)
      }
    } finally {
      closeSync(mount)
    }
  }
  return undefined
}

/** The file handle of `path` (name_to_handle_at(2), following symlinks), or undefined if its file system gives none. */
export function handleOf(path: string): {handleType: number; handle: Uint8Array} | undefined {
  const struct = new Uint8Array(8 + MAX_HANDLE_SZ)
  const view = new DataView(struct.buffer)
  view.setUint32(0, MAX_HANDLE_SZ, true)
  const mountId = new Int32Array(1)
  const r = syscallRaw(SYS_NAME_TO_HANDLE_AT, AT_FDCWD, Buffer.from(path + '\0'), struct, mountId, 0)
  if (r < 0n) return undefined
  const bytes = view.getUint32(0, true)
  return {handleType: view.getInt32(4, true), handle: struct.slice(8, 8 + bytes)}
}

/** The kernel's dev_t (major above bit 20, as fdinfo and mountinfo's s_dev use it) of a stat() st_dev. */
export function kernelDev(stDev: bigint): number {
  const major = Number(((stDev >> 8n) & 0xfffn) | ((stDev >> 32n) & ~0xfffn))
  const minor = Number((stDev & 0xffn) | ((stDev >> 12n) & ~0xffn))
  return ((major << 20) | minor) >>> 0
}

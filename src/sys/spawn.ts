/** posix_spawn(3) with file actions, signal defaults and mask, session and process group. */
import {libc} from './ffi.js'
import {NotFoundError, SyscallError} from '../errors.js'
import {O} from './syscall.js'

// ---------------------------------------------------------------------------
// posix_spawn

const cFaInit = libc.func('int posix_spawn_file_actions_init(void *fa)')
const cFaDestroy = libc.func('int posix_spawn_file_actions_destroy(void *fa)')
const cFaDup2 = libc.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)')
const cFaOpen = libc.func('int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, uint32 mode)')
const cFaClosefrom = libc.func('int posix_spawn_file_actions_addclosefrom_np(void *fa, int from)')
const cFaChdir = libc.func('int posix_spawn_file_actions_addchdir_np(void *fa, const char *path)')
const cAttrInit = libc.func('int posix_spawnattr_init(void *attr)')
const cAttrDestroy = libc.func('int posix_spawnattr_destroy(void *attr)')
const cAttrSetflags = libc.func('int posix_spawnattr_setflags(void *attr, short flags)')
const cAttrSetsigdefault = libc.func('int posix_spawnattr_setsigdefault(void *attr, void *set)')
const cAttrSetsigmask = libc.func('int posix_spawnattr_setsigmask(void *attr, void *set)')
const cAttrSetpgroup = libc.func('int posix_spawnattr_setpgroup(void *attr, int pgroup)')
const cSigemptyset = libc.func('int sigemptyset(void *set)')
const cPosixSpawn = libc.func('int posix_spawn(void *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)')

const POSIX_SPAWN_SETPGROUP = 0x02
const POSIX_SPAWN_SETSIGDEF = 0x04
const POSIX_SPAWN_SETSIGMASK = 0x08
const POSIX_SPAWN_SETSID = 0x80

export interface SpawnOptions {
  /** Executable path (no PATH search). */
  path: string
  /** argv, including argv[0]; defaults to [path]. */
  argv?: string[]
  /** Explicit environment as KEY=VALUE strings; defaults to an EMPTY environment. */
  env?: string[] | Record<string, string>
  /**
   * Child fd table: index = child fd, value = parent fd to dup there, or null
   * for /dev/null. Defaults to [0, 1, 2] (inherit stdio). Every other fd is
   * closed in the child: a stub would otherwise inherit every non-CLOEXEC fd
   * of cxlfork.
   */
  fds?: (number | null)[]
  /** Working directory of the child. */
  cwd?: string
  /**
   * Reset every signal disposition to SIG_DFL (Node ignores SIGPIPE) and
   * clear the blocked mask. Default true.
   */
  resetSignals?: boolean
  /** Put the child in a new session (setsid) — detaches it from our terminal's job control. */
  setsid?: boolean
  /** Put the child in its own process group. */
  newProcessGroup?: boolean
}

/**
 * posix_spawn through the FFI. Never child_process for tracees: libuv reaps
 * its children with waitpid and can swallow their ptrace stops. Returns the pid.
 */
export function posixSpawn(opts: SpawnOptions): number {
  const fa = new Uint8Array(128) // posix_spawn_file_actions_t is 80 bytes on glibc x86_64
  const attr = new Uint8Array(512) // posix_spawnattr_t is 336 bytes
  const sigdef = new Uint8Array(128)
  const sigmask = new Uint8Array(128)
  let e = cFaInit(fa) as number
  if (e !== 0) throw new SyscallError('posix_spawn_file_actions_init', e)
  e = cAttrInit(attr) as number
  if (e !== 0) {
    cFaDestroy(fa)
    throw new SyscallError('posix_spawnattr_init', e)
  }
  try {
    const fds = opts.fds ?? [0, 1, 2]
    const chk = (what: string, rc: number): void => {
      if (rc !== 0) throw new SyscallError(what, rc)
    }
    // Two phases so that a source fd < n is not clobbered by an earlier dup2:
    // first move every source that is itself a target slot out of the way.
    const n = fds.length
    const src: (number | null)[] = [...fds]
    for (let i = 0; i < n; i++) {
      const s = src[i]
      if (s !== null && s !== undefined && s < n && s !== i) {
        const tmp = 1000 + i
        chk('posix_spawn_file_actions_adddup2', cFaDup2(fa, s, tmp) as number)
        src[i] = tmp
      }
    }
    for (let i = 0; i < n; i++) {
      const s = src[i]
      if (s === null || s === undefined) {
        chk('posix_spawn_file_actions_addopen', cFaOpen(fa, i, '/dev/null', i === 0 ? O.RDONLY : O.WRONLY, 0) as number)
      } else {
        chk('posix_spawn_file_actions_adddup2', cFaDup2(fa, s, i) as number)
      }
    }
    chk('posix_spawn_file_actions_addclosefrom_np', cFaClosefrom(fa, Math.max(n, 0)) as number)
    if (opts.cwd !== undefined) chk('posix_spawn_file_actions_addchdir_np', cFaChdir(fa, opts.cwd) as number)

    let flags = 0
    if (opts.resetSignals ?? true) {
      // Every signal 1..64, including glibc's internal 32/33 that sigfillset()
      // leaves out (and that glibc would otherwise set to SIG_IGN in the child).
      sigdef.fill(0)
      sigdef.fill(0xff, 0, 8)
      cSigemptyset(sigmask)
      chk('posix_spawnattr_setsigdefault', cAttrSetsigdefault(attr, sigdef) as number)
      chk('posix_spawnattr_setsigmask', cAttrSetsigmask(attr, sigmask) as number)
      flags |= POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK
    }
    if (opts.setsid) flags |= POSIX_SPAWN_SETSID
    else if (opts.newProcessGroup) {
      chk('posix_spawnattr_setpgroup', cAttrSetpgroup(attr, 0) as number)
      flags |= POSIX_SPAWN_SETPGROUP
    }
    chk('posix_spawnattr_setflags', cAttrSetflags(attr, flags) as number)

    const argv = [...(opts.argv ?? [opts.path]), null]
    let envList: string[]
    if (opts.env === undefined) envList = []
    else if (Array.isArray(opts.env)) envList = opts.env
    else envList = Object.entries(opts.env).map(([k, v]) => `${k}=${v}`)
    const envp = [...envList, null]
    const pidOut = new Int32Array(1)
    const rc = cPosixSpawn(pidOut, opts.path, fa, attr, argv, envp) as number
    if (rc !== 0) {
      if (rc === 2) throw new NotFoundError('EXECUTABLE_NOT_FOUND', `cannot spawn ${opts.path}: no such file`)
      throw new SyscallError('posix_spawn', rc, opts.path)
    }
    return pidOut[0]!
  } finally {
    cFaDestroy(fa)
    cAttrDestroy(attr)
  }
}

/**
 * Typed errors shared by every library. Each carries a stable `code` that
 * scripts can match, an exit status, and a hint telling the operator what to do.
 * ERROR_CODES below is the one registry of codes and their exit statuses
 * (documented in README.md): a code that is not in it does not compile, and
 * each error class accepts only the codes of its own exit status, so one code
 * can no longer mean two things (it did: PROCESS_NOT_FOUND and NO_SUCH_PROCESS).
 */

export const ExitCode = {
  /** Runtime failure that fits no narrower class. */
  failure: 1,
  /** Usage error: bad flags or arguments (oclif uses 2 for parse errors too). */
  usage: 2,
  /** The pid, checkpoint, pool or image named does not exist. */
  notFound: 3,
  /** The caller lacks the privilege (uid, capability, ptrace access). */
  permission: 4,
  /** The process uses a feature cxlfork cannot checkpoint or restore. */
  unsupported: 5,
  /** The pool or an image is corrupt, foreign, truncated or of another version. */
  corrupt: 6,
  /** A conflict: name taken, checkpoint still referenced, pool full. */
  conflict: 7,
  /** Stopped at a safe point by SIGINT, SIGTERM or SIGHUP: the command exits 128 + the signal's number (130, 143, 129), as a shell reports a process that signal ended. */
  interrupted: 128,
} as const

export type ExitStatus = (typeof ExitCode)[keyof typeof ExitCode]

/** Every error code cxlfork emits, with its exit status. Add a code here before throwing it. */
export const ERROR_CODES = {
  // exit failure
  BATCH_AREA_EXISTS: ExitCode.failure, BENCH_CLONE_CORRUPT: ExitCode.failure, BENCH_CLONE_DIED: ExitCode.failure,
  BENCH_COMMAND_FAILED: ExitCode.failure, BENCH_FALLOCATE: ExitCode.failure, BENCH_FORK_FAILED: ExitCode.failure,
  BENCH_NODE_FAILED: ExitCode.failure, BENCH_TARGET_FAILED: ExitCode.failure, BENCH_TARGET_LAYOUT: ExitCode.failure,
  INTERNAL: ExitCode.failure, NO_ADDRESS_SPACE: ExitCode.failure, STORE_NOT_MAPPABLE: ExitCode.failure, STUB_BAD_LAYOUT: ExitCode.failure,
  STUB_DIR_UNSAFE: ExitCode.failure, STUB_NOT_PARKED: ExitCode.failure, GHOST_MISMATCH: ExitCode.failure, SYSCALL_FAILED: ExitCode.failure, FAULT_SERVER_FAILED: ExitCode.failure,
  TRACEE_DETACHED: ExitCode.failure, TRACEE_RUNNING: ExitCode.failure, TRACEE_STOP_TIMEOUT: ExitCode.failure,
  CHILD_NOT_SEEN: ExitCode.failure, ID_TAKEN: ExitCode.failure, NOT_SELF_HEALING: ExitCode.failure, PIDNS_RESTORE_FAILED: ExitCode.failure,
  SCRATCH_FULL: ExitCode.failure, THREADS_UNSTABLE: ExitCode.failure, BENCH_NO_SIZE: ExitCode.failure, BENCH_TARGET_THREADS: ExitCode.failure,
  BENCH_CLONE_THREADS: ExitCode.failure, BENCH_TARGET_TREE: ExitCode.failure, BENCH_CLONE_TREE: ExitCode.failure, BENCH_PROCESS_LEFT: ExitCode.failure,
  BENCH_CRIU_FAILED: ExitCode.failure,
  BENCH_NO_PYTHON: ExitCode.failure,
  // exit usage
  BUILDER_FINISHED: ExitCode.usage, COMMAND_NOT_FOUND: ExitCode.usage, INVALID_NETNS: ExitCode.usage, INVALID_THREADS: ExitCode.usage, INVALID_TREES: ExitCode.usage, INVALID_FAAS: ExitCode.usage, INVALID_OUT: ExitCode.usage, IMAGES_NOT_A_DIRECTORY: ExitCode.usage,
  INVALID_NAME: ExitCode.usage, INVALID_PID: ExitCode.usage, INVALID_POLICY: ExitCode.usage, INVALID_SECTION: ExitCode.usage,
  INVALID_SIZE: ExitCode.usage, CRIU_BIN_UNUSABLE: ExitCode.usage, OFFSET_OUTSIDE_CHECKPOINT: ExitCode.usage, POOL_CLOSED: ExitCode.usage, POOL_NOT_A_FILE: ExitCode.usage,
  POOL_SIZE_UNALIGNED: ExitCode.usage, POOL_TOO_LARGE: ExitCode.usage, POOL_TOO_SMALL: ExitCode.usage, USAGE: ExitCode.usage,
  RECORD_POLICY: ExitCode.usage, NO_ACCESS_RECORD: ExitCode.usage,
  // exit notFound
  BACKING_FILE_MISSING: ExitCode.notFound, CHECKPOINT_DELETING: ExitCode.notFound, CHECKPOINT_NOT_FOUND: ExitCode.notFound,
  CRIU_IMAGE_MISSING: ExitCode.notFound, CRIU_PROTO_MISSING: ExitCode.notFound, EXECUTABLE_NOT_FOUND: ExitCode.notFound,
  FILE_NOT_FOUND: ExitCode.notFound, GROUP_NOT_FOUND: ExitCode.notFound, POOL_DIR_NOT_FOUND: ExitCode.notFound,
  POOL_NOT_FOUND: ExitCode.notFound, PROCESS_NOT_FOUND: ExitCode.notFound, SECTION_NOT_FOUND: ExitCode.notFound,
  TRACEE_GONE: ExitCode.notFound, NOT_A_CLONE: ExitCode.notFound, PEER_UNREACHABLE: ExitCode.notFound,
  // exit permission
  CHECKPOINT_ACCESS: ExitCode.permission, NOT_PERMITTED: ExitCode.permission, POOL_ACCESS: ExitCode.permission,
  POOL_NOT_OWNER: ExitCode.permission, POOL_UNSAFE: ExitCode.permission, PROC_ACCESS_DENIED: ExitCode.permission,
  PTRACE_DENIED: ExitCode.permission, SIGNAL_DENIED: ExitCode.permission,
  // exit unsupported
  BACKING_FILE_CHANGED: ExitCode.unsupported, CRIU_ARCH: ExitCode.unsupported, CRIU_COMPAT_TASK: ExitCode.unsupported,
  CRIU_FD_TYPE: ExitCode.unsupported, CRIU_FILE_REMAP: ExitCode.unsupported, CRIU_FILE_TYPE: ExitCode.unsupported,
  CRIU_IMAGE_VERSION: ExitCode.unsupported, CRIU_PAGEMAP_LAZY: ExitCode.unsupported, CRIU_PAGEMAP_PARENT: ExitCode.unsupported,
  CRIU_PROCESS_TREE: ExitCode.unsupported, CRIU_SECCOMP: ExitCode.unsupported, CRIU_SHARED_ANON: ExitCode.unsupported,
  CRIU_TASK_STATE: ExitCode.unsupported, CRIU_TIMERS: ExitCode.unsupported, UNSUPPORTED_TIMER: ExitCode.unsupported, FILE_LOCK: ExitCode.unsupported, SYSV_IPC: ExitCode.unsupported, TIMER_IDS_UNSUPPORTED: ExitCode.unsupported, CRIU_VMA_UNSUPPORTED: ExitCode.unsupported,
  FS_NOT_SHAREABLE: ExitCode.unsupported, HAS_CHILDREN: ExitCode.unsupported, KERNEL_MISMATCH: ExitCode.unsupported,
  KERNEL_THREAD: ExitCode.unsupported, MULTI_THREADED: ExitCode.unsupported, NO_SYSCALL_SITE: ExitCode.unsupported,
  NO_VDSO: ExitCode.unsupported, PROCESS_ZOMBIE: ExitCode.unsupported, PROVISION_UNSUPPORTED: ExitCode.unsupported,
  SECCOMP: ExitCode.unsupported, SELF_TRACE: ExitCode.unsupported, SHARED_ADDRESS_SPACE: ExitCode.unsupported, SHARED_ANON_MEMORY: ExitCode.unsupported, THREAD_CREDENTIALS: ExitCode.unsupported, UNSUPPORTED_FD: ExitCode.unsupported,
  UNSUPPORTED_MEMORY: ExitCode.unsupported, THREADS_NEED_PIDNS: ExitCode.unsupported, POLICY_NEEDS_PIDNS: ExitCode.unsupported, LEADER_EXITED: ExitCode.unsupported,
  PID_UNSUPPORTED: ExitCode.unsupported, ZOMBIE_SIGNALED: ExitCode.unsupported, OTHER_PID_NAMESPACE: ExitCode.unsupported, NAMESPACE_DIFFERS: ExitCode.unsupported,
  CPU_MISMATCH: ExitCode.unsupported, UNSUPPORTED_ARCH: ExitCode.unsupported, PAGE_CHECKSUMS_MISSING: ExitCode.unsupported,
  // exit corrupt
  CHECKPOINT_CORRUPT: ExitCode.corrupt, CRIU_IMAGE_CORRUPT: ExitCode.corrupt, CRIU_IMAGE_ENCODE: ExitCode.corrupt,
  CRIU_IMAGE_MAGIC: ExitCode.corrupt, CRIU_IMAGE_TRUNCATED: ExitCode.corrupt, CRIU_IMAGE_UNREADABLE: ExitCode.corrupt,
  IMAGE_CORRUPT: ExitCode.corrupt, IMAGE_INCONSISTENT: ExitCode.corrupt, IMAGE_VERSION: ExitCode.corrupt,
  PAGE_MAP_CORRUPT: ExitCode.corrupt, POOL_FOREIGN: ExitCode.corrupt, POOL_HEADER_CORRUPT: ExitCode.corrupt,
  POOL_SIZE_MISMATCH: ExitCode.corrupt, POOL_TRUNCATED: ExitCode.corrupt, POOL_VERSION: ExitCode.corrupt, PAGE_DATA_CORRUPT: ExitCode.corrupt,
  // exit conflict
  ALREADY_TRACED: ExitCode.conflict, ADDRESS_IN_USE: ExitCode.conflict, FILE_LOCK_HELD: ExitCode.conflict, BUILD_SLOTS_FULL: ExitCode.conflict, CHECKPOINT_IN_USE: ExitCode.conflict,
  DIRECTORY_FULL: ExitCode.conflict, HOST_TABLE_FULL: ExitCode.conflict, IMAGES_EXIST: ExitCode.conflict, NAME_TAKEN: ExitCode.conflict,
  POOL_BUSY: ExitCode.conflict, POOL_EXISTS: ExitCode.conflict, POOL_FULL: ExitCode.conflict, POOL_NO_SPACE: ExitCode.conflict, REFERENCES_FULL: ExitCode.conflict,
  SELF_HEALING: ExitCode.conflict, TREE_UNSTABLE: ExitCode.conflict,
  // the porter (src/porter): a resident restore service
  PORTER_FAILED: ExitCode.failure, PORTER_BAD_REQUEST: ExitCode.usage, PORTER_BODY_TOO_LARGE: ExitCode.usage, PORTER_METHOD: ExitCode.usage,
  PORTER_NO_ROUTE: ExitCode.notFound, PORTER_NOT_RUNNING: ExitCode.notFound, PORTER_SOCKET_UNSAFE: ExitCode.permission,
  PORTER_UNSERVED: ExitCode.unsupported, PORTER_RUNNING: ExitCode.conflict,
  // per-clone cgroups of the porter (src/porter/cgroups.ts)
  INVALID_LIMIT: ExitCode.usage, CGROUP_UNAVAILABLE: ExitCode.unsupported, LIMITS_NEED_PORTER: ExitCode.unsupported,
  // serverless functions run by the porter (src/porter/functions)
  FUNCTION_FAILED: ExitCode.failure, INVALID_FUNCTION: ExitCode.usage, INVALID_FUNCTION_DATA: ExitCode.usage, INVALID_DURATION: ExitCode.usage, INVALID_TRACE: ExitCode.usage,
  FUNCTION_NOT_FOUND: ExitCode.notFound, FUNCTION_ACCESS: ExitCode.permission, FUNCTION_EXISTS: ExitCode.conflict,
  // exit 128 + the signal
  INTERRUPTED: ExitCode.interrupted,
} as const satisfies Record<string, ExitStatus>

export type ErrorCode = keyof typeof ERROR_CODES
/** The codes registered with exit status `S`. */
export type CodeWithExit<S extends ExitStatus> = {[K in ErrorCode]: (typeof ERROR_CODES)[K] extends S ? K : never}[ErrorCode]

export function isErrorCode(code: string): code is ErrorCode {
  return Object.hasOwn(ERROR_CODES, code)
}

export class CxlforkError extends Error {
  override readonly name: string = 'CxlforkError'

  /** From ERROR_CODES, never chosen by the thrower. */
  readonly exitCode: ExitStatus

  constructor(
    /** Stable machine-readable code, e.g. `POOL_CORRUPT`. */
    readonly code: ErrorCode,
    message: string,
    readonly hint?: string,
  ) {
    super(message)
    this.exitCode = ERROR_CODES[code]
  }

  toJSON(): {code: string; message: string; hint?: string; exitCode: number} {
    return {code: this.code, message: this.message, ...(this.hint === undefined ? {} : {hint: this.hint}), exitCode: this.exitCode}
  }
}

export class UsageError extends CxlforkError {
  override readonly name = 'UsageError'
  constructor(code: CodeWithExit<typeof ExitCode.usage>, message: string, hint?: string) {
    super(code, message, hint)
  }
}

export class NotFoundError extends CxlforkError {
  override readonly name = 'NotFoundError'
  constructor(code: CodeWithExit<typeof ExitCode.notFound>, message: string, hint?: string) {
    super(code, message, hint)
  }
}

export class PermissionError extends CxlforkError {
  override readonly name = 'PermissionError'
  constructor(code: CodeWithExit<typeof ExitCode.permission>, message: string, hint?: string) {
    super(code, message, hint)
  }
}

export class UnsupportedError extends CxlforkError {
  override readonly name = 'UnsupportedError'
  constructor(code: CodeWithExit<typeof ExitCode.unsupported>, message: string, hint?: string) {
    super(code, message, hint)
  }
}

export class CorruptError extends CxlforkError {
  override readonly name = 'CorruptError'
  constructor(code: CodeWithExit<typeof ExitCode.corrupt>, message: string, hint?: string) {
    super(code, message, hint)
  }
}

export class ConflictError extends CxlforkError {
  override readonly name = 'ConflictError'
  constructor(code: CodeWithExit<typeof ExitCode.conflict>, message: string, hint?: string) {
    super(code, message, hint)
  }
}

/**
 * A failed system call, with errno and the syscall's name: SYSCALL_FAILED,
 * exit 1 whatever the errno (the README's table). A refusal the caller can
 * do something about is translated where it is understood (NOT_PERMITTED,
 * PTRACE_DENIED, POOL_ACCESS, ...), not guessed from EPERM here.
 */
export class SyscallError extends CxlforkError {
  override readonly name = 'SyscallError'
  constructor(readonly syscall: string, readonly errno: number, detail?: string, hint?: string) {
    super('SYSCALL_FAILED', `${syscall} failed: ${errnoName(errno)} (${errno})${detail ? `: ${detail}` : ''}`, hint)
  }
}

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 3: 'ESRCH', 4: 'EINTR', 5: 'EIO', 9: 'EBADF', 10: 'ECHILD', 11: 'EAGAIN',
  12: 'ENOMEM', 13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 20: 'ENOTDIR', 21: 'EISDIR', 22: 'EINVAL',
  24: 'EMFILE', 28: 'ENOSPC', 38: 'ENOSYS', 40: 'ELOOP', 95: 'EOPNOTSUPP',
}

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`
}

/** A terminating signal stopped the command at a safe point; it exits `status`, 128 + the signal. */
export class InterruptedError extends CxlforkError {
  override readonly name = 'InterruptedError'
  constructor(readonly signal: number, message: string, hint?: string) {
    super('INTERRUPTED', message, hint)
  }

  get status(): number {
    return 128 + this.signal
  }

  override toJSON(): {code: string; message: string; hint?: string; exitCode: number} {
    return {...super.toJSON(), exitCode: this.status}
  }
}

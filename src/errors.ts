/**
 * Typed errors shared by every library. Each carries a stable `code` that
 * scripts can match, an exit status, and a hint telling the operator what to do.
 * Exit statuses are assigned here and nowhere else (documented in README.md).
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
} as const

export type ExitStatus = (typeof ExitCode)[keyof typeof ExitCode]

export class CxlforkError extends Error {
  override readonly name: string = 'CxlforkError'

  constructor(
    /** Stable machine-readable code, e.g. `POOL_CORRUPT`. */
    readonly code: string,
    message: string,
    readonly hint?: string,
    readonly exitCode: ExitStatus = ExitCode.failure,
  ) {
    super(message)
  }

  toJSON(): {code: string; message: string; hint?: string; exitCode: number} {
    return {code: this.code, message: this.message, ...(this.hint === undefined ? {} : {hint: this.hint}), exitCode: this.exitCode}
  }
}

export class UsageError extends CxlforkError {
  override readonly name = 'UsageError'
  constructor(code: string, message: string, hint?: string) {
    super(code, message, hint, ExitCode.usage)
  }
}

export class NotFoundError extends CxlforkError {
  override readonly name = 'NotFoundError'
  constructor(code: string, message: string, hint?: string) {
    super(code, message, hint, ExitCode.notFound)
  }
}

export class PermissionError extends CxlforkError {
  override readonly name = 'PermissionError'
  constructor(code: string, message: string, hint?: string) {
    super(code, message, hint, ExitCode.permission)
  }
}

export class UnsupportedError extends CxlforkError {
  override readonly name = 'UnsupportedError'
  constructor(code: string, message: string, hint?: string) {
    super(code, message, hint, ExitCode.unsupported)
  }
}

export class CorruptError extends CxlforkError {
  override readonly name = 'CorruptError'
  constructor(code: string, message: string, hint?: string) {
    super(code, message, hint, ExitCode.corrupt)
  }
}

export class ConflictError extends CxlforkError {
  override readonly name = 'ConflictError'
  constructor(code: string, message: string, hint?: string) {
    super(code, message, hint, ExitCode.conflict)
  }
}

/** A failed system call, with errno and the syscall's name. */
export class SyscallError extends CxlforkError {
  override readonly name = 'SyscallError'
  constructor(readonly syscall: string, readonly errno: number, detail?: string, hint?: string) {
    super('SYSCALL_FAILED', `${syscall} failed: ${errnoName(errno)} (${errno})${detail ? `: ${detail}` : ''}`, hint,
      errno === 1 || errno === 13 ? ExitCode.permission : ExitCode.failure)
  }
}

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 3: 'ESRCH', 4: 'EINTR', 5: 'EIO', 9: 'EBADF', 10: 'ECHILD', 11: 'EAGAIN',
  12: 'ENOMEM', 13: 'EACCES', 14: 'EFAULT', 16: 'EBUSY', 17: 'EEXIST', 19: 'ENODEV', 22: 'EINVAL',
  24: 'EMFILE', 28: 'ENOSPC', 38: 'ENOSYS', 95: 'EOPNOTSUPP',
}

export function errnoName(errno: number): string {
  return ERRNO_NAMES[errno] ?? `errno ${errno}`
}

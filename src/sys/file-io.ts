/** File descriptors: open, read/write (whole and positioned), sendfile, fallocate, dup, pipes, memfd, fstat. */
import {errno as lastErrno, libc} from './ffi.js'
import {NotFoundError, SyscallError} from '../errors.js'
import {blen, type Buf, check, MFD_CLOEXEC, O, SYS, syscall, syscallRaw, sysN, type SysArg} from './syscall.js'

// ---------------------------------------------------------------------------
// Files

export function open(path: string, flags: number, mode = 0o600): number {
  const r = cOpen(path, flags | O.CLOEXEC, mode) as number
  if (r < 0) {
    const e = lastErrno()
    if (e === 2) throw new NotFoundError('FILE_NOT_FOUND', `no such file: ${path}`)
    throw new SyscallError('open', e, path)
  }
  return r
}
const cOpen = libc.func('int open(const char *path, int flags, uint32 mode)')

export function close(fd: number): void {
  syscall(`close(${fd})`, SYS.close, fd)
}

/** fallocate(2) modes. */
export const FALLOC = {KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02} as const

/** fallocate(2) of [offset, offset + length); mode 0 allocates. Returns 0 or -errno (callers name their own errors). */
export function fallocateRaw(fd: number, mode: number, offset: bigint | number, length: bigint | number): number {
  return Number(syscallRaw(SYS.fallocate, fd, mode, offset, length))
}

/** read(2); returns bytes read (0 at EOF). Retries EINTR. */
export function read(fd: number, buf: Buf, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.read, fd, buf, n)
    if (r === -4n) continue
    return Number(check(`read(${fd})`, r))
  }
}

/** pread(2) at a byte offset (bigint allowed for offsets >= 2^53). */
export function pread(fd: number, buf: Buf, offset: number | bigint, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.pread64, fd, buf, n, offset)
    if (r === -4n) continue
    return Number(check(`pread(${fd})`, r))
  }
}

/** Reads exactly len bytes at offset or until EOF; returns bytes read. */
export function preadFull(fd: number, buf: Buf, offset: number | bigint, len?: number): number {
  const n = blen(buf, len)
  let done = 0
  while (done < n) {
    const dst = typeof buf === 'bigint' ? buf + BigInt(done) : sub(buf, done)
    const r = pread(fd, dst, typeof offset === 'bigint' ? offset + BigInt(done) : offset + done, n - done)
    if (r === 0) break
    done += r
  }
  return done
}

export function write(fd: number, buf: Buf, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.write, fd, buf, n)
    if (r === -4n) continue
    return Number(check(`write(${fd})`, r))
  }
}

export function pwrite(fd: number, buf: Buf, offset: number | bigint, len?: number): number {
  const n = blen(buf, len)
  for (;;) {
    const r = syscallRaw(SYS.pwrite64, fd, buf, n, offset)
    if (r === -4n) continue
    return Number(check(`pwrite(${fd})`, r))
  }
}

/** Writes everything (loops on short writes). */
export function writeAll(fd: number, buf: Buf, len?: number): void {
  const n = blen(buf, len)
  let done = 0
  while (done < n) {
    const src = typeof buf === 'bigint' ? buf + BigInt(done) : sub(buf, done)
    done += write(fd, src, n - done)
  }
}

function sub(v: ArrayBufferView, off: number): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset + off, v.byteLength - off)
}

export function ftruncate(fd: number, size: number | bigint): void {
  syscall(`ftruncate(${fd})`, SYS.ftruncate, fd, size)
}

/**
 * Copy `bytes` from offset `from` of `inFd` to offset `to` of `outFd` with
 * sendfile(2): in the kernel, no user buffer. (A fresh buffer costs a page
 * fault per page, which in this VM made 64 MiB take ~200 ms instead of ~22 ms.)
 */
export function sendfileAt(outFd: number, inFd: number, from: bigint, to: bigint, bytes: bigint, what: string): void {
  const position = syscallRaw(SYS.lseek, outFd, to, 0 /* SEEK_SET */)
  if (position < 0n) throw new SyscallError(`lseek (${what})`, Number(-position))
  const offset = new BigInt64Array([from])
  for (let left = bytes; left > 0n;) {
    const n = syscallRaw(SYS.sendfile, outFd, inFd, offset, left > 1n << 30n ? 1n << 30n : left)
    if (n === -4n) continue
    if (n < 0n) throw new SyscallError(`sendfile (${what})`, Number(-n))
    if (n === 0n) throw new SyscallError(`sendfile (${what})`, 5, `${left} bytes short`)
    left -= n
  }
}

export function lseek(fd: number, offset: number | bigint, whence: number): bigint {
  return syscall(`lseek(${fd})`, SYS.lseek, fd, offset, whence)
}

export function dup(fd: number): number {
  return sysN(`dup(${fd})`, SYS.dup, fd)
}

/** dup3(old, new, flags). */
export function dup3(oldfd: number, newfd: number, flags = 0): number {
  return sysN(`dup3(${oldfd}, ${newfd})`, SYS.dup3, oldfd, newfd, flags)
}

export function fcntl(fd: number, cmd: number, arg: SysArg = 0): number {
  return sysN(`fcntl(${fd}, ${cmd})`, SYS.fcntl, fd, cmd, arg)
}

/** pipe2(flags) -> [readFd, writeFd]. */
export function pipe2(flags: number = O.CLOEXEC): [number, number] {
  const fds = new Int32Array(2)
  syscall('pipe2', SYS.pipe2, fds, flags)
  return [fds[0]!, fds[1]!]
}

export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  return sysN(`memfd_create(${name})`, SYS.memfd_create, Buffer.from(name + '\0'), flags)
}

export interface Stat {
  dev: bigint
  ino: bigint
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev: bigint
  size: number
  blksize: number
  blocks: number
  atimeNs: bigint
  mtimeNs: bigint
  ctimeNs: bigint
}

/** fstat(2), struct stat of x86_64 (144 bytes). */
export function fstat(fd: number): Stat {
  const b = new BigInt64Array(18)
  syscall(`fstat(${fd})`, SYS.fstat, fd, b)
  const u = new Uint32Array(b.buffer)
  return {
    dev: BigInt.asUintN(64, b[0]!), ino: BigInt.asUintN(64, b[1]!), nlink: Number(b[2]!), mode: u[6]!, uid: u[7]!,
    gid: u[8]!, rdev: BigInt.asUintN(64, b[5]!), size: Number(b[6]!), blksize: Number(b[7]!), blocks: Number(b[8]!),
    atimeNs: b[9]! * 1_000_000_000n + b[10]!, mtimeNs: b[11]! * 1_000_000_000n + b[12]!,
    ctimeNs: b[13]! * 1_000_000_000n + b[14]!,
  }
}

/** Memory: our own mappings (mmap, views over native memory) and another process's (process_vm_readv/writev). */
import {errno as lastErrno, koffi, libc} from './ffi.js'
import {NotFoundError, PermissionError, SyscallError} from '../errors.js'
import {close, open, pread, pwrite} from './file-io.js'
import {blen, type Buf, IOV_MAX, MAP, O, PROT, SYS, syscall, syscallRaw} from './syscall.js'

// ---------------------------------------------------------------------------
// Local memory

/** mmap(2); returns the address. */
export function mmap(addr: bigint | null, length: number | bigint, prot: number, flags: number, fd = -1, offset: number | bigint = 0): bigint {
  const r = syscallRaw(SYS.mmap, addr ?? 0, length, prot, flags, fd, offset)
  if (r < 0n) throw new SyscallError('mmap', Number(-r), `length ${length}`)
  return r
}

export function munmap(addr: bigint, length: number | bigint): void {
  syscall('munmap', SYS.munmap, addr, length)
}

export function mprotect(addr: bigint, length: number | bigint, prot: number): void {
  syscall('mprotect', SYS.mprotect, addr, length, prot)
}

export function madvise(addr: bigint, length: number | bigint, advice: number): void {
  syscall(`madvise(${advice})`, SYS.madvise, addr, length, advice)
}

/** A Uint8Array over native memory (no copy). Valid while the mapping lives. */
export function view(addr: bigint, length: number): Uint8Array {
  return new Uint8Array(koffi.view(addr, length))
}

/** Native address of a typed array's first byte (stable for arrays > 64 bytes, which live off the V8 heap). */
export function addressOf(v: ArrayBufferView): bigint {
  return koffi.address(v)
}

// ---------------------------------------------------------------------------
// Cross-process memory

const cVmReadv = libc.func('int64 process_vm_readv(int pid, void *liov, uint64 liovcnt, void *riov, uint64 riovcnt, uint64 flags)')
const cVmWritev = libc.func('int64 process_vm_writev(int pid, void *liov, uint64 liovcnt, void *riov, uint64 riovcnt, uint64 flags)')

/** One copy between our memory (`local`) and another process (`remote`). */
export interface VmSegment {
  /** Local address (native memory) or typed array. */
  local: bigint | ArrayBufferView
  remote: bigint
  /** Byte count; defaults to the typed array's length. */
  len?: number
}

/** Builds paired iovec arrays for segments [from, to); returns the bytes covered. */
const IOV_SCRATCH_L = new BigUint64Array(IOV_MAX * 2)
const IOV_SCRATCH_R = new BigUint64Array(IOV_MAX * 2)

function segLen(s: VmSegment): number {
  if (s.len !== undefined) return s.len
  if (typeof s.local === 'bigint') throw new TypeError('VmSegment.len is required with a native address')
  return s.local.byteLength
}

/**
 * process_vm_readv / writev over many segments, IOV_MAX per system call.
 * Returns the total bytes transferred. A short transfer (a remote page not
 * mapped or not readable) stops early and reports what was done; use
 * vmRead/vmWrite for all-or-error semantics.
 *
 * Typed arrays of 64 bytes or less may live on the V8 heap and move: they are
 * bounced through a native buffer automatically.
 */
function vmTransfer(write: boolean, pid: number, segs: readonly VmSegment[]): number {
  let total = 0
  let i = 0
  while (i < segs.length) {
    const n = Math.min(IOV_MAX, segs.length - i)
    let want = 0
    const bounces: [number, ArrayBufferView][] = []
    for (let k = 0; k < n; k++) {
      const s = segs[i + k]!
      const len = segLen(s)
      let laddr: bigint
      if (typeof s.local === 'bigint') laddr = s.local
      else if (s.local.byteLength > 64) laddr = koffi.address(s.local)
      else {
        laddr = bounceAddr() + BigInt(k * 64)
        if (write) view(laddr, len).set(new Uint8Array(s.local.buffer, s.local.byteOffset, len))
        bounces.push([k, s.local])
      }
      IOV_SCRATCH_L[2 * k] = laddr
      IOV_SCRATCH_L[2 * k + 1] = BigInt(len)
      IOV_SCRATCH_R[2 * k] = s.remote
      IOV_SCRATCH_R[2 * k + 1] = BigInt(len)
      want += len
    }
    const fn = write ? cVmWritev : cVmReadv
    let r: number
    for (;;) {
      r = Number(fn(pid, IOV_SCRATCH_L, n, IOV_SCRATCH_R, n, 0) as number | bigint)
      if (r === -1 && lastErrno() === 4) continue
      break
    }
    if (r === -1) {
      const e = lastErrno()
      if (total > 0 && e === 14) return total
      if (e === 3) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`)
      if (e === 1) throw new PermissionError('PTRACE_DENIED', `no ptrace access to process ${pid}`, 'run as root (CAP_SYS_PTRACE)')
      throw new SyscallError(write ? 'process_vm_writev' : 'process_vm_readv', e, `pid ${pid}`)
    }
    if (!write) {
      for (const [k, v] of bounces) {
        const len = Number(IOV_SCRATCH_L[2 * k + 1]!)
        new Uint8Array(v.buffer, v.byteOffset, len).set(view(bounceAddr() + BigInt(k * 64), len))
      }
    }
    total += r
    if (r < want) return total
    i += n
  }
  return total
}

// 64 KiB bounce buffer = IOV_MAX slots of 64 bytes for small typed arrays.
// Mapped on first use, not when the module loads.
let bounceBuffer: bigint | undefined
function bounceAddr(): bigint {
  bounceBuffer ??= mmap(null, IOV_MAX * 64, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
  return bounceBuffer
}

/** process_vm_readv over many segments; returns bytes read (short on an unreadable remote page). */
export function vmReadv(pid: number, segs: readonly VmSegment[]): number {
  return vmTransfer(false, pid, segs)
}

/** process_vm_writev over many segments; returns bytes written (short on an unwritable remote page). */
export function vmWritev(pid: number, segs: readonly VmSegment[]): number {
  return vmTransfer(true, pid, segs)
}

/** Reads exactly `len` bytes at `remote` of pid into `dest`; throws SyscallError(EFAULT) if short. */
export function vmRead(pid: number, remote: bigint, dest: Buf, len?: number): void {
  const n = blen(dest, len)
  // Split in 1 GiB pieces: one iovec may not exceed MAX_RW_COUNT (2 GiB - 4 KiB).
  const segs: VmSegment[] = []
  for (let off = 0; off < n; off += 1 << 30) {
    const l = Math.min(1 << 30, n - off)
    segs.push({local: typeof dest === 'bigint' ? dest + BigInt(off) : new Uint8Array(dest.buffer, dest.byteOffset + off, l), remote: remote + BigInt(off), len: l})
  }
  const r = vmReadv(pid, segs)
  if (r !== n) throw new SyscallError('process_vm_readv', 14, `pid ${pid}: read ${r} of ${n} bytes at 0x${(remote + BigInt(r)).toString(16)}`)
}

/** Writes all of `src` at `remote` of pid; throws SyscallError(EFAULT) if short. */
export function vmWrite(pid: number, remote: bigint, src: Buf, len?: number): void {
  const n = blen(src, len)
  const segs: VmSegment[] = []
  for (let off = 0; off < n; off += 1 << 30) {
    const l = Math.min(1 << 30, n - off)
    segs.push({local: typeof src === 'bigint' ? src + BigInt(off) : new Uint8Array(src.buffer, src.byteOffset + off, l), remote: remote + BigInt(off), len: l})
  }
  const r = vmWritev(pid, segs)
  if (r !== n) throw new SyscallError('process_vm_writev', 14, `pid ${pid}: wrote ${r} of ${n} bytes at 0x${(remote + BigInt(r)).toString(16)}`)
}

/**
 * vmRead/vmWrite that fall back to /proc/PID/mem where process_vm_readv/writev
 * fail with EFAULT: it reads PROT_NONE pages and writes read-only ones
 * (FOLL_FORCE, copy-on-write), as a debugger does.
 */
export function readProcessMemory(pid: number, remote: bigint, dest: Buf, len?: number): void {
  const n = len ?? (typeof dest === 'bigint' ? 0 : dest.byteLength)
  try {
    vmRead(pid, remote, dest, n)
  } catch (err) {
    if (!(err instanceof SyscallError) || err.errno !== 14) throw err
    procMemIo(false, pid, remote, dest, n)
  }
}

/** See readProcessMemory. */
export function writeProcessMemory(pid: number, remote: bigint, src: Buf, len?: number): void {
  const n = len ?? (typeof src === 'bigint' ? 0 : src.byteLength)
  try {
    vmWrite(pid, remote, src, n)
  } catch (err) {
    if (!(err instanceof SyscallError) || err.errno !== 14) throw err
    procMemIo(true, pid, remote, src, n)
  }
}

function procMemIo(write: boolean, pid: number, addr: bigint, buf: Buf, len: number): void {
  const fd = open(`/proc/${pid}/mem`, write ? O.RDWR : O.RDONLY)
  try {
    let done = 0
    while (done < len) {
      const b = typeof buf === 'bigint' ? buf + BigInt(done) : new Uint8Array(buf.buffer, buf.byteOffset + done, buf.byteLength - done)
      const r = write ? pwrite(fd, b, addr + BigInt(done), len - done) : pread(fd, b, addr + BigInt(done), len - done)
      if (r === 0) throw new SyscallError(write ? 'pwrite(/proc/pid/mem)' : 'pread(/proc/pid/mem)', 5, `at 0x${(addr + BigInt(done)).toString(16)}`)
      done += r
    }
  } finally {
    close(fd)
  }
}

/**
 * Scratch memory in a traced process for the arguments of injected calls:
 * the one bump allocator every injection uses. Either it maps and grows its
 * own area (`RemoteScratch.owned`, a Tracee's scratch), or it hands out a
 * fixed area its caller mapped (`RemoteScratch.fixed`, a restore's) and
 * refuses with SCRATCH_FULL when that is full: never a silent wrap-around
 * over arguments still in use.
 */
import {CxlforkError} from '../errors.js'
import {MAP, PROT, SYS} from '../sys/syscall.js'

/** What the allocator needs of the process: injected calls and writes into its memory. */
export interface ScratchHost {
  readonly pid: number
  readonly isAlive: boolean
  readonly isStopped: boolean
  syscallChecked(name: string, nr: number, ...args: (number | bigint)[]): bigint
  writeMemory(addr: bigint, bytes: Uint8Array): void
}

export class RemoteScratch {
  private base: bigint | null
  private size: number
  private used = 0

  private constructor(private readonly host: ScratchHost, private readonly growable: boolean, base: bigint | null, size: number) {
    this.base = base
    this.size = size
  }

  /** A scratch area mapped on first use (see ensure) and grown when full. */
  static owned(host: ScratchHost): RemoteScratch {
    return new RemoteScratch(host, true, null, 0)
  }

  /** The area [base, base + size) its caller mapped and unmaps; running out of it is SCRATCH_FULL. */
  static fixed(host: ScratchHost, base: bigint, size: number): RemoteScratch {
    return new RemoteScratch(host, false, base, size)
  }

  /**
   * Ensures an RW anonymous mapping of at least `size` bytes and resets the
   * allocator. Returns its address. It is MAP_SHARED|MAP_ANONYMOUS, so it
   * shows as its own VMA '/dev/zero (deleted)' (see range): exclude it from
   * dumps (a fork child inherits it, shared), or release it with free().
   */
  ensure(size = 4096): bigint {
    size = Math.ceil(size / 4096) * 4096
    if (this.base !== null && this.size >= size) {
      this.used = 0
      return this.base
    }
    if (!this.growable) throw this.full(size)
    if (this.base !== null) this.free()
    // MAP_SHARED anonymous (shmem, '/dev/zero (deleted)' in maps): unlike private
    // anonymous memory it never merges with a neighbouring VMA of the program.
    const addr = this.host.syscallChecked('mmap(scratch)', SYS.mmap, 0, size, PROT.READ | PROT.WRITE, MAP.SHARED | MAP.ANONYMOUS, -1, 0)
    this.base = addr
    this.size = size
    this.used = 0
    return addr
  }

  /** [start, end) of the area, or null. */
  get range(): [bigint, bigint] | null {
    return this.base === null ? null : [this.base, this.base + BigInt(this.size)]
  }

  /**
   * Reserves `len` bytes (e.g. for an output struct); returns the remote
   * address. An owned area grows if needed, which invalidates earlier
   * addresses (size it up front with ensure(n) for multi-part arguments); a
   * fixed one throws SCRATCH_FULL.
   */
  alloc(len: number, align = 8): bigint {
    if (this.base === null) this.ensure(Math.max(4096, len))
    let off = Math.ceil(this.used / align) * align
    if (off + len > this.size) {
      if (!this.growable) throw this.full(len)
      this.ensure(Math.max(this.size * 2, len + 4096))
      off = 0
    }
    this.used = off + len
    return this.base! + BigInt(off)
  }

  /** Copies bytes (or a string, NUL-terminated) into scratch; returns their remote address. */
  write(bytes: Uint8Array | string, align = 8): bigint {
    const b = typeof bytes === 'string' ? Buffer.from(bytes + '\0', 'utf8') : bytes
    const addr = this.alloc(b.length, align)
    if (b.length) this.host.writeMemory(addr, b)
    return addr
  }

  /** Forget every argument placed so far (their calls have run); the mapping stays. */
  reset(): void {
    this.used = 0
  }

  /** munmap an owned area (injected); a fixed one is its caller's to unmap. */
  free(): void {
    if (this.base === null || !this.growable) return
    const base = this.base
    const size = this.size
    this.base = null
    this.size = 0
    this.used = 0
    if (this.host.isAlive && this.host.isStopped) this.host.syscallChecked('munmap(scratch)', SYS.munmap, base, size)
  }

  private full(len: number): CxlforkError {
    return new CxlforkError('SCRATCH_FULL', `the scratch area of process ${this.host.pid} (${this.size} bytes) cannot hold ${len} more bytes`, 'This needs more argument space than cxlfork reserves; please report it.')
  }
}

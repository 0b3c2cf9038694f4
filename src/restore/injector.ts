/**
 * Injected system calls into a process under construction, with one scratch
 * area in it for their arguments. The scratch area is shared by every thread
 * of the process (one address space), so calls may run in any of them.
 */
import {CxlforkError} from '../errors.js'
import {type Tracee} from '../inject/tracee.js'
import {O, SYS, vmWrite} from '../sys/libc.js'

export class Injector {
  private used = 0n

  constructor(readonly tracee: Tracee, readonly scratch: bigint, readonly scratchSize: bigint) {}

  call(name: string, nr: number, ...args: (number | bigint)[]): bigint {
    return this.tracee.syscallChecked(name, nr, ...args)
  }

  /** The same call run by another thread of the process. */
  callIn(thread: Tracee, name: string, nr: number, ...args: (number | bigint)[]): bigint {
    return thread.syscallChecked(name, nr, ...args)
  }

  /**
   * `length` bytes of scratch, 16-byte aligned. Bump allocation; a phase that
   * is done with its arguments calls reset(). Running out is an error, never
   * a silent wrap-around over arguments still in use.
   */
  reserve(length: number): bigint {
    const at = (this.used + 15n) & ~15n
    if (at + BigInt(length) > this.scratchSize) {
      throw new CxlforkError('SCRATCH_FULL', `the restore's scratch area (${this.scratchSize} bytes) cannot hold ${length} more bytes`, 'This checkpoint needs more argument space than cxlfork reserves; please report it.')
    }
    this.used = at + BigInt(length)
    return this.scratch + at
  }

  /** Copy bytes into scratch and return their remote address. */
  put(bytes: Uint8Array): bigint {
    const at = this.reserve(bytes.length)
    if (bytes.length > 0) vmWrite(this.tracee.pid, at, bytes)
    return at
  }

  putString(text: string): bigint {
    return this.put(Buffer.from(text + '\0', 'utf8'))
  }

  /** Forget every argument placed so far (their calls have run). */
  reset(): void {
    this.used = 0n
  }

  open(path: string, flags: number): number {
    return Number(this.call(`open(${path})`, SYS.open, this.putString(path), flags | O.CLOEXEC, 0))
  }
}

/**
 * Injected system calls into a process under construction, with one scratch
 * area in it for their arguments. The scratch area is shared by every thread
 * of the process (one address space), so calls may run in any of them.
 */
import {RemoteScratch} from '../inject/remote-scratch.js'
import {type Tracee} from '../inject/tracee.js'
import {O, SYS} from '../sys/syscall.js'

export class Injector {
  private readonly area: RemoteScratch

  constructor(readonly tracee: Tracee, readonly scratch: bigint, readonly scratchSize: bigint) {
    this.area = RemoteScratch.fixed(tracee, scratch, Number(scratchSize))
  }

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
    return this.area.alloc(length, 16)
  }

  /** Copy bytes into scratch and return their remote address. */
  put(bytes: Uint8Array): bigint {
    return this.area.write(bytes, 16)
  }

  putString(text: string): bigint {
    return this.area.write(text, 16)
  }

  /** Forget every argument placed so far (their calls have run). */
  reset(): void {
    this.area.reset()
  }

  open(path: string, flags: number): number {
    return Number(this.call(`open(${path})`, SYS.open, this.putString(path), flags | O.CLOEXEC, 0))
  }
}

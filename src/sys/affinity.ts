/**
 * CPU placement for the phases that are a ping-pong of ptrace stops.
 *
 * Every injected system call hands the CPU from tracer to tracee and back.
 * When the two sit on different CPUs each hand-off is a cross-CPU wake-up,
 * and in a VM that is an IPI the hypervisor must deliver: measured here
 * (2 vCPUs), a checkpoint's frozen phase took 15-24 ms with cxlfork and the
 * target on different CPUs and 3-4 ms on the same one. So cxlfork moves its
 * own thread next to the process it drives for the length of one operation,
 * and the processes it owns (a snapshot, a restore stub) with it; it never
 * changes the affinity of a process it does not own.
 */
import {SyscallError} from '../errors.js'
import {SYS, syscallRaw} from './syscall.js'
import {readStat} from './proc.js'

/** Bytes of a CPU mask: room for 1024 CPUs, glibc's cpu_set_t. */
const MASK_BYTES = 128

/** The CPUs `tid` (0: the calling thread) may run on, or undefined if it cannot be read. */
export function getAffinity(tid: number): Uint8Array | undefined {
  const mask = new Uint8Array(MASK_BYTES)
  return syscallRaw(SYS.sched_getaffinity, tid, MASK_BYTES, mask) > 0n ? mask : undefined
}

/** Set the CPUs `tid` (0: the calling thread) may run on; false if the kernel refused. */
export function setAffinity(tid: number, mask: Uint8Array): boolean {
  return syscallRaw(SYS.sched_setaffinity, tid, mask.byteLength, mask) === 0n
}

export function cpuMask(cpu: number): Uint8Array {
  const mask = new Uint8Array(MASK_BYTES)
  mask[cpu >> 3] = 1 << (cpu & 7)
  return mask
}

function allows(mask: Uint8Array, cpu: number): boolean {
  return cpu >= 0 && cpu < MASK_BYTES * 8 && (mask[cpu >> 3]! & (1 << (cpu & 7))) !== 0
}

/** The CPU `pid` last ran on (/proc/PID/stat field 39), or undefined. */
export function lastCpu(pid: number): number | undefined {
  try {
    return readStat(pid).processor
  } catch {
    return undefined
  }
}

/** The CPU the calling thread runs on now. */
export function currentCpu(): number | undefined {
  const cpu = new Uint32Array(1)
  return syscallRaw(SYS.getcpu, cpu, 0, 0) === 0n ? cpu[0] : undefined
}

/**
 * The calling thread kept on one CPU until release(). Only this thread
 * moves: Node's other threads (GC, libuv pool) keep their CPUs.
 */
export class CpuPlacement {
  private released = false
  /** Processes moved here by follow(), with the CPUs they had. */
  private readonly followers = new Map<number, Uint8Array>()

  private constructor(readonly cpu: number, private readonly previous: Uint8Array) {}

  /** Keep the calling thread on `cpu`; undefined when it may not run there (cpuset) or the kernel refuses. */
  static pin(cpu: number | undefined): CpuPlacement | undefined {
    if (cpu === undefined) return undefined
    const previous = getAffinity(0)
    if (!previous || !allows(previous, cpu) || !setAffinity(0, cpuMask(cpu))) return undefined
    return new CpuPlacement(cpu, previous)
  }

  /** Keep a process we own (a snapshot, a stub) on the same CPU; false if refused. */
  follow(pid: number): boolean {
    const previous = getAffinity(pid)
    if (!previous || !setAffinity(pid, cpuMask(this.cpu))) return false
    this.followers.set(pid, previous)
    return true
  }

  /** Give a process moved by follow() its CPUs back, e.g. for work it should do beside ours. */
  unfollow(pid: number): void {
    const previous = this.followers.get(pid)
    if (previous === undefined) return
    this.followers.delete(pid)
    setAffinity(pid, previous)
  }

  /**
   * Let a process we own run on the other CPUs for a while, for work beside ours (not on our
   * CPU, where it would wait for us); returns the call that brings it back next to us, or
   * undefined when no other CPU is allowed or the kernel refuses.
   */
  beside(pid: number): (() => void) | undefined {
    const others = Uint8Array.from(this.previous)
    others[this.cpu >> 3] = others[this.cpu >> 3]! & ~(1 << (this.cpu & 7))
    if (others.every((byte) => byte === 0) || !setAffinity(pid, others)) return undefined
    return () => {
      setAffinity(pid, cpuMask(this.cpu))
    }
  }

  /** A process spawned while pinned inherited the one CPU: give it the CPUs this thread had before pin(). */
  releaseSpawned(pid: number): void {
    const r = syscallRaw(SYS.sched_setaffinity, pid, this.previous.byteLength, this.previous)
    if (r !== 0n) throw new SyscallError('sched_setaffinity', Number(-r), `pid ${pid}`)
  }

  /** Back to the CPUs the thread had. Idempotent. */
  release(): void {
    if (this.released) return
    this.released = true
    setAffinity(0, this.previous)
  }
}

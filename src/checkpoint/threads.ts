/**
 * The threads of a target: seizing the whole thread group so that every
 * thread is stopped before any state is read or the fork snapshot is taken,
 * and reading what the kernel keeps per thread. Registers, XSAVE state,
 * signal mask, pending queue, rseq and robust list come through ptrace and
 * get_robust_list without touching the thread; clear_child_tid comes from
 * glibc's thread descriptor where it holds the tid; the alternate signal
 * stack (and clear_child_tid elsewhere) is asked with a call injected into
 * that thread in self-healing mode (a SIGKILLed cxlfork leaves it intact).
 */
import {readFileSync, readdirSync} from 'node:fs'

import {CxlforkError, NotFoundError, SyscallError} from '../errors.js'
import {type ThreadImage, USER_REGS_NAMES, type UserRegs} from '../image/process-image.js'
import {regsFromArray} from '../inject/regs.js'
import {Tracee} from '../inject/tracee.js'
import {PR, SYS, syscallRaw} from '../sys/syscall.js'
import {faultPoint} from '../fault.js'
import {type Vma} from '../sys/proc.js'

export function toUserRegs(regs: ReturnType<typeof regsFromArray>): UserRegs {
  const out = {} as UserRegs
  for (const name of USER_REGS_NAMES) out[name] = BigInt((regs as Record<string, bigint>)[name] ?? 0n)
  return out
}

/** glibc keeps the thread id at THREAD_SELF->tid and registers that address with set_tid_address (x86_64: fs_base + 0x2d0 since glibc 2.26). */
const GLIBC_TCB_TID_OFFSET = 0x2d0n

/**
 * Run `use` with an 8-to-256-byte slot of `thread`'s stack for the calls it injects; the slot's bytes are put back.
 * Self-healing: the registers the kernel holds lead back to the program at every instant.
 */
export function withStackSlot<T>(thread: Tracee, maps: readonly Vma[] | undefined, length: number, use: (slot: bigint) => T): T {
  thread.enterSelfHealing(maps)
  const slot = thread.stackSlot(length)
  const saved = thread.readMemory(slot, length)
  try {
    return use(slot)
  } finally {
    thread.writeMemory(slot, saved)
  }
}

/** Run `query` injected into `thread` with a slot of its stack: its result and the slot's bytes after it. */
function injectQuery(thread: Tracee, maps: readonly Vma[] | undefined, length: number, query: (slot: bigint) => bigint): {result: bigint; bytes: Uint8Array} {
  return withStackSlot(thread, maps, length, (slot) => ({result: query(slot), bytes: thread.readMemory(slot, length)}))
}

/**
 * The address the thread registered with set_tid_address. Read without
 * touching the thread when glibc's thread block shows the tid at its known
 * offset; otherwise asked with an injected prctl.
 */
export function readClearTidAddress(thread: Tracee, regs: UserRegs, tid: number, maps?: readonly Vma[]): bigint {
  if (regs.fs_base !== 0n) {
    try {
      const candidate = regs.fs_base + GLIBC_TCB_TID_OFFSET
      if (new DataView(thread.readMemory(candidate, 4).buffer).getInt32(0, true) === tid) return candidate
    } catch {
      // no readable thread block there: ask the kernel
    }
  }
  const {result, bytes} = injectQuery(thread, maps, 8, (slot) => thread.syscall(SYS.prctl, PR.GET_TID_ADDRESS, slot))
  return result < 0n ? 0n : new DataView(bytes.buffer).getBigUint64(0, true)
}

/** sigaltstack's old-stack output (stack_t) as the image keeps it; disabled when the call failed. */
export function decodeAltStack(result: bigint, bytes: Uint8Array): ThreadImage['altStack'] {
  if (result < 0n) return {sp: 0n, flags: 2, size: 0n}
  const view = new DataView(bytes.buffer, bytes.byteOffset)
  // SS_ONSTACK describes the instant of capture, not a setting: keep SS_DISABLE/SS_AUTODISARM only.
  return {sp: view.getBigUint64(0, true), flags: view.getInt32(8, true) & ~1, size: view.getBigUint64(16, true)}
}

/**
 * sigaltstack of each thread (not in /proc): sigaltstack(NULL, &old)
 * injected into every thread side by side, in self-healing mode, into a slot
 * of its own stack whose bytes are put back.
 */
export function readAltStacks(threads: readonly Tracee[], maps?: readonly Vma[]): ThreadImage['altStack'][] {
  const slots = new Map<Tracee, {slot: bigint; saved: Uint8Array}>()
  const out = new Map<Tracee, ThreadImage['altStack']>()
  try {
    for (const thread of threads) {
      if (!thread.enterSelfHealing(maps)) continue
      const slot = thread.stackSlot(24)
      slots.set(thread, {slot, saved: thread.readMemory(slot, 24)})
    }
    faultPoint('threads-frames-ready')
    const healing = [...slots.keys()]
    const results = Tracee.healingSyscallAll(healing, SYS.sigaltstack, (t) => [0, slots.get(t)!.slot])
    healing.forEach((thread, i) => out.set(thread, decodeAltStack(results[i]!, thread.readMemory(slots.get(thread)!.slot, 24))))
    // No room for a frame on its stack (rare): the plain injection, a few µs not proof against our death.
    for (const thread of threads) {
      if (out.has(thread)) continue
      const {result, bytes} = injectQuery(thread, maps, 24, (slot) => thread.syscall(SYS.sigaltstack, 0, slot))
      out.set(thread, decodeAltStack(result, bytes))
    }
  } finally {
    for (const [thread, {slot, saved}] of slots) if (thread.isStopped) thread.writeMemory(slot, saved)
  }
  return threads.map((thread) => out.get(thread)!)
}

/** get_robust_list works on another thread given ptrace access: no injection needed. */
export function readRobustList(tid: number): {head: bigint; length: bigint} {
  const head = new BigUint64Array(1)
  const length = new BigUint64Array(1)
  const r = syscallRaw(SYS.get_robust_list, tid, head, length)
  if (r < 0n) throw new SyscallError('get_robust_list', Number(-r), `thread ${tid}`)
  return {head: head[0]!, length: length[0]!}
}

/** Registers, XSAVE, mask, private queue, rseq, robust list and clear_child_tid of a stopped thread (altStack left to the caller). */
export function readThreadState(thread: Tracee, maps?: readonly Vma[], queues: 'both' | 'private' = 'both'): {state: ThreadImage; sharedPending: Uint8Array[]} {
  const regs = toUserRegs(regsFromArray(thread.getRegsArray()))
  const rseq = thread.getRseqConfig()
  const pending = thread.peekPendingSignals(queues)
  const state: ThreadImage = {
    tid: thread.pid, regs, xstate: thread.getXState(), sigmask: thread.getSigMask(), pendingSignals: pending.private,
    ...(rseq.rseqAbiPointer === 0n ? {} : {rseq: {address: rseq.rseqAbiPointer, length: rseq.rseqAbiSize, signature: rseq.signature}}),
    robustList: readRobustList(thread.pid), clearTidAddress: readClearTidAddress(thread, regs, thread.pid, maps),
    altStack: {sp: 0n, flags: 2, size: 0n},
  }
  return {state, sharedPending: pending.shared}
}

/** The name of thread `tid` of `pid`. */
export function threadComm(pid: number, tid: number): string {
  try {
    return readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').replace(/\n$/, '')
  } catch {
    return ''
  }
}

export function listTids(pid: number): number[] {
  try {
    return readdirSync(`/proc/${pid}/task`).map(Number).filter((tid) => Number.isInteger(tid) && tid > 0)
  } catch {
    throw new NotFoundError('PROCESS_NOT_FOUND', `process ${pid} is gone`, 'Give the pid of a running process (see `ps`).')
  }
}

/**
 * Seize and stop every thread of `pid` but the leader (already seized), in
 * tid order. Threads may be created while we go: the task list is read again
 * until a whole pass finds no new one, and only then is every thread known
 * to be stopped (a stopped thread creates none). A thread that exits in
 * between is skipped. No EXITKILL: if cxlfork dies, the threads run on.
 */
export function seizeOtherThreads(pid: number): Tracee[] {
  const seized = new Map<number, Tracee>()
  try {
    for (let pass = 0; ; pass++) {
      const fresh: Tracee[] = []
      for (const tid of listTids(pid)) {
        if (tid === pid || seized.has(tid)) continue
        try {
          const thread = Tracee.seize(tid, {options: 0, interrupt: false})
          seized.set(tid, thread)
          fresh.push(thread)
        } catch (error) {
          if (error instanceof NotFoundError) continue // exited meanwhile
          throw error
        }
      }
      if (fresh.length === 0) break
      // Every interrupt is sent before the first stop is awaited: the stops overlap.
      Tracee.interruptAll(fresh)
      if (pass > 1000) throw new CxlforkError('THREADS_UNSTABLE', `process ${pid} keeps creating threads`, 'Checkpoint it when it is not spawning threads.')
    }
    return [...seized.values()].sort((a, b) => a.pid - b.pid)
  } catch (error) {
    for (const thread of seized.values()) detachQuietly(thread)
    throw error
  }
}

export function detachQuietly(thread: Tracee): void {
  try {
    thread.detach()
  } catch {
    /* already gone: nothing to restore */
  }
}

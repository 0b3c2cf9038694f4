/**
 * Per-thread state of a clone: the threads beyond the first are created
 * inside the clone with clone3(CLONE_THREAD, set_tid = their original tid)
 * (pid-namespace.ts says why ids are kept), then each gets back what the
 * kernel keeps per thread: rseq registration, robust list head,
 * clear_child_tid, alternate signal stack, name, private pending signals,
 * and finally its registers, XSAVE state and signal mask.
 */
import {type ThreadImage, USER_REGS_NAMES} from '../image/process-image.js'
import {REG_NAMES, restartFixup, regsToArray} from '../inject/regs.js'
import {CLONE, type Tracee} from '../inject/tracee.js'
import {PR, SYS} from '../sys/syscall.js'
import {type Injector} from './injector.js'
import {createWithId} from './pid-namespace.js'

/** What glibc's pthread_create passes, less what the restore sets itself (TLS, tid words). */
const THREAD_FLAGS = CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD | CLONE.SYSVSEM

const SS_DISABLE = 2

/** Create every thread but the first (the root's own), each with its original tid. Returns them stopped, in image order. */
export function createThreads(inject: Injector, threads: readonly ThreadImage[]): Tracee[] {
  const created: Tracee[] = []
  try {
    for (const thread of threads.slice(1)) {
      const at = inject.reserve(96)
      created.push(createWithId(inject.tracee, THREAD_FLAGS, 0, thread.tid, at))
    }
    return created
  } catch (error) {
    // Killing one thread kills the whole clone; the caller kills its root anyway.
    for (const t of created) t.kill()
    throw error
  }
}

/** rseq, robust list, clear_child_tid, sigaltstack and name of one thread, injected into that thread. */
export function restoreThreadKernelState(inject: Injector, tracee: Tracee, thread: ThreadImage, comm: string): void {
  const call = (name: string, nr: number, ...args: (number | bigint)[]): bigint => inject.callIn(tracee, name, nr, ...args)
  if (thread.rseq) call('rseq', SYS.rseq, thread.rseq.address, thread.rseq.length, 0, thread.rseq.signature)
  if (thread.robustList.head !== 0n) call('set_robust_list', SYS.set_robust_list, thread.robustList.head, thread.robustList.length)
  if (thread.clearTidAddress !== 0n) call('set_tid_address', SYS.set_tid_address, thread.clearTidAddress)
  if ((thread.altStack.flags & SS_DISABLE) === 0) {
    const stack = new Uint8Array(24)
    const view = new DataView(stack.buffer)
    view.setBigUint64(0, thread.altStack.sp, true)
    view.setInt32(8, thread.altStack.flags, true)
    view.setBigUint64(16, thread.altStack.size, true)
    call('sigaltstack', SYS.sigaltstack, inject.put(stack), 0)
  }
  call('prctl(PR_SET_NAME)', SYS.prctl, PR.SET_NAME, inject.putString(comm.slice(0, 15)))
}

/** Queue a thread's private pending signals again, to that thread (`pid`, `tid`: ids inside the clone). */
export function requeueThreadSignals(inject: Injector, pid: number, tid: number, signals: readonly Uint8Array[]): void {
  for (const info of signals) {
    const signo = new DataView(info.buffer, info.byteOffset).getInt32(0, true)
    inject.call('rt_tgsigqueueinfo', SYS.rt_tgsigqueueinfo, pid, tid, signo, inject.put(info))
  }
}

/** The thread's registers with syscall restart applied for a new process. */
export function finalRegisters(thread: ThreadImage): BigUint64Array {
  const regs = thread.regs
  const named = Object.fromEntries(REG_NAMES.map((name) => [name, regs[name as (typeof USER_REGS_NAMES)[number]]])) as Parameters<typeof regsToArray>[0]
  return restartFixup(regsToArray(named), 'restore')
}

/** Registers, XSAVE state and mask last: the thread resumes exactly there once detached. */
export function setThreadCpuState(tracee: Tracee, thread: ThreadImage, xstate: Uint8Array = thread.xstate): void {
  tracee.setXState(xstate)
  tracee.setRegs(finalRegisters(thread))
  tracee.setSigMask(thread.sigmask)
}

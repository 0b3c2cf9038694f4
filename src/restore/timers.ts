/**
 * A clone's timers, armed again with the time each had left at the checkpoint: the
 * interval timers by setitimer, the POSIX timers by timer_create under their own ids
 * (the program holds those as its timer_t), which the kernel grants a process that asked
 * with prctl(PR_TIMER_CREATE_RESTORE_IDS) (Linux 6.17, for checkpoint/restore).
 */
import {UnsupportedError} from '../errors.js'
import {type PosixTimerImage, type TimersImage, cpuClockOf, intervalTimerFirstExpiry} from '../image/process-image.js'
import {SYS, syscallRaw} from '../sys/syscall.js'
import {type Injector} from './injector.js'

const SYS_SETITIMER = 38
const SYS_TIMER_CREATE = 222
const SYS_TIMER_SETTIME = 223
const PR_TIMER_CREATE_RESTORE_IDS = 77
const RESTORE_IDS = {off: 0, on: 1, get: 2} as const
const ITIMER = {real: 0, virtual: 1, prof: 2} as const
const SIGEV_THREAD_ID = 4

/** Refuse, before a clone is built, POSIX timers this kernel cannot re-create under their ids. */
export function requireTimerIds(timers: TimersImage | undefined, what: string): void {
  if (!timers || timers.posix.length === 0) return
  if (syscallRaw(SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS.get, 0, 0, 0) >= 0n) return
  throw new UnsupportedError('TIMER_IDS_UNSUPPORTED', `${what} has ${timers.posix.length} POSIX timer(s) (ids ${timers.posix.map((t) => t.id).join(', ')}), and this kernel cannot create a timer under a given id`,
    'Restore it on Linux 6.17 or later (prctl PR_TIMER_CREATE_RESTORE_IDS).')
}

/** struct itimerval / itimerspec: the interval, then the time to the first expiry (each [seconds, µs or ns]). */
export function timerSpec(interval: [number, number], value: [number, number]): Uint8Array {
  const bytes = new Uint8Array(32)
  const view = new DataView(bytes.buffer)
  view.setBigInt64(0, BigInt(interval[0]), true)
  view.setBigInt64(8, BigInt(interval[1]), true)
  view.setBigInt64(16, BigInt(value[0]), true)
  view.setBigInt64(24, BigInt(value[1]), true)
  return bytes
}

/** struct sigevent (64 bytes): sigev_value, sigev_signo, sigev_notify, then the thread id of SIGEV_THREAD_ID. */
function sigevent(timer: PosixTimerImage, tid: number | undefined): Uint8Array {
  const bytes = new Uint8Array(64)
  const view = new DataView(bytes.buffer)
  view.setBigUint64(0, BigInt.asUintN(64, timer.sigval), true)
  view.setInt32(8, timer.signo, true)
  view.setInt32(12, timer.notify, true)
  if (tid !== undefined) view.setInt32(16, tid, true)
  return bytes
}

/**
 * Create and arm the timers of `timers` in the clone `inject` builds, after its threads
 * exist (a timer may signal one of them). `tidInClone` maps a checkpoint tid to the id
 * the clone's thread has, as the clone sees it.
 */
export function restoreTimers(inject: Injector, timers: TimersImage, tidInClone: (tid: number) => number): void {
  if (timers.posix.length > 0) {
    inject.call('prctl(PR_TIMER_CREATE_RESTORE_IDS, on)', SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS.on, 0, 0, 0)
    for (const timer of timers.posix) {
      const tid = (timer.notify & SIGEV_THREAD_ID) !== 0 && timer.tid !== undefined ? tidInClone(timer.tid) : undefined
      const id = new Uint8Array(4)
      new DataView(id.buffer).setInt32(0, timer.id, true)
      // A CPU-time clock of the process or one of its threads names it by its id, which may differ here.
      const clockid = timer.clockOf === undefined ? timer.clockid : cpuClockOf(tidInClone(timer.clockOf), timer.clockid)
      inject.call(`timer_create(id ${timer.id})`, SYS_TIMER_CREATE, clockid, inject.put(sigevent(timer, tid)), inject.put(id))
    }
    inject.call('prctl(PR_TIMER_CREATE_RESTORE_IDS, off)', SYS.prctl, PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS.off, 0, 0, 0)
    for (const timer of timers.posix) {
      if (timer.value[0] === 0 && timer.value[1] === 0) continue
      // Relative to now: what it had left at the checkpoint, then its interval.
      inject.call(`timer_settime(${timer.id})`, SYS_TIMER_SETTIME, timer.id, 0, inject.put(timerSpec(timer.interval, timer.value)), 0)
    }
  }
  for (const which of ['real', 'virtual', 'prof'] as const) {
    const timer = timers[which]
    if (timer) inject.call(`setitimer(ITIMER_${which.toUpperCase()})`, SYS_SETITIMER, ITIMER[which], inject.put(timerSpec(timer.interval, intervalTimerFirstExpiry(timer))), 0)
  }
}

/**
 * The timers of a process: its interval timers (setitimer, alarm) and its POSIX timers
 * (timer_create). A fork inherits none of them, and /proc shows only the POSIX timers'
 * ids, signals and clocks (/proc/PID/timers), not how long each has left: the settings
 * are asked with getitimer and timer_gettime injected into the stopped process, through
 * a slot of its stack whose bytes are put back.
 */
import {readFileSync} from 'node:fs'

import {UnsupportedError} from '../errors.js'
import {type IntervalTimerImage, type PosixTimerImage, type TimersImage, cpuClockOwner} from '../image/process-image.js'
import {type Tracee} from '../inject/tracee.js'
import {type Vma, readStatus} from '../sys/proc.js'
import {withStackSlot} from './threads.js'

const SYS_GETITIMER = 36
const SYS_TIMER_GETTIME = 224
const ITIMER = {real: 0, virtual: 1, prof: 2} as const
const SIGEV_THREAD_ID = 4
const NOTIFY_BY_NAME: Record<string, number> = {signal: 0, none: 1}
/** The clocks timer_create takes by number; negative ids are CPU clocks of a given pid or clocks of an fd. */
const CLOCK_NAMES: Record<number, string> = {0: 'CLOCK_REALTIME', 1: 'CLOCK_MONOTONIC', 2: 'CLOCK_PROCESS_CPUTIME_ID', 3: 'CLOCK_THREAD_CPUTIME_ID', 7: 'CLOCK_BOOTTIME', 8: 'CLOCK_REALTIME_ALARM', 9: 'CLOCK_BOOTTIME_ALARM', 11: 'CLOCK_TAI'}
/** getitimer/timer_gettime results per injected batch: 8 of 32 bytes fill the largest stack slot. */
const PER_SLOT = 8

/** A POSIX timer as /proc/PID/timers lists it: everything but its time left and interval. */
export type ListedTimer = Omit<PosixTimerImage, 'value' | 'interval'>

/**
 * /proc/PID/timers: "ID: n", "signal: signo/sigval (hex)", "notify: signal|none/pid|tid.N",
 * "ClockID: n" per timer. glibc's SIGEV_THREAD timers show as signal/tid (its helper thread).
 */
export function listPosixTimers(pid: number, comm: string, tids: readonly number[]): ListedTimer[] {
  let text: string
  try {
    text = readFileSync(`/proc/${pid}/timers`, 'utf8')
  } catch {
    return []
  }
  const timers: ListedTimer[] = []
  for (const block of text.split(/^(?=ID:)/m)) {
    const field = (name: string): string | undefined => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(block)?.[1]?.trim()
    const id = field('ID')
    if (id === undefined) continue
    const [signo, sigval] = (field('signal') ?? '0/0').split('/')
    const notify = /^(\w+)\/(pid|tid)\.(\d+)$/.exec(field('notify') ?? '')
    const clockid = Number(field('ClockID'))
    const timer: ListedTimer = {id: Number(id), clockid, notify: 0, signo: Number(signo), sigval: BigInt('0x' + (sigval || '0'))}
    const base = notify ? NOTIFY_BY_NAME[notify[1]!] : undefined
    if (!notify || base === undefined) {
      throw new UnsupportedError('UNSUPPORTED_TIMER', `process ${pid} (${comm}) has POSIX timer ${id} with notification '${field('notify')}', which cxlfork cannot re-create`,
        'Checkpoint it once the timer is deleted (timer_delete).')
    }
    timer.notify = base
    if (notify[2] === 'tid') {
      const tid = Number(notify[3])
      if (!tids.includes(tid)) {
        throw new UnsupportedError('UNSUPPORTED_TIMER', `process ${pid} (${comm}) has POSIX timer ${id} that signals thread ${tid}, which is not one of its threads`,
          'Checkpoint it once the timer is deleted (timer_delete).')
      }
      timer.notify |= SIGEV_THREAD_ID
      timer.tid = tid
    }
    // CPU-time clocks of a pid or tid (clock_getcpuclockid, pthread_getcpuclockid: haproxy's watchdog) are negative
    // numbers that name it: carried when they name this process or one of its threads, re-encoded in the clone.
    const owner = cpuClockOwner(clockid)
    // The calling thread's CPU clock (CLOCK_THREAD_CPUTIME_ID, glibc's -2): /proc does not say which thread created the timer.
    if ((clockid === 3 || (owner === 0 && (clockid & 4) !== 0)) && tids.length > 1) {
      throw new UnsupportedError('UNSUPPORTED_TIMER', `process ${pid} (${comm}) has POSIX timer ${id} on the CPU-time clock of the thread that created it (clock ${clockid}), and it has ${tids.length} threads: /proc does not say which one`,
        'Timers on a thread\'s clock named by pthread_getcpuclockid are carried; so are all timers of a single-threaded process.')
    }
    if (owner !== undefined && owner !== 0) {
      if (owner !== pid && !tids.includes(owner)) {
        throw new UnsupportedError('UNSUPPORTED_TIMER', `process ${pid} (${comm}) has POSIX timer ${id} on the CPU-time clock of process or thread ${owner}, which is not one of its own (clock ${clockid}); cxlfork cannot re-create it`,
          'Timers on the standard clocks and on the CPU-time clocks of the process and its own threads are carried.')
      }
      timer.clockOf = owner
    } else if (owner === undefined && CLOCK_NAMES[clockid] === undefined) {
      throw new UnsupportedError('UNSUPPORTED_TIMER', `process ${pid} (${comm}) has POSIX timer ${id} on clock ${clockid} (${clockid < 0 ? 'the clock of an fd' : 'an unknown clock'}), which cxlfork cannot re-create`,
        'Timers on the standard clocks and on the CPU-time clocks of the process and its own threads are carried.')
    }
    timers.push(timer)
  }
  return timers.sort((a, b) => a.id - b.id)
}

const SIGALRM = 14
const alarmPending = (pid: number): boolean => ((readStatus(pid).shdPnd >> BigInt(SIGALRM - 1)) & 1n) === 1n
const pairAt = (view: DataView, at: number): [number, number] => [Number(view.getBigInt64(at, true)), Number(view.getBigInt64(at + 8, true))]
const armed = (value: [number, number]): boolean => value[0] !== 0 || value[1] !== 0

/**
 * The timers of stopped process `pid`, `leader` its seized first thread: each interval timer
 * that is armed, and every POSIX timer with its time left; undefined when there are none.
 */
export function readTimers(leader: Tracee, pid: number, comm: string, tids: readonly number[], maps?: readonly Vma[]): TimersImage | undefined {
  const listed = listPosixTimers(pid, comm, tids)
  const timers: TimersImage = {posix: []}
  withStackSlot(leader, maps, 32 * PER_SLOT, (slot) => {
    // struct itimerval: it_interval then it_value, each {tv_sec, tv_usec}. A call that fails leaves its zeros: disarmed.
    leader.writeMemory(slot, new Uint8Array(96))
    for (const number of Object.values(ITIMER)) leader.syscall(SYS_GETITIMER, number, slot + BigInt(32 * number))
    const view = new DataView(leader.readMemory(slot, 96).buffer)
    for (const [which, number] of Object.entries(ITIMER) as [keyof typeof ITIMER, number][]) {
      const timer: IntervalTimerImage = {interval: pairAt(view, 32 * number), value: pairAt(view, 32 * number + 16)}
      // ITIMER_REAL with no time left, an interval and its SIGALRM pending fired, and is re-armed when the signal
      // is delivered: still running. (With no signal pending, it was set with no time left: disarmed.)
      if (armed(timer.value) || (which === 'real' && armed(timer.interval) && alarmPending(pid))) timers[which] = timer
    }
    for (let first = 0; first < listed.length; first += PER_SLOT) {
      const batch = listed.slice(first, first + PER_SLOT)
      // struct itimerspec: it_interval then it_value, each {tv_sec, tv_nsec}.
      const results = batch.map((timer, i) => leader.syscall(SYS_TIMER_GETTIME, timer.id, slot + BigInt(32 * i)))
      const specs = new DataView(leader.readMemory(slot, 32 * batch.length).buffer)
      batch.forEach((timer, i) => {
        // Deleted between the /proc read and this stop: it is gone, as it is from the program.
        if (results[i]! < 0n) return
        timers.posix.push({...timer, interval: pairAt(specs, 32 * i), value: pairAt(specs, 32 * i + 16)})
      })
    }
  })
  return timers.real || timers.virtual || timers.prof || timers.posix.length > 0 ? timers : undefined
}


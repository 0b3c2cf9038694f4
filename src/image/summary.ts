/**
 * A JSON-friendly description of what a checkpoint holds, for `inspect`:
 * VMAs with their stored page counts, fds, and totals. Numbers, not bigints,
 * so scripts can read it; addresses are hex strings.
 */
import {type PageMapView} from './page-map.js'
import {describeFdImage} from './fd-detail.js'
import {type ProcessImage, type TimersImage} from './process-image.js'
import {PAGE_SIZE} from '../sys/page.js'

export interface VmaSummary {
  start: string
  end: string
  /** 'rwxp' form. */
  perms: string
  kind: string
  path?: string
  /** Pages whose contents the checkpoint stores. */
  storedPages: number
}

export interface ProcessSummary {
  pid: number
  comm: string
  cmdline: string[]
  uid: number
  kernel: string
  host: string
  capturedAt: string
  threads: number
  /** Each thread: its id, name, blocked-signal mask (hex) and the system call it was stopped in, if any. */
  threadStates: {tid: number; comm: string; sigmask: string; syscall: number | null}[]
  vmas: VmaSummary[]
  /** Each fd; `detail` says what it is and carries beyond its kind and path (a socket's address, bytes waiting in a pipe, epoll targets), '' if nothing. */
  fds: {fd: number; kind: string; path: string; flags: number; offset: number; detail: string}[]
  storedPages: number
  storedBytes: number
  pageRuns: number
  signalHandlers: number
  /** Each interval timer armed and each POSIX timer, said in a line ('ITIMER_REAL: fires in 0.012 s, every 0.020 s'). */
  timers: string[]
}

const seconds = ([s, fraction]: [number, number], perSecond: number): string => (s + fraction / perSecond).toFixed(3)

/** The timers of a process, a line each. */
export function describeTimers(timers: TimersImage | undefined): string[] {
  if (!timers) return []
  const when = (value: [number, number], interval: [number, number], perSecond: number): string =>
    `${value[0] === 0 && value[1] === 0 ? 'disarmed' : `fires in ${seconds(value, perSecond)} s`}${interval[0] === 0 && interval[1] === 0 ? '' : `, every ${seconds(interval, perSecond)} s`}`
  const lines: string[] = []
  for (const which of ['real', 'virtual', 'prof'] as const) {
    const timer = timers[which]
    if (timer) lines.push(`ITIMER_${which.toUpperCase()}: ${when(timer.value, timer.interval, 1e6)}`)
  }
  for (const timer of timers.posix) {
    const notify = (timer.notify & 1) !== 0 ? 'no signal' : `signal ${timer.signo}${timer.tid === undefined ? '' : ` to thread ${timer.tid}`}`
    lines.push(`POSIX timer ${timer.id} (clock ${timer.clockid}, ${notify}): ${when(timer.value, timer.interval, 1e9)}`)
  }
  return lines
}

export function summarizeImage(image: ProcessImage, pageMap: PageMapView): ProcessSummary {
  const perVma = new Array<number>(image.vmas.length).fill(0)
  for (const entry of pageMap.entries()) perVma[entry.vmaIndex] = (perVma[entry.vmaIndex] ?? 0) + entry.nrPages
  const vmas = image.vmas.map((vma, index): VmaSummary => {
    const perms = `${vma.prot & 1 ? 'r' : '-'}${vma.prot & 2 ? 'w' : '-'}${vma.prot & 4 ? 'x' : '-'}${vma.flags & 1 ? 's' : 'p'}`
    const summary: VmaSummary = {start: '0x' + vma.start.toString(16), end: '0x' + vma.end.toString(16), perms, kind: vma.kind, storedPages: perVma[index] ?? 0}
    if (vma.fileIndex !== undefined) summary.path = image.files[vma.fileIndex]?.path ?? '?'
    return summary
  })
  return {
    pid: image.task.pid, comm: image.task.comm, cmdline: image.task.cmdline, uid: image.task.uid, kernel: image.kernel.release,
    host: image.kernel.hostname, capturedAt: new Date(image.capturedAt).toISOString(), threads: image.threads.length,
    threadStates: image.threads.map((thread, i) => ({
      tid: thread.tid, comm: i === 0 ? image.task.comm : thread.comm ?? image.task.comm, sigmask: '0x' + thread.sigmask.toString(16),
      syscall: BigInt.asIntN(64, thread.regs.orig_rax) >= 0n ? Number(thread.regs.orig_rax) : null,
    })),
    vmas,
    fds: image.fds.map((fd) => ({fd: fd.fd, kind: fd.kind, path: fd.path, flags: fd.flags, offset: Number(fd.offset), detail: describeFdImage(fd)})),
    storedPages: pageMap.totalPages, storedBytes: pageMap.totalPages * PAGE_SIZE, pageRuns: pageMap.entryCount,
    signalHandlers: image.task.sigactions.length,
    timers: describeTimers(image.task.timers),
  }
}

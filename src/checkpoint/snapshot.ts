/**
 * Live capture with fork semantics: the target is stopped only while its
 * CPU and signal state are read and a copy-on-write fork snapshot is taken
 * (an injected clone); it then runs on while the frozen snapshot is dumped.
 * Shared by the pool path and the CRIU path, which differ only in where the
 * snapshot's pages are written.
 */
import {type FdKind, type ProcessImage, type SigAction, type ThreadImage, type TimersImage} from '../image/process-image.js'
import {findSigreturnGadget} from '../inject/sigframe.js'
import {Tracee} from '../inject/tracee.js'
import {type FdInfo, type Vma, listFds, readMaps, readSmaps} from '../sys/proc.js'
import {SyscallError} from '../errors.js'
import {PTRACE_O} from '../sys/ptrace.js'
import {MADV, MAP, SIG, SYS, killQuiet} from '../sys/syscall.js'
import {CpuPlacement, lastCpu} from '../sys/affinity.js'
import {type FlaggedVma, type SnapshotMemory, captureImage, captureMemory, decodeSigaction} from './capture.js'
import {type PreflightResult, preflight, refuseFileLock, refusedLocks, refuseUnsupportedMemory} from './preflight.js'
import {faultPoint} from '../fault.js'
import {type SharedObjectCapture, readSharedObjects, releaseSharedObjects} from './shared-memory.js'
import {type FdExtras, describeFds} from './descriptors.js'
import {decodeAltStack, detachQuietly, readAltStacks, readThreadState, seizeOtherThreads, threadComm} from './threads.js'
import {readTimers} from './timers.js'

export interface SnapshotTimings {
  /** µs to seize and stop the target (CRIU: freezing_time). */
  freezingUs: number
  /** µs the target stayed stopped (CRIU: frozen_time): the downtime. */
  frozenUs: number
  /** µs to read the snapshot's layout and state after the target resumed. */
  captureUs: number
}

export interface LiveSnapshot {
  /** Layout and page runs: all the page write needs. */
  memory: SnapshotMemory
  /**
   * The whole image: identity, fds, limits and mm fields are read from /proc
   * on the first call (cached), which needs nothing from the snapshot child,
   * so it can run while the child writes its pages.
   */
  captureImage(): ProcessImage
  /**
   * Refuse (UNSUPPORTED_MEMORY) memory a checkpoint cannot carry, when
   * preflight left that to the snapshot; captureImage() calls it first.
   */
  checkMemory(): void
  /** Shared anonymous memory, read while the target was stopped (the snapshot shares it with the running target). */
  sharedMemory: SharedObjectCapture[]
  /** The frozen fork child holding the memory to dump; killed by release(). */
  snapshotPid: number
  /** The same child, seized and stopped: syscalls can be injected into it. */
  snapshotTracee: Tracee
  ownerUid: number
  timings: SnapshotTimings
  /** Kill and reap the snapshot child. Idempotent. */
  release(): void
  /**
   * With `hold`, the target stays stopped after the snapshot (a checkpoint with --kill: nothing it
   * does after the checkpoint's instant may happen twice, once in it and once in its clone): let it
   * run on as it was (a failed checkpoint). Idempotent; nothing to do without `hold` or once it was killed.
   */
  resumeTarget(): void
  /** --kill: SIGKILL the target, reaped as its tracer when it was held (else only signalled, as a running process). */
  killTarget(): void
}

const now = (): number => performance.now()
const PR_GET_DUMPABLE = 3
const PR_GET_SECUREBITS = 27

/** What the snapshot (fork keeps both) says of the brk, the signal dispositions and the alternate signal stack. */
interface ChildState {
  brk: bigint
  sigactions: SigAction[]
  altStack: {sp: bigint; flags: number; size: bigint}
  /** Securebits (of the credentials fork copied) and the dumpable flag (of the mm it copied). */
  asked: {securebits: number; dumpable: number}
}

/**
 * Signal dispositions and the alternate stack are not in /proc, nor is the
 * current brk: ask the snapshot (same sighand as the target), all in one batch.
 */
function readChildState(snapshot: Tracee): ChildState {
  const signals: number[] = []
  for (let signo = 1; signo <= 64; signo++) if (signo !== SIG.KILL && signo !== SIG.STOP) signals.push(signo)
  const area = snapshot.scratchAlloc(32 * signals.length + 24)
  const stackSlot = area + BigInt(32 * signals.length)
  const results = snapshot.syscalls([
    {nr: SYS.brk, args: [0]},
    {nr: SYS.sigaltstack, args: [0, stackSlot]},
    ...signals.map((signo, i) => ({nr: SYS.rt_sigaction, args: [signo, 0, area + BigInt(32 * i), 8]})),
    {nr: SYS.prctl, args: [PR_GET_SECUREBITS]},
    {nr: SYS.prctl, args: [PR_GET_DUMPABLE]},
  ])
  const bytes = snapshot.readMemory(area, 32 * signals.length + 24)
  const view = new DataView(bytes.buffer, bytes.byteOffset)
  const brk = results[0] ?? -1n
  if (brk < 0n) throw new SyscallError('brk (in the snapshot)', Number(-brk))
  const sigactions: SigAction[] = []
  signals.forEach((signo, i) => {
    if ((results[2 + i] ?? -1n) < 0n) return
    const at = 32 * i
    const action = decodeSigaction(view, at, signo)
    if (action) sigactions.push(action)
  })
  const at = 32 * signals.length
  const altStack = decodeAltStack(results[1] ?? -1n, bytes.subarray(at, at + 24))
  const securebits = results[2 + signals.length] ?? -1n
  const dumpable = results[3 + signals.length] ?? -1n
  if (securebits < 0n || dumpable < 0n) throw new SyscallError('prctl (in the snapshot)', Number(-(securebits < 0n ? securebits : dumpable)))
  return {brk, sigactions, altStack, asked: {securebits: Number(securebits), dumpable: Number(dumpable)}}
}

/**
 * takeLiveSnapshot with cxlfork's thread moved to the CPU the target last ran
 * on, for the whole ptrace ping-pong (src/sys/affinity.ts). The caller
 * releases the placement when its operation ends; a failed snapshot releases it.
 */
export function takePlacedSnapshot(pid: number, checked?: PreflightResult, options: {hold?: boolean} = {}): {snapshot: LiveSnapshot; placement: CpuPlacement | undefined} {
  const placement = CpuPlacement.pin(lastCpu(pid))
  try {
    return {snapshot: takeLiveSnapshot(pid, checked ?? preflight(pid), placement, options), placement}
  } catch (error) {
    placement?.release()
    throw error
  }
}

/**
 * Stop the target briefly, take its state and a fork snapshot, resume it.
 * On any failure the target is detached running as it was and the snapshot
 * child (if any) is killed.
 */
export function takeLiveSnapshot(pid: number, checked: PreflightResult = preflight(pid), placement?: CpuPlacement, options: {hold?: boolean} = {}): LiveSnapshot {
  // Found while the target runs: lets every injected syscall return through rt_sigreturn.
  const gadget = findSigreturnGadget(pid)
  const t0 = now()
  // No EXITKILL on the target: if cxlfork dies, the kernel detaches it and it runs on.
  const target = Tracee.seize(pid, {options: 0})
  let others: Tracee[] = []
  let snapshot: Tracee | undefined
  let thread: ThreadImage
  const otherThreads: ThreadImage[] = []
  let sharedPending: Uint8Array[]
  let fds: {info: FdInfo; kind: FdKind; extras?: FdExtras | undefined}[]
  let tResumed: number
  let tStopped: number
  let transient: [bigint, bigint][] = []
  let parentMaps: Vma[] = []
  let dontfork: {start: bigint; end: bigint}[] = []
  let sharedMemory: SharedObjectCapture[] = []
  let timers: TimersImage | undefined
  try {
    // Every thread stops before any state is read: the snapshot sees one instant of the whole process.
    faultPoint('snapshot-seized')
    others = seizeOtherThreads(pid)
    tStopped = now()
    faultPoint('threads-seized')
    if (gadget !== null) for (const t of [target, ...others]) t.useSigreturnGadget(gadget)
    // The layout at the instant of the fork (the target is stopped): the fork reads it anyway.
    parentMaps = readMaps(pid)
    const leader = readThreadState(target, parentMaps)
    thread = leader.state
    sharedPending = leader.sharedPending
    for (const other of others) {
      otherThreads.push(readThreadState(other, parentMaps, 'private').state)
    }
    readAltStacks(others, parentMaps).forEach((altStack, i) => {
      otherThreads[i]!.altStack = altStack
    })
    // A fork inherits no timer: they are read from the target itself while it is stopped.
    timers = readTimers(target, pid, threadComm(pid, pid), [pid, ...others.map((other) => other.pid)], parentMaps)
    faultPoint('snapshot-threads-read')
    // fd offsets are shared with the running target: read them while it is stopped.
    const byFd = new Map(checked.fds.map((entry) => [entry.info.fd, entry.kind]))
    fds = listFds(pid).map((info) => ({info, kind: byFd.get(info.fd) ?? 'regular'}))
    if (fds.some((entry) => !byFd.has(entry.info.fd))) {
      // An fd appeared after preflight: classify it the careful way.
      fds = preflight(pid, {memory: false, children: checked.inTree ? 'allow' : 'refuse', tcpClose: checked.tcpClose, carryLocks: checked.carryLocks}).fds
    }
    // A lock taken since preflight that cannot be carried: refused as there (the target is let go running).
    const locked = fds.find((entry) => refusedLocks(entry.info, checked.carryLocks))
    if (locked) refuseFileLock(pid, threadComm(pid, pid), locked.info)
    // Pipe contents, eventfd counters, epoll interest lists and shared descriptions: as of this stop.
    const extras = describeFds(pid, fds, checked.internalPipes, checked.treeSockets)
    fds = fds.map((entry) => ({...entry, extras: extras.get(entry.info.fd)}))
    // Shared memory is not frozen by the fork: its contents as of this stop.
    sharedMemory = readSharedObjects(pid, parentMaps, new Set(), fds)
    let fork = target.injectForkSelfHealing(undefined, parentMaps)
    snapshot = fork.tracee
    // MADV_DONTFORK memory (V8 keeps its whole heap so) is missing from a fork child. Mark it
    // DOFORK for one more fork and DONTFORK again at once, all while the target is stopped.
    dontfork = uncovered(parentMaps, readMaps(snapshot.pid))
    if (dontfork.length > 0) {
      snapshot.kill()
      snapshot = undefined
      const advise = (advice: number): void => {
        for (const range of dontfork) {
          const r = target.syscall(SYS.madvise, range.start, range.end - range.start, advice)
          if (r < 0n) throw new SyscallError(`madvise(${advice}) (injected into ${pid})`, Number(-r), `0x${range.start.toString(16)}`)
        }
      }
      try {
        advise(MADV.DOFORK)
        faultPoint('dontfork-cleared')
        fork = target.injectForkSelfHealing(undefined, parentMaps)
        snapshot = fork.tracee
      } finally {
        advise(MADV.DONTFORK)
      }
    }
    placement?.follow(snapshot.pid)
    transient = fork.transientRanges
    // The snapshot must not outlive us; the target must (no EXITKILL there).
    snapshot.setOptions(snapshot.options | PTRACE_O.EXITKILL)
    if (!options.hold) {
      for (const other of others) other.detach()
      target.detach()
    }
    tResumed = now()
    // Names are read from /proc once the target runs again: a thread renaming itself in between is the one race accepted.
    for (const state of otherThreads) state.comm = threadComm(pid, state.tid)
  } catch (error) {
    snapshot?.kill()
    releaseSharedObjects(sharedMemory)
    for (const other of others) detachQuietly(other)
    detachQuietly(target)
    throw error
  }
  const snap = snapshot
  let held = options.hold === true
  const resumeTarget = (): void => {
    if (!held) return
    held = false
    for (const other of others) detachQuietly(other)
    detachQuietly(target)
  }
  const release = (): void => {
    snap.kill()
    releaseSharedObjects(sharedMemory)
  }
  const killHeld = (): void => {
    if (!held) {
      killTarget(pid)
      return
    }
    held = false
    // As its tracer: each thread's exit is reported to us, and reaped here, before its parent can reap it.
    for (const other of others) other.kill()
    target.kill()
  }
  try {
    // /proc/PID/maps, not smaps: smaps walks every page table (ms per call). The only
    // VmFlags needed here (gd) come from preflight's smaps of the target, or, when
    // preflight left the memory check to the snapshot, from checkMemory() below.
    const flagsByStart = new Map((checked.smaps ?? []).map((vma) => [vma.start, vma.vmFlags]))
    const maps: FlaggedVma[] = readMaps(snap.pid).map((vma) => ({...vma, vmFlags: flagsByStart.get(vma.start) ?? new Set<string>()}))
    const state = readChildState(snap)
    thread.altStack = state.altStack
    // Leave out what the injections themselves mapped (trampoline inherited by the child, scratch, batch code).
    const outsideInjections = (vma: {start: bigint; end: bigint}): boolean =>
      [...transient, ...snap.injectionRanges()].every(([start, end]) => vma.end <= start || vma.start >= end)
    const layout = maps.filter(outsideInjections)
    const memory = captureMemory(snap.pid, layout)
    // The restore marks them DONTFORK again, as the target has them.
    for (const vma of memory.vmas) {
      if (dontfork.some((range) => vma.start < range.end && range.start < vma.end)) vma.advice = [...(vma.advice ?? []), MADV.DONTFORK]
    }
    const tCaptured = now()
    let memoryChecked = checked.smaps !== null
    const checkMemory = (): void => {
      if (memoryChecked) return
      // The snapshot's own VMAs carry the target's flags as they were at the fork.
      const smaps = readSmaps(snap.pid).filter(outsideInjections)
      refuseUnsupportedMemory(pid, smaps)
      const growsDown = new Set(smaps.filter((vma) => vma.vmFlags.has('gd')).map((vma) => vma.start))
      for (const vma of memory.vmas) if (growsDown.has(vma.start)) vma.flags |= MAP.GROWSDOWN
      memoryChecked = true
    }
    let image: ProcessImage | undefined
    return {
      memory, sharedMemory, snapshotPid: snap.pid, snapshotTracee: snap, ownerUid: checked.uid, release, resumeTarget, killTarget: killHeld, checkMemory,
      captureImage: () => {
        checkMemory()
        return (image ??= captureImage(pid, snap.pid, memory, layout, fds, {threads: [thread, ...otherThreads], sharedPendingSignals: sharedPending, sigactions: state.sigactions, brk: state.brk, asked: state.asked, timers}))
      },
      timings: {freezingUs: Math.round((tStopped - t0) * 1000), frozenUs: Math.round((tResumed - t0) * 1000), captureUs: Math.round((tCaptured - tResumed) * 1000)},
    }
  } catch (error) {
    release()
    resumeTarget()
    throw error
  }
}

/** Ranges of the target's VMAs that the child's layout does not cover: its MADV_DONTFORK memory. */
function uncovered(parentMaps: readonly Vma[], childMaps: readonly Vma[]): {start: bigint; end: bigint}[] {
  const sorted = [...childMaps].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))
  const out: {start: bigint; end: bigint}[] = []
  for (const vma of parentMaps) {
    if (vma.kind === 'vsyscall') continue
    let at = vma.start
    for (const child of sorted) {
      if (child.end <= at) continue
      if (child.start > at) break
      at = child.end
      if (at >= vma.end) break
    }
    // Whole VMAs only: madvise applies to all of it anyway.
    if (at < vma.end) out.push({start: vma.start, end: vma.end})
  }
  return out
}

/** End the original after a successful checkpoint (--kill). */
export function killTarget(pid: number): void {
  killQuiet(pid, SIG.KILL)
}

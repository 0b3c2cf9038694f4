/**
 * Builds a new process from a ProcessImage by taking over a stub with
 * injected system calls: clear the stub's address space, move its vDSO to
 * the checkpointed addresses, map every VMA (zero-copy from the page store or
 * copied in), reopen files, restore mm fields, signals, rseq, robust list and
 * tid address, and finally registers, FPU state and the signal mask.
 *
 * Shared by the pool path (page store = pool file) and the CRIU path (page
 * store = pages-N.img contents copied in). A build that fails kills its stub.
 */

import {xstateForHost} from '../image/cpu-state.js'
import {CorruptError, CxlforkError, UnsupportedError} from '../errors.js'
import {type ProcessImage, type ThreadImage} from '../image/process-image.js'
import {type Stub, type StubOptions, spawnStub} from '../inject/stub.js'
import {Tracee} from '../inject/tracee.js'
import {readMaps, vdsoLayout} from '../sys/proc.js'
import {close, fcntl, pipe2, read} from '../sys/file-io.js'
import {decodeWaitStatus, wait4} from '../sys/ptrace.js'
import {O, PR, SIG, SYS, killQuiet} from '../sys/syscall.js'
import {getTermios, setTermios} from '../sys/terminal.js'
import {CpuPlacement, currentCpu} from '../sys/affinity.js'
import {CrossMemberPairs, type StdioOnDevNull, stdioOnDevNull} from './descriptors.js'
import {type NetworkMode, enterNetwork} from './network.js'
import {FaultServerClient, type LazyOptions} from './lazy.js'
import {type RestorePlan} from './plan.js'
import {SharedMemoryBuilder} from './shared-memory.js'
import {createWithId, namespacedStubsFrom, releaseInit, spawnNamespacedStubs} from './pid-namespace.js'
import {setThreadCpuState} from './threads.js'

import {checkFiles, checkKernel} from './host-checks.js'
import {requireTimerIds} from './timers.js'
import {buildMember, findFreeRange, type PageStore} from './member.js'
/** This process's fds 0-2, /dev/null, or three fds of ours (null: /dev/null) to become the clone's 0-2 (the porter's pipes to a function). */
export type StdioTarget = 'inherit' | 'null' | readonly [number | null, number | null, number | null]

export interface BuildOptions {
  /** Where fds 0-2 that were a terminal or a pipe go: this process's stdio, /dev/null, or fds given. */
  stdio: StdioTarget
  /** Keep the stub's SIGKILL at its parent's death in the clone (a porter's function instance dies with the porter); default: cleared. */
  dieWithParent?: boolean
  /** New session for a detached clone. */
  setsid: boolean
  /** Called with the stub pid as soon as it exists (to record a pool reference before memory is mapped). */
  onSpawn?: (pid: number) => void
  /**
   * `new`: the clone gets a PID namespace of its own in which it keeps its
   * original pid and thread ids (pid-namespace.ts); required for more than
   * one thread. `host`: a new pid in our namespace, the one tid glibc
   * caches rewritten. Default: `new` for more than one thread, else `host`.
   */
  pidns?: PidNamespaceMode
  /** The caller will wait for the clone (restore --wait): keep what is needed to learn its exit status. */
  wait?: boolean
  /** The clone's network namespace: ours (default), a new one with loopback, or the one at a path (network.ts). */
  network?: NetworkMode
  /** How the fault server of `moa` members behaves (lazy.ts); default: no background fill. */
  lazy?: LazyOptions
  /** restore --record: fault-around off on every member's pool mappings, each member's accesses recorded into checkpoint `name` of `pool` at its exit. */
  record?: {name: string; pool: string}
  /** A stub made ahead of time (the porter's ghosts) for this shape, or undefined to spawn one. */
  stubSource?: (opts: StubOptions, shape: StubShape) => ReadyStub | undefined
}

/** The namespaces a build asks its stub for. */
export interface StubShape {
  pidns: PidNamespaceMode
  network: NetworkMode
}

/**
 * A stub made ahead of time: with pidns `host` the stub the process is built
 * into; with `new` the init (pid 1 of its namespace) the root is cloned from.
 * `network`: the namespace it stands in already ('new': its own, loopback up).
 */
export interface ReadyStub {
  stub: Stub
  pidns: PidNamespaceMode
  network: 'host' | 'new'
}

export type PidNamespaceMode = 'new' | 'host'
export const PIDNS_MODES: readonly PidNamespaceMode[] = ['new', 'host']

export interface BuildTimings {
  /** µs spawning and seizing the stub. */
  spawnUs: number
  /** µs mapping and copying memory. */
  memoryUs: number
  /** µs restoring fds, mm, signals, registers. */
  stateUs: number
  injectedSyscalls: number
  /** Of the pages copied, those each new process read from the store itself beside our copy (restore/page-copy.ts). */
  pagesReadByProcess: number
}

/**
 * restore --wait: the terminal this command runs on, which the clone gets as its fds 0-2, is set to
 * the modes the original's terminal had (a REPL or an editor in raw mode; otherwise the clone's input
 * would be line-buffered and echoed twice). Returns how to put this terminal's own modes back once the
 * clone ends, or undefined when the original had no terminal or this command has none.
 */
function lendTerminalModes(image: ProcessImage): (() => void) | undefined {
  const tty = image.fds.find((fd) => fd.fd <= 2 && fd.kind === 'tty' && fd.termios)
  if (!tty) return undefined
  const ours = getTermios(tty.fd)
  if (!ours || !setTermios(tty.fd, tty.termios!)) return undefined
  return () => {
    setTermios(tty.fd, ours)
  }
}

/** How a clone ended (restore --wait). */
export interface CloneExit {
  code: number | null
  signal: number | null
}

function cloneExitOf(status: ReturnType<typeof wait4>): CloneExit {
  return {code: status?.exited ? status.exitCode ?? 0 : null, signal: status?.signaled ? status.termSignal ?? null : null}
}

/** Wait for a built process (it is our child) to end. */
export function waitForClone(pid: number): CloneExit {
  return cloneExitOf(wait4(pid, 0))
}

/**
 * Wait for a clone in its own PID namespace: its init is our child and
 * ends with it, after writing the clone's raw wait status to the pipe whose
 * read end is `statusFd`.
 */
function waitForNamespacedClone(initPid: number, statusFd: number): CloneExit {
  try {
    const initStatus = wait4(initPid, 0)
    const word = new Uint8Array(4)
    let got = 0
    try {
      got = read(statusFd, word)
    } catch {
      got = 0
    }
    if (got === 4) return cloneExitOf(decodeWaitStatus(initPid, new DataView(word.buffer).getInt32(0, true)))
    return cloneExitOf(initStatus)
  } finally {
    close(statusFd)
  }
}

/** The exit status a command reports for a clone's end, as a shell does: the code, or 128 + signal. */
export function exitStatusOf(exit: CloneExit): number {
  return exit.signal === null ? exit.code ?? 0 : 128 + exit.signal
}

export interface BuiltProcess {
  /** The clone's pid, as seen here. */
  pid: number
  /** With its own PID namespace: the clone's pid there (its original pid) and its init's pid here. */
  namespace?: {pid: number; initPid: number}
  threads: number
  /** Processes of the tree built (1 for a single process). */
  members: number
  /** The fault server of a `moa` clone (or the recorder of --record). */
  faultServerPid?: number
  /** With --record: whether fault-around is off on the clone's pool mappings (the recording will be exact). */
  recordingExact?: boolean
  /** fds 0-2 the originals had on a terminal or a pipe to outside, which the clones have on /dev/null (BuildOptions.stdio). */
  stdioOnDevNull: StdioOnDevNull[]
  timings: BuildTimings
  /** Wait for the clone to end (only when built with `wait`). */
  wait(): CloneExit
}

/** Pick a stub load address clear of every VMA of the image. */
function stubBase(images: readonly ProcessImage[]): bigint {
  const taken = images.flatMap((image) => image.vmas.filter((v) => v.kind !== 'vsyscall').map((v): [bigint, bigint] => [v.start, v.end]))
  for (const base of [0x2000000000n, 0x3000000000n, 0x0a00000000n, 0x5000000000n]) {
    if (!taken.some(([s, e]) => base < e && s < base + 0x200000n)) return base
  }
  return findFreeRange(0x200000n, taken)
}

/**
 * A process known to compare its pid with one it stored: CPython's asyncio ties its running
 * event loop to the pid (its fork check), so under a new pid every task fails with "no running
 * event loop" while the sockets still answer. Its C accelerator, mapped from lib-dynload, tells.
 */
export function remembersItsPid(image: ProcessImage): boolean {
  return image.files.some((file) => /(^|\/)_asyncio\.[^/]*\.so$/.test(file.path))
}

/** The pid-namespace mode a build of `image` uses, refusing what cannot work. */
export function pidNamespaceFor(image: ProcessImage, requested?: PidNamespaceMode, members = 1, lazy = false): PidNamespaceMode {
  const mode = requested ?? (image.threads.length > 1 || members > 1 || lazy || remembersItsPid(image) ? 'new' : 'host')
  if (mode === 'host' && lazy) {
    throw new UnsupportedError('POLICY_NEEDS_PIDNS', 'a migrate-on-access clone is restored in a PID namespace of its own: its init is what ends the clone if the fault server dies, so that it never waits forever for a page',
      'Restore with --pidns new (the default for --policy moa), or use another policy.')
  }
  if (mode === 'host' && image.threads.length > 1) {
    throw new UnsupportedError('THREADS_NEED_PIDNS', `the checkpoint holds ${image.threads.length} threads, whose ids its memory keeps; they can only be restored with their own ids, in a new PID namespace`,
      'Restore with --pidns new (the default for a multi-threaded checkpoint).')
  }
  if (mode === 'host' && members > 1) {
    throw new UnsupportedError('THREADS_NEED_PIDNS', `the checkpoint holds a tree of ${members} processes, whose parents know them by their pids; it can only be restored with its own pids, in a new PID namespace`,
      'Restore with --pidns new (the default for a process tree).')
  }
  return mode
}

/** One process of the tree to build; `image` and `plan` are absent for a zombie. */
export interface MemberPlan {
  pid: number
  ppid: number
  pgid: number
  sid: number
  image?: ProcessImage
  plan?: RestorePlan
  /** A zombie's raw wait status. */
  zombieStatus?: number
  /** A zombie's name. */
  comm?: string
}

/**
 * Build a running process from `image` following `plan`. Returns once the
 * process runs on its own (detached from ptrace); it (or, in its own PID
 * namespace, its init) is our child.
 */
export function buildProcess(image: ProcessImage, plan: RestorePlan, store: PageStore, options: BuildOptions): BuiltProcess {
  return buildTree([{pid: image.task.pid, ppid: image.task.ppid, pgid: image.task.pgid, sid: image.task.sid, image, plan}], store, options)
}

/** A member's stub with its threads once built. */
interface Built {
  member: MemberPlan
  stub: Stub
  threads: Tracee[]
}

/**
 * Build a process tree (members parents first, the root first; one member:
 * a single process). Every member's stub is created first, each by its
 * parent with its original pid, sessions and groups set while they are bare
 * stubs, zombies made to exit; then each live member is built, and all are
 * released together, the root last.
 */
export function buildTree(members: readonly MemberPlan[], store: PageStore, options: BuildOptions): BuiltProcess {
  const root = members[0]!
  if (!root.image || !root.plan) throw new CorruptError('IMAGE_INCONSISTENT', 'the root of the checkpointed tree has no process image', 'Take a new checkpoint.')
  const images = members.flatMap((member) => (member.image ? [member.image] : []))
  const lazy = members.some((member) => (member.plan?.lazy.length ?? 0) > 0)
  const pidns = pidNamespaceFor(root.image, options.pidns, members.length, lazy)
  if (lazy && store.mapPath === undefined) throw new CxlforkError('STORE_NOT_MAPPABLE', 'migrate-on-access needs a page store the fault server can map')
  const local = vdsoLayout('self')
  for (const image of images) {
    checkKernel(image, local)
    checkFiles(image)
    requireTimerIds(image.task.timers, `the checkpoint's process ${image.task.pid}`)
  }
  // Before anything is spawned: refuses (CPU_MISMATCH) a state this CPU cannot hold, else lays each thread's out for this CPU.
  const xstates = new Map<ThreadImage, Uint8Array>()
  for (const image of images) {
    for (const thread of image.threads) xstates.set(thread, xstateForHost(thread, `thread ${thread.tid} of the checkpoint's process ${image.task.pid}`))
  }
  const t0 = performance.now()
  // The stub is spawned on our CPU and stays there while we drive it (src/sys/affinity.ts).
  const placement = CpuPlacement.pin(currentCpu())
  let init: Stub | undefined
  const stubs = new Map<number, Stub>()
  const built: Built[] = []
  let statusPipe: [number, number] | undefined
  let faultServer: FaultServerClient | undefined
  let recordingExact = false
  /** --record: every member process, its clone pid and its index in the checkpoint, each recorded at its own exit. */
  const recorded: {pid: number; member: number}[] = []
  let holds = 0
  let restoreTerminal: (() => void) | undefined
  try {
    // Started first: the server's own start-up overlaps the spawn of the stubs.
    if (lazy || options.record) faultServer = FaultServerClient.start(store.mapPath!, {record: options.record !== undefined, ...(options.lazy?.faultPages === undefined ? {} : {faultPages: options.lazy.faultPages})})
    const stdio = options.stdio === 'inherit' ? [0, 1, 2] : options.stdio === 'null' ? [null, null, null] : options.stdio
    const stubOptions: StubOptions = {
      stdin: stdio[0] ?? null, stdout: stdio[1] ?? null, stderr: stdio[2] ?? null, setsid: options.setsid, base: stubBase(images),
    }
    let rootStub: Stub
    let nsPid: number
    const network = options.network ?? 'host'
    // A ghost never serves a --wait (its fds are set at its spawn) and must be of the shape asked for.
    const ready = options.wait ? undefined : options.stubSource?.(stubOptions, {pidns, network})
    if (ready && ready.pidns !== pidns) {
      ready.stub.kill()
      throw new CxlforkError('GHOST_MISMATCH', `a ${ready.pidns} PID namespace stub was given for a ${pidns} one`)
    }
    if (pidns === 'new') {
      if (options.wait) {
        statusPipe = pipe2()
        stubOptions.fds = [stubOptions.stdin ?? null, stubOptions.stdout ?? null, stubOptions.stderr ?? null, statusPipe[1]]
      }
      const spawned = ready ? namespacedStubsFrom(ready.stub, root.pid) : spawnNamespacedStubs(root.pid, stubOptions)
      init = spawned.init
      rootStub = spawned.root
      nsPid = spawned.nsPid
      if (statusPipe) {
        close(statusPipe[1])
        statusPipe = [statusPipe[0], -1]
        fcntl(statusPipe[0], 4 /* F_SETFL */, O.NONBLOCK)
      }
    } else {
      rootStub = ready?.stub ?? spawnStub(stubOptions)
      nsPid = rootStub.pid
    }
    stubs.set(root.pid, rootStub)
    options.onSpawn?.(rootStub.pid)
    // A ghost made for a new network namespace stands in it already (the root, cloned from its init, too).
    if (!(ready && ready.network === network)) enterNetwork(rootStub.tracee, network)
    if (members.length > 1) shapeTree(members, stubs, options.wait === true)
    const tSpawned = performance.now()
    let tMapped = tSpawned
    const shared = new SharedMemoryBuilder(store.sharedObjects ?? new Map(), store.fd)
    const crossPairs = new CrossMemberPairs()
    const tally = {pagesReadByProcess: 0}
    for (const member of members) {
      if (!member.image || !member.plan) continue
      const stub = stubs.get(member.pid)!
      const id = member === root ? nsPid : member.pid
      const hostPidOf = (original: number): number => stubs.get(original)?.pid ?? original
      const threads = buildMember(stub, member.image, member.plan, store, shared, id, pidns === 'host', hostPidOf, crossPairs, (inject) => {
        faultServer?.serve(inject, stub.pid, member.plan!)
        if (options.record && member.plan!.ops.some((op) => op.kind === 'store-map')) {
          const held = faultServer!.holdForRecording(inject, stub.pid, member.plan!)
          recordingExact = (holds === 0 || recordingExact) && held
          holds++
        }
        if (options.record) recorded.push({pid: stub.pid, member: members.indexOf(member)})
        if (member === root) tMapped = performance.now()
      // Only the root dies with us (and the init, with its namespace): the other members keep the parent-death signal they had.
      }, {dieWithParent: member === root && (options.dieWithParent ?? false), cloneHostPids: () => [...stubs.values()].map((s) => s.pid), tally, ...(placement ? {placement} : {})})
      built.push({member, stub, threads})
    }
    crossPairs.closeSpares()
    // Memfd seals last: every mapping and fd of the tree is in place, and no member has run.
    shared.seal()
    for (const {member, stub, threads} of built) {
      const states = member.image!.threads
      setThreadCpuState(stub.tracee, states[0]!, xstates.get(states[0]!))
      threads.forEach((thread, i) => setThreadCpuState(thread, states[i + 1]!, xstates.get(states[i + 1]!)))
    }
    let injectedSyscalls = 0
    for (const {stub, threads} of built) injectedSyscalls += stub.tracee.injectedCount + threads.reduce((sum, t) => sum + t.injectedCount, 0)
    // --wait on a terminal: the clone's terminal (ours) in the modes the original left its own in, ours back when it ends.
    if (options.wait && options.stdio === 'inherit') restoreTerminal = lendTerminalModes(root.image)
    // Descendants first, the root last: a parent runs on only once its children are whole.
    for (const {stub, threads} of [...built].reverse()) {
      placement?.releaseSpawned(stub.pid)
      for (const thread of threads) thread.detach()
      stub.tracee.detach()
    }
    if (init) releaseInit(init, nsPid, options.dieWithParent === true)
    // A full-screen program asks the window size again on SIGWINCH (ignored by default): it redraws for this terminal.
    if (restoreTerminal) killQuiet(rootStub.pid, SIG.WINCH)
    // If this fails, the catch below kills the init, and with it the released clone, before a fault waits on nobody.
    if (faultServer) {
      faultServer.arm(lazy ? init?.pid : undefined, options.lazy ?? {fillAfterMs: null},
        options.record ? recorded.map((clone) => ({...clone, name: options.record!.name, pool: options.record!.pool})) : undefined)
    }
    const tDone = performance.now()
    const readEnd = statusPipe?.[0]
    const initPid = init?.pid
    const pid = rootStub.pid
    return {
      pid, threads: root.image.threads.length, members: members.length, ...(faultServer ? {faultServerPid: faultServer.pid} : {}), ...(options.record ? {recordingExact} : {}),
      ...(initPid === undefined ? {} : {namespace: {pid: nsPid, initPid}}), stdioOnDevNull: stdioOnDevNull(members, stdio),
      timings: {
        spawnUs: Math.round((tSpawned - t0) * 1000), memoryUs: Math.round((tMapped - tSpawned) * 1000),
        stateUs: Math.round((tDone - tMapped) * 1000), injectedSyscalls, pagesReadByProcess: tally.pagesReadByProcess,
      },
      wait: () => {
        try {
          return initPid !== undefined && readEnd !== undefined ? waitForNamespacedClone(initPid, readEnd) : waitForClone(initPid ?? pid)
        } finally {
          restoreTerminal?.()
        }
      },
    }
  } catch (error) {
    restoreTerminal?.()
    for (const {threads} of built) for (const thread of threads) thread.kill()
    for (const stub of [...stubs.values()].reverse()) stub.kill()
    init?.kill()
    faultServer?.stop()
    if (statusPipe) for (const fd of statusPipe) if (fd >= 0) close(fd)
    throw error
  } finally {
    placement?.release()
  }
}

/**
 * Give the tree its shape while every member is a bare stub: each member's
 * children are created by it with their original pids (session leaders call
 * setsid first, so their children are born in their session), groups are
 * formed, and zombies exit with their recorded status; the SIGCHLD each
 * zombie's parent gets is taken back (the original parent had it long ago).
 */
function shapeTree(members: readonly MemberPlan[], stubs: Map<number, Stub>, foreground: boolean): void {
  const root = members[0]!
  // restore --wait: the root and its process group stay in this command's group, the terminal's foreground
  // job, so that the terminal's Ctrl-C and Ctrl-\ reach them as they reached the original (not a session of their own).
  const ownGroup = (member: MemberPlan): boolean => !(foreground && (member === root || member.pgid === root.pid))
  for (const member of members) {
    const stub = stubs.get(member.pid)!
    if (member.zombieStatus === undefined && member.sid === member.pid && ownGroup(member)) stub.tracee.syscallChecked('setsid', SYS.setsid)
    for (const child of members.filter((m) => m.ppid === member.pid && m !== member)) {
      const tracee = createWithId(stub.tracee, 0, SIG.CHLD, child.pid)
      tracee.knowTrapIgnored(false)
      const maps = readMaps(tracee.pid)
      stubs.set(child.pid, {pid: tracee.pid, tracee, maps, image: stub.image, vdso: vdsoLayout(maps), initEntry: stub.initEntry, kill: () => tracee.kill()})
    }
  }
  // Groups: leaders first, then members join a group led by a member of the tree (others stay in their parent's).
  for (const member of members) {
    if (member.zombieStatus === undefined && member.pgid === member.pid && member.sid !== member.pid && ownGroup(member)) stubs.get(member.pid)!.tracee.syscallChecked('setpgid', SYS.setpgid, 0, 0)
  }
  for (const member of members) {
    if (member.zombieStatus === undefined && member.pgid !== member.pid && stubs.has(member.pgid) && ownGroup(member)) stubs.get(member.pid)!.tracee.syscallChecked(`setpgid(${member.pgid})`, SYS.setpgid, 0, member.pgid)
  }
  for (const member of members) {
    if (member.zombieStatus === undefined) continue
    const zombie = stubs.get(member.pid)!
    const signal = member.zombieStatus & 0x7f
    if (member.comm) {
      // Named as the original zombie, not as a stub (ps shows it).
      const slot = zombie.tracee.stackSlot(16)
      zombie.tracee.writeMemory(slot, Buffer.from(member.comm.slice(0, 15).padEnd(16, '\0'), 'latin1'))
      zombie.tracee.syscall(SYS.prctl, PR.SET_NAME, slot)
    }
    if (signal === SIG.KILL) zombie.tracee.kill()
    else zombie.tracee.syscall(SYS.exit_group, (member.zombieStatus >> 8) & 0xff)
    stubs.delete(member.pid)
    takeBackSigchld(stubs.get(member.ppid)!.tracee)
  }
}

/** Dequeue a pending SIGCHLD of a stopped stub (rt_sigtimedwait with a zero timeout, on its own stack). */
function takeBackSigchld(parent: Tracee): void {
  const slot = parent.stackSlot(32)
  const args = new DataView(new ArrayBuffer(32))
  args.setBigUint64(0, 1n << BigInt(SIG.CHLD - 1), true) // the set; then a zero timespec at 16
  parent.writeMemory(slot, new Uint8Array(args.buffer))
  parent.syscall(SYS.rt_sigtimedwait, slot, 0, slot + 16n, 8)
}


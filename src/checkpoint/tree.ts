/**
 * Process trees (`checkpoint --tree`): the target and every descendant.
 *
 * Consistency: every thread of every descendant is stopped before the root's
 * fork snapshot is taken, so all members are captured at one instant. The
 * root then runs on at once (its downtime is a single process's); each
 * descendant stays stopped while its state is read and its pages are copied
 * straight from it into the pool, then runs on. A fork snapshot of a
 * descendant would be a child of a member of the tree, and a parent that
 * reaps any child (a shell, `wait()`) would take it for one of its own.
 *
 * Zombies are members too: their wait status is recorded and the restore
 * recreates them as zombies of the same parent, as CRIU does.
 */
import {readlinkSync} from 'node:fs'

import {ConflictError, NotFoundError, SyscallError, UnsupportedError} from '../errors.js'
import {type FdKind, type ProcessImage, type SigAction} from '../image/process-image.js'
import {findSigreturnGadget} from '../inject/sigframe.js'
import {Tracee} from '../inject/tracee.js'
import {SIG, SYS, syscallRaw} from '../sys/syscall.js'
import {listFds, readMaps, readStat, readStatus} from '../sys/proc.js'
import {type FlaggedVma, captureImage, captureMemory, decodeSigaction, type SnapshotMemory} from './capture.js'
import {describeFds} from './descriptors.js'
import {type PreflightResult, type TreeSocket, childrenOf, preflight, refuseLoneUnixEnd} from './preflight.js'
import {detachQuietly, readAltStacks, readThreadState, seizeOtherThreads, threadComm} from './threads.js'
import {readTimers} from './timers.js'
import {type SharedObjectCapture, readSharedObjects} from './shared-memory.js'

/** One process of a checkpointed tree, in the order the restore creates them (parents first). */
export interface TreeMember {
  pid: number
  ppid: number
  pgid: number
  sid: number
  /** A zombie's raw wait status; absent for a live member. */
  zombieStatus?: number
  /** A zombie's name (a live member's is in its image). */
  comm?: string
}

/** The tree section of a checkpoint: members in creation order, the root first. Live members' images follow in the same order. */
export interface TreeRecord {
  members: TreeMember[]
}

const NAMESPACES = ['pid', 'mnt', 'net', 'ipc', 'uts', 'user', 'cgroup', 'time'] as const

function namespaceIds(pid: number): Record<string, string> {
  const out: Record<string, string> = {}
  for (const ns of NAMESPACES) {
    try {
      out[ns] = readlinkSync(`/proc/${pid}/ns/${ns}`)
    } catch {
      out[ns] = '?'
    }
  }
  return out
}

/** A descendant gone, or now a zombie, since the tree was listed (a shell's `sleep` ends at any moment). */
function exitedMeanwhile(error: unknown): boolean {
  // A /proc file of a member that exited between two reads (a shell pipeline's short-lived children) is ENOENT, or ESRCH.
  const code = (error as NodeJS.ErrnoException | undefined)?.code
  return error instanceof NotFoundError || (error instanceof UnsupportedError && error.code === 'PROCESS_ZOMBIE') || code === 'ENOENT' || code === 'ESRCH'
}

/** `root` and its descendants, breadth first (every parent before its children). */
export function treeMembers(root: number): TreeMember[] {
  const out: TreeMember[] = []
  const queue = [root]
  const seen = new Set<number>()
  while (queue.length > 0) {
    const pid = queue.shift()!
    if (seen.has(pid)) continue
    seen.add(pid)
    let stat
    try {
      stat = readStat(pid)
    } catch {
      if (pid === root) throw new NotFoundError('PROCESS_NOT_FOUND', `no such process: ${pid}`, 'Give the pid of a running process (see `ps`).')
      continue // exited and was reaped meanwhile
    }
    const member: TreeMember = {pid, ppid: stat.ppid, pgid: stat.pgrp, sid: stat.session}
    if (stat.state === 'Z' && stat.numThreads <= 1) {
      member.zombieStatus = stat.exitCode
      member.comm = stat.comm
    }
    out.push(member)
    if (member.zombieStatus === undefined) queue.push(...childrenOf(pid).sort((a, b) => a - b))
  }
  return out
}

/** What a member needs before anything is touched; refusals name the member. */
export interface CheckedTree {
  members: TreeMember[]
  /** Preflight of each live member, by pid. */
  checks: Map<number, PreflightResult>
  tcpClose: boolean
  carryLocks: boolean
}

/**
 * Refuse, before any member is touched, what the tree cannot carry:
 * members in other namespaces, members traced by someone else, zombies
 * killed by a signal other than SIGKILL, and whatever preflight refuses for
 * a single process.
 */
export function preflightTree(root: number, tcpClose = false, carryLocks = false): CheckedTree {
  const members = treeMembers(root)
  const checks = new Map<number, PreflightResult>()
  const rootNs = namespaceIds(root)
  const live: TreeMember[] = []
  for (const member of members) {
    if (checkMember(root, rootNs, member, checks, tcpClose, carryLocks)) live.push(member)
  }
  refuseLoneUnixEndsOfTree(checks)
  return {members: live, checks, tcpClose, carryLocks}
}

/** Every socketpair end a member holds alone must have its other end in some member (nginx's master and workers, multiprocessing.Pipe). */
function refuseLoneUnixEndsOfTree(checks: ReadonlyMap<number, PreflightResult>): void {
  const held = new Set<string>()
  for (const checked of checks.values()) for (const {info, kind} of checked.fds) if (kind === 'socket') held.add(info.target)
  for (const [pid, checked] of checks) {
    for (const end of checked.loneUnixEnds ?? []) if (end.peer === undefined || !held.has(`socket:[${end.peer}]`)) refuseLoneUnixEnd(pid, end, true)
  }
}

/**
 * The checks of one member; false when it is gone meanwhile (a descendant
 * that exits between the listing and the freeze is simply not part of the tree).
 */
function checkMember(root: number, rootNs: Record<string, string>, member: TreeMember, checks: Map<number, PreflightResult>, tcpClose: boolean, carryLocks: boolean): boolean {
  if (member.zombieStatus !== undefined) {
    const signal = member.zombieStatus & 0x7f
    if (signal !== 0 && signal !== SIG.KILL) {
      throw new UnsupportedError('ZOMBIE_SIGNALED', `member ${member.pid} of the tree is a zombie killed by signal ${signal}; only zombies that exited or were SIGKILLed can be recreated`,
        'Let its parent reap it, then checkpoint again.')
    }
    return true
  }
  try {
    const ns = namespaceIds(member.pid)
    if (Object.values(ns).includes('?') && member.pid !== root) return false // exited while we looked
    const differs = NAMESPACES.filter((name) => ns[name] !== rootNs[name])
    if (differs.length > 0) {
      throw new UnsupportedError('NAMESPACE_DIFFERS', `member ${member.pid} of the tree is in other ${differs.join(', ')} namespace(s) than ${root}`,
        'cxlfork checkpoints trees whose members share their namespaces.')
    }
    const tracer = readStatus(member.pid).tracerPid
    if (tracer !== 0) {
      throw new ConflictError('ALREADY_TRACED', `member ${member.pid} of the tree is traced by process ${tracer}`, 'Detach the debugger or strace first.')
    }
    checks.set(member.pid, preflight(member.pid, {children: 'allow', tcpClose, carryLocks}))
    return true
  } catch (error) {
    if (member.pid !== root && exitedMeanwhile(error)) return false
    throw error
  }
}

/** Where a member's fd comes from when an earlier member of the tree holds the same object. */
export interface SharedFrom {
  /** The earlier member (its original pid, which it keeps in the clone's namespace). */
  pid: number
  fd: number
  /** One open file description (inherited as is); else the same pipe through another end. */
  description: boolean
  /** The earlier member's fd is the same end of the pipe (or not a pipe). */
  sameEnd: boolean
}

/**
 * Pipes, sockets, eventfds and epoll instances that members share (inherited
 * across fork: the usual way a parent talks to its children, a shell's
 * pipeline). For each member's fd, the first earlier member (tree order)
 * holding the same open file description (kcmp), or for a pipe the same pipe;
 * the restore hands that object over instead of creating a second one.
 * Keyed by member pid, then fd.
 */
/**
 * Pipes held by more than one member (a pipeline's, a parent's to its
 * children), and every member's sockets (the other end of a socketpair may be
 * in another member). Recorded on every member's checks.
 */
export function markInternalPipes(members: readonly TreeMember[], checks: Map<number, PreflightResult>): void {
  const holders = new Map<string, Set<number>>()
  const sockets = new Map<string, TreeSocket>()
  const live = members.flatMap((member) => (checks.has(member.pid) ? [[member.pid, checks.get(member.pid)!] as const] : []))
  live.forEach(([pid, checked], rank) => {
    for (const {info, kind} of checked.fds) {
      if (kind === 'pipe') holders.set(info.target, (holders.get(info.target) ?? new Set()).add(pid))
      if (kind === 'socket' && !sockets.has(info.target)) sockets.set(info.target, {pid, fd: info.fd, rank})
    }
  })
  // Members found while freezing were not there for preflightTree's check.
  refuseLoneUnixEndsOfTree(new Map(live))
  const internal = new Set([...holders].filter(([, pids]) => pids.size > 1).map(([target]) => target))
  for (const [, checked] of live) {
    checked.internalPipes = internal
    checked.treeSockets = sockets
  }
}

export function sharedAcrossMembers(members: readonly TreeMember[], checks: Map<number, PreflightResult>): Map<number, Map<number, SharedFrom>> {
  const out = new Map<number, Map<number, SharedFrom>>()
  const earlier: {pid: number; fd: number; target: string; kind: string; access: number}[] = []
  for (const member of members) {
    const checked = checks.get(member.pid)
    if (!checked) continue
    const mine: typeof earlier = []
    for (const {info, kind} of checked.fds) {
      const shareable = kind === 'socket' || kind === 'ghost' || kind === 'eventfd' || kind === 'epoll' || kind === 'timerfd' || kind === 'signalfd' || (kind === 'pipe' && (info.fd > 2 || (checked.internalPipes?.has(info.target) ?? false)))
      if (!shareable) continue
      mine.push({pid: member.pid, fd: info.fd, target: info.target, kind, access: info.flags & 3})
      let from: SharedFrom | undefined
      // A socketpair end whose other end an earlier member holds: that member creates the pair (restore/descriptors.ts).
      const lonePeer = checked.loneUnixEnds?.find((end) => end.fd === info.fd)?.peer
      for (const prior of earlier) {
        if (prior.kind !== kind) continue
        if (syscallRaw(SYS.kcmp, prior.pid, member.pid, 0 /* KCMP_FILE */, prior.fd, info.fd) === 0n) {
          from = {pid: prior.pid, fd: prior.fd, description: true, sameEnd: true}
          break
        }
        if (kind === 'pipe' && prior.target === info.target) {
          // Prefer an earlier holder of the same end: it can be handed over as is.
          const sameEnd = prior.access === (info.flags & 3)
          if (!from || (sameEnd && !from.sameEnd)) from = {pid: prior.pid, fd: prior.fd, description: false, sameEnd}
        }
        if (kind === 'socket' && lonePeer !== undefined && prior.target === `socket:[${lonePeer}]` && !from) from = {pid: prior.pid, fd: prior.fd, description: false, sameEnd: false}
      }
      if (from) {
        if (kind !== 'pipe' && kind !== 'socket' && !from.description) continue
        const byFd = out.get(member.pid) ?? new Map<number, SharedFrom>()
        byFd.set(info.fd, from)
        out.set(member.pid, byFd)
      }
    }
    earlier.push(...mine)
  }
  return out
}

/** Every thread of each live descendant, seized and stopped; the leader first per member. */
export interface FrozenMember {
  pid: number
  leader: Tracee
  others: Tracee[]
}

/**
 * Stop every thread of every live member but the root, then list the tree
 * again until a whole pass finds no member that is not stopped (members fork
 * and exit until they are stopped; stopped ones do neither). New members are
 * checked as the first ones were; members gone meanwhile drop out, and
 * `tree` is updated to the members frozen (and the zombies). On failure the
 * ones stopped run on.
 */
export function freezeDescendants(tree: CheckedTree): FrozenMember[] {
  const frozen = new Map<number, FrozenMember>()
  const root = tree.members[0]!.pid
  const rootNs = namespaceIds(root)
  try {
    for (let pass = 0; ; pass++) {
      const members = treeMembers(root)
      let fresh = 0
      for (const member of members.slice(1)) {
        if (member.zombieStatus !== undefined || frozen.has(member.pid)) continue
        if (!tree.checks.has(member.pid) && !checkMember(root, rootNs, member, tree.checks, tree.tcpClose, tree.carryLocks)) continue
        let leader: Tracee
        try {
          leader = Tracee.seize(member.pid, {options: 0})
        } catch (error) {
          if (exitedMeanwhile(error)) continue // the next pass lists it again, as a zombie if it is one
          throw error
        }
        const entry: FrozenMember = {pid: member.pid, leader, others: []}
        frozen.set(member.pid, entry)
        entry.others = seizeOtherThreads(member.pid)
        fresh++
      }
      if (fresh === 0) {
        // Stable: every live descendant listed now is stopped.
        tree.members = members.filter((member, i) => i === 0 || member.zombieStatus !== undefined || frozen.has(member.pid))
        for (const member of tree.members) {
          if (member.zombieStatus !== undefined) checkMember(root, rootNs, member, tree.checks, tree.tcpClose, tree.carryLocks)
        }
        const kept = new Set(tree.members.map((member) => member.pid))
        thawMembers([...frozen.values()].filter((member) => !kept.has(member.pid))) // orphaned meanwhile: no longer in the tree
        return tree.members.slice(1).flatMap((member) => frozen.get(member.pid) ?? [])
      }
      if (pass > 100) throw new ConflictError('TREE_UNSTABLE', `the tree of ${root} keeps changing`, 'Checkpoint it when it is not forking.')
    }
  } catch (error) {
    thawMembers([...frozen.values()])
    throw error
  }
}

/** --kill of a tree: every stopped member SIGKILLed and reaped as its tracer, children first (no parent sees a child die before it is gone). */
export function killFrozenMembers(frozen: readonly FrozenMember[]): void {
  for (const member of [...frozen].reverse()) {
    for (const thread of member.others) thread.kill()
    member.leader.kill()
  }
}

export function thawMembers(frozen: readonly FrozenMember[]): void {
  for (const member of frozen) {
    for (const thread of member.others) detachQuietly(thread)
    detachQuietly(member.leader)
  }
}

/**
 * brk and signal dispositions of a stopped process (not in /proc), asked by
 * calls injected into its leader in self-healing mode, through one 32-byte
 * slot of its stack whose bytes are put back.
 */
function readDispositionsAndBrk(leader: Tracee): {brk: bigint; sigactions: SigAction[]; asked: {securebits: number; dumpable: number}; pdeathSignal: number} {
  const slot = leader.stackSlot(32)
  const saved = leader.readMemory(slot, 32)
  try {
    const brk = leader.syscall(SYS.brk, 0)
    const securebits = leader.syscall(SYS.prctl, 27 /* PR_GET_SECUREBITS */)
    const dumpable = leader.syscall(SYS.prctl, 3 /* PR_GET_DUMPABLE */)
    if (securebits < 0n || dumpable < 0n) throw new SyscallError(`prctl (in member ${leader.pid})`, Number(-(securebits < 0n ? securebits : dumpable)))
    // Not in /proc: the member's own answer, stored as an int in the slot.
    const pdeath = leader.syscall(SYS.prctl, 2 /* PR_GET_PDEATHSIG */, slot)
    if (pdeath < 0n) throw new SyscallError(`prctl(PR_GET_PDEATHSIG) (in member ${leader.pid})`, Number(-pdeath))
    const pdeathSignal = new DataView(leader.readMemory(slot, 4).buffer).getInt32(0, true)
    const sigactions: SigAction[] = []
    for (let signo = 1; signo <= 64; signo++) {
      if (signo === SIG.KILL || signo === SIG.STOP) continue
      if (leader.syscall(SYS.rt_sigaction, signo, 0, slot, 8) < 0n) continue
      const view = new DataView(leader.readMemory(slot, 32).buffer)
      const action = decodeSigaction(view, 0, signo)
      if (action) sigactions.push(action)
    }
    return {brk, sigactions, asked: {securebits: Number(securebits), dumpable: Number(dumpable)}, pdeathSignal}
  } finally {
    leader.writeMemory(slot, saved)
  }
}

/** The image and memory of a stopped descendant: what the root's fork snapshot gives for the root. */
export function captureStoppedMember(member: FrozenMember, checked: PreflightResult, sharedKnown: Set<string>): {image: ProcessImage; memory: SnapshotMemory; sharedMemory: SharedObjectCapture[]} {
  const pid = member.pid
  const gadget = findSigreturnGadget(pid)
  const threads = [member.leader, ...member.others]
  if (gadget !== null) for (const thread of threads) thread.useSigreturnGadget(gadget)
  const flagsByStart = new Map((checked.smaps ?? []).map((vma) => [vma.start, vma.vmFlags]))
  const maps: FlaggedVma[] = readMaps(pid).map((vma) => ({...vma, vmFlags: flagsByStart.get(vma.start) ?? new Set<string>()}))
  const leader = readThreadState(member.leader, maps)
  const states = [leader.state, ...member.others.map((thread) => readThreadState(thread, maps, 'private').state)]
  readAltStacks(threads, maps).forEach((altStack, i) => {
    states[i]!.altStack = altStack
  })
  states.forEach((state, i) => {
    if (i > 0) state.comm = threadComm(pid, state.tid)
  })
  const {brk, sigactions, asked, pdeathSignal} = readDispositionsAndBrk(member.leader)
  const timers = readTimers(member.leader, pid, threadComm(pid, pid), threads.map((thread) => thread.pid), maps)
  const byFd = new Map(checked.fds.map((entry) => [entry.info.fd, entry.kind]))
  // Offsets as of now (it is stopped); an fd opened since preflight is classified anew.
  let fds: {info: ReturnType<typeof listFds>[number]; kind: FdKind}[] = listFds(pid).map((info) => ({info, kind: byFd.get(info.fd) ?? 'regular'}))
  if (fds.some((entry) => !byFd.has(entry.info.fd))) fds = preflight(pid, {memory: false, children: 'allow', tcpClose: checked.tcpClose, carryLocks: checked.carryLocks}).fds
  const extras = describeFds(pid, fds, checked.internalPipes, checked.treeSockets)
  const memory = captureMemory(pid, maps)
  const image = captureImage(pid, pid, memory, maps, fds.map((entry) => ({...entry, extras: extras.get(entry.info.fd)})), {threads: states, sharedPendingSignals: leader.sharedPending, sigactions, brk, asked, timers})
  if (pdeathSignal !== 0) image.task.pdeathSignal = pdeathSignal
  // Last (nothing after it can fail and leak its memfds). Objects the root (or an earlier member) maps were
  // read already, at the root's stop, when every member was stopped too.
  const sharedMemory = readSharedObjects(pid, maps, sharedKnown, fds)
  return {image, memory, sharedMemory}
}

/**
 * Building one member of a restore into its stub: clear the stub, move its
 * vDSO, map memory, restore fds, mm fields, signals and task state, and
 * create its threads (build-process.ts runs this for every member).
 */
import {CxlforkError, SyscallError} from '../errors.js'
import {type ProcessImage} from '../image/process-image.js'
import {type SharedObject} from '../image/shared-memory.js'
import {type Stub} from '../inject/stub.js'
import {signedErr} from '../inject/regs.js'
import {Tracee} from '../inject/tracee.js'
import {type VdsoLayout} from '../sys/proc.js'
import {MAP, MREMAP, O, PR, SYS, prlimit} from '../sys/syscall.js'
import {type CpuPlacement} from '../sys/affinity.js'
import {vmWrite} from '../sys/vm-io.js'
import {setMmMapRefusal} from '../sys/capabilities.js'
import {type CrossMemberPairs, type HostPidOf, restoreFds} from './descriptors.js'
import {restoreCredentials} from './credentials.js'
import {Injector} from './injector.js'
import {type PageCopy, type StoreFileSpan, copyPages} from './page-copy.js'
import {type MapOp, type RestorePlan, needsProtectFixup} from './plan.js'
import {SharedMemoryBuilder} from './shared-memory.js'
import {createThreads, requeueThreadSignals, restoreThreadKernelState} from './threads.js'
import {restoreTimers} from './timers.js'
import {takeLocks} from './locks.js'


const PR_SET_PDEATHSIG = 1

/** Where stored pages come from during a build. */
export interface PageStore {
  /** File the stub maps for `store-map` ops (the pool file); absent when the store cannot be mapped. */
  mapPath?: string
  /** Our own address of a store offset, for `copy` ops. */
  localAddress(storeOffset: bigint): bigint
  /** The file a store offset lies in, for the new process to read `copy` ops from itself (page-copy.ts). */
  fileSpan?(storeOffset: bigint): StoreFileSpan | undefined
  /** A readable fd of the store (the pool file), to fill shared objects from in the kernel. */
  fd?: number
  /** The shared anonymous memory objects the images' VMAs name (sharedId), when there are any. */
  sharedObjects?: ReadonlyMap<string, SharedObject>
}


function hex(value: bigint): string {
  return '0x' + value.toString(16)
}

/** A free range of `length` bytes avoiding every range in `taken`, searched from high canonical addresses down. */
export function findFreeRange(length: bigint, taken: readonly [bigint, bigint][]): bigint {
  const sorted = [...taken].sort((a, b) => (a[0] < b[0] ? -1 : 1))
  for (let candidate = 0x6f0000000000n; candidate > 0x100000000n; candidate -= 0x10000000000n) {
    const end = candidate + length
    if (!sorted.some(([s, e]) => candidate < e && s < end)) return candidate
  }
  throw new CxlforkError('NO_ADDRESS_SPACE', 'no free address range for the restore scratch area')
}

function u64s(values: readonly bigint[]): Uint8Array {
  const bytes = new Uint8Array(values.length * 8)
  const view = new DataView(bytes.buffer)
  values.forEach((value, i) => view.setBigUint64(i * 8, BigInt.asUintN(64, value), true))
  return bytes
}

/** Move the stub's [vvar]/[vvar_vclock]/[vdso] block to where the image had it, keeping spacing. */
function moveVdso(inject: Injector, stub: VdsoLayout, image: ProcessImage, scratchRange: [bigint, bigint]): void {
  const wanted = image.vmas.filter((vma) => vma.kind === 'vdso' || vma.kind === 'vvar' || vma.kind === 'vvar_vclock')
  const targetBase = wanted.reduce((low, vma) => (vma.start < low ? vma.start : low), wanted[0]!.start)
  if (targetBase === stub.base) return
  const span = BigInt(stub.span)
  const overlaps = targetBase < stub.base + span && stub.base < targetBase + span
  const moveBlock = (from: bigint, to: bigint): void => {
    for (const part of stub.parts) {
      const size = BigInt(part.size)
      inject.call(`mremap(${part.name})`, SYS.mremap, from + BigInt(part.offset), size, size, MREMAP.MAYMOVE | MREMAP.FIXED, to + BigInt(part.offset))
    }
  }
  if (overlaps) {
    const parking = findFreeRange(span, [...image.vmas.map((v): [bigint, bigint] => [v.start, v.end]), [stub.base, stub.base + span], scratchRange])
    moveBlock(stub.base, parking)
    moveBlock(parking, targetBase)
  } else {
    moveBlock(stub.base, targetBase)
  }
  inject.tracee.setSyscallSite(null)
}

/**
 * Map every VMA in three batched phases (open files, map, close), each one
 * resume of the stub: a restore costs O(VMAs + page runs) syscalls but only a
 * handful of ptrace round trips.
 */
function mapMemory(inject: Injector, image: ProcessImage, plan: RestorePlan, store: PageStore, shared: SharedMemoryBuilder, placement: CpuPlacement | undefined): number {
  const tracee = inject.tracee
  const opens: {key: number; path: string; flags: number}[] = []
  const openIndex = new Map<number, number>()
  const STORE_KEY = -1
  const want = (key: number, path: string, flags: number): void => {
    if (!openIndex.has(key)) {
      openIndex.set(key, opens.length)
      opens.push({key, path, flags})
    }
  }
  for (const op of plan.ops) {
    if (op.kind === 'file') {
      const vma = image.vmas[op.vmaIndex]!
      want(op.fileIndex, image.files[op.fileIndex]!.path, (vma.flags & MAP.SHARED) !== 0 && (vma.prot & 2) !== 0 ? O.RDWR : O.RDONLY)
    } else if (op.kind === 'store-map') {
      if (store.mapPath === undefined) throw new CxlforkError('STORE_NOT_MAPPABLE', 'this page store cannot be mapped')
      want(STORE_KEY, store.mapPath, O.RDONLY)
    }
  }
  const fds = new Map<number, number>()
  if (opens.length > 0) {
    const calls = opens.map((o) => ({nr: SYS.open, args: [inject.putString(o.path), o.flags | O.CLOEXEC, 0]}))
    const results = tracee.syscalls(calls, {stopOnError: true})
    opens.forEach((o, i) => {
      const r = results[i]
      if (r === undefined || r < 0n) {
        for (const fd of results) if (fd >= 0n) tracee.syscall(SYS.close, fd)
        throw new SyscallError(`open(${o.path}) in the new process`, r === undefined ? 5 : Number(-r))
      }
      fds.set(o.key, Number(r))
    })
  }
  // Shared objects first (made in a member while nothing of its image is mapped yet), then mapped like files.
  const sharedOps = plan.ops.filter((op): op is Extract<MapOp, {kind: 'shared'}> => op.kind === 'shared')
  const sharedFds = sharedOps.length > 0 ? shared.open(inject, sharedOps) : new Map<string, number>()
  const maps: {nr: number; args: (number | bigint)[]; what: string}[] = []
  const copies: PageCopy[] = []
  for (const op of plan.ops) {
    const length = op.end - op.start
    switch (op.kind) {
      case 'anon':
        maps.push({nr: SYS.mmap, args: [op.start, length, op.prot, op.flags | MAP.FIXED, -1, 0], what: `mmap(anon ${hex(op.start)})`})
        break
      case 'file':
        maps.push({nr: SYS.mmap, args: [op.start, length, op.prot, op.flags | MAP.FIXED, fds.get(op.fileIndex)!, op.offset], what: `mmap(${image.files[op.fileIndex]!.path} at ${hex(op.start)})`})
        break
      case 'store-map':
        maps.push({nr: SYS.mmap, args: [op.start, length, op.prot, MAP.PRIVATE | MAP.FIXED, fds.get(STORE_KEY)!, op.storeOffset], what: `mmap(store ${hex(op.start)})`})
        break
      case 'shared':
        maps.push({nr: SYS.mmap, args: [op.start, length, op.prot, MAP.SHARED | MAP.FIXED, sharedFds.get(shared.keyOf(op))!, op.offset], what: `mmap(shared memory ${hex(op.start)})`})
        break
      case 'copy':
        copies.push({storeOffset: op.storeOffset, remote: op.start, len: Number(length)})
        break
    }
  }
  const results = tracee.syscalls(maps, {stopOnError: true})
  const failed = results.findIndex((r) => signedErr(r))
  if (failed >= 0 || results.length < maps.length) {
    const at = failed >= 0 ? failed : results.length
    throw new SyscallError(`${maps[at]!.what} in the new process`, failed >= 0 ? Number(-results[failed]!) : 5)
  }
  const readByProcess = copies.length > 0 ? copyPages(inject, copies, store, placement).bytesReadByProcess : 0
  const finish = [
    ...needsProtectFixup(plan, image).map((vma) => ({nr: SYS.mprotect, args: [vma.start, vma.end - vma.start, vma.prot]})),
    ...[...fds.values(), ...sharedFds.values()].map((fd) => ({nr: SYS.close, args: [fd]})),
  ]
  // Advice the original had on its memory (MADV_DONTFORK: V8's heap), once the memory is in place; advice
  // this kernel does not take (a CRIU set's MADV_MERGEABLE without KSM) is left out, as it changes no content.
  tracee.syscalls(image.vmas.flatMap((vma) => (vma.advice ?? []).map((advice) => ({nr: SYS.madvise, args: [vma.start, vma.end - vma.start, advice]}))))
  const done = tracee.syscalls(finish, {stopOnError: true})
  const bad = done.findIndex((r) => signedErr(r))
  if (bad >= 0 || done.length < finish.length) throw new SyscallError('mprotect/close in the new process', bad >= 0 ? Number(-done[bad]!) : 5)
  for (const op of sharedOps) shared.placed(op.sharedId, tracee.pid, op.start, op.end)
  return readByProcess
}

/** PR_SET_MM_MAP: code/data/brk/stack/arg/env bounds, auxv and the exe link (without it brk(0) returns the stub's value). */
function restoreMm(inject: Injector, image: ProcessImage): void {
  const mm = image.mm
  const exe = image.files[mm.exeFileIndex]!
  const exeFd = inject.open(exe.path, O.RDONLY)
  const auxv = u64s(mm.auxv)
  const auxvAddress = inject.put(auxv)
  const map = new Uint8Array(104)
  map.set(u64s([mm.startCode, mm.endCode, mm.startData, mm.endData, mm.startBrk, mm.brk, mm.startStack, mm.argStart, mm.argEnd, mm.envStart, mm.envEnd, auxvAddress]))
  const view = new DataView(map.buffer)
  view.setUint32(96, auxv.length, true)
  view.setUint32(100, exeFd, true)
  try {
    inject.call('prctl(PR_SET_MM_MAP)', SYS.prctl, PR.SET_MM, PR.SET_MM_MAP, inject.put(map), map.length, 0)
  } catch (error) {
    // Setting the exe link needs CAP_CHECKPOINT_RESTORE: name it (it was SYSCALL_FAILED, exit 1).
    throw error instanceof SyscallError && error.errno === 1 ? setMmMapRefusal() : error
  }
  inject.call('close', SYS.close, exeFd)
}

function restoreSignals(inject: Injector, image: ProcessImage): void {
  for (const action of image.task.sigactions) {
    inject.call(`rt_sigaction(${action.signo})`, SYS.rt_sigaction, action.signo, inject.put(u64s([action.handler, action.flags, action.restorer, action.mask])), 0, 8)
  }
}

/**
 * Process-wide state and the first thread's own. `pid` is the clone's pid
 * here (for prlimit), `nsPid` its pid inside (for injected calls);
 * `rewriteTid`: glibc caches the tid at clear_child_tid (it changed unless
 * the clone kept its ids).
 */
function restoreTaskState(inject: Injector, image: ProcessImage, pid: number, nsPid: number, rewriteTid: boolean): void {
  const thread = image.threads[0]!
  const task = image.task
  restoreThreadKernelState(inject, inject.tracee, thread, task.comm)
  if (rewriteTid && thread.clearTidAddress !== 0n) {
    const tid = new Uint8Array(4)
    new DataView(tid.buffer).setInt32(0, nsPid, true)
    vmWrite(pid, thread.clearTidAddress, tid)
  }
  // The stub asked for SIGKILL at its spawner's death; a released clone outlives us (0: none, as a fork child has), unless it must die with us (set after the credentials, below).
  inject.call('prctl(PR_SET_PDEATHSIG, 0)', SYS.prctl, PR_SET_PDEATHSIG, 0)
  inject.call('umask', SYS.umask, task.umask)
  if (task.personality !== 0) inject.call('personality', SYS.personality, task.personality)
  inject.call(`chdir(${task.cwd})`, SYS.chdir, inject.putString(task.cwd))
  for (const limit of task.rlimits) {
    try {
      const current = prlimit(pid, limit.resource)
      if (current.cur !== limit.cur || current.max !== limit.max) prlimit(pid, limit.resource, {cur: limit.cur, max: limit.max})
    } catch (error) {
      // Raising a hard limit needs CAP_SYS_RESOURCE; keep the stub's (inherited) limit then.
      if (!(error instanceof SyscallError && error.errno === 1)) throw error
    }
  }
  // Queued signals go back to the clone's own queues (to itself any si_code is allowed).
  for (const info of task.sharedPendingSignals) {
    const signo = new DataView(info.buffer, info.byteOffset).getInt32(0, true)
    inject.call('rt_sigqueueinfo', SYS.rt_sigqueueinfo, nsPid, signo, inject.put(info))
  }
  requeueThreadSignals(inject, nsPid, nsPid, thread.pendingSignals)
}

/**
 * Everything of one member but its final CPU state: memory, fds, mm,
 * signals, task state, threads. `nsPid` is its pid as it will see it.
 * Returns its threads beyond the first, created and stopped.
 */
export function buildMember(stub: Stub, image: ProcessImage, plan: RestorePlan, store: PageStore, shared: SharedMemoryBuilder, nsPid: number, rewriteTid: boolean, hostPidOf: HostPidOf, crossPairs: CrossMemberPairs, mapped: (inject: Injector) => void,
  options: {dieWithParent?: boolean; placement?: CpuPlacement; tally?: {pagesReadByProcess: number}; cloneHostPids?: () => number[]} = {}): Tracee[] {
  const tracee = stub.tracee
  const taken: [bigint, bigint][] = [
    ...image.vmas.map((v): [bigint, bigint] => [v.start, v.end]),
    ...stub.maps.filter((v) => v.kind !== 'vsyscall').map((v): [bigint, bigint] => [v.start, v.end]),
  ]
  const scratchSize = 0x100000n
  const scratchAt = findFreeRange(scratchSize, taken)
  taken.push([scratchAt, scratchAt + scratchSize])
  tracee.placeBatchArea(findFreeRange(BigInt(Tracee.batchAreaSize), taken))
  const scratch = tracee.syscallChecked('mmap(scratch)', SYS.mmap, scratchAt, scratchSize, 3, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0)
  const inject = new Injector(tracee, scratch, scratchSize)
  // Clear everything of the stub but its vDSO block and our scratch.
  for (const vma of stub.maps) {
    if (vma.kind === 'vdso' || vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vsyscall') continue
    inject.call(`munmap(stub ${hex(vma.start)})`, SYS.munmap, vma.start, vma.end - vma.start)
  }
  moveVdso(inject, stub.vdso, image, [scratch, scratch + scratchSize])
  const readByProcess = mapMemory(inject, image, plan, store, shared, options.placement)
  if (options.tally) options.tally.pagesReadByProcess += readByProcess / 4096
  inject.reset()
  mapped(inject)
  inject.reset()
  restoreFds(inject, image, hostPidOf, shared, crossPairs)
  inject.reset()
  // Its locks, once its fds are in place: the clone owns them (a conflict with the original is refused here).
  takeLocks(inject, image, stub.pid, options.cloneHostPids?.() ?? [])
  inject.reset()
  restoreMm(inject, image)
  restoreSignals(inject, image)
  inject.reset()
  restoreTaskState(inject, image, stub.pid, nsPid, rewriteTid)
  inject.reset()
  const threads = createThreads(inject, image.threads)
  try {
    threads.forEach((thread, i) => {
      const state = image.threads[i + 1]!
      restoreThreadKernelState(inject, thread, state, state.comm ?? image.task.comm)
      requeueThreadSignals(inject, nsPid, state.tid, state.pendingSignals)
      inject.reset()
    })
    // Once its threads exist (a timer may signal one): threads beyond the first keep their tids.
    if (image.task.timers) restoreTimers(inject, image.task.timers, (tid) => (tid === image.threads[0]!.tid ? nsPid : tid))
    inject.reset()
    // Last: from here on the member may no longer be privileged.
    if (image.task.credentials) restoreCredentials(inject, [tracee, ...threads], stub.pid, image.task.credentials)
    // After the credentials: changing them clears the parent-death signal. Its parent here is the member
    // restored as its parent (only tree members record one), whose main thread forked it.
    // dieWithParent: SIGKILL when the process that built it (a porter) dies.
    const deathSignal = options.dieWithParent ? 9 : image.task.pdeathSignal
    if (deathSignal) inject.call(`prctl(PR_SET_PDEATHSIG, ${deathSignal})`, SYS.prctl, PR_SET_PDEATHSIG, deathSignal)
    inject.call('munmap(scratch)', SYS.munmap, scratch, scratchSize)
    tracee.freeBatch()
    return threads
  } catch (error) {
    for (const thread of threads) thread.kill()
    throw error
  }
}

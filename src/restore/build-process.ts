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
import {statSync} from 'node:fs'

import {xstateForHost} from '../cpu/checkpoint-cpu.js'
import {CxlforkError, NotFoundError, SyscallError, UnsupportedError} from '../errors.js'
import {type FileIdentity, type ProcessImage, USER_REGS_NAMES, type VmaImage} from '../image/process-image.js'
import {type Stub, spawnStub} from '../inject/stub.js'
import {REG_NAMES, Tracee, restartFixup, regsToArray} from '../inject/tracee.js'
import {type VdsoLayout, deviceName, kernelRelease, vdsoLayout} from '../sys/proc.js'
import {MAP, MREMAP, O, PR, SYS, type VmSegment, prlimit, vmWrite, vmWritev, wait4} from '../sys/libc.js'
import {CpuPlacement, currentCpu} from '../sys/affinity.js'
import {type RestorePlan, needsProtectFixup} from './plan.js'

/** Where stored pages come from during a build. */
export interface PageStore {
  /** File the stub maps for `store-map` ops (the pool file); absent when the store cannot be mapped. */
  mapPath?: string
  /** Our own address of a store offset, for `copy` ops. */
  localAddress(storeOffset: bigint): bigint
}

export type StdioTarget = 'inherit' | 'null'

export interface BuildOptions {
  /** Where fds 0-2 that were a terminal or a pipe go: this process's stdio, or /dev/null. */
  stdio: StdioTarget
  /** New session for a detached clone. */
  setsid: boolean
  /** Called with the stub pid as soon as it exists (to record a pool reference before memory is mapped). */
  onSpawn?: (pid: number) => void
}

export interface BuildTimings {
  /** µs spawning and seizing the stub. */
  spawnUs: number
  /** µs mapping and copying memory. */
  memoryUs: number
  /** µs restoring fds, mm, signals, registers. */
  stateUs: number
  injectedSyscalls: number
}

/** How a clone ended (restore --wait). */
export interface CloneExit {
  code: number | null
  signal: number | null
}

/** Wait for a built process (it is our child) to end. */
export function waitForClone(pid: number): CloneExit {
  const status = wait4(pid, 0)
  return {code: status?.exited ? status.exitCode ?? 0 : null, signal: status?.signaled ? status.termSignal ?? null : null}
}

/** The exit status a command reports for a clone's end, as a shell does: the code, or 128 + signal. */
export function exitStatusOf(exit: CloneExit): number {
  return exit.signal === null ? exit.code ?? 0 : 128 + exit.signal
}

export interface BuiltProcess {
  pid: number
  timings: BuildTimings
}

const SS_DISABLE = 2

function hex(value: bigint): string {
  return '0x' + value.toString(16)
}

/** A free range of `length` bytes avoiding every range in `taken`, searched from high canonical addresses down. */
function findFreeRange(length: bigint, taken: readonly [bigint, bigint][]): bigint {
  const sorted = [...taken].sort((a, b) => (a[0] < b[0] ? -1 : 1))
  for (let candidate = 0x6f0000000000n; candidate > 0x100000000n; candidate -= 0x10000000000n) {
    const end = candidate + length
    if (!sorted.some(([s, e]) => candidate < e && s < end)) return candidate
  }
  throw new CxlforkError('NO_ADDRESS_SPACE', 'no free address range for the restore scratch area')
}

/** Refuse a checkpoint whose vDSO cannot be placed on this kernel (pitfall 3). */
export function checkKernel(image: ProcessImage, local: VdsoLayout): void {
  const want = image.kernel.vdsoLayout.map((part) => `${part.name}@${part.offset}+${part.size}`).join(',')
  if (want !== local.signature) {
    throw new UnsupportedError('KERNEL_MISMATCH',
      `the checkpoint's vDSO layout (${want}, kernel ${image.kernel.release}) differs from this kernel's (${local.signature}, kernel ${kernelRelease()})`,
      'Restore on a host running the same kernel build as the one that took the checkpoint.')
  }
}

/** Refuse missing or changed files the image maps; files open as fds must only still exist as the same inode. */
export function checkFiles(image: ProcessImage): void {
  const mapped = new Set<number>([image.mm.exeFileIndex])
  for (const vma of image.vmas) if (vma.fileIndex !== undefined) mapped.add(vma.fileIndex)
  image.files.forEach((file, index) => {
    let st
    try {
      st = statSync(file.path, {bigint: true})
    } catch {
      throw new NotFoundError('BACKING_FILE_MISSING', `${file.path}, which the checkpoint ${mapped.has(index) ? 'maps' : 'has open'}, does not exist on this host`,
        'Make the same file available at the same path (same mount) before restoring.')
    }
    const sameInode = deviceName(st.dev) === file.device && st.ino === file.inode
    const changed = !sameInode || (mapped.has(index) && (st.size !== file.size || st.mtimeNs !== file.mtimeNs || (file.ctimeNs !== undefined && st.ctimeNs !== file.ctimeNs)))
    if (changed) {
      throw new UnsupportedError('BACKING_FILE_CHANGED', `${file.path} changed since the checkpoint (${describeChange(file, st)})`,
        'The checkpoint maps this file; restore it only with the exact file it was taken with.')
    }
  })
}

function describeChange(file: FileIdentity, st: {dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint}): string {
  if (deviceName(st.dev) !== file.device || st.ino !== file.inode) return 'another file now has its path'
  if (st.size !== file.size) return `size ${file.size} -> ${st.size}`
  if (st.mtimeNs !== file.mtimeNs) return 'modification time differs'
  return 'inode change time differs: it was rewritten or its metadata changed'
}

/** Runs injected syscalls in the stub with one scratch area for arguments. */
class Injector {
  private used = 0n

  constructor(readonly tracee: Tracee, readonly scratch: bigint, readonly scratchSize: bigint) {}

  call(name: string, nr: number, ...args: (number | bigint)[]): bigint {
    return this.tracee.syscallChecked(name, nr, ...args)
  }

  /** Copy bytes into scratch and return their remote address (bump allocation, reset per phase). */
  put(bytes: Uint8Array): bigint {
    const at = (this.used + 15n) & ~15n
    if (at + BigInt(bytes.length) > this.scratchSize) {
      this.used = 0n
      return this.put(bytes)
    }
    this.used = at + BigInt(bytes.length)
    vmWrite(this.tracee.pid, this.scratch + at, bytes)
    return this.scratch + at
  }

  putString(text: string): bigint {
    return this.put(Buffer.from(text + '\0', 'utf8'))
  }

  open(path: string, flags: number): number {
    return Number(this.call(`open(${path})`, SYS.open, this.putString(path), flags | O.CLOEXEC, 0))
  }
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
function mapMemory(inject: Injector, image: ProcessImage, plan: RestorePlan, store: PageStore): void {
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
  const maps: {nr: number; args: (number | bigint)[]; what: string}[] = []
  const copies: VmSegment[] = []
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
      case 'copy':
        copies.push({local: store.localAddress(op.storeOffset), remote: op.start, len: Number(length)})
        break
    }
  }
  const results = tracee.syscalls(maps, {stopOnError: true})
  const failed = results.findIndex((r) => r < 0n && r > -4096n)
  if (failed >= 0 || results.length < maps.length) {
    const at = failed >= 0 ? failed : results.length
    throw new SyscallError(`${maps[at]!.what} in the new process`, failed >= 0 ? Number(-results[failed]!) : 5)
  }
  if (copies.length > 0) {
    let expected = 0
    for (const segment of copies) expected += segment.len!
    const written = vmWritev(tracee.pid, copies)
    if (written !== expected) throw new SyscallError('process_vm_writev', 14, `copied ${written} of ${expected} bytes into the new process`)
  }
  const finish = [
    ...needsProtectFixup(plan, image).map((vma) => ({nr: SYS.mprotect, args: [vma.start, vma.end - vma.start, vma.prot]})),
    ...[...fds.values()].map((fd) => ({nr: SYS.close, args: [fd]})),
  ]
  const done = tracee.syscalls(finish, {stopOnError: true})
  const bad = done.findIndex((r) => r < 0n && r > -4096n)
  if (bad >= 0 || done.length < finish.length) throw new SyscallError('mprotect/close in the new process', bad >= 0 ? Number(-done[bad]!) : 5)
}

function restoreFds(inject: Injector, image: ProcessImage): void {
  const sorted = [...image.fds].sort((a, b) => a.fd - b.fd)
  for (const fd of sorted) {
    if (fd.kind === 'tty' || fd.kind === 'pipe') continue // fds 0-2 already point where BuildOptions.stdio says
    // Reopen without creating or truncating: the file must be the one the checkpoint saw.
    const flags = fd.flags & ~(O.CREAT | O.TRUNC | 0o200 /* O_EXCL */)
    const path = fd.fileIndex === undefined ? fd.path : image.files[fd.fileIndex]!.path
    const opened = inject.open(path, flags)
    if (opened !== fd.fd) {
      inject.call('dup3', SYS.dup3, opened, fd.fd, fd.cloexec ? O.CLOEXEC : 0)
      inject.call('close', SYS.close, opened)
    } else if (!fd.cloexec) {
      inject.call('fcntl(F_SETFD)', SYS.fcntl, fd.fd, 2 /* F_SETFD */, 0)
    }
    if ((fd.flags & O.APPEND) === 0 && fd.offset > 0n && fd.kind !== 'chardev') inject.call('lseek', SYS.lseek, fd.fd, fd.offset, 0)
  }
}

/** PR_SET_MM_MAP: code/data/brk/stack/arg/env bounds, auxv and the exe link (pitfall 5). */
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
  inject.call('prctl(PR_SET_MM_MAP)', SYS.prctl, PR.SET_MM, PR.SET_MM_MAP, inject.put(map), map.length, 0)
  inject.call('close', SYS.close, exeFd)
}

function restoreSignals(inject: Injector, image: ProcessImage): void {
  for (const action of image.task.sigactions) {
    inject.call(`rt_sigaction(${action.signo})`, SYS.rt_sigaction, action.signo, inject.put(u64s([action.handler, action.flags, action.restorer, action.mask])), 0, 8)
  }
  const thread = image.threads[0]!
  if ((thread.altStack.flags & SS_DISABLE) === 0) {
    const stack = new Uint8Array(24)
    const view = new DataView(stack.buffer)
    view.setBigUint64(0, thread.altStack.sp, true)
    view.setInt32(8, thread.altStack.flags, true)
    view.setBigUint64(16, thread.altStack.size, true)
    inject.call('sigaltstack', SYS.sigaltstack, inject.put(stack), 0)
  }
}

function restoreThreadState(inject: Injector, image: ProcessImage, pid: number): void {
  const thread = image.threads[0]!
  const task = image.task
  if (thread.rseq) inject.call('rseq', SYS.rseq, thread.rseq.address, thread.rseq.length, 0, thread.rseq.signature)
  if (thread.robustList.head !== 0n) inject.call('set_robust_list', SYS.set_robust_list, thread.robustList.head, thread.robustList.length)
  if (thread.clearTidAddress !== 0n) {
    inject.call('set_tid_address', SYS.set_tid_address, thread.clearTidAddress)
    // glibc caches the tid there (pitfall 8): the clone has a new one.
    const tid = new Uint8Array(4)
    new DataView(tid.buffer).setInt32(0, pid, true)
    vmWrite(pid, thread.clearTidAddress, tid)
  }
  inject.call('umask', SYS.umask, task.umask)
  if (task.personality !== 0) inject.call('personality', SYS.personality, task.personality)
  inject.call('prctl(PR_SET_NAME)', SYS.prctl, PR.SET_NAME, inject.putString(task.comm.slice(0, 15)))
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
    inject.call('rt_sigqueueinfo', SYS.rt_sigqueueinfo, pid, signo, inject.put(info))
  }
  for (const info of thread.pendingSignals) {
    const signo = new DataView(info.buffer, info.byteOffset).getInt32(0, true)
    inject.call('rt_tgsigqueueinfo', SYS.rt_tgsigqueueinfo, pid, pid, signo, inject.put(info))
  }
}

function finalRegisters(image: ProcessImage): BigUint64Array {
  const regs = image.threads[0]!.regs
  const named = Object.fromEntries(REG_NAMES.map((name) => [name, regs[name as (typeof USER_REGS_NAMES)[number]]])) as Parameters<typeof regsToArray>[0]
  return restartFixup(regsToArray(named), 'restore')
}

/** Pick a stub load address clear of every VMA of the image. */
function stubBase(image: ProcessImage): bigint {
  const taken = image.vmas.filter((v) => v.kind !== 'vsyscall').map((v): [bigint, bigint] => [v.start, v.end])
  for (const base of [0x2000000000n, 0x3000000000n, 0x0a00000000n, 0x5000000000n]) {
    if (!taken.some(([s, e]) => base < e && s < base + 0x200000n)) return base
  }
  return findFreeRange(0x200000n, taken)
}

/**
 * Build a running process from `image` following `plan`. Returns once the
 * process runs on its own (detached from ptrace); it is our child.
 */
export function buildProcess(image: ProcessImage, plan: RestorePlan, store: PageStore, options: BuildOptions): BuiltProcess {
  if (image.threads.length !== 1) {
    throw new UnsupportedError('MULTI_THREADED', `the checkpoint holds ${image.threads.length} threads; restore supports one`, 'Checkpoint single-threaded processes.')
  }
  const local = vdsoLayout('self')
  checkKernel(image, local)
  checkFiles(image)
  // Before anything is spawned: refuses (CPU_MISMATCH) a state this CPU cannot hold, else lays it out for this CPU.
  const xstate = xstateForHost(image.threads[0]!, 'the checkpoint')
  const t0 = performance.now()
  const std = options.stdio === 'inherit' ? 0 : null
  // The stub is spawned on our CPU and stays there while we drive it (src/sys/affinity.ts).
  const placement = CpuPlacement.pin(currentCpu())
  let stub: Stub | undefined
  try {
    stub = spawnStub({
      stdin: std, stdout: options.stdio === 'inherit' ? 1 : null, stderr: options.stdio === 'inherit' ? 2 : null,
      setsid: options.setsid, base: stubBase(image),
    })
    options.onSpawn?.(stub.pid)
    const tSpawned = performance.now()
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
    mapMemory(inject, image, plan, store)
    const tMapped = performance.now()
    restoreFds(inject, image)
    restoreMm(inject, image)
    restoreSignals(inject, image)
    restoreThreadState(inject, image, stub.pid)
    inject.call('munmap(scratch)', SYS.munmap, scratch, scratchSize)
    tracee.freeBatch()
    const thread = image.threads[0]!
    tracee.setXState(xstate)
    tracee.setRegs(finalRegisters(image))
    tracee.setSigMask(thread.sigmask)
    const injectedSyscalls = tracee.injectedCount
    placement?.releaseSpawned(stub.pid)
    tracee.detach()
    const tDone = performance.now()
    return {
      pid: stub.pid,
      timings: {
        spawnUs: Math.round((tSpawned - t0) * 1000), memoryUs: Math.round((tMapped - tSpawned) * 1000),
        stateUs: Math.round((tDone - tMapped) * 1000), injectedSyscalls,
      },
    }
  } catch (error) {
    stub?.kill()
    throw error
  } finally {
    placement?.release()
  }
}


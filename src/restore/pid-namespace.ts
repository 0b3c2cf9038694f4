/**
 * A clone in a PID namespace of its own, where it keeps the pid and the
 * thread ids of the process it was checkpointed from.
 *
 * Why: a process keeps thread ids in memory that outlives a checkpoint.
 * glibc stores each thread's tid in its thread descriptor, in the owner word
 * of every locked recursive, error-checking, robust and priority-inheritance
 * mutex (the kernel itself reads the PI and robust ones), in the robust list,
 * and programs keep tids for pthread_kill/tgkill. Rewriting all of those is
 * impossible to do completely (any word of memory may hold a tid), so instead
 * every id is kept: the clone's root is created with clone3(set_tid = its
 * original pid) and each thread with set_tid = its original tid, inside a
 * fresh namespace where they are all free, whatever runs on the host.
 *
 * Shape: cxlfork spawns a stub that is pid 1 of the new namespace (the
 * "init"), injects clone3 into it to create the root stub with the original
 * pid, and builds the process in that root. Once the clone runs, the init
 * switches to its init routine (stub.ts): it reaps orphans and, when the root
 * ends, reports the root's wait status on fd 3 (for restore --wait) and exits
 * with the root's status, which ends the namespace. Both stubs are traced
 * with PTRACE_O_EXITKILL until released, so a failed or killed restore leaves
 * neither behind.
 */
import {CxlforkError, SyscallError, UnsupportedError} from '../errors.js'
import {type Stub, type StubOptions, spawnStub} from '../inject/stub.js'
import {type Tracee} from '../inject/tracee.js'
import {SIG, SYS} from '../sys/syscall.js'
import {inNewPidNamespace} from '../sys/pid-namespace.js'
import {readMaps, vdsoLayout} from '../sys/proc.js'

/** struct clone_args (clone3) with set_tid: 11 u64, then the pid array. */
const CLONE_ARGS_SIZE = 88

export interface NamespacedStubs {
  /** pid 1 of the clone's namespace. */
  init: Stub
  /** The stub the process is built into; its pid in the namespace is `nsPid`. */
  root: Stub
  nsPid: number
}

/** clone_args for clone3 with set_tid = [id]: `flags`, `exitSignal`, the set_tid array right after the struct. */
export function cloneArgs(at: bigint, flags: number, exitSignal: number, id: number): Uint8Array {
  const bytes = new Uint8Array(CLONE_ARGS_SIZE + 8)
  const view = new DataView(bytes.buffer)
  view.setBigUint64(0, BigInt(flags), true)
  view.setBigUint64(32, BigInt(exitSignal), true)
  view.setBigUint64(64, at + BigInt(CLONE_ARGS_SIZE), true) // set_tid
  view.setBigUint64(72, 1n, true) // set_tid_size: the innermost namespace only
  view.setInt32(CLONE_ARGS_SIZE, id, true)
  return bytes
}

/**
 * Inject clone3 with set_tid = [id] into `parent`; returns the new task,
 * stopped and traced. `parent` must be stopped; its stack serves as scratch
 * (below the red zone, which a stub parked in nanosleep() does not use).
 */
export function createWithId(parent: Tracee, flags: number, exitSignal: number, id: number, at?: bigint): Tracee {
  const slot = at ?? parent.stackSlot(CLONE_ARGS_SIZE + 8)
  parent.writeMemory(slot, cloneArgs(slot, flags, exitSignal, id))
  try {
    return parent.injectCreate(`clone3(set_tid=${id})`, SYS.clone3, slot, CLONE_ARGS_SIZE).tracee
  } catch (error) {
    if (error instanceof SyscallError && error.errno === 17) {
      throw new CxlforkError('ID_TAKEN', `id ${id} is already in use in the clone's PID namespace`, 'The checkpoint holds the same id twice; take a new one.')
    }
    throw error
  }
}

/** Spawn the init and the root stub with pid `nsPid` in a new PID namespace. */
export function spawnNamespacedStubs(nsPid: number, options: StubOptions): NamespacedStubs {
  if (!Number.isInteger(nsPid) || nsPid <= 1) {
    throw new UnsupportedError('PID_UNSUPPORTED', `the checkpointed process had pid ${nsPid}, which cannot be kept in a new namespace beside its init`,
      'Restore with --pidns host.')
  }
  return namespacedStubsFrom(spawnNamespaceInit(options), nsPid)
}

/** The init alone: a stub that is pid 1 of a new PID namespace (a porter keeps some ready, as ghosts). */
export function spawnNamespaceInit(options: StubOptions): Stub {
  return inNewPidNamespace(() => spawnStub(options))
}

/** Create the root stub with pid `nsPid` from `init` (killed with it on failure). */
export function namespacedStubsFrom(init: Stub, nsPid: number): NamespacedStubs {
  if (!Number.isInteger(nsPid) || nsPid <= 1) {
    init.kill()
    throw new UnsupportedError('PID_UNSUPPORTED', `the checkpointed process had pid ${nsPid}, which cannot be kept in a new namespace beside its init`,
      'Restore with --pidns host.')
  }
  try {
    const tracee = createWithId(init.tracee, 0, SIG.CHLD, nsPid)
    try {
      tracee.knowTrapIgnored(false) // a copy of the init: every disposition default
      // The init's fds (and its status pipe, fd 3) are not the clone's.
      tracee.syscallChecked('close_range', SYS.close_range, 3, 0xffffffff, 0)
      const maps = readMaps(tracee.pid)
      const root: Stub = {
        pid: tracee.pid, tracee, maps, image: init.image, vdso: vdsoLayout(maps), initEntry: init.initEntry,
        kill: () => tracee.kill(),
      }
      return {init, root, nsPid}
    } catch (error) {
      tracee.kill()
      throw error
    }
  } catch (error) {
    init.kill()
    throw error
  }
}

/**
 * Let the init run its init routine, waiting for the root (`nsPid`). The
 * init is stopped in nanosleep(): its registers are set so that it leaves the
 * syscall and jumps there, with no restart.
 */
export function releaseInit(init: Stub, nsPid: number, dieWithParent = false): void {
  // The stub asked for SIGKILL at its spawner's death (stubCode); the clone's init must outlive us, unless the clone must die with us.
  if (!dieWithParent) init.tracee.syscallChecked('prctl(PR_SET_PDEATHSIG, 0)', SYS.prctl, 1, 0)
  const regs = init.tracee.getRegs()
  regs.rip = init.initEntry
  regs.r12 = BigInt(nsPid)
  regs.orig_rax = 0xffffffffffffffffn
  regs.rax = 0n
  init.tracee.setRegs(regs)
  init.tracee.detach()
}

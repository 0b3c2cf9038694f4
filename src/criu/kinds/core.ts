/**
 * core-TID.img: one core_entry per thread (registers, FPU/XSAVE state, signal mask and
 * queue, robust list, rseq, the thread's name); the leader's also holds the task core
 * (tc: signal actions, rlimits, shared pending signals, timers). creds-PID.img, where old
 * CRIUs kept the credentials, is read here too.
 */
import {UnsupportedError} from '../../errors.js'
import {
  type CredentialsImage, type IntervalTimerImage, type PosixTimerImage, type ProcessImage, type Rlimit, type SigAction, type ThreadImage, type TimersImage,
  USER_REGS_NAMES, type UserRegs, cpuClockOwner, intervalTimerFirstExpiry,
} from '../../image/process-image.js'
import {restoredCallResumes} from '../../inject/regs.js'
import {RLIM_INFINITY, SIG} from '../../sys/syscall.js'
import {CRIU_REG_NAMES, MARCH_X86_64, REGS_MODE_NATIVE, RLIM_NLIMITS, SIGMAX, SS_DISABLE, TASK_ALIVE, TASK_DEAD} from '../constants.js'
import {encodeMessage, readImage} from '../image-file.js'
import {big, has, str64, u64} from '../values.js'
import {fpregsToXstate, xstateToFpregs} from '../xsave.js'
import {type ImagePath, type Msg, type Obj, type PutImage, corrupt, only, optionalImage} from './common.js'

// ---- writing ----

function siginfos(list: readonly Uint8Array[]): Obj {
  return {signals: list.map((siginfo) => ({siginfo}))}
}

const EINTR = 4n

/**
 * The registers CRIU's dump stores for a thread stopped inside a system call (compel's
 * get_task_regs, x86): set up as a restored process resumes the call (restoredCallResumes:
 * run again, or EINTR where its restart block does not survive). CRIU's restore resumes a
 * thread with these registers as they are: left raw, the process would see -ERESTART*
 * (e.g. errno 514 from a sleep).
 */
export function criuRestartRegs(regs: UserRegs): UserRegs {
  if (BigInt.asIntN(64, regs.orig_rax) < 0n) return regs
  const resumes = restoredCallResumes(BigInt.asIntN(64, regs.orig_rax), BigInt.asIntN(64, regs.rax))
  if (resumes === 'again') return {...regs, rax: regs.orig_rax, rip: u64(regs.rip - 2n)}
  if (resumes === 'eintr') return {...regs, rax: u64(-EINTR)}
  return regs
}

function coreFor(image: ProcessImage, thread: ThreadImage, leader: boolean): Obj {
  const gpregs: Obj = {mode: REGS_MODE_NATIVE}
  const regs = criuRestartRegs(thread.regs)
  for (const name of USER_REGS_NAMES) gpregs[CRIU_REG_NAMES[name]] = str64(u64(regs[name]))
  const threadCore: Obj = {
    futex_rla: str64(u64(thread.robustList.head)),
    futex_rla_len: Number(thread.robustList.length),
    blk_sigset: str64(u64(thread.sigmask)),
    sas: {ss_sp: str64(u64(thread.altStack.sp)), ss_size: str64(u64(thread.altStack.size)), ss_flags: thread.altStack.flags >>> 0},
    signals_p: siginfos(thread.pendingSignals),
    creds: credsFor(image),
  }
  // CRIU names each thread in thread_core.comm; the leader's is the task's.
  const comm = leader ? image.task.comm : thread.comm
  if (comm !== undefined) threadCore['comm'] = comm
  // A tree member's parent-death signal (the model records none for the root); CRIU keeps it per thread, the leader's is the task's.
  if (leader && image.task.pdeathSignal !== undefined) threadCore['pdeath_sig'] = image.task.pdeathSignal >>> 0
  if (thread.rseq) {
    threadCore['rseq_entry'] = {rseq_abi_pointer: str64(u64(thread.rseq.address)), rseq_abi_size: thread.rseq.length, signature: thread.rseq.signature >>> 0}
  }
  const core: Obj = {
    mtype: MARCH_X86_64,
    thread_info: {
      clear_tid_addr: str64(u64(thread.clearTidAddress)), gpregs, fpregs: xstateToFpregs(thread.xstate, thread.xsaveLayout), tls: [],
      ...(regs === thread.regs ? {} : {cxlfork: {ax: str64(u64(thread.regs.rax)), ip: str64(u64(thread.regs.rip))}}),
    },
    thread_core: threadCore,
  }
  if (leader) core['tc'] = taskCore(image, thread)
  return core
}

/** A capability set as CRIU keeps it: two 32-bit words, low first. */
const capWords = (set: bigint): number[] => [Number(set & 0xffff_ffffn), Number((set >> 32n) & 0xffff_ffffn)]
const capSet = (words: readonly number[] | undefined): bigint => ((words ?? []) as number[]).reduce((set, word, i) => set | (BigInt(word >>> 0) << BigInt(32 * i)), 0n)

/**
 * creds_entry of every thread (threads share them: the capture refuses threads that differ).
 * A model without credentials (checkpoints from before they were carried) gives CRIU the
 * uid and gid it has, as real, effective, saved and fs ids.
 */
function credsFor(image: ProcessImage): Obj {
  const creds = image.task.credentials
  if (!creds) {
    const {uid, gid} = image.task
    return {uid, gid, euid: uid, egid: gid, suid: uid, sgid: gid, fsuid: uid, fsgid: gid, cap_inh: [], cap_prm: [], cap_eff: [], cap_bnd: [], secbits: 0, groups: []}
  }
  const [uid, euid, suid, fsuid] = creds.uids
  const [gid, egid, sgid, fsgid] = creds.gids
  return {
    uid, gid, euid, egid, suid, sgid, fsuid, fsgid,
    cap_inh: capWords(creds.capInheritable), cap_prm: capWords(creds.capPermitted), cap_eff: capWords(creds.capEffective), cap_bnd: capWords(creds.capBounding),
    secbits: creds.securebits >>> 0, groups: creds.groups.map((group) => group >>> 0), no_new_privs: creds.noNewPrivs ? 1 : 0, cap_amb: capWords(creds.capAmbient),
  }
}

/**
 * The model's credentials from a set's creds (CRIU 4.x keeps them in each thread's core;
 * old CRIUs in creds-PID.img) and mm_entry.dumpable; undefined for cxlfork's sets of
 * checkpoints that carried none (the clone then keeps the restorer's, as in the pool).
 */
export function credentialsFrom(creds: Msg | undefined, dumpable: number | undefined, carried: boolean): CredentialsImage | undefined {
  if (!creds || !carried) return undefined
  return {
    uids: [creds['uid'], creds['euid'], creds['suid'], creds['fsuid']], gids: [creds['gid'], creds['egid'], creds['sgid'], creds['fsgid']],
    groups: [...(creds['groups'] ?? [])] as number[],
    capInheritable: capSet(creds['cap_inh']), capPermitted: capSet(creds['cap_prm']), capEffective: capSet(creds['cap_eff']), capBounding: capSet(creds['cap_bnd']),
    capAmbient: capSet(creds['cap_amb']), noNewPrivs: (creds['no_new_privs'] ?? 0) !== 0, securebits: creds['secbits'] as number, dumpable: dumpable ?? 1,
  }
}

const SIGEV_THREAD_ID = 4
const DISARMED: IntervalTimerImage = {value: [0, 0], interval: [0, 0]}

/** itimer_entry: interval (i*) and time left (v*), in seconds and microseconds; a timer whose signal is pending is due in one interval. */
function itimerEntry(timer: IntervalTimerImage = DISARMED): Obj {
  const [vsec, vusec] = intervalTimerFirstExpiry(timer)
  return {isec: str64(BigInt(timer.interval[0])), iusec: str64(BigInt(timer.interval[1])), vsec: str64(BigInt(vsec)), vusec: str64(BigInt(vusec))}
}

/** posix_timer_entry: as itimer_entry with nanoseconds, plus the id, clock and signal the timer was created with. */
function posixTimerEntry(timer: PosixTimerImage): Obj {
  return {
    it_id: timer.id >>> 0, clock_id: timer.clockid >>> 0, si_signo: timer.signo >>> 0, it_sigev_notify: timer.notify >>> 0, sival_ptr: str64(BigInt.asUintN(64, timer.sigval)), overrun: 0,
    isec: str64(BigInt(timer.interval[0])), insec: str64(BigInt(timer.interval[1])), vsec: str64(BigInt(timer.value[0])), vnsec: str64(BigInt(timer.value[1])),
    ...(timer.tid === undefined ? {} : {notify_thread_id: timer.tid}),
  }
}

/** The model's timers from task_timers_entry: armed interval timers, and every POSIX timer; undefined when neither. */
export function timersFrom(timers: Msg | undefined): TimersImage | undefined {
  if (!timers) return undefined
  const pair = (entry: Msg, seconds: string, fraction: string): [number, number] => [Number(big(entry[seconds])), Number(big(entry[fraction]))]
  const out: TimersImage = {posix: []}
  for (const [which, field] of [['real', 'real'], ['virtual', 'virt'], ['prof', 'prof']] as const) {
    const entry = timers[field] as Msg | undefined
    if (!entry) continue
    const timer: IntervalTimerImage = {interval: pair(entry, 'isec', 'iusec'), value: pair(entry, 'vsec', 'vusec')}
    if (timer.value[0] !== 0 || timer.value[1] !== 0 || timer.interval[0] !== 0 || timer.interval[1] !== 0) out[which] = timer
  }
  for (const entry of (timers['posix'] ?? []) as Msg[]) {
    const notify = entry['it_sigev_notify'] as number
    out.posix.push({
      id: entry['it_id'] as number, clockid: (entry['clock_id'] as number) | 0, notify, signo: entry['si_signo'] as number, sigval: u64(big(entry['sival_ptr'])),
      ...(has(entry, 'notify_thread_id') && (notify & SIGEV_THREAD_ID) !== 0 ? {tid: entry['notify_thread_id'] as number} : {}),
      ...((cpuClockOwner((entry['clock_id'] as number) | 0) ?? 0) !== 0 ? {clockOf: cpuClockOwner((entry['clock_id'] as number) | 0)!} : {}),
      interval: pair(entry, 'isec', 'insec'), value: pair(entry, 'vsec', 'vnsec'),
    })
  }
  out.posix.sort((a, b) => a.id - b.id)
  return out.real || out.virtual || out.prof || out.posix.length > 0 ? out : undefined
}

function taskCore(image: ProcessImage, leader: ThreadImage): Obj {
  const {task} = image
  // sigactions: 62 positional slots; signals without a slot travel in the extension.
  const slots: Obj[] = []
  const bySigno = new Map<number, SigAction>()
  for (const action of task.sigactions) bySigno.set(action.signo, action)
  const extra: Obj[] = []
  for (const action of task.sigactions) {
    if (action.signo < 1 || action.signo > SIGMAX || action.signo === SIG.KILL || action.signo === SIG.STOP) {
      extra.push({signo: action.signo >>> 0, handler: str64(u64(action.handler)), flags: str64(u64(action.flags)), restorer: str64(u64(action.restorer)), mask: str64(u64(action.mask))})
    }
  }
  for (let signo = 1; signo <= SIGMAX; signo++) {
    if (signo === SIG.KILL || signo === SIG.STOP) continue
    const action = bySigno.get(signo)
    slots.push(action
      ? {sigaction: str64(u64(action.handler)), flags: str64(u64(action.flags)), restorer: str64(u64(action.restorer)), mask: str64(u64(action.mask)), compat_sigaction: false}
      : {sigaction: str64(0n), flags: str64(0n), restorer: str64(0n), mask: str64(0n), compat_sigaction: false})
  }
  // rlimits: positional by RLIMIT_* number; gaps are unlimited.
  let count = RLIM_NLIMITS
  for (const limit of task.rlimits) count = Math.max(count, limit.resource + 1)
  const limits: Obj[] = Array.from({length: count}, () => ({cur: str64(RLIM_INFINITY), max: str64(RLIM_INFINITY)}))
  for (const limit of task.rlimits) limits[limit.resource] = {cur: str64(u64(limit.cur)), max: str64(u64(limit.max))}
  return {
    task_state: TASK_ALIVE,
    exit_code: 0,
    personality: task.personality >>> 0,
    flags: 0,
    blk_sigset: str64(u64(leader.sigmask)),
    comm: task.comm,
    // Always present: CRIU 4.x reads a core without tc.timers as pre-1.x images and looks for the
    // separate itimers/posix-timers images, which it refuses as deprecated ("Deprecated functionality
    // (Posix timers) rejected").
    timers: {real: itimerEntry(task.timers?.real), virt: itimerEntry(task.timers?.virtual), prof: itimerEntry(task.timers?.prof), posix: (task.timers?.posix ?? []).map(posixTimerEntry)},
    rlimits: {rlimits: limits},
    signals_s: siginfos(task.sharedPendingSignals),
    sigactions: slots,
    cxlfork: {
      cmdline: task.cmdline.map((arg) => Buffer.from(arg, 'utf8')),
      sigaction_signos: task.sigactions.map((action) => action.signo >>> 0),
      extra_sigactions: extra,
      rlimit_resources: task.rlimits.map((limit) => limit.resource >>> 0),
      listed: true,
      ppid: task.ppid >>> 0,
      credentials: task.credentials !== undefined,
    },
  }
}

/** core-PID.img of a zombie, as CRIU writes one: a task core only, TASK_DEAD, its raw wait status in exit_code. */
export function writeZombieCore(put: PutImage, zombie: {pid: number; zombieStatus: number; comm?: string}): void {
  const name = `core-${zombie.pid}.img`
  put(name, 'core', [encodeMessage('core_entry', {mtype: MARCH_X86_64, tc: {
    task_state: TASK_DEAD, exit_code: zombie.zombieStatus >>> 0, personality: 0, flags: 0, blk_sigset: str64(0n), comm: zombie.comm ?? '',
  }}, name)])
}

/**
 * A zombie member's core (task state TASK_DEAD): its wait status and name, or undefined
 * for a live task. A zombie killed by a signal other than SIGKILL cannot be recreated (the
 * restore makes it exit, or SIGKILLs it): refused by name.
 */
export function readZombie(at: ImagePath, pid: number): {zombieStatus: number; comm: string} | undefined {
  const core = only(readImage<Msg>(at(`core-${pid}.img`), 'core'), `core-${pid}.img`)
  if (!has(core, 'tc') || core['tc']['task_state'] !== TASK_DEAD) return undefined
  const status = (core['tc']['exit_code'] as number) >>> 0
  const signal = status & 0x7f
  if (signal !== 0 && signal !== SIG.KILL) {
    throw new UnsupportedError('CRIU_TASK_STATE', `core-${pid}.img: the task is a zombie killed by signal ${signal}; only zombies that exited or were SIGKILLed are recreated`,
      'Let its parent reap it, then dump again.')
  }
  return {zombieStatus: status, comm: core['tc']['comm'] as string}
}

export function writeCores(put: PutImage, image: ProcessImage): void {
  image.threads.forEach((thread, i) => {
    const name = `core-${thread.tid}.img`
    put(name, 'core', [encodeMessage('core_entry', coreFor(image, thread, i === 0), name)])
  })
}

// ---- reading ----

const TASK_STATE_NAMES: Record<number, string> = {2: 'dead', 3: 'stopped', 4: 'helper', 5: 'thread', 6: 'zombie'}
const SECCOMP_MODE_NAMES: Record<number, string> = {1: 'strict', 2: 'filter'}

/**
 * Task state CRIU records and the model has no place for: refuse it by name rather than
 * restore a process silently without it (a stopped task, POSIX timers on a clock that
 * names another process, seccomp).
 */
function checkTaskState(tc: Msg, cores: {tid: number; core: Msg}[], pid: number): void {
  const state = tc['task_state'] as number
  if (state !== TASK_ALIVE) {
    throw new UnsupportedError('CRIU_TASK_STATE', `core-${pid}.img: the task was ${TASK_STATE_NAMES[state] ?? `in state ${state}`} when dumped; only running (alive) tasks are restored`,
      'Dump the process while it is running.')
  }
  for (const timer of (has(tc, 'timers') ? (tc['timers']['posix'] ?? []) : []) as Msg[]) {
    const clock = (timer['clock_id'] as number) | 0
    const owner = cpuClockOwner(clock)
    // A CPU-time clock of the task or one of its threads is carried; one of another process, or an fd's clock, is not.
    if (clock < 0 && (owner === undefined || (owner !== 0 && owner !== pid && !cores.some((core) => core.tid === owner)))) {
      throw new UnsupportedError('CRIU_TIMERS', `core-${pid}.img: POSIX timer ${timer['it_id']} runs on clock ${clock}, a clock that names another process or an fd, which the CRIU-format path does not restore`,
        'Dump a process whose timers use the standard clocks or its own CPU-time clocks.')
    }
  }
  const seccompModes = [has(tc, 'old_seccomp_mode') ? tc['old_seccomp_mode'] as number : 0]
  for (const {core} of cores) if (has(core, 'thread_core') && has(core['thread_core'], 'seccomp_mode')) seccompModes.push(core['thread_core']['seccomp_mode'] as number)
  const seccomp = seccompModes.find((mode) => mode !== 0)
  if (seccomp !== undefined) {
    throw new UnsupportedError('CRIU_SECCOMP', `core-${pid}.img: the task runs under seccomp (${SECCOMP_MODE_NAMES[seccomp] ?? `mode ${seccomp}`}), which the CRIU-format path does not restore`,
      'Dump a process without seccomp filters.')
  }
}

export interface Cores {
  /** Every thread's core_entry, the leader's first. */
  cores: {tid: number; core: Msg}[]
  /** The leader's task core. */
  tc: Msg
  /** cxlfork's extension of the task core (its sets only). */
  taskExt: Msg | undefined
}

/** Every thread's core image: x86_64 only, with the leader's task core, its task state checked. */
export function readCores(at: ImagePath, pid: number, tids: readonly number[]): Cores {
  const cores = tids.map((tid) => ({tid, core: only(readImage<Msg>(at(`core-${tid}.img`), 'core'), `core-${tid}.img`)}))
  for (const {tid, core} of cores) {
    if (core['mtype'] !== MARCH_X86_64 || !has(core, 'thread_info')) {
      throw new UnsupportedError('CRIU_ARCH', `core-${tid}.img is for architecture ${core['mtype']}, not x86_64`, 'Restore on the architecture the image was dumped on.')
    }
  }
  const leaderCore = cores[0]!.core
  if (!has(leaderCore, 'tc')) throw corrupt(`core-${pid}.img lacks the task core (tc)`)
  const tc = leaderCore['tc'] as Msg
  const taskExt = has(tc, 'cxlfork') ? tc['cxlfork'] as Msg : undefined
  checkTaskState(tc, cores, pid)
  return {cores, tc, taskExt}
}

/** The threads of the model, from the cores; `ours`: cxlfork wrote the set (its extensions are exact). */
export function readThreads({cores, tc}: Cores, pid: number, ours: boolean): ThreadImage[] {
  return cores.map(({tid, core}) => {
    const info = core['thread_info'] as Msg
    const gp = info['gpregs'] as Msg
    if (has(gp, 'mode') && gp['mode'] !== REGS_MODE_NATIVE) {
      throw new UnsupportedError('CRIU_COMPAT_TASK', `core-${tid}.img holds 32-bit (compat) registers`, 'Only native x86_64 tasks are supported.')
    }
    const regs = Object.fromEntries(USER_REGS_NAMES.map((name) => [name, u64(big(gp[CRIU_REG_NAMES[name]]))])) as UserRegs
    // cxlfork's own sets keep the captured rax/rip beside CRIU's restart fix-up; restore applies its own.
    if (has(info, 'cxlfork')) Object.assign(regs, {rax: u64(big(info['cxlfork']['ax'])), rip: u64(big(info['cxlfork']['ip']))})
    const threadCore = has(core, 'thread_core') ? core['thread_core'] as Msg : undefined
    const sigmask = threadCore && has(threadCore, 'blk_sigset') ? u64(big(threadCore['blk_sigset'])) : u64(big(tc['blk_sigset']))
    const fp = fpregsToXstate(info['fpregs'] as Msg, `core-${tid}.img`)
    const thread: ThreadImage = {
      tid,
      regs,
      xstate: fp.xstate,
      ...(fp.layout ? {xsaveLayout: fp.layout} : {}),
      sigmask,
      pendingSignals: threadCore && has(threadCore, 'signals_p') ? (threadCore['signals_p']['signals'] as Msg[]).map((s) => new Uint8Array(s['siginfo'])) : [],
      robustList: {head: threadCore ? u64(big(threadCore['futex_rla'])) : 0n, length: threadCore ? BigInt(threadCore['futex_rla_len']) : 0n},
      clearTidAddress: u64(big(info['clear_tid_addr'])),
      altStack: threadCore && has(threadCore, 'sas')
        ? {sp: u64(big(threadCore['sas']['ss_sp'])), flags: threadCore['sas']['ss_flags'], size: u64(big(threadCore['sas']['ss_size']))}
        : {sp: 0n, flags: SS_DISABLE, size: 0n},
    }
    // The leader's name is the task's (tc.comm); other threads have their own.
    if (tid !== pid && threadCore && has(threadCore, 'comm') && typeof threadCore['comm'] === 'string') thread.comm = threadCore['comm']
    if (threadCore && has(threadCore, 'rseq_entry')) {
      const rseq = threadCore['rseq_entry'] as Msg
      const address = u64(big(rseq['rseq_abi_pointer']))
      if (ours || address !== 0n) thread.rseq = {address, length: rseq['rseq_abi_size'], signature: rseq['signature']}
    }
    return thread
  })
}

/** Signal actions and rlimits of the task, from its task core. */
export function readTaskLimits({tc, taskExt}: Cores, pid: number): {sigactions: SigAction[]; rlimits: Rlimit[]} {
  const slots = (tc['sigactions'] ?? []) as Msg[]
  const slotSignos: number[] = []
  for (let signo = 1; signo <= SIGMAX; signo++) if (signo !== SIG.KILL && signo !== SIG.STOP) slotSignos.push(signo)
  if (slots.length !== 0 && slots.length !== slotSignos.length) throw corrupt(`core-${pid}.img holds ${slots.length} sigactions, expected ${slotSignos.length}`)
  const bySigno = new Map<number, SigAction>()
  slots.forEach((slot, i) => {
    if (slot['compat_sigaction']) throw new UnsupportedError('CRIU_COMPAT_TASK', `core-${pid}.img holds a 32-bit (compat) sigaction for signal ${slotSignos[i]}`, 'Only native x86_64 tasks are supported.')
    bySigno.set(slotSignos[i]!, {signo: slotSignos[i]!, handler: u64(big(slot['sigaction'])), flags: u64(big(slot['flags'])), restorer: u64(big(slot['restorer'])), mask: u64(big(slot['mask']))})
  })
  let sigactions: SigAction[]
  if (taskExt && taskExt['listed']) {
    for (const extra of (taskExt['extra_sigactions'] ?? []) as Msg[]) {
      bySigno.set(extra['signo'], {signo: extra['signo'], handler: u64(big(extra['handler'])), flags: u64(big(extra['flags'])), restorer: u64(big(extra['restorer'])), mask: u64(big(extra['mask']))})
    }
    sigactions = ((taskExt['sigaction_signos'] ?? []) as number[]).map((signo) => {
      const action = bySigno.get(signo)
      if (!action) throw corrupt(`core-${pid}.img lists sigaction for signal ${signo} but holds none`)
      return action
    })
  } else {
    sigactions = [...bySigno.values()].filter((a) => a.handler !== 0n || a.flags !== 0n || a.restorer !== 0n || a.mask !== 0n)
  }
  const limitList = (has(tc, 'rlimits') ? tc['rlimits']['rlimits'] ?? [] : []) as Msg[]
  const limitOf = (resource: number): Rlimit => {
    const limit = limitList[resource]
    if (!limit) throw corrupt(`core-${pid}.img lists rlimit ${resource} but holds only ${limitList.length}`)
    return {resource, cur: u64(big(limit['cur'])), max: u64(big(limit['max']))}
  }
  const rlimits = taskExt && taskExt['listed'] ? ((taskExt['rlimit_resources'] ?? []) as number[]).map(limitOf) : limitList.map((_, i) => limitOf(i))
  return {sigactions, rlimits}
}

/** The task's credentials: in the leader's thread core, or creds-PID.img from old CRIUs; undefined if neither. */
export function readCreds(at: ImagePath, {cores}: Cores, pid: number): Msg | undefined {
  const leaderCore = cores[0]!.core
  const leaderThreadCore = has(leaderCore, 'thread_core') ? leaderCore['thread_core'] as Msg : undefined
  let creds: Msg | undefined = leaderThreadCore && has(leaderThreadCore, 'creds') ? leaderThreadCore['creds'] as Msg : undefined
  if (!creds) creds = optionalImage(at(`creds-${pid}.img`), () => only(readImage<Msg>(at(`creds-${pid}.img`), 'creds'), `creds-${pid}.img`))
  return creds
}

/** A tree member's parent-death signal from its leader's core: cxlfork's sets have it exactly as recorded; CRIU's give 0 for none. */
export function readPdeathSignal({cores}: Cores, ours: boolean, root: boolean): number | undefined {
  const threadCore = cores[0]!.core['thread_core'] as Msg | null
  if (root || !threadCore || !has(threadCore, 'pdeath_sig')) return undefined
  const signal = threadCore['pdeath_sig'] as number
  return ours || signal !== 0 ? signal : undefined
}

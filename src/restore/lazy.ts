/**
 * The restoring side of `moa`: start the fault server (tiering/fault-server),
 * create a userfaultfd inside each clone member, register the member's lazy
 * ranges with it, and hand it to the server, which takes it out with
 * pidfd_getfd; the member's own copy is closed. The server serves from the
 * moment a member is handed over, so memory the restore itself makes the
 * kernel touch later (rseq areas, thread ids written at clone) is filled
 * like any other first touch.
 */
import {statSync} from 'node:fs'
import {join} from 'node:path'
import {CxlforkError, PermissionError} from '../errors.js'
import {projectRoot} from '../paths.js'
import {close, open, pipe2, read, writeAll} from '../sys/file-io.js'
import {wait4} from '../sys/ptrace.js'
import {posixSpawn} from '../sys/spawn.js'
import {O, SIG, SYS, WNOHANG, check, killQuiet, pidfdOpen, syscallRaw} from '../sys/syscall.js'
import {UFFD_FEATURE, UFFDIO, UFFDIO_REGISTER_MODE_MISSING, UFFDIO_REGISTER_MODE_WP, encodeUffdioApi, encodeUffdioRegister, pollFds} from '../sys/userfaultfd.js'
import type {Injector} from './injector.js'
import type {RestorePlan} from './plan.js'

/** restore --record: a clone process whose accesses the server records at its exit, as member `member` of checkpoint `name` (0: the root). */
export interface RecordedClone {
  pid: number
  name: string
  pool: string
  member: number
}

/** Events the server must see to keep page sources right (fault-server.ts). */
const FEATURES = UFFD_FEATURE.EVENT_FORK | UFFD_FEATURE.EVENT_REMAP | UFFD_FEATURE.EVENT_REMOVE | UFFD_FEATURE.EVENT_UNMAP
const REPLY_TIMEOUT_MS = 15_000

export interface LazyOptions {
  /** Background-fill the remaining pages once faults have been quiet this long; null: never (pure migrate-on-access). */
  fillAfterMs: number | null
  /** Pages copied per fault (an aligned block around the faulting page); default 1 (the server's). */
  faultPages?: number
}

function takeFd(pid: number, fd: number): number {
  const pidfd = pidfdOpen(pid)
  try {
    return Number(check('pidfd_getfd', syscallRaw(SYS.pidfd_getfd, pidfd, fd, 0)))
  } finally {
    close(pidfd)
  }
}

export class FaultServerClient {
  private buffered = ''
  private stopped = false
  /** Our own copies of the handed-over userfaultfds, kept until the server holds the clone's init (see arm). */
  private readonly held: number[] = []

  private constructor(readonly pid: number, private readonly control: number, private readonly replies: number) {}

  /** Spawn the server and have it map the pool at `poolPath` (checked by device and inode against `poolFd`'s file). */
  static start(poolPath: string, options: {record?: boolean; faultPages?: number} = {}): FaultServerClient {
    const faultPages = options.faultPages ?? (process.env.CXLFORK_FAULT_PAGES ? Number(process.env.CXLFORK_FAULT_PAGES) : undefined)
    const requests = pipe2()
    const replies = pipe2()
    let pid: number
    const devNull = open('/dev/null', O.RDWR)
    try {
      pid = posixSpawn({
        path: process.execPath, argv: ['cxlfork-fault-server', join(projectRoot(), 'dist', 'src', 'tiering', 'fault-server-main.js'), ...(options.record ? ['record'] : [])],
        env: {PATH: process.env.PATH ?? '/usr/bin:/bin', ...(process.env.CXLFORK_FAULT_LOG ? {CXLFORK_FAULT_LOG: process.env.CXLFORK_FAULT_LOG} : {}),
          ...(faultPages === undefined ? {} : {CXLFORK_FAULT_PAGES: String(faultPages)})}, fds: [requests[0], replies[1], devNull], setsid: true,
      })
    } finally {
      close(devNull)
      close(requests[0])
      close(replies[1])
    }
    const client = new FaultServerClient(pid, requests[1], replies[0])
    try {
      const st = statSync(poolPath, {bigint: true})
      // Not waited for: the server's start-up overlaps the stubs' (its reply is collected with the first member's).
      client.send({op: 'pool', path: poolPath, dev: String(st.dev), ino: String(st.ino)})
    } catch (error) {
      client.stop()
      throw error
    }
    return client
  }

  /** Replies still owed by the server, oldest first (a request is sent before its reply is needed). */
  private pending: string[] = []

  private send(body: Record<string, unknown>): void {
    writeAll(this.control, Buffer.from(JSON.stringify(body) + '\n'))
    this.pending.push(String(body.op))
  }

  /** Wait for every reply owed; the first refusal throws. */
  private settle(): void {
    const chunk = Buffer.alloc(4096)
    while (this.pending.length > 0) {
      const op = this.pending[0]!
      const deadline = Date.now() + REPLY_TIMEOUT_MS
      while (!this.buffered.includes('\n')) {
        const left = deadline - Date.now()
        if (left <= 0 || pollFds([this.replies], left)[0] === 0) {
          throw new CxlforkError('FAULT_SERVER_FAILED', `the fault server (pid ${this.pid}) did not answer ${op} within ${REPLY_TIMEOUT_MS / 1000} s`)
        }
        const n = read(this.replies, chunk)
        if (n <= 0) throw new CxlforkError('FAULT_SERVER_FAILED', `the fault server (pid ${this.pid}) exited during ${op}`, 'Run `cxlfork check`; migrate-on-access needs userfaultfd.')
        this.buffered += chunk.subarray(0, n).toString('utf8')
      }
      const newline = this.buffered.indexOf('\n')
      const line = this.buffered.slice(0, newline)
      this.buffered = this.buffered.slice(newline + 1)
      this.pending.shift()
      const answer = JSON.parse(line) as {ok?: boolean; error?: string}
      if (!answer.ok) throw new CxlforkError('FAULT_SERVER_FAILED', `the fault server refused ${op}: ${answer.error ?? 'no reason given'}`)
    }
  }

  private request(body: Record<string, unknown>): void {
    this.send(body)
    this.settle()
  }

  /**
   * Register the member's lazy ranges with a userfaultfd created inside it
   * and give it to the server. Kernel faults are served too (no
   * UFFD_USER_MODE_ONLY): read(2) into an untouched buffer must work, which
   * takes CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
   */
  serve(inject: Injector, memberPid: number, plan: RestorePlan): void {
    if (plan.lazy.length === 0) return
    const uffd = inject.tracee.syscall(SYS.userfaultfd, O.CLOEXEC | O.NONBLOCK)
    if (uffd < 0n) {
      const errno = Number(-uffd)
      throw errno === 1
        ? new PermissionError('NOT_PERMITTED', 'migrate-on-access needs a userfaultfd that also serves kernel faults, which this user may not create', 'Restore as root (CAP_SYS_PTRACE), set vm.unprivileged_userfaultfd=1, or use --policy mow.')
        : new CxlforkError('SYSCALL_FAILED', `userfaultfd() in the new process failed with errno ${errno}`, 'Run `cxlfork check`.')
    }
    const fd = Number(uffd)
    try {
      const api = inject.put(encodeUffdioApi(FEATURES))
      inject.call('ioctl(UFFDIO_API)', SYS.ioctl, fd, UFFDIO.API, api)
      for (const range of plan.lazy) {
        const arg = inject.put(encodeUffdioRegister(range.start, range.end - range.start, UFFDIO_REGISTER_MODE_MISSING))
        inject.call(`ioctl(UFFDIO_REGISTER 0x${range.start.toString(16)})`, SYS.ioctl, fd, UFFDIO.REGISTER, arg)
      }
      this.request({op: 'serve', pid: memberPid, fd, runs: plan.lazyRuns.map((run) => [String(run.vaddr), run.nrPages, String(run.storeOffset)])})
      this.held.push(takeFd(memberPid, fd))
    } finally {
      inject.tracee.syscall(SYS.close, fd)
    }
  }

  /**
   * Turn fault-around off on the member's pool mappings for `restore
   * --record`: a userfaultfd registered over them in write-protect mode
   * (nothing is ever write-protected, so no message comes) makes the kernel map
   * one page per fault, so the recording sees exactly the pages touched. The
   * server holds it; false where this kernel or file system cannot register
   * them (the recording is then marked inexact).
   */
  holdForRecording(inject: Injector, memberPid: number, plan: RestorePlan): boolean {
    const ranges = plan.ops.filter((op) => op.kind === 'store-map')
    if (ranges.length === 0) return false
    const uffd = inject.tracee.syscall(SYS.userfaultfd, O.CLOEXEC | O.NONBLOCK)
    if (uffd < 0n) return false
    const fd = Number(uffd)
    try {
      const api = inject.put(encodeUffdioApi(UFFD_FEATURE.WP_HUGETLBFS_SHMEM))
      if (inject.tracee.syscall(SYS.ioctl, fd, UFFDIO.API, api) < 0n) return false
      for (const range of ranges) {
        const arg = inject.put(encodeUffdioRegister(range.start, range.end - range.start, UFFDIO_REGISTER_MODE_WP))
        if (inject.tracee.syscall(SYS.ioctl, fd, UFFDIO.REGISTER, arg) < 0n) return false
      }
      this.request({op: 'hold', pid: memberPid, fd})
      return true
    } finally {
      inject.tracee.syscall(SYS.close, fd)
    }
  }

  /**
   * The clone is released: the server takes its init as sentinel (moa) and
   * watches the recorded clone processes for their exits (--record), then serves on alone.
   */
  arm(initPid: number | undefined, options: LazyOptions, record?: RecordedClone[]): void {
    // Until the server holds the init, a server that dies must not let the clone read lost pages
    // as zeros: our copies keep the userfaultfds open (a fault waits), and the caller kills the clone.
    this.request({op: 'arm', ...(initPid === undefined ? {} : {init: initPid}), fillAfterMs: options.fillAfterMs, ...(record ? {record} : {})})
    this.stopped = true
    close(this.control)
    close(this.replies)
    for (const fd of this.held.splice(0)) close(fd)
  }

  /** A failed restore: end the server (it holds nothing the caller still needs). */
  stop(): void {
    if (this.stopped) return
    this.stopped = true
    close(this.control)
    close(this.replies)
    for (const fd of this.held.splice(0)) close(fd)
    killQuiet(this.pid, SIG.KILL)
    try {
      wait4(this.pid, 0)
    } catch {
      /* reaped */
    }
  }

  /** Reap the server if it already ended (it is our child until we exit). */
  reapQuietly(): void {
    try {
      wait4(this.pid, WNOHANG)
    } catch {
      /* not ours */
    }
  }
}

/**
 * The fault server of `restore --policy moa` (migrate on access, the Mitosis
 * way): one process per restore that holds the clone's userfaultfds and
 * answers each first touch of a page with UFFDIO_COPY straight from the pool
 * mapping (or UFFDIO_ZEROPAGE for a page the original never had).
 *
 * It is spawned by the restoring command and driven over a pipe (one JSON
 * line per request, one reply line each): `pool` (map the pool, checked by
 * device and inode), `serve` (take a clone's userfaultfd with pidfd_getfd and
 * its page runs), `arm` (become the tracer of the clone's PID-namespace init
 * with PTRACE_O_EXITKILL, then serve on alone). The init is the sentinel: if
 * this server dies, the kernel kills the init, and with it every process of
 * the clone's namespace, so a clone never waits forever for a page and never
 * reads a page it lost as zeros. If the restoring command goes away before
 * `arm`, the server exits (the command's own stubs die with it).
 *
 * Non-cooperative events keep the page sources right: a fork gives the child
 * a userfaultfd of its own (served from a copy of the parent's table), mremap
 * moves sources, MADV_DONTNEED and munmap drop them (the range reads as zero
 * afterwards, as it would have in the original).
 *
 * With `fillAfterMs`, once no fault came for that long, the server copies the
 * remaining pages in the background (as CRIU's lazy-pages daemon does), gives
 * up the clone's init and exits: from then on the clone owns all its memory.
 * Without it, the server lives as long as the clone's init.
 */
import {appendFileSync, closeSync, constants as fsConstants, fstatSync, openSync, readFileSync, readSync, writeSync} from 'node:fs'
import {PTRACE, PTRACE_EVENT, PTRACE_O, ptraceRaw, wait4} from '../sys/ptrace.js'
import {MAP, PROT, SYS, WNOHANG, __WALL, pidfdOpen, syscallRaw} from '../sys/syscall.js'
import {mmap} from '../sys/vm-io.js'
import {POLLIN, UFFD_MSG_SIZE, UffdIoctls, decodeUffdMessage, pollFds} from '../sys/userfaultfd.js'
import type {RecordedClone} from '../restore/lazy.js'

const PAGE = 4096n
const EAGAIN = 11
const FILL_CHUNK_PAGES = 64n
/**
 * Bytes copied per fault on stored memory: one page by default (strict
 * migrate-on-access, as Mitosis does), or with `restore --fault-pages N`
 * (passed as CXLFORK_FAULT_PAGES) the aligned block of N pages around it, as
 * the kernel's fault-around maps 16 pages of a file on a read fault: one
 * round trip through this server costs ~100 us here, the copy of 15 more
 * pages a few. Measured on the shared 2-vCPU VM, a moa clone reading all of
 * 64 MiB: 1.7-2.0 s page by page, 0.45-0.5 s (one run 1.1 s) with 16,
 * 0.32-0.4 s with 64; a mow clone 0.13-0.15 s. The price is memory where
 * accesses are scattered (bench --faas: the moa-64k rows).
 */
const FAULT_CHUNK_BYTES = BigInt(Math.max(1, Math.min(512, Number(process.env.CXLFORK_FAULT_PAGES ?? 1) || 1))) * PAGE
/** CXLFORK_FAULT_LOG=FILE: every message the server reads, one JSON line each (for debugging). */
const FAULT_LOG = process.env.CXLFORK_FAULT_LOG

/** A source of pages: [start, end) of the clone's address space filled from `store` (a store offset) or with zeros (null). */
interface Segment {
  start: bigint
  end: bigint
  store: bigint | null
}

/** One userfaultfd (one address space: a clone member, or a child it forked) and where its pages come from. */
interface Context {
  fd: number
  segments: Segment[]
  /** Faults that got EAGAIN (the address space was changing): retried on the next round. */
  retry: bigint[]
}

/** Whether `pid` exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    return !/^\S+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))
  } catch {
    return false
  }
}

/** Remove [start, end) from a sorted segment list; returns the removed pieces. */
export function cutSegments(segments: Segment[], start: bigint, end: bigint): Segment[] {
  const kept: Segment[] = []
  const removed: Segment[] = []
  for (const seg of segments) {
    if (seg.end <= start || seg.start >= end) {
      kept.push(seg)
      continue
    }
    const at = (addr: bigint): bigint | null => (seg.store === null ? null : seg.store + (addr - seg.start))
    if (seg.start < start) kept.push({start: seg.start, end: start, store: seg.store})
    const from = seg.start > start ? seg.start : start
    const to = seg.end < end ? seg.end : end
    removed.push({start: from, end: to, store: at(from)})
    if (seg.end > end) kept.push({start: end, end: seg.end, store: at(end)})
  }
  segments.splice(0, segments.length, ...kept)
  return removed
}

function insertSegments(segments: Segment[], pieces: Segment[]): void {
  segments.push(...pieces)
  segments.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0))
}

function findSegment(segments: readonly Segment[], addr: bigint): Segment | undefined {
  let lo = 0
  let hi = segments.length - 1
  while (lo <= hi) {
    const mid = (lo + hi) >> 1
    const seg = segments[mid]!
    if (addr < seg.start) hi = mid - 1
    else if (addr >= seg.end) lo = mid + 1
    else return seg
  }
  return undefined
}

interface Request {
  op: 'pool' | 'serve' | 'hold' | 'arm'
  path?: string
  dev?: string
  ino?: string
  pid?: number
  fd?: number
  /** [vaddr, nrPages, storeOffset] as decimal strings. */
  runs?: [string, number, string][]
  init?: number
  fillAfterMs?: number | null
  /** arm: record these clone processes' accesses into checkpoint `name` as each exits (restore --record; one per tree member). */
  record?: RecordedClone[]
}

export class FaultServer {
  private poolBase = 0n
  private readonly contexts: Context[] = []
  private readonly ioctls = new UffdIoctls()
  private readonly message = new Uint8Array(UFFD_MSG_SIZE * 64)
  private init: number | undefined
  /** The clone ended before the server was armed: nothing left to do. */
  private ended = false
  /** Per clone pid: userfaultfds that only keep fault-around off on its pool mappings (nothing to serve). */
  private readonly held = new Map<number, number[]>()
  /** The clone processes still to be recorded at their exit, by pid. */
  private readonly recorded = new Map<number, RecordedClone>()
  private fillAfterMs: number | null = null
  private lastFaultMs = Date.now()
  /** Counters, for the log line written at exit. */
  readonly stats = {faults: 0, copied: 0, zeroed: 0, filled: 0, forks: 0}

  constructor(private readonly control: number, private readonly reply: number) {}

  /** Serve the restoring command until `arm`, then the clone until its init is gone (or every page is filled). */
  run(): number {
    const armed = this.driveSetup()
    if (!armed) return 1
    if (this.ended) return 0
    // A tracee's stop sends us SIGCHLD; with a handler installed it ends poll() early (EINTR), so a
    // signal to the clone is passed on at once rather than at the next poll timeout.
    process.on('SIGCHLD', () => {})
    for (;;) {
      const recordDone = this.pollRecorded()
      if (this.pollInit() && recordDone) return 0
      const ready = pollFds(this.contexts.map((c) => c.fd), this.fillAfterMs === null ? 100 : Math.min(100, this.fillAfterMs))
      let any = false
      ready.forEach((revents, i) => {
        if (revents & POLLIN) {
          any = true
          this.drain(this.contexts[i]!)
        }
      })
      for (const ctx of this.contexts) this.retryFaults(ctx)
      if (any) this.lastFaultMs = Date.now()
      else if (this.fillAfterMs !== null && Date.now() - this.lastFaultMs >= this.fillAfterMs) {
        if (this.fillRemaining()) {
          this.release()
          return 0
        }
      }
    }
  }

  /** Requests from the restoring command, until `arm` (true) or its end (false). */
  private driveSetup(): boolean {
    let buffered = ''
    const chunk = Buffer.alloc(1 << 16)
    for (;;) {
      const ready = pollFds([this.control, ...this.contexts.map((c) => c.fd)], 1000)
      ready.slice(1).forEach((revents, i) => {
        if (revents & POLLIN) this.drain(this.contexts[i]!)
      })
      for (const ctx of this.contexts) this.retryFaults(ctx)
      if (ready[0] === 0) continue
      let n: number
      try {
        n = readSync(this.control, chunk)
      } catch {
        n = 0
      }
      if (n === 0) return false // the restoring command is gone: its stubs die with it
      buffered += chunk.subarray(0, n).toString('utf8')
      let newline: number
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        let request: Request
        try {
          request = JSON.parse(line) as Request
        } catch {
          this.answer({error: 'malformed request'})
          continue
        }
        try {
          const done = this.handle(request)
          this.answer({ok: true})
          if (done) return true
        } catch (error) {
          this.answer({error: (error as Error).message})
        }
      }
    }
  }

  private answer(value: unknown): void {
    writeSync(this.reply, JSON.stringify(value) + '\n')
  }

  /** One setup request; true once armed. */
  private handle(request: Request): boolean {
    switch (request.op) {
      case 'pool': {
        const fd = openSync(request.path!, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW)
        const st = fstatSync(fd, {bigint: true})
        if (String(st.dev) !== request.dev || String(st.ino) !== request.ino) {
          closeSync(fd)
          throw new Error(`pool file ${request.path} changed under the restore`)
        }
        this.poolBase = mmap(null, st.size, PROT.READ, MAP.SHARED, fd, 0)
        closeSync(fd)
        return false
      }
      case 'serve': {
        const pidfd = pidfdOpen(request.pid!)
        const fd = Number(syscallRaw(SYS.pidfd_getfd, pidfd, request.fd!, 0))
        closeSync(pidfd)
        if (fd < 0) throw new Error(`pidfd_getfd of the clone's userfaultfd failed with errno ${-fd}`)
        const segments = (request.runs ?? []).map(([vaddr, pages, store]): Segment => ({start: BigInt(vaddr), end: BigInt(vaddr) + BigInt(pages) * PAGE, store: BigInt(store)}))
        segments.sort((a, b) => (a.start < b.start ? -1 : 1))
        this.contexts.push({fd, segments, retry: []})
        return false
      }
      case 'hold': {
        const pidfd = pidfdOpen(request.pid!)
        const fd = Number(syscallRaw(SYS.pidfd_getfd, pidfd, request.fd!, 0))
        closeSync(pidfd)
        if (fd < 0) throw new Error(`pidfd_getfd of the clone's userfaultfd failed with errno ${-fd}`)
        const held = this.held.get(request.pid!) ?? []
        held.push(fd)
        this.held.set(request.pid!, held)
        return false
      }
      case 'arm': {
        for (const clone of request.record ?? []) {
          // Not EXITKILL: a recorder that dies costs the recording, never the clone.
          const r = ptraceRaw(PTRACE.SEIZE, clone.pid, 0, PTRACE_O.TRACEEXIT)
          if (r >= 0n) this.recorded.set(clone.pid, clone)
          else if (alive(clone.pid)) throw new Error(`cannot watch the clone ${clone.pid} for its exit: ptrace errno ${-r}`)
          else this.releaseHeld(clone.pid)
        }
        if (request.init !== undefined) {
          const r = ptraceRaw(PTRACE.SEIZE, request.init, 0, PTRACE_O.EXITKILL)
          if (r < 0n) {
            // A clone that ended at once (its init exiting: EPERM, or gone: ESRCH) needs no server.
            if (!alive(request.init)) {
              this.ended = true
              return true
            }
            throw new Error(`cannot hold the clone's init ${request.init}: ptrace errno ${-r}`)
          }
          this.init = request.init
        }
        this.fillAfterMs = request.fillAfterMs ?? null
        this.lastFaultMs = Date.now()
        return true
      }
      default:
        throw new Error(`unknown request ${JSON.stringify(request.op)}`)
    }
  }

  /** Read and answer every message queued on one userfaultfd. */
  private drain(ctx: Context): void {
    for (;;) {
      // The raw syscall: a thrown EAGAIN (readSync) cost more than serving the fault.
      const n = Number(syscallRaw(SYS.read, ctx.fd, this.message, this.message.length))
      if (n <= 0) return
      for (let at = 0; at + UFFD_MSG_SIZE <= n; at += UFFD_MSG_SIZE) this.onMessage(ctx, at)
    }
  }

  private onMessage(ctx: Context, at: number): void {
    const msg = decodeUffdMessage(this.message, at)
    if (FAULT_LOG) appendFileSync(FAULT_LOG, JSON.stringify(msg, (_k, v) => (typeof v === 'bigint' ? '0x' + v.toString(16) : v)) + '\n')
    if ('address' in msg) {
      this.stats.faults++
      this.serveFault(ctx, msg.address & ~(PAGE - 1n))
    } else if ('ufd' in msg) {
      this.stats.forks++
      this.contexts.push({fd: msg.ufd, segments: ctx.segments.map((s) => ({...s})), retry: []})
    } else if ('from' in msg) {
      const moved = cutSegments(ctx.segments, msg.from, msg.from + msg.length)
      insertSegments(ctx.segments, moved.map((s) => ({start: s.start - msg.from + msg.to, end: s.end - msg.from + msg.to, store: s.store})))
    } else if ('start' in msg) {
      cutSegments(ctx.segments, msg.start, msg.end)
    }
  }

  private serveFault(ctx: Context, page: bigint): void {
    const seg = findSegment(ctx.segments, page)
    if (seg && seg.store !== null && FAULT_CHUNK_BYTES > PAGE) {
      this.serveChunk(ctx, seg, page)
      return
    }
    const result = seg && seg.store !== null
      ? this.ioctls.copy(ctx.fd, page, this.poolBase + seg.store + (page - seg.start), PAGE)
      : this.ioctls.zeropage(ctx.fd, page, PAGE)
    if (result.ret === 0) {
      if (seg && seg.store !== null) this.stats.copied++
      else this.stats.zeroed++
    } else if (result.ret === -EAGAIN) {
      ctx.retry.push(page)
    } else {
      // EEXIST: another fault filled it first; anything else (the range went away): wake the thread so it retries its access.
      this.ioctls.wake(ctx.fd, page, PAGE)
    }
  }

  /**
   * A fault on a stored page copies the aligned FAULT_CHUNK_BYTES around it
   * (within its segment) in two UFFDIO_COPYs: the pages before it, then from
   * the page to the block's end (which wakes the faulting thread).
   * A page some other fault filled meanwhile stops a copy there (EEXIST):
   * the pages after it come with their own faults.
   */
  private serveChunk(ctx: Context, seg: Segment, page: bigint): void {
    const chunkStart = page - (page % FAULT_CHUNK_BYTES)
    const from = chunkStart > seg.start ? chunkStart : seg.start
    const to = chunkStart + FAULT_CHUNK_BYTES < seg.end ? chunkStart + FAULT_CHUNK_BYTES : seg.end
    const source = (addr: bigint): bigint => this.poolBase + seg.store! + (addr - seg.start)
    // The pages before it first: the faulting thread resumes with its whole block in place.
    if (from < page) {
      const behind = this.ioctls.copy(ctx.fd, from, source(from), page - from)
      this.stats.copied += Number(behind.done / PAGE)
    }
    const ahead = this.ioctls.copy(ctx.fd, page, source(page), to - page)
    this.stats.copied += Number(ahead.done / PAGE)
    if (ahead.ret === -EAGAIN && ahead.done === 0n) {
      ctx.retry.push(page)
      return
    }
    // Nothing copied at the page itself (EEXIST: filled first; or the range went away): wake the thread so it retries.
    if (ahead.ret !== 0 && ahead.done === 0n) this.ioctls.wake(ctx.fd, page, PAGE)
  }

  private retryFaults(ctx: Context): void {
    if (ctx.retry.length === 0) return
    const pages = ctx.retry.splice(0)
    for (const page of pages) this.serveFault(ctx, page)
  }

  /** Without an init to watch (a recording-only server), the end of the last recorded clone ends the server. */
  private recordedOnly(): boolean {
    return this.recorded.size === 0
  }

  /** Copy what is left, a chunk at a time, answering faults between chunks; true when nothing is left. */
  private fillRemaining(): boolean {
    for (const ctx of this.contexts) {
      while (ctx.segments.length > 0) {
        const seg = ctx.segments[0]!
        if (seg.store === null) {
          ctx.segments.shift()
          continue
        }
        const length = seg.end - seg.start < FILL_CHUNK_PAGES * PAGE ? seg.end - seg.start : FILL_CHUNK_PAGES * PAGE
        const result = this.ioctls.copy(ctx.fd, seg.start, this.poolBase + seg.store, length)
        if (result.ret === -EAGAIN && result.done === 0n) return false // the clone is changing its mappings: come back later
        // Done bytes are in; a page already present (EEXIST) or gone is skipped.
        const advance = result.ret === 0 ? length : result.done + (result.ret === -EAGAIN ? 0n : PAGE)
        this.stats.filled += Number(result.ret === 0 ? length : result.done) / 4096
        seg.start += advance
        seg.store += advance
        if (seg.start >= seg.end) ctx.segments.shift()
        // Faults first: a waiting thread must not wait behind the background copy.
        const ready = pollFds(this.contexts.map((c) => c.fd), 0)
        if (ready.some((revents) => revents & POLLIN)) {
          ready.forEach((revents, i) => {
            if (revents & POLLIN) this.drain(this.contexts[i]!)
          })
          this.lastFaultMs = Date.now()
        }
      }
    }
    return this.contexts.every((ctx) => ctx.segments.length === 0 && ctx.retry.length === 0)
  }

  /** Every page is in: let go of the init (so it outlives us) and of the userfaultfds. */
  private release(): void {
    if (this.init !== undefined) {
      ptraceRaw(PTRACE.INTERRUPT, this.init)
      try {
        for (;;) {
          const status = wait4(this.init, __WALL)
          if (!status?.stopped) break
          // A signal stop that came first is passed on with the detach; the interrupt's own stop carries none.
          const signal = status.event === 0 && status.stopSignal !== 5 ? status.stopSignal ?? 0 : 0
          if (ptraceRaw(PTRACE.DETACH, this.init, 0, signal) === 0n) break
        }
      } catch {
        /* the init is gone */
      }
      this.init = undefined
    }
    for (const ctx of this.contexts) closeSync(ctx.fd)
    this.contexts.length = 0
  }

  /**
   * The recorded clones' stops: signals are passed on; at a clone's exit stop
   * (PTRACE_EVENT_EXIT, memory still there) its accesses are recorded. Its
   * parent sees it exit once we have reaped its last stop (within one poll
   * period). True once every recorded clone is gone (or none is recorded).
   */
  private pollRecorded(): boolean {
    for (const clone of [...this.recorded.values()]) {
      for (;;) {
        let status
        try {
          status = wait4(clone.pid, WNOHANG | __WALL)
        } catch {
          this.forget(clone.pid)
          break
        }
        if (!status) break
        if (!status.stopped) {
          this.forget(clone.pid)
          break
        }
        if (status.event === PTRACE_EVENT.EXIT) this.recordNow(clone)
        ptraceRaw(PTRACE.CONT, clone.pid, 0, status.event === 0 ? status.stopSignal ?? 0 : 0)
      }
    }
    return this.recorded.size === 0
  }

  private forget(pid: number): void {
    this.recorded.delete(pid)
    this.releaseHeld(pid)
  }

  private releaseHeld(pid: number): void {
    for (const fd of this.held.get(pid) ?? []) closeSync(fd)
    this.held.delete(pid)
  }

  private recordNow(clone: RecordedClone): void {
    try {
      this.onExitRecord?.(clone)
    } catch {
      /* a recording lost is only a hint lost */
    }
  }

  /** Set by the entry point: records a clone at its exit (kept out of this module so that serving needs no pool code). */
  onExitRecord?: (clone: RecordedClone) => void

  /**
   * The init's ptrace stops are ours to end: a signal it is sent (SIGCHLD
   * when the clone exits) is passed on. True once the init is gone.
   */
  private pollInit(): boolean {
    if (this.init === undefined) return this.contexts.length === 0 || this.recordedOnly()
    for (;;) {
      let status
      try {
        status = wait4(this.init, WNOHANG | __WALL)
      } catch {
        return true // ECHILD: no longer ours
      }
      if (!status) return false
      if (!status.stopped) return true
      ptraceRaw(PTRACE.CONT, this.init, 0, status.event === 0 ? status.stopSignal ?? 0 : 0)
    }
  }
}

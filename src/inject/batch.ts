/**
 * Batched injection: many system calls for one resume of the tracee. Unlike a
 * single injected call this writes code into the tracee: a small loop in an
 * RWX MAP_SHARED area of its own (one code page + a call table), which runs a
 * table of {nr, 6 args, result} and ends on int3.
 */
import {CxlforkError} from '../errors.js'
import {PTRACE} from '../sys/ptrace.js'
import {MAP, PROT, SIG, SYS} from '../sys/syscall.js'
import {readStatus} from '../sys/proc.js'
import {REG, signed, signedErr} from './regs.js'
import {InjectingTracee} from './single-call.js'

export interface BatchCall {
  nr: number
  args?: (number | bigint)[]
}

/** A batch the tracee is running (Tracee.startSyscalls). */
export interface PendingSyscalls {
  /** Wait for it; the results, as Tracee.syscalls() returns them. */
  finish(): bigint[]
  /**
   * Without stopping the tracee: the results of the calls that have
   * completed so far, from call `from` on (at most `max` of them, in order).
   * Only calls of the first BATCH_MAX_CALLS are seen before finish().
   */
  poll(from: number, max?: number): bigint[]
}

/**
 * The batch loop. Registers in: rbx = table, r12 = count, r13 = 1 to stop on
 * error. Table entries are 8 x u64 {nr, a1..a6, result}.
 */
const BATCH_CODE = Uint8Array.from([
  /* 0  loop: */ 0x4d, 0x85, 0xe4, //          test r12, r12
  /* 3  */ 0x74, 0x36, //                      jz   done (+54 -> 57)
  /* 5  */ 0x48, 0x8b, 0x03, //                mov  rax, [rbx]
  /* 8  */ 0x48, 0x8b, 0x7b, 0x08, //          mov  rdi, [rbx+8]
  /* 12 */ 0x48, 0x8b, 0x73, 0x10, //          mov  rsi, [rbx+16]
  /* 16 */ 0x48, 0x8b, 0x53, 0x18, //          mov  rdx, [rbx+24]
  /* 20 */ 0x4c, 0x8b, 0x53, 0x20, //          mov  r10, [rbx+32]
  /* 24 */ 0x4c, 0x8b, 0x43, 0x28, //          mov  r8,  [rbx+40]
  /* 28 */ 0x4c, 0x8b, 0x4b, 0x30, //          mov  r9,  [rbx+48]
  /* 32 */ 0x0f, 0x05, //                      syscall
  /* 34 */ 0x48, 0x89, 0x43, 0x38, //          mov  [rbx+56], rax
  /* 38 */ 0x48, 0x83, 0xc3, 0x40, //          add  rbx, 64
  /* 42 */ 0x49, 0xff, 0xcc, //                dec  r12
  /* 45 */ 0x48, 0x3d, 0x01, 0xf0, 0xff, 0xff, // cmp rax, -4095
  /* 51 */ 0x72, 0xcb, //                      jb   loop (-53 -> 0)
  /* 53 */ 0x41, 0xf6, 0xc5, 0x01, //          test r13b, 1
  /* 57 */ 0x74, 0xc5, //                      jz   loop (-59 -> 0)
  /* 59 done: */ 0xcc, //                      int3
])
const BATCH_INT3_OFFSET = 59
/** One code page + a 60 KiB call table. */
export const BATCH_AREA = 64 * 1024
const BATCH_MAX = (BATCH_AREA - 4096) / 64
/** Calls one launched batch runs before startSyscalls' finish() has to run the rest. */
export const BATCH_MAX_CALLS = BATCH_MAX
/** A result word no system call returns (not an errno, not a canonical address): the call has not run yet. */
const NOT_RUN = 1n << 63n

export abstract class BatchingTracee extends InjectingTracee {
  /** RWX shared mapping holding the batch loop (code page + call table), or null. */
  protected batchBase: bigint | null = null
  /** Where the batch area must go (MAP_FIXED_NOREPLACE), e.g. clear of a restore's target layout. */
  private batchPlacement = 0n
  /** SIGTRAP ignored by the program: batches (which end on int3) fall back to single injections. */
  private trapIgnored: boolean | null = null

  /**
   * Runs several system calls with ONE resume of the tracee (see the module
   * comment). Returns the results (negative = -errno), one per executed call;
   * with stopOnError the batch stops after the first failing call (the
   * returned array is then shorter than `calls`).
   * Arguments must be plain values (addresses of scratch data written before).
   * Falls back to one injection per call if the program ignores SIGTRAP or the
   * system refuses an executable mapping.
   */
  syscalls(calls: readonly BatchCall[], opts: {stopOnError?: boolean} = {}): bigint[] {
    this.requireStopped()
    const out: bigint[] = []
    if (calls.length === 0) return out
    // In self-healing mode every call goes through healingSyscall(); no batch code is mapped.
    if (this.healing || !this.batchUsable()) {
      for (const c of calls) {
        const r = this.syscall(c.nr, ...(c.args ?? []))
        out.push(r)
        if (opts.stopOnError && signedErr(r)) break
      }
      return out
    }
    for (let i = 0; i < calls.length; i += BATCH_MAX) {
      const part = calls.slice(i, i + BATCH_MAX)
      const res = this.runBatch(part, opts.stopOnError ?? false)
      out.push(...res)
      if (res.length < part.length) break
    }
    return out
  }

  /** Bytes the batch area needs; place it with placeBatchArea() before the first batch. */
  static readonly batchAreaSize = BigInt(BATCH_AREA)

  /** Put the batch area at `addr` (must be free) instead of wherever the kernel picks. */
  placeBatchArea(addr: bigint): void {
    if (this.batchBase !== null) throw new CxlforkError('BATCH_AREA_EXISTS', 'the batch area is already mapped')
    this.batchPlacement = addr
  }

  /** Tell batched injection what SIGTRAP's disposition is when it is known (a freshly spawned stub), sparing a /proc read. */
  knowTrapIgnored(ignored: boolean): void {
    this.trapIgnored = ignored
  }

  private batchUsable(): boolean {
    if (this.trapIgnored === null) this.trapIgnored = (readStatus(this.pid).sigIgn & (1n << BigInt(SIG.TRAP - 1))) !== 0n
    if (this.trapIgnored) return false
    if (this.batchBase === null) {
      const fixed = this.batchPlacement === 0n ? 0 : MAP.FIXED_NOREPLACE
      const r = this.syscall(SYS.mmap, this.batchPlacement, BATCH_AREA, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.SHARED | MAP.ANONYMOUS | fixed, -1, 0)
      if (signedErr(r)) return false
      this.batchBase = r
      this.writeMemory(r, BATCH_CODE)
    }
    return true
  }

  /**
   * Start `calls` and return at once: the tracee runs them on its own while
   * the caller does other work (the snapshot's page write overlaps the rest
   * of a checkpoint this way). finish() waits and returns the results like
   * syscalls(); calls beyond one batch's room run there, synchronously. Until
   * then the tracee counts as running: other injections are refused.
   */
  startSyscalls(calls: readonly BatchCall[], opts: {stopOnError?: boolean} = {}): PendingSyscalls {
    this.requireStopped()
    const stopOnError = opts.stopOnError ?? false
    if (calls.length === 0 || this.healing || !this.batchUsable()) {
      const results = this.syscalls(calls, opts)
      return {finish: () => results, poll: (from, max = results.length) => results.slice(from, from + max)}
    }
    const first = calls.slice(0, BATCH_MAX)
    const tableAddr = this.launchBatch(first, stopOnError)
    let done: bigint[] | undefined
    return {
      poll: (from, max = 64) => {
        if (done) return done.slice(from, from + max)
        const count = Math.min(max, first.length - from)
        if (count <= 0) return []
        const words = new BigUint64Array(count * 8)
        this.readMemoryInto(tableAddr + BigInt(from * 64), new Uint8Array(words.buffer))
        const out: bigint[] = []
        for (let k = 0; k < count; k++) {
          const v = words[k * 8 + 7]!
          if (v === NOT_RUN) break
          out.push(signed(v))
        }
        return out
      },
      finish: () => {
        if (done) return done
        const out = this.collectBatch(first, stopOnError, tableAddr)
        if (out.length === first.length && calls.length > first.length) out.push(...this.syscalls(calls.slice(BATCH_MAX), opts))
        done = out
        return out
      },
    }
  }

  private runBatch(calls: readonly BatchCall[], stopOnError: boolean): bigint[] {
    return this.collectBatch(calls, stopOnError, this.launchBatch(calls, stopOnError))
  }

  /** Write the call table, point the tracee at the batch code and let it run; returns the table's address. */
  private launchBatch(calls: readonly BatchCall[], stopOnError: boolean): bigint {
    const n = calls.length
    const table = new BigUint64Array(n * 8)
    for (let k = 0; k < n; k++) {
      const c = calls[k]!
      const args = c.args ?? []
      if (args.length > 6) throw new RangeError('at most 6 syscall arguments')
      table[k * 8] = BigInt(c.nr)
      for (let j = 0; j < 6; j++) table[k * 8 + 1 + j] = BigInt.asUintN(64, BigInt(args[j] ?? 0))
      table[k * 8 + 7] = NOT_RUN
    }
    const tableAddr = this.batchBase! + 4096n
    this.writeMemory(tableAddr, new Uint8Array(table.buffer))
    // int3 raises a forced SIGTRAP: were SIGTRAP blocked, the kernel would
    // reset its disposition to SIG_DFL. Leave it unblocked for the batch.
    this.beginInjection((r) => {
      r[REG.rip] = this.batchBase!
      r[REG.rbx] = tableAddr
      r[REG.r12] = BigInt(n)
      r[REG.r13] = stopOnError ? 1n : 0n
    }, n, SIG.TRAP)
    try {
      this.resume(PTRACE.CONT, 0)
    } catch (error) {
      if (this.isAlive) this.maskInjection()
      throw error
    }
    return tableAddr
  }

  /** Wait for a launched batch's closing int3 and read its results. */
  private collectBatch(calls: readonly BatchCall[], stopOnError: boolean, tableAddr: bigint): bigint[] {
    const n = calls.length
    const trapRip = this.batchBase! + BigInt(BATCH_INT3_OFFSET + 1)
    try {
      this.pump(PTRACE.CONT, (w) => (w.event ?? 0) === 0 && w.stopSignal === SIG.TRAP && this.peekReg(REG.rip) === trapRip)
    } finally {
      if (this.isAlive) this.maskInjection()
    }
    const res = new BigUint64Array(n * 8)
    this.readMemoryInto(tableAddr, new Uint8Array(res.buffer))
    const out: bigint[] = []
    for (let k = 0; k < n; k++) {
      const v = signed(res[k * 8 + 7]!)
      out.push(v)
      this.forgetSiteAfter(calls[k]!.nr)
      // with stopOnError the loop ran exactly up to the first failing call
      if (stopOnError && signedErr(v)) break
    }
    return out
  }

  /** munmap the batch-code mapping (injected). */
  freeBatch(): void {
    if (this.batchBase === null) return
    const base = this.batchBase
    this.batchBase = null
    if (this.isAlive && this.isStopped) this.syscallChecked('munmap(batch)', SYS.munmap, base, BATCH_AREA)
  }
}

/**
 * The benchmark target: a tiny static x86_64 ELF generated here byte by byte
 * (no compiler, no libc, no interpreter at run time). It maps SIZE bytes of
 * private anonymous memory, writes a deterministic pattern into every page
 * (page i is filled with the 64-bit word PATTERN_BASE + i), optionally starts
 * THREADS-1 more threads (raw clone, each on a 64 KiB stack of its own, each
 * idling in pause()), writes one byte ("R") to fd 1 once every page is
 * touched and every thread exists, then idles in pause() forever. Or, instead
 * of threads, PROCESSES-1 child processes (fork): each asks to be SIGKILLed
 * when its parent dies (PR_SET_PDEATHSIG) and idles in pause(); the parent
 * reports ready once every child has done so. The children never write their
 * memory, so each one's pages are the parent's, shared copy-on-write.
 *
 * Why not python3 or node: their base RSS (8-40 MiB of private memory, plus
 * threads for node) would blur "restored RssAnon vs checkpointed bytes" and
 * would not be exactly SIZE. This target's footprint is SIZE plus one stack
 * page and its 4 KiB code page, and it has no rseq or TLS. With THREADS = 1 no
 * thread code is emitted at all, so the single-threaded target is the same
 * program byte for byte as before threads existed; likewise for PROCESSES = 1.
 */
import {closeSync, mkdtempSync, readdirSync, readSync, rmSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {CxlforkError} from '../errors.js'
import {STUB_COMM, STUB_INIT_COMM} from '../inject/stub.js'
import {pipe2} from '../sys/file-io.js'
import {wait4} from '../sys/ptrace.js'
import {posixSpawn} from '../sys/spawn.js'
import {O, killQuiet, SIG} from '../sys/syscall.js'
import {vmRead} from '../sys/vm-io.js'
import {isAlive, readStat} from '../sys/proc.js'

/** comm of every target (and of its clones): the executable's file name, 15 characters. */
export const TARGET_COMM = 'cxlbench-target'
/** Page i of the target's memory holds this value + i in each of its 512 words. */
export const PATTERN_BASE = 0x6378_6c66_6f72_6b00n
const LOAD_BASE = 0x400000n
/** Stack of each extra thread. The threads only sit in pause(), which touches no stack: its pages are never faulted in. */
const THREAD_STACK_SIZE = 0x10000
/** CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM: a thread as pthread_create makes one, minus TLS and tid bookkeeping (the target has no libc). */
const CLONE_THREAD_FLAGS = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
/** Most threads a target may have: each costs a 64 KiB mapping and one task. */
export const MAX_TARGET_THREADS = 4096
/** Most processes a target tree may have: each child maps (copy-on-write) the whole SIZE and is one more checkpoint member. */
export const MAX_TARGET_PROCESSES = 64

/** A minimal assembler: raw bytes plus 32-bit rip-relative label fixups. */
class Assembler {
  private readonly bytes: number[] = []
  private readonly labels = new Map<string, number>()
  private readonly fixups: {at: number; label: string}[] = []

  emit(...bytes: number[]): this {
    this.bytes.push(...bytes)
    return this
  }

  imm32(value: number): this {
    return this.emit(value & 0xff, (value >>> 8) & 0xff, (value >>> 16) & 0xff, (value >>> 24) & 0xff)
  }

  imm64(value: bigint): this {
    for (let i = 0n; i < 64n; i += 8n) this.bytes.push(Number((value >> i) & 0xffn))
    return this
  }

  /** A rel32 operand pointing at `label`, relative to the end of the operand. */
  rel32(label: string): this {
    this.fixups.push({at: this.bytes.length, label})
    return this.imm32(0)
  }

  label(name: string): this {
    this.labels.set(name, this.bytes.length)
    return this
  }

  finish(): Uint8Array {
    const out = Uint8Array.from(this.bytes)
    const view = new DataView(out.buffer)
    for (const {at, label} of this.fixups) {
      const target = this.labels.get(label)
      if (target === undefined) throw new Error(`undefined label ${label}`)
      view.setInt32(at, target - (at + 4), true)
    }
    return out
  }
}

/** mmap(NULL, size, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) into rax; jumps to `fail` on an error. */
function emitAnonMmap(a: Assembler, size: bigint): void {
  a.emit(0x31, 0xff) //                          xor  edi, edi
  a.emit(0x48, 0xbe).imm64(size) //              mov  rsi, size
  a.emit(0xba).imm32(3) //                       mov  edx, 3
  a.emit(0x41, 0xba).imm32(0x22) //              mov  r10d, 0x22
  a.emit(0x49, 0xc7, 0xc0).imm32(-1) //          mov  r8, -1
  a.emit(0x45, 0x31, 0xc9) //                    xor  r9d, r9d
  a.emit(0xb8).imm32(9) //                       mov  eax, SYS_mmap
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x3d).imm32(-4095) //             cmp  rax, -4095
  a.emit(0x0f, 0x83).rel32('fail') //            jae  fail
}

/**
 * Machine code of the target for `size` bytes and `threads` threads or `processes` processes; the region is
 * madvised MADV_HUGEPAGE or MADV_NOHUGEPAGE, so THP use does not depend on the system default.
 */
export function targetCode(size: number, hugePages: boolean, threads = 1, processes = 1): Uint8Array {
  if (!Number.isInteger(threads) || threads < 1 || threads > MAX_TARGET_THREADS) throw new RangeError(`target threads ${threads}: 1 to ${MAX_TARGET_THREADS}`)
  if (!Number.isInteger(processes) || processes < 1 || processes > MAX_TARGET_PROCESSES) throw new RangeError(`target processes ${processes}: 1 to ${MAX_TARGET_PROCESSES}`)
  // fork() copies only the calling thread: a multi-threaded tree would be a different program from the one asked for.
  if (threads > 1 && processes > 1) throw new RangeError('a target has either more threads or more processes, not both')
  const a = new Assembler()
  emitAnonMmap(a, BigInt(size))
  a.emit(0x49, 0x89, 0xc7) //                    mov  r15, rax        ; base
  // madvise(base, size, MADV_HUGEPAGE or MADV_NOHUGEPAGE); rsi still holds size (syscall clobbers rax, rcx, r11 only)
  a.emit(0x48, 0x89, 0xc7) //                    mov  rdi, rax
  a.emit(0xba).imm32(hugePages ? 14 : 15) //     mov  edx, MADV_(NO)HUGEPAGE
  a.emit(0xb8).imm32(28) //                      mov  eax, SYS_madvise
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x4c, 0x89, 0xff) //                    mov  rdi, r15
  a.emit(0x4d, 0x8d, 0x2c, 0x37) //              lea  r13, [r15 + rsi] ; end
  a.emit(0x49, 0xbe).imm64(PATTERN_BASE) //      mov  r14, PATTERN_BASE
  a.label('page')
  a.emit(0x4c, 0x39, 0xef) //                    cmp  rdi, r13
  a.emit(0x0f, 0x83).rel32('done') //            jae  done
  a.emit(0x4c, 0x89, 0xf0) //                    mov  rax, r14
  a.emit(0xb9).imm32(512) //                     mov  ecx, 512
  a.emit(0xf3, 0x48, 0xab) //                    rep stosq            ; one page, rdi += 4096
  a.emit(0x49, 0xff, 0xc6) //                    inc  r14
  a.emit(0xe9).rel32('page') //                  jmp  page
  a.label('done')
  // The threads come after the fill, so their creation is not part of the pages' timing, and before
  // "R", so a target that reported ready has all its threads (spawnTarget's caller may count them).
  if (threads > 1) emitThreadSpawn(a, threads - 1)
  // Likewise the children: after the fill, so they share every page of it, and before "R".
  if (processes > 1) emitProcessSpawn(a, processes - 1)
  a.emit(0xbf).imm32(1) //                       mov  edi, 1
  a.emit(0x48, 0x8d, 0x35).rel32('ready') //     lea  rsi, [rip + ready]
  a.emit(0xba).imm32(1) //                       mov  edx, 1
  a.emit(0xb8).imm32(1) //                       mov  eax, SYS_write
  a.emit(0x0f, 0x05) //                          syscall
  a.label('idle')
  a.emit(0xb8).imm32(34) //                      mov  eax, SYS_pause
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0xe9).rel32('idle') //                  jmp  idle
  a.label('fail')
  a.emit(0xbf).imm32(1) //                       mov  edi, 1
  a.emit(0xb8).imm32(231) //                     mov  eax, SYS_exit_group
  a.emit(0x0f, 0x05) //                          syscall
  a.label('ready')
  a.emit(0x52) //                                "R"
  return a.finish()
}

/**
 * `extra` times: mmap a 64 KiB stack, clone a thread onto its top; the new thread (rax == 0) jumps to
 * the pause() loop, the creator goes on. Any failure ends the target with status 1 (the "fail" path),
 * before "R", which spawnTarget reports. r12 counts down: no syscall clobbers it (only rax, rcx, r11).
 */
function emitThreadSpawn(a: Assembler, extra: number): void {
  a.emit(0x41, 0xbc).imm32(extra) //             mov  r12d, extra
  a.label('spawn')
  // mmap(NULL, 64 KiB, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0). No MAP_STACK: since
  // Linux 6.7 it implies VM_NOHUGEPAGE, and the stacks could then merge with a MADV_NOHUGEPAGE region
  // placed right above them into one VMA, which would no longer be exactly SIZE bytes.
  emitAnonMmap(a, BigInt(THREAD_STACK_SIZE))
  // clone(flags, newsp = stack top, parent_tid = NULL, child_tid = NULL, tls = 0)
  a.emit(0x48, 0x8d, 0xb0).imm32(THREAD_STACK_SIZE) // lea rsi, [rax + 0x10000]
  a.emit(0xbf).imm32(CLONE_THREAD_FLAGS) //      mov  edi, flags
  a.emit(0x31, 0xd2) //                          xor  edx, edx
  a.emit(0x45, 0x31, 0xd2) //                    xor  r10d, r10d
  a.emit(0x45, 0x31, 0xc0) //                    xor  r8d, r8d
  a.emit(0xb8).imm32(56) //                      mov  eax, SYS_clone
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x85, 0xc0) //                    test rax, rax
  a.emit(0x0f, 0x84).rel32('idle') //            je   idle           ; the new thread
  a.emit(0x0f, 0x88).rel32('fail') //            js   fail           ; -errno
  a.emit(0x41, 0xff, 0xcc) //                    dec  r12d
  a.emit(0x0f, 0x85).rel32('spawn') //           jne  spawn
}

/**
 * `extra` times fork(); each child sets PR_SET_PDEATHSIG to SIGKILL, so it never outlives the target (the bench
 * kills only the parent), then joins the pause() loop. A pipe is the barrier: every child closes both its ends
 * once set up and the parent, having closed its write end, reads until EOF before it reports ready. So a ready
 * tree has every child in pause() with its death signal set, and no descriptor besides stdio shared between
 * members (a checkpoint with --tree refuses a shared pipe above fd 2). A child whose parent died before its
 * prctl (getppid differs from the pid saved before fork) exits at once: its death signal would never come.
 * Registers: rbx parent pid, ebp read end, r13d write end (r13 is free after the fill), r12d the countdown;
 * a syscall clobbers rax, rcx and r11 only, and a child starts with its parent's registers.
 */
function emitProcessSpawn(a: Assembler, extra: number): void {
  // pipe2(int fds[2] on the stack, 0)
  a.emit(0x48, 0x83, 0xec, 0x10) //              sub  rsp, 16
  a.emit(0x48, 0x89, 0xe7) //                    mov  rdi, rsp
  a.emit(0x31, 0xf6) //                          xor  esi, esi
  a.emit(0xb8).imm32(293) //                     mov  eax, SYS_pipe2
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x85, 0xc0) //                    test rax, rax
  a.emit(0x0f, 0x85).rel32('fail') //            jne  fail
  a.emit(0x8b, 0x2c, 0x24) //                    mov  ebp, [rsp]      ; read end
  a.emit(0x44, 0x8b, 0x6c, 0x24, 0x04) //        mov  r13d, [rsp + 4] ; write end
  a.emit(0xb8).imm32(39) //                      mov  eax, SYS_getpid
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x89, 0xc3) //                    mov  rbx, rax
  a.emit(0x41, 0xbc).imm32(extra) //             mov  r12d, extra
  a.label('fork')
  a.emit(0xb8).imm32(57) //                      mov  eax, SYS_fork
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x85, 0xc0) //                    test rax, rax
  a.emit(0x0f, 0x84).rel32('child') //           je   child
  a.emit(0x0f, 0x88).rel32('fail') //            js   fail           ; -errno (children made so far die with us)
  a.emit(0x41, 0xff, 0xcc) //                    dec  r12d
  a.emit(0x0f, 0x85).rel32('fork') //            jne  fork
  a.emit(0x44, 0x89, 0xef) //                    mov  edi, r13d
  a.emit(0xb8).imm32(3) //                       mov  eax, SYS_close
  a.emit(0x0f, 0x05) //                          syscall
  a.label('barrier')
  a.emit(0x89, 0xef) //                          mov  edi, ebp
  a.emit(0x48, 0x89, 0xe6) //                    mov  rsi, rsp
  a.emit(0xba).imm32(1) //                       mov  edx, 1
  a.emit(0x31, 0xc0) //                          xor  eax, eax        ; SYS_read
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x85, 0xc0) //                    test rax, rax
  a.emit(0x0f, 0x8f).rel32('barrier') //         jg   barrier        ; no child writes, but a byte is no EOF
  a.emit(0x0f, 0x88).rel32('fail') //            js   fail
  a.emit(0x89, 0xef) //                          mov  edi, ebp
  a.emit(0xb8).imm32(3) //                       mov  eax, SYS_close
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x83, 0xc4, 0x10) //              add  rsp, 16
  a.emit(0xe9).rel32('forked') //                jmp  forked
  a.label('child')
  a.emit(0xbf).imm32(1) //                       mov  edi, PR_SET_PDEATHSIG
  a.emit(0xbe).imm32(9) //                       mov  esi, SIGKILL
  a.emit(0xb8).imm32(157) //                     mov  eax, SYS_prctl
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x85, 0xc0) //                    test rax, rax
  a.emit(0x0f, 0x85).rel32('fail') //            jne  fail
  a.emit(0xb8).imm32(110) //                     mov  eax, SYS_getppid
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x48, 0x39, 0xd8) //                    cmp  rax, rbx
  a.emit(0x0f, 0x85).rel32('fail') //            jne  fail           ; orphaned before prctl
  a.emit(0x89, 0xef) //                          mov  edi, ebp
  a.emit(0xb8).imm32(3) //                       mov  eax, SYS_close
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0x44, 0x89, 0xef) //                    mov  edi, r13d
  a.emit(0xb8).imm32(3) //                       mov  eax, SYS_close
  a.emit(0x0f, 0x05) //                          syscall
  a.emit(0xe9).rel32('idle') //                  jmp  idle
  a.label('forked')
}

/** A static ET_EXEC image: ELF header, one R+X PT_LOAD of the whole file, PT_GNU_STACK. */
export function buildTargetElf(size: number, hugePages: boolean, threads = 1, processes = 1): Uint8Array {
  const code = targetCode(size, hugePages, threads, processes)
  const ehdr = 64
  const phdr = 56
  const codeOffset = ehdr + 2 * phdr
  const out = new Uint8Array(codeOffset + code.length)
  const dv = new DataView(out.buffer)
  out.set([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], 0)
  dv.setUint16(16, 2, true) // ET_EXEC
  dv.setUint16(18, 0x3e, true) // x86_64
  dv.setUint32(20, 1, true)
  dv.setBigUint64(24, LOAD_BASE + BigInt(codeOffset), true) // e_entry
  dv.setBigUint64(32, BigInt(ehdr), true) // e_phoff
  dv.setUint16(52, ehdr, true)
  dv.setUint16(54, phdr, true)
  dv.setUint16(56, 2, true) // e_phnum
  dv.setUint16(58, 64, true)
  let p = ehdr
  dv.setUint32(p, 1, true) // PT_LOAD
  dv.setUint32(p + 4, 5, true) // R+X
  dv.setBigUint64(p + 16, LOAD_BASE, true)
  dv.setBigUint64(p + 24, LOAD_BASE, true)
  dv.setBigUint64(p + 32, BigInt(out.length), true)
  dv.setBigUint64(p + 40, BigInt(out.length), true)
  dv.setBigUint64(p + 48, 0x1000n, true)
  p += phdr
  dv.setUint32(p, 0x6474e551, true) // PT_GNU_STACK
  dv.setUint32(p + 4, 6, true) // R+W
  dv.setBigUint64(p + 48, 16n, true)
  out.set(code, codeOffset)
  return out
}

/**
 * Executables of the targets, one per size, thread count and process count, in a private temporary directory
 * that lives for the whole run: checkpoints record the executable's path and
 * restores map it again, so it must stay until the last restore.
 */
export class TargetFiles {
  readonly dir: string
  private readonly paths = new Map<string, string>()

  constructor(private readonly hugePages: boolean) {
    this.dir = mkdtempSync(join(tmpdir(), 'cxlfork-bench-'))
  }

  /** Write (once) and return the executable for `size` bytes and `threads` threads or `processes` processes. */
  executable(size: number, threads = 1, processes = 1): string {
    // The single-process key is unchanged, so size rows and the threads section share their files as before.
    const key = processes === 1 ? `${size}-${threads}` : `${size}-${threads}-p${processes}`
    const known = this.paths.get(key)
    if (known !== undefined) return known
    // Every executable has the same file name (it becomes the comm), so each lives in a directory of its own.
    const sub = mkdtempSync(join(this.dir, `${key}-`))
    const path = join(sub, TARGET_COMM)
    writeFileSync(path, buildTargetElf(size, this.hugePages, threads, processes), {mode: 0o700})
    this.paths.set(key, path)
    return path
  }

  remove(): void {
    rmSync(this.dir, {recursive: true, force: true})
  }
}

export interface RunningTarget {
  pid: number
  /** ms from posix_spawn until the target reported every page touched. */
  readyMs: number
}

/**
 * Spawn a target (posix_spawn, not child_process, whose libuv would reap it) with fd 1 on a pipe, and block
 * until it writes its ready byte: that interval is the cold start.
 */
export function spawnTarget(executable: string): RunningTarget {
  const [readEnd, writeEnd] = pipe2(O.CLOEXEC)
  let writeOpen = true
  let pid = 0
  try {
    const t0 = performance.now()
    pid = posixSpawn({path: executable, argv: [executable], env: [], fds: [null, writeEnd, null], cwd: '/'})
    closeSync(writeEnd)
    writeOpen = false
    const byte = new Uint8Array(1)
    let got: number
    for (;;) {
      try {
        got = readSync(readEnd, byte, 0, 1, null)
        break
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code
        if (code !== 'EAGAIN' && code !== 'EINTR') throw error
      }
    }
    const readyMs = performance.now() - t0
    if (got !== 1 || byte[0] !== 0x52) {
      throw new CxlforkError('BENCH_TARGET_FAILED', `benchmark target ${executable} (pid ${pid}) exited before touching its memory`,
        'Its mmap probably failed: lower --sizes or free memory.')
    }
    return {pid, readyMs}
  } catch (error) {
    if (pid > 0) stopProcess(pid)
    throw error
  } finally {
    closeSync(readEnd)
    if (writeOpen) closeSync(writeEnd)
  }
}

/** SIGKILL a child (or an orphan adopted as subreaper) and reap it; never throws for a gone process. */
export function stopProcess(pid: number): void {
  killQuiet(pid, SIG.KILL)
  try {
    wait4(pid, 0)
    return
  } catch {
    // not our child: someone else reaps it
  }
  const deadline = Date.now() + 5000
  while (isAlive(pid) && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2)
}

/**
 * Safety net: kill and reap our children (or adopted orphans) named like a target, a clone, a stub or the
 * init of a multi-threaded clone's PID namespace (killing that init also ends every process inside).
 */
export function sweepChildren(): number[] {
  const swept: number[] = []
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const pid = Number(entry)
    try {
      const stat = readStat(pid)
      if (stat.ppid === process.pid && (stat.comm === TARGET_COMM || stat.comm === STUB_COMM || stat.comm === STUB_INIT_COMM)) {
        stopProcess(pid)
        swept.push(pid)
      }
    } catch {
      // gone meanwhile
    }
  }
  return swept
}

/** Check sampled pages (first, middle, last) of a live process against the pattern; returns the mismatching page or -1. */
export function verifyPattern(pid: number, base: bigint, size: number): number {
  const pages = size / 4096
  const word = new BigUint64Array(1)
  for (const page of [0, Math.floor(pages / 2), pages - 1]) {
    for (const offset of [0, 4088]) {
      vmRead(pid, base + BigInt(page * 4096 + offset), word, 8)
      if (word[0] !== PATTERN_BASE + BigInt(page)) return page
    }
  }
  return -1
}

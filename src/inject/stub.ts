/**
 * The restore stub: a minimal static x86_64 ELF executable generated here
 * byte by byte (no compiler at run time, no libc, no TLS, no rseq: a stub
 * with rseq registered is killed by SIGSEGV once its own memory is unmapped).
 * It names itself "cxlfork-stub" (PR_SET_NAME) and parks in nanosleep() for
 * STUB_PARK_SECONDS; a stub nobody seized by then ends itself.
 *
 * spawnStub() starts one with posix_spawn (never child_process, whose libuv
 * reaps children and can swallow ptrace stops), signal dispositions reset to
 * default and the blocked mask cleared (spawned children inherit ignored
 * dispositions, and Node ignores SIGPIPE), every fd but the requested 0/1/2
 * closed, then seizes it with PTRACE_O_EXITKILL so a stub never outlives a
 * failed caller.
 */
import * as fs from 'node:fs'
import * as os from 'node:os'
import * as path from 'node:path'
import {createHash} from 'node:crypto'
import {CxlforkError, SyscallError} from '../errors.js'
import {close, open, memfdCreate, writeAll} from '../sys/file-io.js'
import {wait4, PTRACE_O} from '../sys/ptrace.js'
import {posixSpawn} from '../sys/spawn.js'
import {killQuiet, MFD_CLOEXEC, O, SYS, MFD_EXEC, SIG, WNOHANG} from '../sys/syscall.js'
import {readMaps, vdsoLayout, type VdsoLayout, type Vma} from '../sys/proc.js'
import {Tracee} from './tracee.js'
import {faultPoint} from '../fault.js'

/** Default load address of the stub image: far from usual PIE/mmap/heap areas (0x2000000000 = 128 GiB). */
export const STUB_DEFAULT_BASE = 0x2000000000n
export const STUB_COMM = 'cxlfork-stub'
/** The name the stub takes when it becomes a clone's pid-namespace init. */
export const STUB_INIT_COMM = 'cxlfork-init'

const EHDR_SIZE = 64
const PHDR_SIZE = 56
const PT_LOAD = 1
const PT_GNU_STACK = 0x6474e551
const PF_X = 1
const PF_W = 2
const PF_R = 4

/**
 * The pid-namespace init routine (see src/restore/pid-namespace.ts), entered
 * by setting rip to it with r12 = the pid (in the namespace) of the clone's
 * root. It names itself STUB_INIT_COMM, reaps every child, and when the root
 * ends writes the root's raw wait status to fd 3 (a restore --wait reads it;
 * without fd 3 the write fails harmlessly) and exits with the root's exit
 * code, or 128 + the signal that killed it. No children at all: exit 0.
 *
 *  0: mov edi, 15 ; lea rsi, [rip + initname] ; mov eax, 157 ; syscall   prctl(PR_SET_NAME)
 * 13: sub rsp, 16 ; and rsp, -16
 * 1b: loop: wait4(-1, rsp, __WALL, 0) ; cmp rax, r12 ; je done ; cmp rax, -ECHILD ; je nochild ; jmp loop
 * 3f: done: write(3, rsp, 4) ; eax = status ; edi = status & 0x7f ; jz exited ; edi += 128 ; jmp out
 * 65: exited: edi = (status >> 8) & 0xff ; jmp out
 * 6d: nochild: edi = 0
 * 6f: out: exit_group(edi)
 */
const INIT_CODE = [
  0xbf, 0x0f, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x35, 0x6a, 0x00, 0x00, 0x00, 0xb8, 0x9d, 0x00, 0x00, 0x00, 0x0f, 0x05,
  0x48, 0x83, 0xec, 0x10, 0x48, 0x83, 0xe4, 0xf0,
  0xbf, 0xff, 0xff, 0xff, 0xff, 0x48, 0x89, 0xe6, 0xba, 0x00, 0x00, 0x00, 0x40, 0x45, 0x31, 0xd2, 0xb8, 0x3d, 0x00, 0x00, 0x00, 0x0f, 0x05,
  0x4c, 0x39, 0xe0, 0x74, 0x08, 0x48, 0x83, 0xf8, 0xf6, 0x74, 0x30, 0xeb, 0xdc,
  0xbf, 0x03, 0x00, 0x00, 0x00, 0x48, 0x89, 0xe6, 0xba, 0x04, 0x00, 0x00, 0x00, 0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05,
  0x8b, 0x04, 0x24, 0x89, 0xc7, 0x83, 0xe7, 0x7f, 0x74, 0x08, 0x81, 0xc7, 0x80, 0x00, 0x00, 0x00, 0xeb, 0x0a,
  0xc1, 0xe8, 0x08, 0x0f, 0xb6, 0xf8, 0xeb, 0x02,
  0x31, 0xff,
  0xb8, 0xe7, 0x00, 0x00, 0x00, 0x0f, 0x05,
]
/** The init routine's lea reaches its name right after its code (offset 0x76, rip after the lea is 0x0c). */
const INIT_NAME_REL = 0x6a

/**
 * The stub's machine code: the entry, the init routine and its name, then the
 * stub's name. The entry first asks for SIGKILL when its parent dies
 * (PR_SET_PDEATHSIG), then checks that its parent is still `spawner`: a
 * stub whose spawner died before it could be seized (with PTRACE_O_EXITKILL)
 * must not wait forever as an orphan. The restore clears the death signal of
 * the stub it releases. Then it names itself and parks in nanosleep(): a
 * stub never seized (its restore died before the seize, and the death
 * signal came too late or, for a namespace init, the parent check cannot see
 * the parent) ends itself after STUB_PARK_SECONDS.
 */
/**
 * How long a stub waits to be seized before it ends itself. A restore seizes
 * its stub right after spawning it; only a stub whose restore died in between
 * waits that long.
 */
export const STUB_PARK_SECONDS = 5

function stubCode(spawner: number): {bytes: Uint8Array; initOffset: number} {
  // 0:  bf 01 00 00 00          mov  edi, 1               ; PR_SET_PDEATHSIG
  // 5:  be 09 00 00 00          mov  esi, 9               ; SIGKILL
  // a:  b8 9d 00 00 00          mov  eax, 157             ; prctl
  // f:  0f 05                   syscall
  // 11: b8 6e 00 00 00          mov  eax, 110             ; getppid
  // 16: 0f 05                   syscall
  // 18: 3d XX XX XX XX          cmp  eax, spawner
  // 1d: 74 0d                   je   named
  // 1f: 85 c0                   test eax, eax             ; 0: the parent is outside our PID namespace (a clone's init)
  // 21: 74 09                   je   named
  // 23: b8 e7 00 00 00          mov  eax, 231             ; exit_group(0): orphaned at birth
  // 28: 31 ff                   xor  edi, edi
  // 2a: 0f 05                   syscall
  // 2c: bf 0f 00 00 00   named: mov  edi, 15              ; PR_SET_NAME
  // 31: 48 8d 35 XX XX XX XX    lea  rsi, [rip + name]
  // 38: b8 9d 00 00 00          mov  eax, 157             ; prctl
  // 3d: 0f 05                   syscall
  // 3f: 48 8d 3d XX XX XX XX    lea  rdi, [rip + park]    ; {PARK_SECONDS, 0}
  // 46: 31 f6                   xor  esi, esi
  // 48: b8 23 00 00 00          mov  eax, 35              ; nanosleep: parked here until seized
  // 4d: 0f 05                   syscall
  // 4f: b8 e7 00 00 00          mov  eax, 231             ; exit_group(0): never seized (an orphan whose
  // 54: 31 ff                   xor  edi, edi             ;   death signal came too late, such as a
  // 56: 0f 05                   syscall                   ;   namespace init, whose parent check cannot see its parent)
  // 58: the init routine, its name, the stub's name, then `park`
  const code = [
    0xbf, 0x01, 0x00, 0x00, 0x00,
    0xbe, 0x09, 0x00, 0x00, 0x00,
    0xb8, 0x9d, 0x00, 0x00, 0x00,
    0x0f, 0x05,
    0xb8, 0x6e, 0x00, 0x00, 0x00,
    0x0f, 0x05,
    0x3d, spawner & 0xff, (spawner >> 8) & 0xff, (spawner >> 16) & 0xff, (spawner >>> 24) & 0xff,
    0x74, 0x0d,
    0x85, 0xc0,
    0x74, 0x09,
    0xb8, 0xe7, 0x00, 0x00, 0x00,
    0x31, 0xff,
    0x0f, 0x05,
    0xbf, 0x0f, 0x00, 0x00, 0x00,
    0x48, 0x8d, 0x35, 0, 0, 0, 0,
    0xb8, 0x9d, 0x00, 0x00, 0x00,
    0x0f, 0x05,
    0x48, 0x8d, 0x3d, 0, 0, 0, 0,
    0x31, 0xf6,
    0xb8, 0x23, 0x00, 0x00, 0x00,
    0x0f, 0x05,
    0xb8, 0xe7, 0x00, 0x00, 0x00,
    0x31, 0xff,
    0x0f, 0x05,
  ]
  const initOffset = code.length
  if (initOffset !== 0x58 || INIT_CODE.length !== 0x76 || INIT_CODE[8] !== INIT_NAME_REL) throw new Error('stub code is malformed')
  const initName = Buffer.from(STUB_INIT_COMM + '\0', 'latin1')
  const nameOff = initOffset + INIT_CODE.length + initName.length
  const rel = nameOff - 0x38 // rip after the lea
  code[0x34] = rel & 0xff
  code[0x35] = (rel >> 8) & 0xff
  const name = Buffer.from(STUB_COMM + '\0', 'latin1')
  const parkOff = nameOff + name.length
  const parkRel = parkOff - 0x46
  code[0x42] = parkRel & 0xff
  code[0x43] = (parkRel >> 8) & 0xff
  const park = new Uint8Array(16)
  new DataView(park.buffer).setBigInt64(0, BigInt(STUB_PARK_SECONDS), true)
  return {bytes: Uint8Array.from([...code, ...INIT_CODE, ...initName, ...name, ...park]), initOffset}
}

/** Address of the init routine in a stub loaded at `base`. */
export function stubInitEntry(base: bigint): bigint {
  return base + BigInt(EHDR_SIZE + 2 * PHDR_SIZE + stubCode(process.pid).initOffset)
}

/** Bytes of the stub ELF executable loaded at `base` (page aligned). */
export function buildStubElf(base: bigint = STUB_DEFAULT_BASE, spawner: number = process.pid): Uint8Array {
  if (base % 4096n !== 0n) throw new RangeError('stub base must be page aligned')
  const code = stubCode(spawner).bytes
  const codeOff = EHDR_SIZE + 2 * PHDR_SIZE
  const total = codeOff + code.length
  const b = new Uint8Array(total)
  const dv = new DataView(b.buffer)
  // e_ident
  b.set([0x7f, 0x45, 0x4c, 0x46, 2 /* 64-bit */, 1 /* LE */, 1 /* version */, 0 /* SysV */], 0)
  dv.setUint16(16, 2, true) // e_type = ET_EXEC
  dv.setUint16(18, 0x3e, true) // e_machine = x86_64
  dv.setUint32(20, 1, true) // e_version
  dv.setBigUint64(24, base + BigInt(codeOff), true) // e_entry
  dv.setBigUint64(32, BigInt(EHDR_SIZE), true) // e_phoff
  dv.setBigUint64(40, 0n, true) // e_shoff
  dv.setUint32(48, 0, true) // e_flags
  dv.setUint16(52, EHDR_SIZE, true) // e_ehsize
  dv.setUint16(54, PHDR_SIZE, true) // e_phentsize
  dv.setUint16(56, 2, true) // e_phnum
  dv.setUint16(58, 64, true) // e_shentsize
  dv.setUint16(60, 0, true) // e_shnum
  dv.setUint16(62, 0, true) // e_shstrndx
  // PT_LOAD: the whole file, R+X
  let p = EHDR_SIZE
  dv.setUint32(p, PT_LOAD, true)
  dv.setUint32(p + 4, PF_R | PF_X, true)
  dv.setBigUint64(p + 8, 0n, true) // p_offset
  dv.setBigUint64(p + 16, base, true) // p_vaddr
  dv.setBigUint64(p + 24, base, true) // p_paddr
  dv.setBigUint64(p + 32, BigInt(total), true) // p_filesz
  dv.setBigUint64(p + 40, BigInt(total), true) // p_memsz
  dv.setBigUint64(p + 48, 0x1000n, true) // p_align
  // PT_GNU_STACK: non-executable stack
  p += PHDR_SIZE
  dv.setUint32(p, PT_GNU_STACK, true)
  dv.setUint32(p + 4, PF_R | PF_W, true)
  dv.setBigUint64(p + 48, 16n, true)
  b.set(code, codeOff)
  return b
}

interface StubFile {
  path: string
  base: bigint
  size: number
}

const stubFiles = new Map<bigint, StubFile>()

/**
 * A path to an executable copy of the stub. First choice: a memfd of this
 * process, executed through /proc/<our pid>/fd/N (no file on disk, nothing a
 * noexec mount or another user can interfere with). Fallback (memfd exec
 * forbidden by vm.memfd_noexec): a file in a private 0700 directory under
 * os.tmpdir(), verified to be ours.
 */
export function stubExecutable(base: bigint = STUB_DEFAULT_BASE): StubFile {
  const cached = stubFiles.get(base)
  if (cached) return cached
  const elf = buildStubElf(base)
  let file: StubFile | null = null
  try {
    let fd: number
    try {
      fd = memfdCreate(STUB_COMM, MFD_CLOEXEC | MFD_EXEC)
    } catch (err) {
      if (!(err instanceof SyscallError) || err.errno !== 22) throw err
      fd = memfdCreate(STUB_COMM, MFD_CLOEXEC) // kernel < 6.3: no MFD_EXEC
    }
    let ro: number
    try {
      writeAll(fd, elf)
      // exec refuses a file open for writing (ETXTBSY): keep a read-only fd only.
      ro = open(`/proc/self/fd/${fd}`, O.RDONLY)
    } finally {
      close(fd)
    }
    file = {path: `/proc/${process.pid}/fd/${ro}`, base, size: elf.length}
  } catch {
    file = null
  }
  if (file === null) {
    const uid = process.getuid?.() ?? 0
    const dir = path.join(os.tmpdir(), `cxlfork-${uid}`)
    fs.mkdirSync(dir, {recursive: true, mode: 0o700})
    const st = fs.lstatSync(dir)
    if (!st.isDirectory() || st.uid !== uid || (st.mode & 0o077) !== 0) {
      throw new CxlforkError('STUB_DIR_UNSAFE', `${dir} is not a private directory owned by uid ${uid}`, `remove ${dir} and retry`)
    }
    const hash = createHash('sha256').update(elf).digest('hex').slice(0, 16)
    const p = path.join(dir, `stub-${hash}`)
    let ok = false
    try {
      ok = Buffer.compare(fs.readFileSync(p), Buffer.from(elf)) === 0
    } catch {
      ok = false
    }
    if (!ok) {
      const tmp = `${p}.${process.pid}.tmp`
      fs.writeFileSync(tmp, elf, {mode: 0o700})
      fs.renameSync(tmp, p)
    }
    file = {path: p, base, size: elf.length}
  }
  stubFiles.set(base, file)
  return file
}

export interface StubOptions {
  /** Parent fds that become the stub's 0, 1, 2 (null: /dev/null). Default: /dev/null for all three. */
  stdin?: number | null
  stdout?: number | null
  stderr?: number | null
  /**
   * Full child fd table instead (index = child fd, value = parent fd or null
   * for /dev/null); overrides stdin/stdout/stderr. Everything else is closed.
   */
  fds?: (number | null)[]
  cwd?: string
  /** Environment of the stub (default empty). */
  env?: string[] | Record<string, string>
  /** argv of the stub (default [STUB_COMM]). */
  argv?: string[]
  /** Start the stub in a new session (no controlling terminal, no job-control signals). Default true. */
  setsid?: boolean
  /** Load address of the stub image (default STUB_DEFAULT_BASE); pick one that does not collide with the image to restore. */
  base?: bigint
  /** Extra PTRACE_O_* bits (EXITKILL and TRACESYSGOOD are always set). */
  ptraceOptions?: number
}

export interface Stub {
  pid: number
  /** The stub, seized and stopped. */
  tracee: Tracee
  /** Its memory map right after the seize. */
  maps: Vma[]
  /** [start, end) of the stub's own code mapping. */
  image: [bigint, bigint]
  vdso: VdsoLayout
  /** Where the stub's init routine starts (see INIT_CODE). */
  initEntry: bigint
  /** SIGKILL + reap (idempotent). */
  kill(): void
}

/**
 * Spawns a stub and returns it seized and stopped (PTRACE_O_EXITKILL: it dies
 * with us). On any failure the stub is killed and reaped before the error
 * propagates.
 */
export function spawnStub(opts: StubOptions = {}): Stub {
  const base = opts.base ?? STUB_DEFAULT_BASE
  const exe = stubExecutable(base)
  const fds = opts.fds ?? [opts.stdin ?? null, opts.stdout ?? null, opts.stderr ?? null]
  const pid = posixSpawn({
    path: exe.path, argv: opts.argv ?? [STUB_COMM], env: opts.env ?? [], fds, ...(opts.cwd === undefined ? {} : {cwd: opts.cwd}),
    resetSignals: true, setsid: opts.setsid ?? true,
  })
  // Killed here, before the seize, cxlfork leaves a stub whose parent is gone: it exits by itself (stubCode).
  faultPoint('stub-spawned')
  let tracee: Tracee | null = null
  try {
    tracee = Tracee.seize(pid, {options: PTRACE_O.EXITKILL | (opts.ptraceOptions ?? 0), timeoutMs: 10_000})
    // Start race: posix_spawn returns before the stub runs, so the seize may land before it has named
    // itself and parked in nanosleep(). Let it run until it is parked there.
    for (let i = 0; tracee.getRegs().orig_rax !== BigInt(SYS.nanosleep); i++) {
      if (i > 2000) throw new CxlforkError('STUB_NOT_PARKED', `stub ${pid} did not reach its park`)
      tracee.cont()
      if (i > 10) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1)
      tracee.interrupt(10_000)
    }
    // Spawned with every signal reset to its default: SIGTRAP is not ignored.
    tracee.knowTrapIgnored(false)
    const maps = readMaps(pid)
    const img = maps.find((v) => v.start === base)
    if (!img) throw new CxlforkError('STUB_BAD_LAYOUT', `stub ${pid} has no image mapping at 0x${base.toString(16)}`)
    const t = tracee
    return {
      pid, tracee: t, maps, image: [img.start, img.end], vdso: vdsoLayout(maps), initEntry: stubInitEntry(base),
      kill: () => t.kill(),
    }
  } catch (err) {
    if (tracee) tracee.kill()
    else {
      killQuiet(pid, SIG.KILL)
      try {
        wait4(pid, 0)
        wait4(pid, WNOHANG)
      } catch {
        /* reaped */
      }
    }
    throw err
  }
}

import {strict as assert} from 'node:assert'
import {ConflictError, NotFoundError, SyscallError, UnsupportedError} from '../../src/errors.js'
import {writeAll} from '../../src/sys/file-io.js'
import {ptrace, PTRACE, wait4} from '../../src/sys/ptrace.js'
import {kill, SIG, SYS, tgkill} from '../../src/sys/syscall.js'
import {readStat, readStatus, readMaps} from '../../src/sys/proc.js'
import {REG, restartFixup, signed} from '../../src/inject/regs.js'
import {Tracee} from '../../src/inject/tracee.js'
import {cleanupProcs, readLine, spawnProc, spawnPython, sleepMs, waitInSyscall, waitState} from '../sys/helpers.js'

const tracees: Tracee[] = []
function seize(pid: number): Tracee {
  const t = Tracee.seize(pid)
  tracees.push(t)
  return t
}

const bit = (n: number): bigint => 1n << BigInt(n - 1)

describe('inject/tracee', () => {
  afterEach(() => {
    for (const t of tracees.splice(0)) t.kill()
    cleanupProcs()
  })

  it('seize + interrupt a sleeping process; regs; injected getpid/getppid; restart after detach', () => {
    // coreutils sleep: nanosleep -> -ERESTART_RESTARTBLOCK while stopped; it must still be
    // sleeping when seized, and finish by itself after the detach (1 s leaves room on a loaded host)
    const p = spawnProc('/bin/sleep', ['sleep', '1'])
    waitInSyscall(p.pid, [SYS.nanosleep, SYS.clock_nanosleep])
    const t = Tracee.seize(p.pid)
    assert.equal(readStat(p.pid).state, 't')
    const r = t.getRegs()
    assert.ok([35n, 230n].includes(r.orig_rax), `stopped in nanosleep, orig_rax=${r.orig_rax}`)
    assert.equal(signed(r.rax), -516n)
    assert.equal(t.syscall(SYS.getpid), BigInt(p.pid))
    assert.equal(t.syscall(SYS.getppid), BigInt(process.pid))
    assert.equal(t.syscall(SYS.close, 999), -9n)
    assert.throws(() => t.syscallChecked('close', SYS.close, 999), (e: unknown) => e instanceof SyscallError && e.errno === 9)
    // program registers are unchanged by injections
    assert.deepEqual(t.getRegs(), r)
    t.detach()
    // if the restart fix-up were wrong, sleep would see errno 516 and exit 1
    const w = wait4(p.pid)!
    assert.ok(w.exited, JSON.stringify(w))
    assert.equal(w.exitCode, 0)
  })

  it('read() interrupted by the seize restarts correctly after injections (ERESTARTSYS)', () => {
    const p = spawnPython('import sys\nprint("ready", flush=True)\nline = sys.stdin.readline()\nprint("echo " + line.strip(), flush=True)', {pipeIn: true})
    assert.equal(readLine(p.out!), 'ready')
    waitState(p.pid, (s) => s === 'S')
    const t = seize(p.pid)
    assert.equal(t.getRegs().orig_rax, BigInt(SYS.read))
    for (let i = 0; i < 5; i++) assert.equal(t.syscall(SYS.getpid), BigInt(p.pid))
    t.detach()
    writeAll(p.in!, Buffer.from('abc\n'))
    assert.equal(readLine(p.out!), 'echo abc')
  })

  it('setRegs round trip is real (checked with a raw PTRACE_GETREGS)', () => {
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    const t = seize(p.pid)
    const orig = t.getRegs()
    t.setRegs({...orig, r15: 0x1122334455667788n, rbx: 42n})
    const raw = new BigUint64Array(27)
    ptrace(PTRACE.GETREGS, p.pid, 0, raw)
    assert.equal(raw[REG.r15], 0x1122334455667788n)
    assert.equal(raw[REG.rbx], 42n)
    assert.equal(t.getRegs().r15, 0x1122334455667788n)
    t.setRegs(orig)
    ptrace(PTRACE.GETREGS, p.pid, 0, raw)
    assert.equal(raw[REG.r15], orig.r15)
    assert.ok(raw[REG.fs_base]! > 0n, 'fs_base (TLS of glibc) is part of the regs')
  })

  it('scratch memory: injected mmap, write, injected getcwd into it, read back', () => {
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    const t = seize(p.pid)
    const base = t.scratch(8192)
    const vma = readMaps(p.pid).find((v) => v.start === base)!
    assert.equal(vma.perms, 'rw-s')
    assert.equal(vma.size, 8192, 'scratch is its own VMA')
    assert.deepEqual(t.scratchRange, [base, base + 8192n])
    const s = t.scratchWrite('hello scratch')
    assert.equal(Buffer.from(t.readMemory(s, 13)).toString(), 'hello scratch')
    const out = t.scratchAlloc(256)
    const n = t.syscallChecked('getcwd', SYS.getcwd, out, 256)
    assert.equal(Buffer.from(t.readMemory(out, Number(n) - 1)).toString(), process.cwd())
    // write into a read-only page falls back to /proc/PID/mem
    const ro = readMaps(p.pid).find((v) => v.kind === 'file' && v.perms === 'r--p')!
    const before = t.readMemory(ro.start, 4)
    t.writeMemory(ro.start, Uint8Array.of(1, 2, 3, 4))
    assert.deepEqual([...t.readMemory(ro.start, 4)], [1, 2, 3, 4])
    t.writeMemory(ro.start, before)
    t.freeScratch()
    assert.equal(readMaps(p.pid).find((v) => v.start === base), undefined)
  })

  it('xstate: size > 512, round trip, and a change to xmm0 is real', () => {
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    const t = seize(p.pid)
    const xs = t.getXState()
    assert.ok(xs.length > 512, `xstate ${xs.length}`)
    const mod = new Uint8Array(xs)
    mod.set([0xde, 0xad, 0xbe, 0xef], 160) // XMM0 in the legacy FXSAVE area
    t.setXState(mod)
    assert.deepEqual([...t.getXState().subarray(160, 164)], [0xde, 0xad, 0xbe, 0xef])
    assert.deepEqual([...t.getFpRegs().subarray(160, 164)], [0xde, 0xad, 0xbe, 0xef])
    t.setXState(xs)
    assert.deepEqual(t.getXState(), xs)
  })

  it('signal mask and pending queues; a pending signal survives injections', () => {
    const p = spawnPython([
      'import signal, time, sys',
      'signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})',
      'signal.signal(signal.SIGUSR2, lambda *a: print("got usr2", flush=True))',
      'print("ready", flush=True)',
      'while True: time.sleep(0.05)',
    ].join('\n'))
    assert.equal(readLine(p.out!), 'ready')
    const t = seize(p.pid)
    const mask = t.getSigMask()
    assert.equal(mask & bit(SIG.USR1), bit(SIG.USR1))
    assert.equal(mask & bit(SIG.USR2), 0n)
    kill(p.pid, SIG.USR1) // shared queue, blocked: stays pending
    tgkill(p.pid, p.pid, SIG.USR1) // private queue
    const q = t.peekPendingSignals()
    assert.equal(q.shared.length, 1)
    assert.equal(q.private.length, 1)
    const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset)
    assert.equal(dv(q.shared[0]!).getInt32(0, true), SIG.USR1)
    assert.equal(dv(q.shared[0]!).getInt32(8, true), 0) // SI_USER
    assert.equal(dv(q.private[0]!).getInt32(8, true), -6) // SI_TKILL
    // SIGUSR2 arrives while stopped; injections must not consume it
    kill(p.pid, SIG.USR2)
    for (let i = 0; i < 10; i++) t.syscall(SYS.getpid)
    assert.equal(t.getSigMask(), mask, 'program mask reported during injection')
    assert.notEqual(readStatus(p.pid).sigBlk, mask, 'kernel mask is all-blocked while injecting')
    t.setSigMask(mask | bit(SIG.HUP))
    t.detach()
    assert.equal(readLine(p.out!), 'got usr2')
    assert.equal(readStatus(p.pid).sigBlk, mask | bit(SIG.HUP))
  })

  it('rseq configuration of a glibc process', () => {
    const p = spawnPython('import time\nprint("ready", flush=True)\ntime.sleep(60)')
    assert.equal(readLine(p.out!), 'ready')
    const t = seize(p.pid)
    const c = t.getRseqConfig()
    assert.ok(c.rseqAbiPointer > 0n)
    assert.ok(c.rseqAbiSize >= 20)
    assert.equal(c.signature, 0x53053053)
    // the rseq area lies in the thread's TLS block, near fs_base
    const fsBase = t.getRegs().fs_base
    const d = c.rseqAbiPointer > fsBase ? c.rseqAbiPointer - fsBase : fsBase - c.rseqAbiPointer
    assert.ok(d < 1n << 20n)
  })

  it('fork snapshot: injected clone(CLONE_PARENT|SIGCHLD) gives a stopped copy-on-write child', () => {
    const p = spawnPython([
      'import ctypes, time, sys',
      'buf = ctypes.create_string_buffer(b"generation-1", 64)',
      'print(hex(ctypes.addressof(buf)), flush=True)',
      'sys.stdin.readline()',
      'print(buf.value.decode(), flush=True)',
    ].join('\n'), {pipeIn: true})
    const addr = BigInt(readLine(p.out!))
    const t = seize(p.pid)
    const regsBefore = t.getRegs()
    const {pid: cpid, tracee: child} = t.injectFork()
    tracees.push(child)
    assert.notEqual(cpid, p.pid)
    const cst = readStat(cpid)
    assert.equal(cst.ppid, process.pid, 'CLONE_PARENT: sibling of the target')
    assert.equal(cst.state, 't')
    assert.equal(child.getSigMask(), t.getSigMask())
    // the child holds the snapshot even after the parent writes
    t.writeMemory(addr, Buffer.from('generation-2\0'))
    assert.equal(Buffer.from(child.readMemory(addr, 12)).toString(), 'generation-1')
    assert.equal(Buffer.from(t.readMemory(addr, 12)).toString(), 'generation-2')
    assert.deepEqual(t.getRegs(), regsBefore)
    child.kill()
    assert.throws(() => readStat(cpid), NotFoundError)
    t.detach()
    writeAll(p.in!, Buffer.from('\n'))
    assert.equal(readLine(p.out!), 'generation-2')
  })

  it('errors: no such process, kernel thread, zombie, self, already traced', () => {
    assert.throws(() => Tracee.seize(2 ** 22 + 999), (e: unknown) => e instanceof NotFoundError && e.code === 'PROCESS_NOT_FOUND')
    assert.throws(() => Tracee.seize(2), (e: unknown) => e instanceof UnsupportedError && e.code === 'KERNEL_THREAD')
    assert.throws(() => Tracee.seize(process.pid), UnsupportedError)
    const z = spawnProc('/bin/true', ['true'])
    waitState(z.pid, (s) => s === 'Z')
    assert.throws(() => Tracee.seize(z.pid), (e: unknown) => e instanceof UnsupportedError && e.code === 'PROCESS_ZOMBIE' && e.exitCode === 5 && /zombie/.test(e.message))
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    seize(p.pid)
    assert.throws(() => Tracee.seize(p.pid), (e: unknown) => e instanceof ConflictError && e.code === 'ALREADY_TRACED')
  })

  it('injected exit_group ends the tracee; later calls fail cleanly', () => {
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    const t = seize(p.pid)
    assert.equal(t.syscall(SYS.exit_group, 3), 0n)
    assert.equal(t.isAlive, false)
    assert.throws(() => t.syscall(SYS.getpid), NotFoundError)
    assert.throws(() => readStat(p.pid), NotFoundError) // reaped
  })

  it('restartFixup maps interrupted syscalls for live and restored resumption', () => {
    const r = new BigUint64Array(27)
    r[REG.orig_rax] = 230n
    r[REG.rax] = BigInt.asUintN(64, -516n)
    r[REG.rip] = 0x1000n
    const live = restartFixup(r, 'live')
    assert.deepEqual([live[REG.rax], live[REG.rip], signed(live[REG.orig_rax]!)], [219n, 0xffen, -1n])
    const rest = restartFixup(r, 'restore')
    assert.deepEqual([signed(rest[REG.rax]!), rest[REG.rip]], [-4n, 0x1000n])
    r[REG.rax] = BigInt.asUintN(64, -512n)
    assert.deepEqual([restartFixup(r, 'restore')[REG.rax], restartFixup(r, 'restore')[REG.rip]], [230n, 0xffen])
    // poll(2) interrupted through its restart block: a restored process runs it again (its arguments are still in rdi, rsi, rdx).
    r[REG.orig_rax] = 7n
    r[REG.rax] = BigInt.asUintN(64, -516n)
    const poll = restartFixup(r, 'restore')
    assert.deepEqual([poll[REG.rax], poll[REG.rip], signed(poll[REG.orig_rax]!)], [7n, 0xffen, -1n])
    assert.deepEqual([restartFixup(r, 'live')[REG.rax], restartFixup(r, 'live')[REG.rip]], [219n, 0xffen])
  })

  it('batched injection: results, stopOnError, SIGTRAP disposition untouched (handler and ignored)', () => {
    const p = spawnPython([
      'import signal, sys, os',
      'hits = []',
      'signal.signal(signal.SIGTRAP, lambda *a: hits.append(1))',
      'print("ready", flush=True)',
      'sys.stdin.readline()',
      'print(len(hits), signal.getsignal(signal.SIGTRAP) is not signal.SIG_DFL, flush=True)',
      'signal.signal(signal.SIGTRAP, signal.SIG_IGN)',
      'print("ign", flush=True)',
      'sys.stdin.readline()',
      'print(signal.getsignal(signal.SIGTRAP) is signal.SIG_IGN, flush=True)',
    ].join('\n'), {pipeIn: true})
    assert.equal(readLine(p.out!), 'ready')
    let t = Tracee.seize(p.pid)
    tracees.push(t)
    const regs = t.getRegs()
    const res = t.syscalls([{nr: SYS.getpid}, {nr: SYS.close, args: [999]}, {nr: SYS.getppid}])
    assert.deepEqual(res, [BigInt(p.pid), -9n, BigInt(process.pid)])
    assert.deepEqual(t.syscalls([{nr: SYS.getpid}, {nr: SYS.close, args: [999]}, {nr: SYS.getppid}], {stopOnError: true}), [BigInt(p.pid), -9n])
    // more than one table's worth
    const many = t.syscalls(Array.from({length: 2500}, () => ({nr: SYS.getpid})))
    assert.equal(many.length, 2500)
    assert.ok(many.every((v) => v === BigInt(p.pid)))
    assert.equal(t.injectionRanges().length, 1)
    assert.deepEqual(t.getRegs(), regs)
    t.freeBatch()
    t.detach()
    writeAll(p.in!, Buffer.from('\n'))
    assert.equal(readLine(p.out!), '0 True', 'handler neither run nor reset by the int3 SIGTRAPs')
    assert.equal(readLine(p.out!), 'ign')
    t = Tracee.seize(p.pid)
    tracees.push(t)
    assert.deepEqual(t.syscalls([{nr: SYS.getpid}, {nr: SYS.getppid}]), [BigInt(p.pid), BigInt(process.pid)])
    assert.equal(t.injectionRanges().length, 0, 'SIGTRAP ignored: fell back to single injections')
    t.detach()
    writeAll(p.in!, Buffer.from('\n'))
    assert.equal(readLine(p.out!), 'True')
  })

  it('a started batch runs while the caller works; injections are refused until finish(), which returns what syscalls() would', () => {
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    const t = seize(p.pid)
    const regs = t.getRegs()
    const delay = new BigUint64Array([0n, 300_000_000n]) // 300 ms
    const timespec = t.scratchWrite(new Uint8Array(delay.buffer))
    const pending = t.startSyscalls([{nr: SYS.nanosleep, args: [timespec, 0]}, {nr: SYS.getpid}])
    // Back at once: the tracee sleeps in its nanosleep (S), it is not in a ptrace stop (t).
    waitState(p.pid, (s) => s === 'S')
    assert.equal(t.isStopped, false)
    assert.throws(() => t.syscall(SYS.getpid), (e: unknown) => (e as {code?: string}).code === 'TRACEE_RUNNING')
    assert.deepEqual(pending.finish(), [0n, BigInt(p.pid)])
    assert.deepEqual(pending.finish(), [0n, BigInt(p.pid)], 'finish() again: the same results')
    // More than one table's worth: the rest runs in finish(); stopOnError ends at the first failure.
    const many = t.startSyscalls(Array.from({length: 2500}, (_, i) => (i === 2000 ? {nr: SYS.close, args: [999]} : {nr: SYS.getpid})), {stopOnError: true}).finish()
    assert.equal(many.length, 2001)
    assert.equal(many[2000], -9n)
    assert.ok(many.slice(0, 2000).every((v) => v === BigInt(p.pid)))
    assert.deepEqual(t.getRegs(), regs)
    t.detach()
    // Right after the detach it runs for a moment (its interrupted nanosleep restarts): wait for it to sleep again.
    assert.equal(waitState(p.pid, (s) => s === 'S'), 'S', 'the program sleeps on')
  })

  it('measures injected syscall latency', () => {
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    const t = seize(p.pid)
    t.syscall(SYS.getpid)
    const n = 2000
    const t0 = process.hrtime.bigint()
    for (let i = 0; i < n; i++) t.syscall(SYS.getpid)
    const us = Number(process.hrtime.bigint() - t0) / n / 1000
    assert.equal(t.injectedCount, n + 1)
    const calls = Array.from({length: 64}, () => ({nr: SYS.getpid}))
    t.syscalls(calls)
    const t1 = process.hrtime.bigint()
    for (let i = 0; i < 50; i++) t.syscalls(calls)
    const bus = Number(process.hrtime.bigint() - t1) / (50 * 64) / 1000
    console.log(`      injected syscall (warm): ${us.toFixed(1)} µs single, ${bus.toFixed(2)} µs per call in batches of 64`)
    void sleepMs
  })
})

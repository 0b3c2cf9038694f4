import {strict as assert} from 'node:assert'
import {fileURLToPath} from 'node:url'
import * as path from 'node:path'
import {close, pipe2, read} from '../../src/sys/file-io.js'
import {wait4} from '../../src/sys/ptrace.js'
import {posixSpawn} from '../../src/sys/spawn.js'
import {prctl, SYS} from '../../src/sys/syscall.js'
import {listFds, readMaps, readStat, readStatus} from '../../src/sys/proc.js'
import {buildStubElf, spawnStub, STUB_COMM, STUB_DEFAULT_BASE, type Stub} from '../../src/inject/stub.js'
import {cleanupProcs, readLine, sleepMs, track} from '../sys/helpers.js'

const stubs: Stub[] = []
const fds: number[] = []

describe('inject/stub', () => {
  afterEach(() => {
    for (const s of stubs.splice(0)) s.kill()
    for (const fd of fds.splice(0)) close(fd)
    cleanupProcs()
  })

  it('builds a static ELF: one PT_LOAD, entry inside it, no interpreter', () => {
    const b = buildStubElf(0x5000000000n)
    const dv = new DataView(b.buffer)
    assert.deepEqual([...b.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46])
    assert.equal(dv.getUint16(16, true), 2) // ET_EXEC
    assert.equal(dv.getUint16(18, true), 0x3e)
    const entry = dv.getBigUint64(24, true)
    assert.ok(entry > 0x5000000000n && entry < 0x5000000000n + BigInt(b.length))
    const phnum = dv.getUint16(56, true)
    const types = Array.from({length: phnum}, (_, i) => dv.getUint32(64 + 56 * i, true))
    assert.deepEqual(types, [1, 0x6474e551]) // PT_LOAD, PT_GNU_STACK; no PT_INTERP, no PT_TLS
    assert.throws(() => buildStubElf(0x5000000001n), RangeError)
  })

  it('spawns, is seized and stopped, clean process state; injected write reaches our pipe', () => {
    const [r, w] = pipe2()
    fds.push(r)
    const s = spawnStub({stdout: w})
    stubs.push(s)
    close(w)
    const st = readStatus(s.pid)
    assert.equal(st.name, STUB_COMM)
    assert.equal(st.tracerPid, process.pid)
    assert.equal(readStat(s.pid).state, 't')
    assert.equal(st.sigIgn, 0n, 'Node ignores SIGPIPE; the stub must not inherit that')
    assert.equal(st.sigBlk, 0n)
    assert.deepEqual(listFds(s.pid).map((f) => f.fd), [0, 1, 2])
    assert.equal(listFds(s.pid)[0]!.target, '/dev/null')
    assert.equal(readStat(s.pid).session, s.pid, 'own session')
    // memory: image, stack, vDSO block, vsyscall; no heap, no libc
    const maps = readMaps(s.pid)
    assert.deepEqual(s.image, [STUB_DEFAULT_BASE, STUB_DEFAULT_BASE + 4096n])
    assert.ok(!maps.some((v) => v.kind === 'heap' || v.path.includes('libc')))
    assert.equal(s.vdso.parts.length >= 2, true)
    assert.equal(s.tracee.getRseqConfig().rseqAbiPointer, 0n, 'no rseq registered')
    // it parks in nanosleep() (ending itself if never seized: STUB_PARK_SECONDS)
    const regs = s.tracee.getRegs()
    assert.equal(regs.orig_rax, BigInt(SYS.nanosleep))
    assert.ok(regs.rip > s.image[0] && regs.rip < s.image[1])
    const msg = s.tracee.scratchWrite('hello from the stub\n')
    assert.equal(s.tracee.syscall(SYS.write, 1, msg, 20), 20n)
    assert.equal(readLine(r), 'hello from the stub')
    assert.equal(s.tracee.syscall(SYS.getppid), BigInt(process.pid))
    s.kill()
    assert.throws(() => readStat(s.pid))
  })

  it('several stubs at once, each independent', () => {
    const a = spawnStub()
    stubs.push(a)
    const b = spawnStub({env: {A: '1'}, cwd: '/tmp'})
    stubs.push(b)
    assert.notEqual(a.pid, b.pid)
    assert.equal(a.tracee.syscall(SYS.getpid), BigInt(a.pid))
    assert.equal(b.tracee.syscall(SYS.getpid), BigInt(b.pid))
    const out = b.tracee.scratchAlloc(64)
    const n = b.tracee.syscallChecked('getcwd', SYS.getcwd, out, 64)
    assert.equal(Buffer.from(b.tracee.readMemory(out, Number(n) - 1)).toString(), '/tmp')
  })

  it('a stub never outlives its spawner (PTRACE_O_EXITKILL)', function () {
    this.timeout(20000)
    // Become a child subreaper for this test, so the orphaned stub is
    // reparented to us (and reaped here) rather than to a pid 1 that may not reap.
    prctl(36 /* PR_SET_CHILD_SUBREAPER */, 1)
    try {
      exitKillCase()
    } finally {
      prctl(36, 0)
    }
  })
})

function exitKillCase(): void {
    const here = path.dirname(fileURLToPath(import.meta.url))
    const stubJs = path.resolve(here, '../../src/inject/stub.js')
    const [r, w] = pipe2()
    fds.push(r)
    const script = `import {spawnStub} from ${JSON.stringify(stubJs)}; const s = spawnStub(); process.stdout.write(s.pid + "\\n"); process.exit(0)`
    const node = posixSpawn({path: process.execPath, argv: ['node', '--input-type=module', '-e', script], fds: [null, w, 2]})
    track(node)
    close(w)
    const stubPid = Number(readLine(r))
    assert.ok(stubPid > 0)
    const wn = wait4(node)!
    assert.equal(wn.exitCode, 0)
    let gone = false
    for (let i = 0; i < 500 && !gone; i++) {
      try {
        const st = readStat(stubPid)
        gone = st.state === 'Z' || st.state === 'X' || st.comm !== STUB_COMM
      } catch {
        gone = true
      }
      if (!gone) sleepMs(10)
    }
    assert.ok(gone, `stub ${stubPid} survived its spawner`)
    const ws = wait4(stubPid)! // reparented to us (subreaper): reap it
    assert.equal(ws.termSignal, 9, 'killed by PTRACE_O_EXITKILL')
    void read
}

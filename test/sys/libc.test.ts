import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import {NotFoundError, SyscallError} from '../../src/errors.js'
import {close, fstat, ftruncate, memfdCreate, open, pread, pwrite, writeAll} from '../../src/sys/file-io.js'
import {wait4} from '../../src/sys/ptrace.js'
import {posixSpawn} from '../../src/sys/spawn.js'
import {kill, MAP, O, PROT, SIG, SYS, syscall, syscallRaw, uname, MADV, prlimit} from '../../src/sys/syscall.js'
import {mmap, munmap, view, vmRead, vmReadv, vmWrite, madvise, type VmSegment} from '../../src/sys/vm-io.js'
import {cleanupProcs, readLine, spawnProc, spawnPython, track, waitState} from './helpers.js'

describe('sys/libc', () => {
  afterEach(() => cleanupProcs())

  it('raw syscall: results, -errno and SyscallError', () => {
    assert.equal(syscallRaw(SYS.getpid), BigInt(process.pid))
    assert.equal(syscallRaw(SYS.close, 987654), -9n)
    assert.throws(() => syscall('close', SYS.close, 987654), (e: unknown) => e instanceof SyscallError && e.errno === 9 && /EBADF/.test(e.message))
    assert.equal(uname().release, fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim())
  })

  it('posix_spawn: explicit env, fds 0/1/2 only, default signal dispositions', () => {
    // Node ignores SIGPIPE; the child must not inherit that (SigIgn 0), nor any other fd.
    const junk = open('/dev/null', O.RDONLY & ~O.CLOEXEC) // even a non-CLOEXEC fd must not leak
    syscall('fcntl', SYS.fcntl, junk, 2 /* F_SETFD */, 0)
    try {
      const p = spawnProc('/bin/sh', ['sh', '-c', 'echo "$FOO"; ls /proc/$$/fd | tr "\\n" " "; echo; grep SigIgn /proc/$$/status'], {pipeOut: true})
      const p2 = posixSpawn({path: '/bin/true'})
      track(p2)
      assert.equal(readLine(p.out!), '') // env is explicit: FOO not set
      const fds = readLine(p.out!).trim().split(/\s+/).map(Number)
      assert.ok(!fds.includes(junk), `fd ${junk} leaked: ${fds}`)
      assert.ok(fds.includes(0) && fds.includes(1) && fds.includes(2))
      assert.match(readLine(p.out!), /^SigIgn:\s+0+$/)
    } finally {
      close(junk)
    }
    const q = spawnProc('/bin/sh', ['sh', '-c', 'echo "$FOO"; pwd'], {pipeOut: true})
    assert.equal(readLine(q.out!), '')
    const r = posixSpawn({path: '/bin/sh', argv: ['sh', '-c', 'exit 0'], env: {FOO: 'bar'}, cwd: '/tmp'})
    track(r)
    assert.throws(() => posixSpawn({path: '/nonexistent/x'}), NotFoundError)
  })

  it('wait4 decodes exit codes and signals', () => {
    const a = spawnProc('/bin/sh', ['sh', '-c', 'exit 7'])
    const wa = wait4(a.pid)!
    assert.ok(wa.exited && !wa.signaled)
    assert.equal(wa.exitCode, 7)
    const b = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(b.pid, (s) => s === 'S')
    kill(b.pid, SIG.TERM)
    const wb = wait4(b.pid)!
    assert.ok(wb.signaled)
    assert.equal(wb.termSignal, SIG.TERM)
    assert.throws(() => kill(2 ** 22 + 12345, 0), NotFoundError)
  })

  it('process_vm_readv/writev: many segments, small arrays, native buffers, short reads', () => {
    const p = spawnPython([
      'import ctypes, sys, time',
      'n = 3 * 1024 * 1024',
      'buf = (ctypes.c_ubyte * n)()',
      'for i in range(0, n, 4096): buf[i] = (i // 4096) & 255',
      'buf[5] = 42',
      'print(hex(ctypes.addressof(buf)), flush=True)',
      'sys.stdin.readline()',
      'print(buf[7], buf[4096 * 3 + 1], flush=True)',
      'time.sleep(60)',
    ].join('\n'), {pipeIn: true})
    const addr = BigInt(readLine(p.out!))
    // 3 MiB in 4 KiB segments: 768 iovecs; plus tiny arrays exercising the bounce path
    const dst = mmap(null, 3 << 20, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    try {
      const segs: VmSegment[] = []
      for (let i = 0; i < 768; i++) segs.push({local: dst + BigInt(i * 4096), remote: addr + BigInt(i * 4096), len: 4096})
      assert.equal(vmReadv(p.pid, segs), 3 << 20)
      const v = view(dst, 3 << 20)
      for (let i = 0; i < 768; i++) assert.equal(v[i * 4096], i & 255)
      assert.equal(v[5], 42)
      // > IOV_MAX segments (chunked), each 16 bytes into small typed arrays
      const small: Uint8Array[] = []
      const segs2: VmSegment[] = []
      for (let i = 0; i < 1500; i++) {
        const u = new Uint8Array(16)
        small.push(u)
        segs2.push({local: u, remote: addr + BigInt(i * 2048)})
      }
      assert.equal(vmReadv(p.pid, segs2), 1500 * 16)
      for (let i = 0; i < 1500; i++) assert.equal(small[i]![0], i % 2 === 0 ? (i / 2) & 255 : 0)
    } finally {
      munmap(dst, 3 << 20)
    }
    vmWrite(p.pid, addr + 7n, Uint8Array.of(99))
    vmWrite(p.pid, addr + 4096n * 3n + 1n, new Uint8Array(4096).fill(77), 1)
    writeAll(p.in!, Buffer.from('\n'))
    assert.equal(readLine(p.out!), '99 77')
    // unmapped remote address: EFAULT via vmRead, short count via vmReadv
    assert.throws(() => vmRead(p.pid, 0x1000n, new Uint8Array(100)), (e: unknown) => e instanceof SyscallError && e.errno === 14)
    const u = new Uint8Array(8192)
    assert.equal(vmReadv(p.pid, [{local: u.subarray(0, 4096), remote: addr}, {local: u.subarray(4096), remote: 0x1000n}]), 4096)
  })

  it('memfd, ftruncate, fstat, pread/pwrite, mmap shared view, madvise', () => {
    const fd = memfdCreate('t')
    try {
      ftruncate(fd, 1 << 20)
      assert.equal(fstat(fd).size, 1 << 20)
      pwrite(fd, Buffer.from('abc'), 4096)
      const m = mmap(null, 1 << 20, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0)
      const v = view(m, 1 << 20)
      assert.equal(Buffer.from(v.subarray(4096, 4099)).toString(), 'abc')
      v[8192] = 7
      const b = new Uint8Array(1)
      assert.equal(pread(fd, b, 8192), 1)
      assert.equal(b[0], 7)
      pread(fd, m + 100n, 4096, 3) // into a native address
      assert.equal(Buffer.from(v.subarray(100, 103)).toString(), 'abc')
      madvise(m, 1 << 20, MADV.DONTNEED)
      munmap(m, 1 << 20)
    } finally {
      close(fd)
    }
    const lim = prlimit(process.pid, 7 /* NOFILE */)
    assert.ok(lim.cur > 0n && lim.max >= lim.cur)
  })

  it('throughput: process_vm_readv 256 MiB into a MAP_SHARED /dev/shm mapping', function () {
    this.timeout(60000)
    const size = 256 << 20
    const p = spawnPython([
      'import mmap, ctypes, time',
      `n = ${size}`,
      'm = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
      'a = ctypes.addressof(ctypes.c_char.from_buffer(m))',
      'ctypes.memset(a, 0x5a, n)',
      'print(hex(a), flush=True)',
      'time.sleep(60)',
    ].join('\n'))
    const addr = BigInt(readLine(p.out!))
    const path = `/dev/shm/cxlfork-test-${process.pid}`
    const fd = open(path, O.RDWR | O.CREAT | O.EXCL, 0o600)
    fs.unlinkSync(path)
    try {
      ftruncate(fd, size)
      const dst = mmap(null, size, PROT.READ | PROT.WRITE, MAP.SHARED, fd, 0)
      try {
        const segSize = 1 << 20
        const segs: VmSegment[] = []
        for (let off = 0; off < size; off += segSize) segs.push({local: dst + BigInt(off), remote: addr + BigInt(off), len: segSize})
        let t0 = process.hrtime.bigint()
        assert.equal(vmReadv(p.pid, segs), size)
        const cold = Number(process.hrtime.bigint() - t0) / 1e9
        t0 = process.hrtime.bigint()
        assert.equal(vmReadv(p.pid, segs), size)
        const warm = Number(process.hrtime.bigint() - t0) / 1e9
        const v = view(dst, size)
        assert.equal(v[0], 0x5a)
        assert.equal(v[size - 1], 0x5a)
        console.log(`      process_vm_readv 256 MiB -> /dev/shm MAP_SHARED: cold ${(0.25 / cold).toFixed(2)} GiB/s (${(cold * 1000).toFixed(0)} ms, dest faults), warm ${(0.25 / warm).toFixed(2)} GiB/s (${(warm * 1000).toFixed(0)} ms)`)
        munmap(dst, size)
      } catch (err) {
        munmap(dst, size)
        throw err
      }
    } finally {
      close(fd)
    }
  })
})

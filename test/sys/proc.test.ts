import {strict as assert} from 'node:assert'
import * as fs from 'node:fs'
import {NotFoundError} from '../../src/errors.js'
import {kill, SIG, MAP, PROT, MADV} from '../../src/sys/syscall.js'
import {mmap, munmap, madvise, view} from '../../src/sys/vm-io.js'
import {bootId, kernelRelease} from '../../src/sys/host.js'
import {pageRuns, Pagemap, PM} from '../../src/sys/pagemap.js'
import {AT, listFds, parseMapsLine, readAuxv, readCmdline, readCwd, readEnviron, readExe, readLimits, readMaps, readSmaps, readSmapsRollup, readStat, readStatus, vdsoLayout} from '../../src/sys/proc.js'
import {cleanupProcs, PYTHON, readLine, spawnProc, spawnPython, waitState} from './helpers.js'

const PAGE = 4096n

describe('sys/proc', () => {
  afterEach(() => cleanupProcs())

  it('stat and status of a real process; kernel thread flag', () => {
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (s) => s === 'S')
    const st = readStat(p.pid)
    assert.equal(st.pid, p.pid)
    assert.equal(st.comm, 'sleep')
    assert.equal(st.ppid, process.pid)
    assert.equal(st.numThreads, 1)
    assert.equal(st.isKernelThread, false)
    assert.ok(st.starttime > readStat(process.pid).starttime - 1n)
    assert.ok(st.startCode > 0n && st.endCode > st.startCode && st.argEnd > st.argStart && st.envEnd > st.envStart)
    const s = readStatus(p.pid)
    assert.equal(s.threads, 1)
    assert.equal(s.uid[0], process.getuid!())
    assert.equal(s.ppid, process.pid)
    assert.ok(s.vmRSS > 0)
    assert.equal(readStat(2).isKernelThread, true)
    assert.throws(() => readStat(2 ** 22 + 4321), NotFoundError)
  })

  it('status signal masks as bigint: blocked, ignored, caught, pending', () => {
    const p = spawnPython([
      'import signal, time',
      'signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})',
      'signal.signal(signal.SIGUSR2, signal.SIG_IGN)',
      'signal.signal(signal.SIGHUP, lambda *a: None)',
      'print("ready", flush=True)',
      'time.sleep(60)',
    ].join('\n'))
    assert.equal(readLine(p.out!), 'ready')
    kill(p.pid, SIG.USR1)
    const s = readStatus(p.pid)
    const bit = (n: number): bigint => 1n << BigInt(n - 1)
    assert.equal(s.sigBlk & bit(SIG.USR1), bit(SIG.USR1))
    assert.equal(s.sigIgn & bit(SIG.USR2), bit(SIG.USR2))
    assert.equal(s.sigCgt & bit(SIG.HUP), bit(SIG.HUP))
    assert.equal(s.shdPnd & bit(SIG.USR1), bit(SIG.USR1))
    assert.ok(s.sigQ.queued >= 1) // per-user count, not per-process
  })

  it('maps kinds, smaps VmFlags/Anonymous, auxv, links, cmdline, environ, fds, limits', () => {
    const p = spawnPython([
      'import mmap, ctypes, os, resource, time',
      'm = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
      'for i in range(5): m[i * 4096] = 1',
      'd = mmap.mmap(-1, 4 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
      'd.madvise(mmap.MADV_DONTFORK)',
      'w = mmap.mmap(-1, 4 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
      'w.madvise(18)  # MADV_WIPEONFORK',
      'addr = lambda x: ctypes.addressof(ctypes.c_char.from_buffer(x))',
      'fd = os.open("/tmp", os.O_RDONLY)',
      `f = open("/dev/shm/cxlfork-proc-test-${process.pid}", "a")`,
      'f.write("hello"); f.flush()',
      'resource.setrlimit(resource.RLIMIT_NOFILE, (777, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))',
      'print(hex(addr(m)), hex(addr(d)), hex(addr(w)), f.fileno(), flush=True)',
      'time.sleep(60)',
    ].join('\n'))
    const [ma, da, wa, ffd] = readLine(p.out!).split(' ')
    fs.unlinkSync(`/dev/shm/cxlfork-proc-test-${process.pid}`)
    const maps = readMaps(p.pid)
    const kinds = new Set(maps.map((v) => v.kind))
    for (const k of ['anon', 'file', 'heap', 'stack', 'vdso', 'vvar', 'vvar_vclock', 'vsyscall'] as const) assert.ok(kinds.has(k), `missing ${k}`)
    const vsys = maps.find((v) => v.kind === 'vsyscall')!
    assert.equal(vsys.start, 0xffffffffff600000n) // > 2^53, exact as bigint
    const exe = maps.find((v) => v.kind === 'file' && v.path.includes('python3'))!
    assert.ok(exe.inode > 0n && exe.devMajor + exe.devMinor > 0)
    const smaps = readSmaps(p.pid)
    const find = (a: bigint): (typeof smaps)[number] => smaps.find((v) => v.start <= a && a < v.end)!
    const m = find(BigInt(ma!))
    assert.ok(m.vmFlags.has('rd') && m.vmFlags.has('wr'))
    assert.ok(m.anonymous >= 5 * 4096)
    assert.ok(find(BigInt(da!)).vmFlags.has('dc'), 'MADV_DONTFORK shows as dc')
    assert.ok(find(BigInt(wa!)).vmFlags.has('wf'), 'MADV_WIPEONFORK shows as wf')
    const roll = readSmapsRollup(p.pid)
    assert.ok(roll['Rss']! > 0 && roll['Anonymous']! > 0)
    // auxv
    const aux = new Map(readAuxv(p.pid).map(([k, v]) => [Number(k), v]))
    assert.equal(aux.get(AT.PAGESZ), 4096n)
    assert.equal(aux.get(AT.SYSINFO_EHDR), maps.find((v) => v.kind === 'vdso')!.start)
    // links
    assert.equal(readExe(p.pid), fs.realpathSync(PYTHON))
    assert.equal(readCwd(p.pid), process.cwd())
    assert.deepEqual(readCmdline(p.pid).slice(0, 2), ['python3', '-c'])
    assert.ok(readEnviron(p.pid).includes('PYTHONUNBUFFERED=1'))
    // fds with fdinfo
    const fds = listFds(p.pid)
    const f = fds.find((x) => x.fd === Number(ffd))!
    assert.equal(f.target, `/dev/shm/cxlfork-proc-test-${process.pid} (deleted)`)
    assert.equal(f.pos, 5n)
    assert.ok(f.flags & 0o2000, 'O_APPEND in fdinfo flags')
    assert.ok(f.mntId > 0)
    assert.ok(fds.some((x) => x.target === '/tmp'))
    // limits via prlimit64
    assert.equal(readLimits(p.pid)[7]!.cur, 777n)
  })

  it('pagemap: exact present runs, shared-anon flagged FILE, swapped none', () => {
    const p = spawnPython([
      'import mmap, ctypes, time',
      'm = mmap.mmap(-1, 256 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)',
      'm.madvise(mmap.MADV_NOHUGEPAGE)',
      'for i in [0, 1, 2] + list(range(10, 20)) + [100, 255]: m[i * 4096] = 1',
      's = mmap.mmap(-1, 16 * 4096, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)',
      'for i in range(4): s[i * 4096] = 1',
      'addr = lambda x: ctypes.addressof(ctypes.c_char.from_buffer(x))',
      'print(hex(addr(m)), hex(addr(s)), flush=True)',
      'time.sleep(60)',
    ].join('\n'))
    const [a, s] = readLine(p.out!).split(' ').map((x) => BigInt(x))
    const runs = pageRuns(p.pid, a!, a! + 256n * PAGE)
    assert.deepEqual(runs, [
      {vaddr: a!, nrPages: 3, flags: PM.PRESENT},
      {vaddr: a! + 10n * PAGE, nrPages: 10, flags: PM.PRESENT},
      {vaddr: a! + 100n * PAGE, nrPages: 1, flags: PM.PRESENT},
      {vaddr: a! + 255n * PAGE, nrPages: 1, flags: PM.PRESENT},
    ])
    assert.deepEqual(pageRuns(p.pid, s!, s! + 16n * PAGE), [{vaddr: s!, nrPages: 4, flags: PM.PRESENT | PM.FILE}])
    // small chunk size exercises chunk boundaries inside runs
    const pm = new Pagemap(p.pid, 7)
    try {
      assert.deepEqual(pm.runs(a!, a! + 256n * PAGE), runs)
      assert.deepEqual(pm.runs(a! + 11n * PAGE, a! + 15n * PAGE), [{vaddr: a! + 11n * PAGE, nrPages: 4, flags: PM.PRESENT}])
    } finally {
      pm.close()
    }
  })

  it('data runs (PAGEMAP_SCAN) over 1 GiB: the same pages as the pagemap read, in contiguous runs', function () {
    this.timeout(60000)
    const size = 1 << 30
    const base = mmap(null, size, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.NORESERVE)
    try {
      madvise(base, size, MADV.NOHUGEPAGE)
      // every 3rd page of the first 64 MiB plus a run at the end: many runs, more than one ioctl's worth of regions
      const mem = view(base, size)
      for (let off = 0; off < 64 << 20; off += 3 * 4096) mem[off] = 1
      for (let off = size - (8 << 20); off < size; off += 4096) mem[off] = 1
      const read = pageRuns('self', base, base + BigInt(size))
      assert.equal(read.reduce((n, r) => n + r.nrPages, 0), Math.ceil((64 << 20) / (3 * 4096)) + 2048)
      assert.equal(read.length, Math.ceil((64 << 20) / (3 * 4096)) + 1)
      const pm = new Pagemap('self')
      try {
        assert.deepEqual(pm.dataRuns(base, base + BigInt(size), false), read)
      } finally {
        pm.close()
      }
    } finally {
      munmap(base, size)
    }
  })

  it('data runs of a private file mapping: copied-on-write pages only, not the file\'s cached pages', () => {
    const file = `/dev/shm/cxlfork-proc-test-cow-${process.pid}`
    fs.writeFileSync(file, Buffer.alloc(16 * 4096, 7))
    try {
      const p = spawnPython([
        'import mmap, ctypes, time',
        `f = open(${JSON.stringify(file)}, 'r+b')`,
        'm = mmap.mmap(f.fileno(), 16 * 4096, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)',
        'total = sum(m[i * 4096] for i in range(4))', // read: the file's own pages, present
        'm[5 * 4096] = 1; m[6 * 4096] = 1; m[9 * 4096] = 1', // written: private copies
        'print(hex(ctypes.addressof(ctypes.c_char.from_buffer(m))), flush=True)',
        'time.sleep(60)',
      ].join('\n'))
      const a = BigInt(readLine(p.out!))
      const pm = new Pagemap(p.pid)
      try {
        const expected = [{vaddr: a + 5n * PAGE, nrPages: 2, flags: PM.PRESENT}, {vaddr: a + 9n * PAGE, nrPages: 1, flags: PM.PRESENT}]
        assert.deepEqual(pm.dataRuns(a, a + 16n * PAGE, true), expected)
        // the pagemap read sees the read pages too, flagged FILE
        assert.deepEqual(pm.runs(a, a + 4n * PAGE), [{vaddr: a, nrPages: 4, flags: PM.PRESENT | PM.FILE}])
      } finally {
        pm.close()
      }
      const fallback = new Pagemap(p.pid, 65536, false)
      try {
        assert.deepEqual(fallback.dataRuns(a, a + 16n * PAGE, true), [{vaddr: a + 5n * PAGE, nrPages: 2, flags: PM.PRESENT}, {vaddr: a + 9n * PAGE, nrPages: 1, flags: PM.PRESENT}])
      } finally {
        fallback.close()
      }
    } finally {
      fs.rmSync(file, {force: true})
    }
  })

  it('vDSO layout, boot id, kernel release, maps line parsing', () => {
    const lay = vdsoLayout('self')
    assert.equal(lay.vdso.name, '[vdso]')
    assert.ok(lay.parts.length >= 2)
    assert.equal(lay.parts.reduce((n, x) => n + x.size, 0), lay.span, 'parts are adjacent')
    const p = spawnProc('/bin/sleep', ['sleep', '30'])
    waitState(p.pid, (st) => st === 'S') // posix_spawn returns before exec has finished mapping
    assert.equal(vdsoLayout(p.pid).signature, lay.signature, 'same kernel: same layout')
    assert.match(bootId(), /^[0-9a-f-]{36}$/)
    assert.equal(kernelRelease(), fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim())
    const v = parseMapsLine('7f0000001000-7f0000003000 rw-s 00001000 00:1a 12345                      /dev/shm/pool file (deleted)')
    assert.deepEqual([v.size, v.shared, v.offset, v.devMajor, v.devMinor, v.inode, v.path, v.deleted, v.kind], [8192, true, 4096n, 0, 0x1a, 12345n, '/dev/shm/pool file', true, 'file'])
  })
})

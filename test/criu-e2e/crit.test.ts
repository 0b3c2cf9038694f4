/**
 * CRIU's own decoder (Debian's crit 3.17) reads every image `cxlfork criu dump` writes for a
 * real, running memtouch, and what it decodes matches the live process: pid, registers
 * (against /proc/PID/syscall), the address space (against /proc/PID/maps), the pagemap
 * against pages-1.img, the dump statistics, the files and fds; `crit x` explores the set;
 * after `criu restore`, stats-restore.img decodes too.
 *
 * (test/criu/images.test.ts covers the codec itself on a synthetic capture; this file covers
 * the CLI's output for a live fixture.) `crit info` is not used: in crit 3.17 it crashes on
 * every image (pycriu's count() compares bytes with '' under Python 3).
 */
import assert from 'node:assert/strict'
import {readdirSync, readFileSync, readlinkSync, statSync} from 'node:fs'
import {join} from 'node:path'

import {type Fixture, cleanupAll, processExists, startFixture, trackPid, tracked, waitForExit, waitForTicks} from '../helpers/fixtures.js'
import {
  type Json, type MapsEntry, PAGE, big, cli, crit, critDecode, imagesDir, note, okJson, printMeasurements, procSyscall, readMaps,
  removeScratch,
} from './helpers.js'

// CRIU constants (criu/include/image.h)
const VMA_AREA_REGULAR = 1 << 0
const VMA_AREA_STACK = 1 << 1
const VMA_AREA_VSYSCALL = 1 << 2
const VMA_AREA_VDSO = 1 << 3
const VMA_AREA_HEAP = 1 << 5
const VMA_FILE_PRIVATE = 1 << 6
const VMA_ANON_PRIVATE = 1 << 9
const VMA_AREA_VVAR = 1 << 12
const PE_PRESENT = 1 << 2
const SYS_CLOCK_NANOSLEEP = 230

function permsToProt(perms: string): number {
  return (perms[0] === 'r' ? 1 : 0) | (perms[1] === 'w' ? 2 : 0) | (perms[2] === 'x' ? 4 : 0)
}

const hex = (v: bigint) => '0x' + v.toString(16)

describe('criu-e2e: crit decodes every image of a live dump, and it matches the process', function () {
  this.timeout(60_000)

  let fx: Fixture
  let images: string
  let dumpJson: Json
  let mapsAtDump: MapsEntry[]
  /** /proc/PID/syscall samples of the original taken around the dump while it slept. */
  let syscallSamples: {nr: number; sp: bigint; pc: bigint}[]
  let decoded: Record<string, Json>

  // One dump for the whole file: the original runs until after(); clones die in afterEach.
  before(async function () {
    fx = await startFixture('memtouch', {mib: 16})
    await waitForTicks(fx.logPath, fx.pid, 3)
    images = imagesDir('crit')
    syscallSamples = []
    const sample = () => {
      const s = procSyscall(fx.pid)
      if (s) syscallSamples.push(s)
    }
    sample()
    const mapsBefore = readMaps(fx.pid)
    const run = await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json'])
    dumpJson = okJson(run)
    const mapsAfter = readMaps(fx.pid)
    sample()
    // memtouch maps nothing after READY unless asked to grow: the layout at dump time is known.
    assert.deepEqual(mapsAfter, mapsBefore, 'the original\'s /proc/PID/maps did not change across the dump')
    mapsAtDump = mapsBefore
    decoded = {}
    note(`criu dump memtouch --mib 16: ${dumpJson.pages} pages, downtime ${(dumpJson.downtimeUs / 1000).toFixed(1)} ms, total ${(dumpJson.totalUs / 1000).toFixed(1)} ms`)
  })

  // The original is shared by every test of this file (one dump), so cleanupAll() (which also
  // kills it and removes the image dir) runs in after(); afterEach reaps every other tracked
  // process, i.e. the clones.
  afterEach(async function () {
    for (const pid of tracked().pids) {
      if (pid === fx.pid) continue
      if (processExists(pid)) process.kill(pid, 'SIGKILL')
      assert.ok(await waitForExit(pid, 5000), `clone ${pid} is gone`)
    }
  })

  after(async () => {
    const report = await cleanupAll()
    removeScratch()
    printMeasurements('criu-e2e crit')
    assert.deepEqual(report.survivors, [], 'every process this file started is gone')
  })

  const get = async (name: string): Promise<Json> => {
    decoded[name] ??= await critDecode(join(images, name))
    return decoded[name]
  }
  const only = async (name: string): Promise<Json> => {
    const img = await get(name)
    assert.equal(img.entries.length, 1, `${name} holds one entry`)
    return img.entries[0]
  }

  it('crit decode succeeds for every *.img except pages-1.img (raw pages, which crit refuses by design)', async () => {
    const names = readdirSync(images).filter((n) => n.endsWith('.img')).sort()
    assert.equal(names.length, 11, `11 images: ${names.join(' ')}`)
    const magics: Record<string, string> = {}
    for (const name of names) {
      if (name === 'pages-1.img') continue
      const img = await get(name)
      assert.ok(Array.isArray(img.entries) && img.entries.length > 0, `${name} decodes to entries`)
      magics[name] = img.magic
    }
    assert.deepEqual(magics, {
      [`core-${fx.pid}.img`]: 'CORE', 'fdinfo-2.img': 'FDINFO', 'files.img': 'FILES', [`fs-${fx.pid}.img`]: 'FS', [`ids-${fx.pid}.img`]: 'IDS',
      'inventory.img': 'INVENTORY', [`mm-${fx.pid}.img`]: 'MM', [`pagemap-${fx.pid}.img`]: 'PAGEMAP', 'pstree.img': 'PSTREE', 'stats-dump.img': 'STATS',
    })
    const inventory = await only('inventory.img')
    assert.equal(inventory.img_version, 2, 'CRIU image version 2 (v1.1 format)')
    assert.equal(inventory.fdinfo_per_id, true)
  })

  it('pstree: the dumped pid, single thread', async () => {
    const pstree = await only('pstree.img')
    assert.equal(pstree.pid, fx.pid)
    assert.deepEqual(pstree.threads, [fx.pid])
    const ids = await only(`ids-${fx.pid}.img`)
    assert.equal(ids.files_id, 2, 'files_id 2 -> fdinfo-2.img')
    // root_ids are the dumper's own objects: CRIU's restore refuses a root task sharing them ("Image corruption on kIDs data").
    const inventory = await only('inventory.img')
    assert.equal(inventory.root_ids.files_id, 1, 'root_ids: the dumper\'s files_id')
    assert.notEqual(inventory.root_ids.files_id, ids.files_id, 'the task\'s fd table is not the dumper\'s')
  })

  it('core: task core, gpregs (ip/sp match /proc/PID/syscall, sp in [stack]) and fpregs with xsave', async () => {
    const core = await only(`core-${fx.pid}.img`)
    assert.equal(core.mtype, 'X86_64')
    assert.equal(core.tc.comm, 'memtouch')
    assert.equal(core.tc.task_state, 1, 'TASK_ALIVE')
    assert.equal(core.tc.sigactions.length, 62, 'positional sigactions 1..64 minus SIGKILL/SIGSTOP')
    const gp = core.thread_info.gpregs
    assert.equal(gp.mode, 'NATIVE')
    const ip = big(gp.ip)
    const sp = big(gp.sp)
    assert.notEqual(ip, 0n, 'ip nonzero')
    assert.notEqual(sp, 0n, 'sp nonzero')
    assert.equal(big(gp.cs), 0x33n, 'user 64-bit code segment')
    assert.equal(big(gp.ss), 0x2bn, 'user data segment')
    assert.notEqual(big(gp.fs_base), 0n, 'TLS base (fs_base) set')

    const stack = mapsAtDump.find((m) => m.path === '[stack]')!
    assert.ok(sp >= stack.start && sp < stack.end, `sp ${hex(sp)} lies in [stack] ${hex(stack.start)}-${hex(stack.end)}`)
    const text = mapsAtDump.find((m) => ip >= m.start && ip < m.end)
    assert.ok(text && text.perms[2] === 'x', `ip ${hex(ip)} lies in an executable mapping: ${text ? `${text.perms} ${text.path}` : 'none'}`)

    // memtouch spends nearly all its time in clock_nanosleep at one call site: when the dump
    // caught it there, ip/sp must be exactly what the kernel reports for the sleeping original.
    const origAx = big(gp.orig_ax)
    const asleep = syscallSamples.filter((s) => s.nr === SYS_CLOCK_NANOSLEEP)
    note(`core: orig_ax ${origAx}, ip ${hex(ip)}, sp ${hex(sp)}; /proc/PID/syscall samples: ${syscallSamples.map((s) => `${s.nr}@${hex(s.pc)}/${hex(s.sp)}`).join(' ')}`)
    if (origAx === BigInt(SYS_CLOCK_NANOSLEEP) && asleep.length > 0) {
      assert.equal(hex(ip), hex(asleep[0]!.pc), 'core ip = pc of the sleeping original (/proc/PID/syscall)')
      assert.equal(hex(sp), hex(asleep[0]!.sp), 'core sp = sp of the sleeping original (/proc/PID/syscall)')
    }

    const fp = core.thread_info.fpregs
    assert.ok(fp, 'fpregs present')
    assert.equal(fp.st_space.length, 32, 'x87 st_space: 8 registers x 16 bytes')
    assert.equal(fp.xmm_space.length, 64, 'xmm_space: 16 registers x 16 bytes')
    assert.equal(typeof fp.mxcsr, 'number')
    assert.equal(fp.cwd, 0x37f, 'x87 control word: the default 0x37f')
    if (/\bavx\b/.test(readFileSync('/proc/cpuinfo', 'utf8'))) {
      assert.ok(fp.xsave, 'xsave part present on an AVX machine')
      assert.equal(fp.xsave.ymmh_space.length, 64, 'ymmh_space: 16 x 16 bytes')
      assert.equal(typeof big(fp.xsave.xstate_bv), 'bigint', 'xstate_bv decodes')
    }
    assert.ok(core.thread_core, 'thread_core present')
    assert.equal(core.thread_core.creds.uid, process.getuid!(), 'creds uid')
  })

  it('mm: every VMA of the original at dump time, with its range, protection, file and kind', async () => {
    const mm = await only(`mm-${fx.pid}.img`)
    const files = new Map<number, Json>((await get('files.img')).entries.map((e: Json) => [e.id, e]))
    const vmas = mm.vmas as Json[]
    const fromImage = vmas.map((v) => `${hex(big(v.start))}-${hex(big(v.end))}`)
    // [vvar] + [vvar_vclock] (kernels >= 6.13) are one VMA_AREA_VVAR entry, as CRIU 4.1+ writes them.
    const maps = mapsAtDump.flatMap((m, i) => {
      const [before, next] = [mapsAtDump[i - 1], mapsAtDump[i + 1]]
      if (m.path === '[vvar_vclock]' && before?.path === '[vvar]' && before.end === m.start) return []
      if (m.path === '[vvar]' && next?.path === '[vvar_vclock]' && next.start === m.end) return [{...m, end: next.end}]
      return [m]
    })
    const fromMaps = maps.map((m) => `${hex(m.start)}-${hex(m.end)}`)
    assert.deepEqual(fromImage, fromMaps, 'the VMA ranges of mm-PID.img are exactly those of /proc/PID/maps')

    for (const [i, m] of maps.entries()) {
      const v = vmas[i]
      const what = `VMA ${i} ${fromMaps[i]} ${m.perms} ${m.path}`
      const status = Number(v.status)
      if (m.path === '[vsyscall]') {
        assert.ok(status & VMA_AREA_VSYSCALL, `${what}: VMA_AREA_VSYSCALL`)
        continue
      }
      assert.equal(v.prot, permsToProt(m.perms), `${what}: prot`)
      assert.ok(status & VMA_AREA_REGULAR, `${what}: VMA_AREA_REGULAR (status 0x${status.toString(16)})`)
      if (m.path.startsWith('/')) {
        assert.ok(status & VMA_FILE_PRIVATE, `${what}: VMA_FILE_PRIVATE`)
        assert.equal(big(v.pgoff), m.offset, `${what}: pgoff`)
        const file = files.get(Number(v.shmid))
        assert.ok(file, `${what}: shmid ${v.shmid} names a files.img entry`)
        assert.equal(file.reg.name, m.path, `${what}: mapped file`)
      } else {
        assert.ok(status & VMA_ANON_PRIVATE, `${what}: VMA_ANON_PRIVATE`)
      }
      if (m.path === '[stack]') assert.ok(status & VMA_AREA_STACK, `${what}: VMA_AREA_STACK`)
      if (m.path === '[heap]') assert.ok(status & VMA_AREA_HEAP, `${what}: VMA_AREA_HEAP`)
      if (m.path === '[vdso]') assert.ok(status & VMA_AREA_VDSO, `${what}: VMA_AREA_VDSO`)
      if (m.path === '[vvar]' || m.path === '[vvar_vclock]') assert.ok(status & VMA_AREA_VVAR, `${what}: VMA_AREA_VVAR`)
    }
    const heap = mapsAtDump.find((m) => m.path === '[heap]')!
    assert.ok(big(mm.mm_start_brk) >= heap.start && big(mm.mm_brk) <= heap.end && big(mm.mm_brk) > big(mm.mm_start_brk), 'brk inside [heap]')
    const stack = mapsAtDump.find((m) => m.path === '[stack]')!
    assert.ok(big(mm.mm_start_stack) >= stack.start && big(mm.mm_start_stack) < stack.end, 'mm_start_stack inside [stack]')
    assert.equal(files.get(Number(mm.exe_file_id))?.reg.name, readlinkSync(`/proc/${fx.pid}/exe`), 'exe_file_id names the executable')
    // memtouch's own mappings (READY facts). The kernel may merge an anonymous mapping with
    // an adjacent one of the same flags (placement varies with ASLR), so require containment.
    const ready = fx.ready.fields
    for (const key of ['region', 'mapaddr', 'roaddr', 'mprot', 'untouched']) {
      const at = BigInt(ready[key]!)
      assert.ok(vmas.some((v) => big(v.start) <= at && at < big(v.end)), `memtouch's ${key}=${ready[key]} lies in a VMA`)
    }
  })

  it('pagemap: entries inside the VMAs, total nr_pages * 4096 == size of pages-1.img == the dump\'s pages + [vdso]', async () => {
    const pagemap = (await get(`pagemap-${fx.pid}.img`)).entries as Json[]
    assert.equal(pagemap[0].pages_id, 1, 'pagemap_head names pages-1.img')
    const vmas = (await only(`mm-${fx.pid}.img`)).vmas as Json[]
    let total = 0
    let lastEnd = 0n
    for (const entry of pagemap.slice(1)) {
      const vaddr = big(entry.vaddr)
      const nr = Number(entry.nr_pages)
      const end = vaddr + BigInt(nr * PAGE)
      assert.ok(nr > 0 && vaddr >= lastEnd, `entries ascend without overlap at ${hex(vaddr)}`)
      assert.ok(Number(entry.flags) & PE_PRESENT, `PE_PRESENT at ${hex(vaddr)}`)
      assert.ok(vmas.some((v) => vaddr >= big(v.start) && end <= big(v.end)), `entry ${hex(vaddr)}+${nr} lies inside one VMA`)
      lastEnd = end
      total += nr
    }
    const size = statSync(join(images, 'pages-1.img')).size
    assert.equal(total * PAGE, size, 'sum of nr_pages * 4096 == size of pages-1.img')
    // The [vdso] pages are stored too, as CRIU stores them (its restore parses the dumped vDSO).
    const vdso = mapsAtDump.find((m) => m.path === '[vdso]')!
    const vdsoPages = Number((vdso.end - vdso.start) / BigInt(PAGE))
    assert.ok(pagemap.slice(1).some((e) => big(e.vaddr) === vdso.start && Number(e.nr_pages) === vdsoPages), 'the [vdso] pages are in the pagemap')
    assert.equal(total, dumpJson.pages + vdsoPages, 'pagemap pages == the dump\'s pages + the [vdso] pages')
    assert.equal(total, dumpJson.stats.pages_written, 'pagemap pages == pages_written')
    // the 16 MiB region is stored whole
    const region = BigInt(fx.ready.fields.region!)
    // Pages of each entry inside the region: the kernel may merge the region with an adjacent anonymous mapping, so one entry can run past it.
    const regionEnd = region + 16n * 1048576n
    const covered = pagemap.slice(1).reduce((sum, e) => {
      const start = big(e.vaddr) > region ? big(e.vaddr) : region
      const end = big(e.vaddr) + BigInt(Number(e.nr_pages) * PAGE) < regionEnd ? big(e.vaddr) + BigInt(Number(e.nr_pages) * PAGE) : regionEnd
      return end > start ? sum + Number((end - start) / BigInt(PAGE)) : sum
    }, 0)
    assert.equal(covered, 4096, 'every page of memtouch\'s 16 MiB region is in the pagemap')
  })

  it('stats-dump: CRIU\'s dump statistics, pages_written == pagemap pages', async () => {
    const stats = (await only('stats-dump.img')).dump
    assert.ok(stats, 'a dump stats entry')
    for (const field of ['freezing_time', 'frozen_time', 'memdump_time', 'memwrite_time', 'pages_scanned', 'pages_skipped_parent', 'pages_written', 'pages_lazy']) {
      assert.ok(field in stats, `stats-dump has ${field}: ${JSON.stringify(stats)}`)
    }
    const pagemap = (await get(`pagemap-${fx.pid}.img`)).entries as Json[]
    const total = pagemap.slice(1).reduce((s, e) => s + Number(e.nr_pages), 0)
    assert.equal(Number(stats.pages_written), total)
    assert.ok(Number(stats.pages_scanned) >= total, 'pages_scanned >= pages_written')
    assert.equal(Number(stats.pages_skipped_parent), 0)
    assert.equal(Number(stats.pages_lazy), 0)
    assert.equal(Number(stats.frozen_time), dumpJson.stats.frozen_time, 'frozen_time as reported by the CLI')
    assert.equal(Number(stats.freezing_time), dumpJson.stats.freezing_time, 'freezing_time as reported by the CLI')
    assert.ok(Number(stats.memdump_time) > 0 && Number(stats.memwrite_time) > 0, 'memdump/memwrite times measured')
    // The CLI's JSON and the image measure memdump/memwrite at two slightly different moments
    // (JSON: after every image is written; image: while stats-dump.img is encoded): close, not equal.
    assert.ok(Math.abs(Number(stats.memdump_time) - dumpJson.stats.memdump_time) <= 50_000, 'memdump_time within 50 ms of the CLI\'s')
    assert.ok(Math.abs(Number(stats.memwrite_time) - dumpJson.stats.memwrite_time) <= 50_000, 'memwrite_time within 50 ms of the CLI\'s')
    note(`stats-dump.img: ${JSON.stringify(stats)}; CLI stats ${JSON.stringify(dumpJson.stats)}`)
  })

  it('files/fdinfo/fs: the log file on fd 3, /dev/null on 0-2, cwd = the fixture dir', async () => {
    const files = new Map<number, Json>((await get('files.img')).entries.map((e: Json) => [e.id, e]))
    const fdinfo = (await get('fdinfo-2.img')).entries as Json[]
    const byFd = new Map<number, string>(fdinfo.map((i) => [i.fd, files.get(i.id)?.reg?.name]))
    assert.deepEqual([...byFd.keys()].sort(), [0, 1, 2, 3], 'fds 0-3')
    assert.equal(byFd.get(3), fx.logPath, 'fd 3 is the log file')
    for (const fd of [0, 1, 2]) assert.equal(byFd.get(fd), '/dev/null')
    for (const i of fdinfo) assert.equal(i.type, 'REG')
    const log = files.get(fdinfo.find((i) => i.fd === 3).id).reg
    assert.ok(Number(log.flags) & 0o2000, 'the log fd keeps O_APPEND')
    assert.ok([...files.values()].some((e) => e.reg?.name === `${fx.logPath}.map`), 'the mapped LOGFILE.map is in files.img')
    const fs = await only(`fs-${fx.pid}.img`)
    assert.equal(files.get(fs.cwd_id)?.reg.name, fx.dir, 'cwd')
    assert.equal(files.get(fs.root_id)?.reg.name, '/', 'root')
    // Modes are whole st_modes, permission bits included: CRIU's restore compares them with the opened file's.
    const nullFile = files.get(fdinfo.find((i) => i.fd === 0).id).reg
    assert.equal(Number(nullFile.mode), statSync('/dev/null').mode, '/dev/null: its whole st_mode')
    assert.equal(Number(files.get(fs.cwd_id)!.reg.mode), statSync(fx.dir).mode, 'cwd: its whole st_mode')
  })

  it('crit x DIR ps / mems / fds explore the set', async () => {
    const ps = await crit('x', images, 'ps')
    assert.match(ps, new RegExp(`^\\s*${fx.pid}\\s+\\d+\\s+\\d+\\s+memtouch\\s*$`, 'm'), ps)
    const mems = await crit('x', images, 'mems')
    assert.match(mems, /\[stack\]/)
    assert.match(mems, /\[vdso\]/)
    assert.ok(mems.includes(readlinkSync(`/proc/${fx.pid}/exe`)), 'mems names the executable')
    assert.ok(mems.includes(`${fx.logPath}.map + 0x4000`), `mems shows the read-only LOGFILE.map view at page offset 4:\n${mems}`)
    const region = BigInt(fx.ready.fields.region!)
    const rwRanges = [...mems.matchAll(/([0-9a-f]+)-([0-9a-f]+)\s+rw-/g)].map((m) => [BigInt('0x' + m[1]), BigInt('0x' + m[2])] as const)
    assert.ok(rwRanges.some(([start, end]) => start <= region && region + 16n * 1048576n <= end), `the 16 MiB region lies in one rw- mapping:\n${mems}`)
    const fds = await crit('x', images, 'fds')
    assert.match(fds, new RegExp(`3: ${fx.logPath.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`), fds)
  })

  it('after criu restore, stats-restore.img decodes with restore_time and pages_restored', async () => {
    const run = await cli(['criu', 'restore', '--images', images, '--json'])
    const rs = okJson(run)
    trackPid(rs.pid)
    try {
      assert.ok(processExists(rs.pid))
      const stats = (await critDecode(join(images, 'stats-restore.img'))).entries[0].restore
      assert.ok(stats, 'a restore stats entry')
      assert.equal(Number(stats.restore_time), rs.stats.restore_time)
      assert.equal(Number(stats.pages_restored), dumpJson.pages)
      assert.equal(Number(stats.forking_time), rs.stats.forking_time)
      note(`stats-restore.img: ${JSON.stringify(stats)}`)
      // The set stays readable by crit after the restore (stats-restore.img added).
      await crit('x', images, 'ps')
    } finally {
      if (processExists(rs.pid)) process.kill(rs.pid, 'SIGKILL')
    }
  })
})

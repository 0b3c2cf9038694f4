import {strict as assert} from 'node:assert'
import {type ChildProcess, execFileSync, spawn, spawnSync} from 'node:child_process'
import {existsSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {CorruptError, NotFoundError, UnsupportedError} from '../../src/errors.js'
import {type ProcessImage, totalPages} from '../../src/image/process-image.js'
import {PAGE_SIZE} from '../../src/sys/page.js'
import {decodeMessage, encodeMessage, frameImage, IMG_COMMON_MAGIC, readImage, readImageRecords, writeImage} from '../../src/criu/image-file.js'
import {
  type DumpStats, PE_LAZY, PE_PARENT, PE_PRESENT, readCriuImages, VMA_AREA_REGULAR, VMA_ANON_PRIVATE, writeCriuImages, writeRestoreStats,
} from '../../src/criu/images.js'
import {criuRestartRegs} from '../../src/criu/kinds/core.js'
import {str64} from '../../src/criu/values.js'
import {fpregsToXstate, xstateToFpregs} from '../../src/criu/xsave.js'
import {AMD_LAYOUT, INTEL_LAYOUT, layoutFromTable} from '../../src/cpu/xsave-layout.js'
import {translateXstate} from '../../src/cpu/xsave-translate.js'
import {expectError} from '../helpers/errors.js'
import {killChild} from '../helpers/fixtures.js'
import {captureLive, type LiveCapture} from './live-capture.js'
import {parseMaps, syntheticXstate} from './proc-helpers.js'
import {ScratchDirs} from './scratch.js'
import {componentOf, xsaveBuffer} from '../cpu/buffers.js'

const hasCrit = spawnSync('crit', ['-h'], {stdio: 'ignore'}).status === 0

function crit(...args: string[]): string {
  return execFileSync('crit', args, {encoding: 'utf8', maxBuffer: 256 << 20})
}

/** JSON with big integers kept as strings (crit prints u64 values beyond 2^53). */
function parseJson(text: string): any {
  return JSON.parse(text.replace(/([:[,]\s*)(\d{16,})(?=\s*[,\]}])/g, '$1"$2"'))
}


describe('criu image set (real process)', function () {
  this.timeout(120_000)
  let child: ChildProcess
  let pid: number
  let image: ProcessImage
  let dir: string
  let written: {files: string[]; bytes: number}
  let capture: LiveCapture
  /** The snapshot's pages, as the writer's page source (the capture stays open for the suite). */
  const snapshotPages = () => ({read: capture.pages.read, close: () => undefined})
  const stats: DumpStats = {freezingTime: 120, frozenTime: 4500, memdumpTime: 3000, memwriteTime: 900, pagesScanned: 5000, pagesWritten: 2100}
  const scratch = new ScratchDirs('cxlfork-criu-test-')
  const tempDir = () => scratch.make()
  /** A copy of the good image set to damage. */
  const copySet = () => scratch.copyOf(dir)

  before(async function () {
    const script = [
      'import time, os, sys',
      'data = bytearray(8 << 20)',
      'for i in range(0, len(data), 4096): data[i] = (i // 4096) % 251 + 1',
      'log = open("/etc/hostname", "rb"); log.read(3)',
      'd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)',
      'r, w = os.pipe()',
      'open(sys.argv[1], "w").close()',
      'time.sleep(600)',
    ].join('\n')
    // stdio /dev/null and readiness in a file: a pipe from Node would be a socketpair end outside the process.
    const ready = join(tempDir(), 'ready')
    child = spawn('python3', ['-c', script, ready], {stdio: 'ignore'})
    pid = child.pid!
    const deadline = Date.now() + 30_000
    while (!existsSync(ready)) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`python3 did not get ready (exit ${child.exitCode})`)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    process.kill(pid, 'SIGSTOP')
    capture = captureLive(pid)
    image = capture.image
    dir = tempDir()
    const source = snapshotPages()
    try {
      // A small chunk forces split runs and many flushes.
      // modeOf as `criu dump` gives it: a character device's or directory's whole st_mode.
      written = await writeCriuImages(dir, image, source, stats, {chunkBytes: 256 << 10, modeOf: (path) => statSync(path).mode})
    } finally {
      source.close()
    }
  })

  after(async function () {
    capture?.close()
    await killChild(child)
    scratch.removeAll()
  })

  it('captured a realistic process', function () {
    assert.ok(image.vmas.length > 10, `${image.vmas.length} VMAs`)
    assert.ok(totalPages(image.pageRuns) >= 2048, `${totalPages(image.pageRuns)} pages`)
    assert.ok(image.fds.some((fd) => fd.kind === 'pipe'))
    assert.ok(image.fds.some((fd) => fd.kind === 'directory'))
    assert.ok(image.fds.some((fd) => fd.path === '/etc/hostname' && fd.offset > 0n))
  })

  it('writes the image files CRIU writes, and pages-1.img holds every page', function () {
    const names = written.files.map((file) => file.slice(dir.length + 1)).sort()
    // pipes-data: the process holds both ends of a pipe (the image kind is written with its pipes).
    assert.deepEqual(names, ['core-' + pid, 'fdinfo-2', 'files', 'fs-' + pid, 'ids-' + pid, 'inventory', 'mm-' + pid, 'pagemap-' + pid, 'pages-1', 'pipes-data', 'pstree', 'stats-dump']
      .map((n) => n + '.img').sort())
    assert.equal(statSync(join(dir, 'pages-1.img')).size, totalPages(image.pageRuns) * PAGE_SIZE)
    const total = readdirSync(dir).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0)
    assert.equal(written.bytes, total)
  })

  it('frames inventory with its own magic only and the others with IMG_COMMON_MAGIC / IMG_SERVICE_MAGIC', function () {
    const head = (name: string) => {
      const bytes = readFileSync(join(dir, name))
      return [bytes.readUInt32LE(0), bytes.readUInt32LE(4)]
    }
    assert.equal(head('inventory.img')[0], 0x58313116)
    assert.deepEqual(head(`core-${pid}.img`), [IMG_COMMON_MAGIC, 0x55053847])
    assert.deepEqual(head(`pagemap-${pid}.img`), [IMG_COMMON_MAGIC, 0x56084025])
    assert.deepEqual(head('stats-dump.img'), [0x55105940, 0x57093306])
  })

  describe('crit (Debian criu 3.17) decodes every image', function () {
    before(function () {
      if (!hasCrit) this.skip() // CI installs Debian's `criu` package (crit needs python3 + python3-protobuf)
    })

    it('decodes each non-page image', function () {
      for (const name of readdirSync(dir)) {
        if (name.startsWith('pages-')) continue
        const decoded = parseJson(crit('decode', '-i', join(dir, name)))
        assert.ok(Array.isArray(decoded.entries) && decoded.entries.length > 0, `${name} decodes to entries`)
      }
    })

    it('shows the pid, registers, VMAs and pagemap cxlfork wrote', function () {
      const pstree = parseJson(crit('decode', '-i', join(dir, 'pstree.img'))).entries[0]
      assert.equal(pstree.pid, pid)
      assert.deepEqual(pstree.threads, [pid])

      const core = parseJson(crit('decode', '-i', join(dir, `core-${pid}.img`), '--pretty')).entries[0]
      assert.equal(core.mtype, 'X86_64')
      assert.equal(core.thread_info.gpregs.ip, '0x' + criuRestartRegs(image.threads[0]!.regs).rip.toString(16))
      assert.equal(core.thread_info.gpregs.cs, '0x33')
      assert.equal(core.thread_info.fpregs.xsave.ymmh_space.length, 64)
      assert.equal(core.tc.comm, image.task.comm)
      assert.equal(core.tc.sigactions.length, 62)
      assert.equal(core.thread_core.rseq_entry.signature, 0x53053053)

      const mm = parseJson(crit('decode', '-i', join(dir, `mm-${pid}.img`), '--pretty')).entries[0]
      // [vvar] + [vvar_vclock] are one VMA_AREA_VVAR entry, as CRIU 4.1+ writes them.
      const lines = parseMaps(pid)
      const maps = lines.flatMap((line, i) => {
        const [before, next] = [lines[i - 1], lines[i + 1]]
        if (line.path === '[vvar_vclock]' && before?.path === '[vvar]' && before.end === line.start) return []
        if (line.path === '[vvar]' && next?.path === '[vvar_vclock]' && next.start === line.end) return [{...line, end: next.end}]
        return [line]
      })
      assert.equal(mm.vmas.length, maps.length)
      mm.vmas.forEach((vma: {start: string; end: string; status: string}, i: number) => {
        assert.equal(BigInt(vma.start), maps[i]!.start)
        assert.equal(BigInt(vma.end), maps[i]!.end)
      })
      const heap = mm.vmas[image.vmas.findIndex((v) => v.kind === 'heap')]
      if (heap) assert.match(heap.status, /AREA_HEAP/)

      const pagemap = parseJson(crit('decode', '-i', join(dir, `pagemap-${pid}.img`))).entries
      assert.equal(pagemap[0].pages_id, 1)
      const pages = pagemap.slice(1).reduce((sum: number, e: {nr_pages: number}) => sum + e.nr_pages, 0)
      assert.equal(pages * PAGE_SIZE, statSync(join(dir, 'pages-1.img')).size)

      const stats = parseJson(crit('decode', '-i', join(dir, 'stats-dump.img'))).entries[0]
      assert.equal(stats.dump.frozen_time, 4500)
      const files = parseJson(crit('decode', '-i', join(dir, 'files.img'))).entries
      assert.ok(files.some((f: {reg?: {name: string}}) => f.reg?.name === '/etc/hostname'))
    })

    it('explores the set with crit x (ps, fds, mems, rss)', function () {
      assert.match(crit('x', dir, 'ps'), new RegExp(`\\b${pid}\\b`))
      assert.match(crit('x', dir, 'fds'), /\/etc\/hostname/)
      const mems = crit('x', dir, 'mems')
      assert.match(mems, /\[stack\]/)
      assert.match(mems, /\[vdso\]/)
      assert.match(mems, /libc\.so\.6/)
      assert.match(mems, new RegExp(`exe\\s+${image.files[image.mm.exeFileIndex]!.path.replace(/[.]/g, '\\.')}`))
      crit('x', dir, 'rss')
    })
  })

  it('reads back the exact model and the page bytes', function () {
    const set = readCriuImages(dir)
    assert.equal(set.writtenBy, 'cxlfork')
    assert.deepEqual(set.image, image)
    assert.deepEqual(set.stats, {...stats, pagesSkippedParent: 0, pagesLazy: 0})
    assert.equal(set.pagemap.length, image.pageRuns.length)
    assert.ok(set.pagemap.every((e) => e.flags === PE_PRESENT))
    const pages = readFileSync(set.pagesPath)
    const source = snapshotPages()
    try {
      image.pageRuns.forEach((run, i) => {
        const expected = new Uint8Array(run.nrPages * PAGE_SIZE)
        source.read(run, expected)
        const offset = set.runOffsets[i]!
        assert.ok(Buffer.from(expected).equals(pages.subarray(offset, offset + expected.length)), `page run ${i} bytes`)
      })
    } finally {
      source.close()
    }
    // The 8 MiB bytearray's pattern is in there.
    assert.ok(pages.length >= 8 << 20)
  })

  it('writes and reads stats-restore.img', function () {
    const copy = copySet()
    writeRestoreStats(copy, {restoreTime: 777, pagesRestored: 2100, forkingTime: 5})
    if (hasCrit) assert.equal(parseJson(crit('decode', '-i', join(copy, 'stats-restore.img'))).entries[0].restore.restore_time, 777)
    assert.deepEqual(readCriuImages(copy).restoreStats, {restoreTime: 777, pagesRestored: 2100, forkingTime: 5, pagesCompared: 0, pagesSkippedCow: 0})
  })

  it('reads a set re-encoded by crit (CRIU 3.x schema: no cxlfork fields, pagemap count in field 2)', function () {
    if (!hasCrit) this.skip()
    const copy = copySet()
    for (const name of readdirSync(copy)) {
      if (name.startsWith('pages-')) continue
      const json = join(copy, name + '.json')
      writeFileSync(json, crit('decode', '-i', join(copy, name)))
      crit('encode', '-i', json, '-o', join(copy, name))
      rmSync(json)
    }
    const set = readCriuImages(copy)
    assert.equal(set.writtenBy, 'criu')
    assert.deepEqual(set.image.pageRuns, image.pageRuns)
    assert.deepEqual(set.image.vmas.map((v) => [v.start, v.end, v.kind, v.prot, v.flags]), image.vmas.map((v) => [v.start, v.end, v.kind, v.prot, v.flags]))
    assert.deepEqual(set.image.vmas.map((v) => v.fileIndex === undefined ? undefined : set.image.files[v.fileIndex]!.path),
      image.vmas.map((v) => v.fileIndex === undefined ? undefined : image.files[v.fileIndex]!.path))
    // Without cxlfork's exact registers, the thread stopped in its sleep comes back as CRIU stores it: set up to restart.
    assert.deepEqual(set.image.threads[0]!.regs, criuRestartRegs(image.threads[0]!.regs))
    // crit keeps the legacy padding words, so the xstate named parts and sw bytes survive; AVX-512 parts are CRIU fields too.
    const xstate = set.image.threads[0]!.xstate
    assert.ok(Buffer.from(xstate.subarray(0, 512)).equals(Buffer.from(image.threads[0]!.xstate.subarray(0, 512))))
    assert.deepEqual(set.image.task.sigactions, image.task.sigactions)
    assert.equal(set.image.task.ppid, 0) // CRIU writes the dump root's ppid as 0
    assert.deepEqual(set.image.task.rlimits, image.task.rlimits)
    assert.equal(set.image.task.cwd, image.task.cwd)
    assert.equal(set.image.mm.exeFileIndex !== undefined, true)
    assert.equal(set.image.files[set.image.mm.exeFileIndex]!.path, image.files[image.mm.exeFileIndex]!.path)
    assert.deepEqual(set.image.fds.map((f) => [f.fd, f.kind, f.flags, f.cloexec, f.offset]),
      image.fds.map((f) => [f.fd, f.kind === 'tty' ? 'tty' : f.kind, f.flags, f.cloexec, f.offset]))
  })

  it('writes what real CRIU 4.x needs to restore (restart regs, 44 auxv words, [vdso] pages) and reads back the exact model', async function () {
    const out = tempDir()
    const leader = image.threads[0]!
    // Stopped in clock_nanosleep (230) that the kernel would restart: CRIU stores rax = orig_rax, rip - 2.
    const stopped = {...leader, regs: {...leader.regs, rax: BigInt.asUintN(64, -514n), orig_rax: 230n, rip: 0x401002n}}
    const auxv = [...image.mm.auxv.slice(0, -2), 33n, 0x7ff000n, 51n, 0x1000n, 0n, 0n] // longer than CRIU's 44 words
    const changed: ProcessImage = {...image, threads: [stopped], mm: {...image.mm, auxv}}
    const source = snapshotPages()
    try {
      await writeCriuImages(out, changed, source, undefined, {vdsoPages: true, modeOf: (path) => statSync(path).mode})
    } finally {
      source.close()
    }
    const [core] = readImage<Record<string, any>>(join(out, `core-${pid}.img`), 'core')
    const gp = core!['thread_info']['gpregs']
    assert.equal(BigInt(gp['ax'].toString()), 230n, 'rax = orig_rax: the call runs again')
    assert.equal(BigInt(gp['ip'].toString()), 0x401000n, 'rip back over the syscall instruction')
    const [mm] = readImage<Record<string, any>>(join(out, `mm-${pid}.img`), 'mm')
    assert.ok(auxv.length > 44)
    assert.equal(mm!['mm_saved_auxv'].length, 44, 'CRIU takes at most AT_VECTOR_SIZE (44) words')
    const vdso = image.vmas.find((vma) => vma.kind === 'vdso')!
    const vdsoPages = Number((vdso.end - vdso.start) / BigInt(PAGE_SIZE))
    assert.equal(statSync(join(out, 'pages-1.img')).size, (totalPages(image.pageRuns) + vdsoPages) * PAGE_SIZE, 'the [vdso] pages are stored')
    const set = readCriuImages(out)
    assert.ok(set.pagemap.some((entry) => entry.vaddr === vdso.start && entry.nrPages === vdsoPages))
    assert.deepEqual(set.image, changed, 'the model reads back exactly: captured rax/rip, the whole auxv, no [vdso] run')
  })

  it('writes one core image per thread and reads the threads back in order', async function () {
    const out = tempDir()
    // A second thread of the same CPU state layout, its XMM registers made different.
    const xstate = image.threads[0]!.xstate.slice()
    xstate.set(syntheticXstate(9).subarray(160, 416), 160)
    const second = {...image.threads[0]!, tid: pid + 100000, xstate, altStack: {sp: 0x7f0000100000n, flags: 0, size: 65536n}}
    delete (second as {rseq?: unknown}).rseq
    const threaded: ProcessImage = {...image, threads: [image.threads[0]!, second], pageRuns: []}
    const result = await writeCriuImages(out, threaded, {read: () => assert.fail('no pages to read')})
    assert.ok(result.files.includes(join(out, `core-${second.tid}.img`)))
    assert.equal(statSync(join(out, 'pages-1.img')).size, 0)
    if (hasCrit) {
      const core = parseJson(crit('decode', '-i', join(out, `core-${second.tid}.img`))).entries[0]
      assert.equal(core.tc, undefined)
      assert.equal(core.thread_core.sas.ss_size, 65536)
    }
    const back = readCriuImages(out)
    assert.deepEqual(back.image, threaded)
    assert.equal(back.stats, undefined)
  })

  describe('bad images are typed errors', function () {
    it('truncated record', function () {
      const copy = copySet()
      const path = join(copy, `mm-${pid}.img`)
      truncateSync(path, statSync(path).size - 10)
      expectError(() => readCriuImages(copy), CorruptError, new RegExp(`mm-${pid}.img is truncated: record 0`))
    })

    it('truncated head', function () {
      const copy = copySet()
      truncateSync(join(copy, 'pstree.img'), 6)
      expectError(() => readCriuImages(copy), CorruptError, /pstree.img is truncated/)
    })

    it('wrong magic names the file and both magics', function () {
      const copy = copySet()
      const path = join(copy, `core-${pid}.img`)
      const bytes = readFileSync(path)
      bytes.writeUInt32LE(0x56084025, 4) // pagemap's magic in a core image
      writeFileSync(path, bytes)
      expectError(() => readCriuImages(copy), CorruptError, new RegExp(`core-${pid}.img has wrong magic: expected core magic 0x55053847.*found 0x56084025.*head 0x54564319 0x56084025`))
      const inv = join(copy, 'inventory.img')
      writeFileSync(inv, frameImage('core', [])) // common magic first: not an inventory
      expectError(() => readCriuImages(copy), CorruptError, /inventory.img has wrong magic: expected inventory magic 0x58313116.*found 0x54564319/)
    })

    it('corrupted record bytes', function () {
      const copy = copySet()
      const path = join(copy, `mm-${pid}.img`)
      const bytes = readFileSync(path)
      bytes.fill(0xff, 12, 40)
      writeFileSync(path, bytes)
      expectError(() => readCriuImages(copy), CorruptError, new RegExp(`mm-${pid}.img record 0: cannot decode mm_entry`))
    })

    it('record lacking a proto2 required field', function () {
      const copy = copySet()
      // A pstree_entry with pid only.
      writeImage(join(copy, 'pstree.img'), 'pstree', [Uint8Array.from([0x08, 0x05])])
      expectError(() => readCriuImages(copy), CorruptError, /pstree.img record 0: cannot decode pstree_entry: missing required 'ppid'/)
    })

    it('pages file too short', function () {
      const copy = copySet()
      truncateSync(join(copy, 'pages-1.img'), statSync(join(copy, 'pages-1.img')).size - PAGE_SIZE)
      expectError(() => readCriuImages(copy), CorruptError, /pages-1.img is too short/)
    })

    it('missing pages file', function () {
      const copy = copySet()
      rmSync(join(copy, 'pages-1.img'))
      expectError(() => readCriuImages(copy), NotFoundError, /pages-1.img/)
    })

    it('pagemap entry outside every VMA', function () {
      const copy = copySet()
      const path = join(copy, `pagemap-${pid}.img`)
      const records = readImageRecords(path, 'pagemap')
      records.push(encodeMessage('pagemap_entry', {vaddr: str64(0x7fffffff0000n << 12n), compat_nr_pages: 1, nr_pages: str64(1n), flags: PE_PRESENT}))
      writeImage(path, 'pagemap', records)
      expectError(() => readCriuImages(copy), CorruptError, /lies outside every VMA/)
    })

    it('parent and lazy pagemap entries are refused by name; flagless holes are zero-filled', function () {
      const copy = copySet()
      const path = join(copy, `pagemap-${pid}.img`)
      const records = readImageRecords(path, 'pagemap')
      const stack = image.vmas.find((v) => v.kind === 'stack')!
      const withEntry = (flags: number) => {
        const extra = encodeMessage('pagemap_entry', {vaddr: str64(stack.start), compat_nr_pages: 1, nr_pages: str64(1n), flags})
        // Insert in address order.
        const entries = records.slice(1)
        const index = entries.findIndex((r) => {
          const v = readAddress(r)
          return v > stack.start
        })
        const list = [...entries]
        list.splice(index < 0 ? list.length : index, 0, extra)
        writeImage(path, 'pagemap', [records[0]!, ...list])
      }
      const firstStackRun = image.pageRuns.find((r) => r.vaddr === stack.start)
      if (firstStackRun) this.skip() // the lowest stack page is resident; cannot add a distinct entry there
      withEntry(PE_PARENT)
      expectError(() => readCriuImages(copy), UnsupportedError, /PE_PARENT/)
      withEntry(PE_LAZY)
      expectError(() => readCriuImages(copy), UnsupportedError, /PE_LAZY/)
      withEntry(0)
      const set = readCriuImages(copy)
      assert.deepEqual(set.image.pageRuns, image.pageRuns)
    })

    it('unknown inventory image version', function () {
      const copy = copySet()
      const inv = join(copy, 'inventory.img')
      const [entry] = readImage<Record<string, unknown>>(inv, 'inventory')
      writeImage(inv, 'inventory', [encodeMessage('inventory_entry', {...entry, img_version: 7})])
      expectError(() => readCriuImages(copy), UnsupportedError, /unknown image version 7/)
      writeImage(inv, 'inventory', [encodeMessage('inventory_entry', {...entry, img_version: 1})])
      expectError(() => readCriuImages(copy), UnsupportedError, /image version 1/)
    })

    it('missing image file', function () {
      const copy = copySet()
      rmSync(join(copy, `mm-${pid}.img`))
      expectError(() => readCriuImages(copy), NotFoundError, new RegExp(`mm-${pid}.img is missing`))
    })

    it('unsupported VMA kinds and fd types are refused by name', function () {
      const copy = copySet()
      const path = join(copy, `mm-${pid}.img`)
      const [mm] = readImage<Record<string, any>>(path, 'mm')
      mm!['vmas'][0].status = VMA_AREA_REGULAR | VMA_ANON_PRIVATE | (1 << 10)
      writeImage(path, 'mm', [encodeMessage('mm_entry', mm!)])
      expectError(() => readCriuImages(copy), UnsupportedError, /VMA_AREA_SYSVIPC/)
    })
  })
})

function readAddress(record: Uint8Array): bigint {
  // field 1 (vaddr) varint comes first in pagemap_entry as written by cxlfork and CRIU
  let value = 0n
  let shift = 0n
  for (let i = 1; i < record.length; i++) {
    value |= BigInt(record[i]! & 0x7f) << shift
    shift += 7n
    if (!(record[i]! & 0x80)) break
  }
  return value
}

describe('xstate <-> CRIU fpregs', function () {
  /** Both vendors' standard layouts for x87, SSE, AVX, AVX-512 and PKRU, whatever CPU runs the test. */
  const layouts = {intel: layoutFromTable(INTEL_LAYOUT, 0x2e7n)!, amd: layoutFromTable(AMD_LAYOUT, 0x2e7n)!}

  it('round-trips a raw buffer byte for byte', function () {
    for (const raw of [syntheticXstate(1), syntheticXstate(2).subarray(0, 512), new Uint8Array(0), syntheticXstate(3).subarray(0, 2688),
      xsaveBuffer(layouts.amd, 5), xsaveBuffer(layouts.intel, 6)]) {
      const fpregs = xstateToFpregs(raw)
      const bytes = encodeMessage('user_x86_fpregs_entry', fpregs)
      const decoded = readBack(bytes)
      assert.ok(Buffer.from(fpregsToXstate(decoded, 'test').xstate).equals(Buffer.from(raw)), `size ${raw.length}`)
    }
  })

  for (const [vendor, layout] of Object.entries(layouts)) {
    it(`fills CRIU fields from ${vendor}'s standard layout and records that layout`, function () {
      const raw = xsaveBuffer(layout, 4)
      // No layout given: inferred from the size, whatever this host's CPU is.
      for (const [recorded, fpregs] of [[true, xstateToFpregs(raw, layout)], [false, xstateToFpregs(raw)]] as [boolean, Record<string, any>][]) {
        const v = new DataView(raw.buffer)
        const at = (feature: number) => componentOf(layout, feature).offset
        assert.equal(fpregs['cwd'], v.getUint16(0, true))
        assert.equal(fpregs['mxcsr'], v.getUint32(24, true))
        assert.equal(fpregs['xmm_space'][0], v.getUint32(160, true))
        assert.equal(fpregs['xsave']['ymmh_space'][0], v.getUint32(at(2), true))
        assert.equal(String(fpregs['xsave']['opmask_reg'][0]), v.getBigUint64(at(5), true).toString())
        assert.equal(String(fpregs['xsave']['zmm_upper'][0]), v.getBigUint64(at(6), true).toString())
        assert.equal(String(fpregs['xsave']['hi16_zmm'][0]), v.getBigUint64(at(7), true).toString())
        assert.equal(fpregs['xsave']['pkru'][0], v.getUint32(at(9), true))
        const decoded = fpregsToXstate(readBack(encodeMessage('user_x86_fpregs_entry', fpregs)), 'test')
        // A recorded layout comes back from the extension; an inferred one stays unrecorded (the reader infers it again).
        assert.deepEqual(decoded.layout, recorded ? layout : undefined)
      }
    })

    it(`rebuilds a CRIU-written entry (no extension) that restores into ${vendor}'s layout`, function () {
      const raw = xsaveBuffer(layout, 8)
      const {cxlfork: _ext, ...plain} = xstateToFpregs(raw, layout)
      const rebuilt = fpregsToXstate(readBack(encodeMessage('user_x86_fpregs_entry', plain)), 'test')
      assert.ok(rebuilt.layout, 'a CRIU-written entry comes with the layout it was rebuilt in')
      // What a restore on a CPU with this layout hands the kernel: the named parts at this layout's places.
      const onHost = translateXstate(rebuilt.xstate, rebuilt.layout, layout)
      for (const [feature, len] of [[2, 256], [5, 64], [6, 512], [7, 1024], [9, 4]] as const) {
        const at = componentOf(layout, feature).offset
        assert.ok(Buffer.from(onHost.subarray(at, at + len)).equals(Buffer.from(raw.subarray(at, at + len))), `${vendor} feature ${feature}: bytes ${at}+${len}`)
      }
      assert.ok(Buffer.from(onHost.subarray(0, 512)).equals(Buffer.from(raw.subarray(0, 512))), 'legacy area')
    })
  }
})

function readBack(bytes: Uint8Array): Record<string, unknown> {
  return decodeMessage('user_x86_fpregs_entry', bytes, 'test')
}

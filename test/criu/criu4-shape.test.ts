/**
 * Image sets shaped the way real CRIU 4.x (checked against CRIU 4.2 on kernel 6.18) writes
 * them, built from cxlfork's own set of a live process with the repo's encoder, so that no
 * CRIU binary is needed at test time:
 *  - no cxlfork extension fields (field 1000) anywhere;
 *  - one VMA_AREA_VVAR entry covering [vvar] and [vvar_vclock] together (CRIU merges
 *    adjacent vvar areas, criu/proc_parse.c);
 *  - reg_file_entry with size (and build_id for ELF files) but no device/inode/mtime;
 *  - pagemap entries with compat_nr_pages 0 and PE_LAZY | PE_PRESENT;
 *  - the dump statistics in `stats-dump` (no .img suffix);
 * plus the CRIU records the CRIU-format path must refuse by name: remap-fpath.img
 * (a deleted executable; a deleted file that is not a regular one), armed timers, a stopped task, seccomp, a changed backing file.
 */
import {strict as assert} from 'node:assert'
import {type ChildProcess, spawn} from 'node:child_process'
import {readdirSync, readFileSync, renameSync, statSync} from 'node:fs'
import {join} from 'node:path'

import {UnsupportedError} from '../../src/errors.js'
import {type ProcessImage} from '../../src/image/process-image.js'
import {type ImageKind, IMAGE_KINDS, decodeMessage, encodeMessage, readImageRecords, writeImage} from '../../src/criu/image-file.js'
import {PE_LAZY, PE_PRESENT, readCriuImages, VMA_AREA_VVAR, writeCriuImages} from '../../src/criu/images.js'
import {expectError} from '../helpers/errors.js'
import {SYS} from '../../src/sys/syscall.js'
import {killChild} from '../helpers/fixtures.js'
import {waitInSyscall} from '../sys/helpers.js'
import {captureLive} from './live-capture.js'
import {ScratchDirs} from './scratch.js'

type Obj = Record<string, any>

function strip(value: unknown): void {
  if (Array.isArray(value)) {
    value.forEach(strip)
  } else if (value && typeof value === 'object' && !(value instanceof Uint8Array)) {
    delete (value as Obj)['cxlfork']
    for (const inner of Object.values(value as Obj)) strip(inner)
  }
}

/** Decode every record of an image into plain objects, let `edit` change them, write it back. */
function rewrite(path: string, kind: ImageKind, edit: (records: Obj[]) => Obj[] | void): void {
  const records = readImageRecords(path, kind)
  const typeOf = (i: number) => (kind === 'pagemap' && i === 0 ? 'pagemap_head' : IMAGE_KINDS[kind].type)
  // Decoded messages hold present fields as own properties only: edited and encoded back as they are.
  let objects: Obj[] = records.map((record, i) => decodeMessage<Obj>(typeOf(i), record, `${path} record ${i}`))
  objects = edit(objects) ?? objects
  writeImage(path, kind, objects.map((object, i) => encodeMessage(typeOf(i), object, path)))
}

function hostHasVclock(): boolean {
  return /\[vvar_vclock\]/.test(readFileSync('/proc/self/maps', 'utf8'))
}

function expectUnsupported(fn: () => unknown, code: string, pattern: RegExp): void {
  assert.equal(expectError(fn, UnsupportedError, pattern).code, code)
}

describe('criu image set shaped like CRIU 4.x writes it', function () {
  this.timeout(120_000)
  let child: ChildProcess
  let pid: number
  let image: ProcessImage
  let dir: string
  const scratch = new ScratchDirs('cxlfork-criu4-test-')
  const tempDir = () => scratch.make()
  const copySet = () => scratch.copyOf(dir)
  const at = (set: string, name: string) => join(set, name)

  before(async function () {
    child = spawn('sleep', ['600'], {stdio: 'ignore'})
    pid = child.pid!
    // Captured once it has started and parked in its sleep, not while exec'ing.
    waitInSyscall(pid, [SYS.nanosleep, SYS.clock_nanosleep])
    process.kill(pid, 'SIGSTOP')
    const capture = captureLive(pid)
    image = capture.image
    const own = tempDir()
    try {
      await writeCriuImages(own, image, capture.pages, {freezingTime: 1, frozenTime: 2, memdumpTime: 3, memwriteTime: 4, pagesScanned: 5, pagesWritten: 6})
    } finally {
      capture.close()
    }
    // Reshape into CRIU 4.x's form.
    dir = own
    for (const name of readdirSync(dir)) {
      const kind = (Object.keys(IMAGE_KINDS) as ImageKind[]).find((k) => name === `${k}.img` || name.startsWith(`${k}-`))
      if (!kind || name.startsWith('pages-')) continue
      rewrite(at(dir, name), kind === 'stats' || name.startsWith('stats-') ? 'stats' : kind, (records) => {
        strip(records)
        if (kind === 'mm') {
          const vmas = records[0]!['vmas'] as Obj[]
          const merged: Obj[] = []
          for (const vma of vmas) {
            const previous = merged[merged.length - 1]
            if (previous && previous['status'] & VMA_AREA_VVAR && vma['status'] & VMA_AREA_VVAR && previous['end'] === vma['start']) previous['end'] = vma['end']
            else merged.push(vma)
          }
          records[0]!['vmas'] = merged
        }
        if (kind === 'pagemap') {
          for (const entry of records.slice(1)) {
            entry['compat_nr_pages'] = 0
            entry['flags'] = PE_LAZY | PE_PRESENT
          }
        }
      })
    }
    renameSync(at(dir, 'stats-dump.img'), at(dir, 'stats-dump'))
  })

  after(async function () {
    await killChild(child)
    scratch.removeAll()
  })

  it('reads it as a CRIU-written set with the layout, files and pages of the process', function () {
    const set = readCriuImages(dir)
    assert.equal(set.writtenBy, 'criu')
    // The merged vvar entry is split back along this kernel's [vvar] / [vvar_vclock].
    if (hostHasVclock()) {
      const mm = decodeMessage<Obj>('mm_entry', readImageRecords(at(dir, `mm-${pid}.img`), 'mm')[0]!, 'mm')
      assert.equal((mm['vmas'] as Obj[]).filter((vma) => vma['status'] & VMA_AREA_VVAR).length, 1, 'the set holds one merged vvar entry')
      assert.deepEqual(set.image.vmas.filter((v) => v.kind.startsWith('vvar')).map((v) => v.kind), ['vvar', 'vvar_vclock'])
    }
    assert.deepEqual(set.image.vmas.map((v) => [v.start, v.end, v.kind]), image.vmas.map((v) => [v.start, v.end, v.kind]))
    assert.deepEqual(set.image.kernel.vdsoLayout, image.kernel.vdsoLayout)
    assert.deepEqual(set.image.pageRuns, image.pageRuns)
    assert.ok(set.pagemap.every((entry) => entry.flags === (PE_LAZY | PE_PRESENT)))
    // File identity comes from the file now at the path, checked against CRIU's size.
    const exe = set.image.files[set.image.mm.exeFileIndex]!
    const want = image.files[image.mm.exeFileIndex]!
    assert.deepEqual([exe.path, exe.device, exe.inode, exe.size, exe.mtimeNs], [want.path, want.device, want.inode, want.size, want.mtimeNs])
    assert.equal(set.stats?.pagesWritten, 6)
  })

  it('reads a deleted file held open from its ghost file (unframed contents); refuses one that is not a regular file by name', function () {
    const copy = copySet()
    const fdinfo = readImageRecords(at(copy, 'fdinfo-2.img'), 'fdinfo').map((record, i) => decodeMessage<Obj>('fdinfo_entry', record, `fdinfo record ${i}`))
    const id = fdinfo.find((fd) => fd['fd'] === 0)!['id'] as number
    writeImage(at(copy, 'remap-fpath.img'), 'remap-fpath', [encodeMessage('remap_file_path_entry', {orig_id: id, remap_id: 7, remap_type: 1})])
    const contents = new TextEncoder().encode('ghost contents')
    writeImage(at(copy, 'ghost-file-7.img'), 'ghost-file', [encodeMessage('ghost_file_entry', {uid: 1, gid: 2, mode: 0o100640})], [contents])
    const fd = readCriuImages(copy).image.fds.find((candidate) => candidate.fd === 0)!
    assert.equal(fd.kind, 'ghost')
    assert.deepEqual(fd.ghost, {path: '/dev/null', mode: 0o640, uid: 1, gid: 2, data: contents})
    writeImage(at(copy, 'ghost-file-7.img'), 'ghost-file', [encodeMessage('ghost_file_entry', {uid: 0, gid: 0, mode: 0o010600})])
    expectUnsupported(() => readCriuImages(copy), 'CRIU_FILE_REMAP', /deleted and is not a regular file/)
  })

  it('refuses an executable CRIU dumped through remap-fpath.img (deleted file, ghost)', function () {
    const copy = copySet()
    const mm = decodeMessage<Obj>('mm_entry', readImageRecords(at(copy, `mm-${pid}.img`), 'mm')[0]!, 'mm')
    const exeId = mm['exe_file_id'] as number
    writeImage(at(copy, 'remap-fpath.img'), 'remap-fpath', [encodeMessage('remap_file_path_entry', {orig_id: exeId, remap_id: 99, remap_type: 1})])
    expectUnsupported(() => readCriuImages(copy), 'CRIU_FILE_REMAP', /deleted.*ghost/)
  })

  it('reads armed interval and POSIX timers into the model; refuses a POSIX timer on a clock that names a process', function () {
    const copy = copySet()
    const zero = {isec: '0', iusec: '0', vsec: '0', vusec: '0'}
    const posix = {it_id: 3, clock_id: 1, si_signo: 34, it_sigev_notify: 4, sival_ptr: '65261', overrun: 0, isec: '0', insec: '30000000', vsec: '1', vnsec: '5', notify_thread_id: pid}
    rewrite(at(copy, `core-${pid}.img`), 'core', (records) => {
      records[0]!['tc']['timers'] = {real: {isec: '1', iusec: '0', vsec: '0', vusec: '500000'}, virt: zero, prof: zero, posix: [posix]}
    })
    const task = readCriuImages(copy).image.task
    assert.deepEqual(task.timers, {
      real: {interval: [1, 0], value: [0, 500000]},
      posix: [{id: 3, clockid: 1, notify: 4, signo: 34, sigval: 65261n, tid: pid, interval: [0, 30000000], value: [1, 5]}],
    })
    // clock_getcpuclockid() of another process: a negative clock id that names it.
    rewrite(at(copy, `core-${pid}.img`), 'core', (records) => {
      records[0]!['tc']['timers'] = {real: zero, virt: zero, prof: zero, posix: [{...posix, clock_id: (-(4242 + 1) * 8 + 2) >>> 0}]}
    })
    expectUnsupported(() => readCriuImages(copy), 'CRIU_TIMERS', /clock -33942/)
    // Disarmed timers, as CRIU writes them for every task: no timers in the model.
    rewrite(at(copy, `core-${pid}.img`), 'core', (records) => {
      records[0]!['tc']['timers'] = {real: zero, virt: zero, prof: zero}
    })
    const plain = readCriuImages(copy)
    assert.equal(plain.writtenBy, 'criu')
    assert.equal(plain.image.task.timers, undefined)
  })

  it('refuses a stopped task and seccomp', function () {
    const copy = copySet()
    rewrite(at(copy, `core-${pid}.img`), 'core', (records) => {
      records[0]!['tc']['task_state'] = 3
    })
    expectUnsupported(() => readCriuImages(copy), 'CRIU_TASK_STATE', /stopped/)
    rewrite(at(copy, `core-${pid}.img`), 'core', (records) => {
      records[0]!['tc']['task_state'] = 1
      records[0]!['thread_core']['seccomp_mode'] = 2
    })
    expectUnsupported(() => readCriuImages(copy), 'CRIU_SECCOMP', /filter/)
  })

  it('refuses a backing file whose size or ELF build-id differs from what CRIU recorded', function () {
    const exePath = image.files[image.mm.exeFileIndex]!.path
    const size = statSync(exePath).size
    const setField = (field: string, value: unknown) => {
      const copy = copySet()
      rewrite(at(copy, 'files.img'), 'files', (records) => {
        for (const entry of records) if (entry['reg']?.['name'] === exePath) entry['reg'][field] = value
      })
      return copy
    }
    expectUnsupported(() => readCriuImages(setField('size', String(size + 4096))), 'BACKING_FILE_CHANGED', /size/)
    expectUnsupported(() => readCriuImages(setField('build_id', [1, 2, 3, 4, 5])), 'BACKING_FILE_CHANGED', /build-id/)
  })
})

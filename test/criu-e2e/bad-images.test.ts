/**
 * Damaged image sets (from a real `criu dump` of memtouch) given to `criu restore` and
 * `criu import`: each gives a typed JSON error (code, message naming the file, hint) with
 * the documented exit status (6 corrupt, 5 unsupported, 3 missing), starts nothing that
 * stays (no orphaned cxlfork-stub, no process but the original with its cwd or an fd in
 * the fixture's directory) and stores no checkpoint in the pool.
 *
 * (test/criu/images.test.ts checks the same damage at the library level on a synthetic
 * capture; this file checks the CLI end to end: exit status, envelope, leftovers.)
 */
import assert from 'node:assert/strict'
import {appendFileSync, copyFileSync, cpSync, mkdirSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {type Fixture, readLog, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {
  big, cli, type CliResult, crit, describeRun, expectCliError, type ExpectedError, imagesDir, installSuiteHooks, note, okJson, orphanStubs, PAGE, pidsNamed, poolFile, processesUsing, STUB_COMM,
} from './helpers.js'

interface Dumped {
  fx: Fixture
  images: string
  pid: number
}

async function dumpMemtouch(tag: string): Promise<Dumped> {
  const fx = await startFixture('memtouch', {mib: 1})
  await waitForTicks(fx.logPath, fx.pid, 2)
  const images = imagesDir(tag)
  okJson(await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json']))
  return {fx, images, pid: fx.pid}
}

/** Runs `criu restore` and `criu import` on `images`; both must fail as `want` and leave nothing behind. */
async function expectRefused(d: Dumped | undefined, images: string, want: ExpectedError): Promise<{restore: CliResult; import: CliResult}> {
  const stubsBefore = pidsNamed(STUB_COMM)
  const pool = poolFile('bad')
  // Both only read the set: run them side by side.
  const [restore, imp] = await Promise.all([
    cli(['criu', 'restore', '--images', images, '--json']),
    cli(['criu', 'import', '--images', images, '--name', 'bad', '--pool', pool, '--json']),
  ])
  const restoreError = expectCliError(restore, want)
  note(`criu restore: exit ${restore.status} ${restoreError.code}: ${restoreError.message}`)
  const importError = expectCliError(imp, want)
  assert.equal(importError.code, restoreError.code, 'import and restore report the same error')

  // Nothing left running or stored.
  await new Promise((resolve) => setTimeout(resolve, 200))
  assert.deepEqual(orphanStubs(stubsBefore, restore.cliPid), [], `no orphaned ${STUB_COMM} after the refused restore`)
  if (d) {
    const users = processesUsing(d.fx.dir, [d.pid])
    assert.deepEqual(users, [], `no process but the original (${d.pid}) uses the fixture's directory (a clone would): ${JSON.stringify(users)}`)
    const strangers = readLog(d.fx.logPath).filter((e) => e.pid !== d.pid)
    assert.deepEqual(strangers.map((e) => e.line), [], 'no line in the log from any pid but the original')
  }
  const ls = okJson(await cli(['ls', '--pool', pool, '--json']))
  assert.deepEqual(ls.checkpoints, [], 'the refused import stored no checkpoint')
  return {import: imp, restore}
}

/** A copy of the dumped set to damage. */
function copySet(d: Dumped, tag: string): string {
  const copy = imagesDir(tag)
  cpSync(d.images, copy, {recursive: true})
  return copy
}

describe('criu-e2e: damaged image sets are refused with typed errors and leave nothing behind', function () {
  this.timeout(60_000)

  installSuiteHooks('criu-e2e bad images')

  it('truncated core-PID.img -> exit 6 CRIU_IMAGE_TRUNCATED naming the file', async () => {
    const d = await dumpMemtouch('trunc-core')
    const set = copySet(d, 'trunc-core-bad')
    const core = join(set, `core-${d.pid}.img`)
    truncateSync(core, Math.floor(statSync(core).size / 2))
    await expectRefused(d, set, {code: 'CRIU_IMAGE_TRUNCATED', exitCode: 6, message: [`core-${d.pid}.img`, /truncated/]})
    // the original is unharmed by all this
    assert.equal((await d.fx.check()).fields.ok, '1')
  })

  it('wrong magic in inventory.img -> exit 6 CRIU_IMAGE_MAGIC naming the file and both magics', async () => {
    const d = await dumpMemtouch('magic')
    const set = copySet(d, 'magic-bad')
    const path = join(set, 'inventory.img')
    const bytes = readFileSync(path)
    assert.equal(bytes.readUInt32LE(0), 0x58313116, 'inventory.img starts with INVENTORY_MAGIC')
    bytes.writeUInt32LE(0xdeadbeef, 0)
    writeFileSync(path, bytes)
    await expectRefused(d, set, {code: 'CRIU_IMAGE_MAGIC', exitCode: 6, message: ['inventory.img', '0x58313116', '0xdeadbeef']})
  })

  it('corrupted record bytes in mm-PID.img -> exit 6 CRIU_IMAGE_CORRUPT naming the file', async () => {
    const d = await dumpMemtouch('mm')
    const set = copySet(d, 'mm-bad')
    const path = join(set, `mm-${d.pid}.img`)
    const bytes = readFileSync(path)
    // head: 2 magics (8 bytes), then the record length (4) and the mm_entry record
    const length = bytes.readUInt32LE(8)
    assert.equal(length, bytes.length - 12, 'one record')
    // 0xff * 16 from the 3rd byte of the record: an over-long varint where a field value is expected
    bytes.fill(0xff, 12 + 2, 12 + 18)
    writeFileSync(path, bytes)
    await expectRefused(d, set, {code: 'CRIU_IMAGE_CORRUPT', exitCode: 6, message: [`mm-${d.pid}.img`]})
  })

  it('pages-1.img one page too short -> exit 6 CRIU_IMAGE_CORRUPT naming pages-1.img', async () => {
    const d = await dumpMemtouch('pages')
    const set = copySet(d, 'pages-bad')
    const path = join(set, 'pages-1.img')
    const size = statSync(path).size
    truncateSync(path, size - PAGE)
    await expectRefused(d, set, {code: 'CRIU_IMAGE_CORRUPT', exitCode: 6, message: ['pages-1.img', /too short/, String(size - PAGE)]})
  })

  it('a pagemap entry outside every VMA (re-encoded with crit) -> exit 6 CRIU_IMAGE_CORRUPT naming pagemap and mm', async () => {
    const d = await dumpMemtouch('pagemap')
    const set = copySet(d, 'pagemap-bad')
    const pagemapPath = join(set, `pagemap-${d.pid}.img`)
    const json = JSON.parse(await crit('decode', '-i', pagemapPath, '--pretty'))
    const mm = JSON.parse(await crit('decode', '-i', join(set, `mm-${d.pid}.img`), '--pretty')).entries[0]
    // a gap between two VMAs, below the stack
    const vmas = (mm.vmas as {start: string; end: string}[]).map((v) => ({end: big(v.end), start: big(v.start)}))
    const gapIndex = vmas.findIndex((v, i) => i + 1 < vmas.length && vmas[i + 1]!.start > v.end)
    assert.ok(gapIndex >= 0, 'the address space has a gap')
    const hole = vmas[gapIndex]!.end
    const entries = json.entries.slice(1) as {vaddr: string; nr_pages: number; flags: string}[]
    const at = entries.findIndex((e) => big(e.vaddr) > hole)
    const insert = {flags: 'PE_PRESENT', nr_pages: 1, vaddr: '0x' + hole.toString(16)}
    entries.splice(at < 0 ? entries.length : at, 0, insert)
    json.entries = [json.entries[0], ...entries]
    const edited = join(set, 'pagemap.json')
    writeFileSync(edited, JSON.stringify(json))
    await crit('encode', '-i', edited, '-o', pagemapPath)
    // crit reads it back with the extra entry
    const back = JSON.parse(await crit('decode', '-i', pagemapPath, '--pretty'))
    assert.ok(back.entries.some((e: {vaddr?: string}) => e.vaddr === insert.vaddr), 'the edited pagemap holds the stray entry')
    await expectRefused(d, set, {
      code: 'CRIU_IMAGE_CORRUPT', exitCode: 6,
      message: [`pagemap-${d.pid}.img`, `mm-${d.pid}.img`, hole.toString(16), /outside every VMA/],
    })
  })

  it('pages-1.img longer than its pagemap describes (a page, or a few bytes, appended) -> exit 6 CRIU_IMAGE_CORRUPT naming both', async () => {
    const d = await dumpMemtouch('pages-long')
    const path = (set: string) => join(set, 'pages-1.img')
    const size = statSync(path(d.images)).size
    const page = copySet(d, 'pages-long-page')
    appendFileSync(path(page), Buffer.alloc(PAGE, 0x5a))
    await expectRefused(d, page, {code: 'CRIU_IMAGE_CORRUPT', exitCode: 6, message: ['pages-1.img', `pagemap-${d.pid}.img`, String(size + PAGE), /does not match/]})
    const bytes = copySet(d, 'pages-long-bytes')
    appendFileSync(path(bytes), Buffer.alloc(100, 0x5a))
    await expectRefused(d, bytes, {code: 'CRIU_IMAGE_CORRUPT', exitCode: 6, message: ['pages-1.img', /100 bytes beyond the last whole page/]})
  })

  it('a missing fdinfo image (the clone would run without its fds) -> exit 3 CRIU_IMAGE_MISSING naming it', async () => {
    const d = await dumpMemtouch('no-fdinfo')
    const set = imagesDir('no-fdinfo-bad')
    mkdirSync(set)
    const fdinfo = readdirSync(d.images).filter((name) => name.startsWith('fdinfo-'))
    assert.equal(fdinfo.length, 1, `one fdinfo image: ${fdinfo.join(', ')}`)
    for (const name of readdirSync(d.images)) if (name !== fdinfo[0]) copyFileSync(join(d.images, name), join(set, name))
    await expectRefused(d, set, {code: 'CRIU_IMAGE_MISSING', exitCode: 3, message: [fdinfo[0]!]})
  })

  it('unknown inventory img_version -> exit 5 CRIU_IMAGE_VERSION naming inventory.img', async () => {
    const d = await dumpMemtouch('version')
    const set = copySet(d, 'version-bad')
    const path = join(set, 'inventory.img')
    const bytes = readFileSync(path)
    // inventory: INVENTORY_MAGIC (4), record length (4), then field 1 (img_version) varint: 08 02
    assert.deepEqual([bytes[8], bytes[9]], [0x08, 0x02], 'img_version = 2 is the first field of the record')
    bytes[9] = 0x07
    writeFileSync(path, bytes)
    const decoded = JSON.parse(await crit('decode', '-i', path))
    assert.equal(decoded.entries[0].img_version, 7, 'crit sees img_version 7')
    await expectRefused(d, set, {code: 'CRIU_IMAGE_VERSION', exitCode: 5, message: ['inventory.img', /version 7/]})
  })

  it('missing images directory -> exit 3 CRIU_IMAGE_MISSING naming the directory', async () => {
    const missing = imagesDir('missing')
    await expectRefused(undefined, missing, {code: 'CRIU_IMAGE_MISSING', exitCode: 3, message: [missing, 'inventory.img']})
  })

  it('a missing image file in an otherwise complete set -> exit 3 naming the file', async () => {
    const d = await dumpMemtouch('missing-file')
    const set = imagesDir('missing-file-bad')
    mkdirSync(set)
    for (const name of readdirSync(d.images)) if (name !== `mm-${d.pid}.img`) copyFileSync(join(d.images, name), join(set, name))
    await expectRefused(d, set, {code: 'CRIU_IMAGE_MISSING', exitCode: 3, message: [`mm-${d.pid}.img`]})
  })

  it('a mapped file changed since the dump -> exit 5 BACKING_FILE_CHANGED from restore and from import alike', async () => {
    const d = await dumpMemtouch('backing')
    // memtouch maps LOGFILE.map privately; appending a byte makes it another file than the dump saw.
    appendFileSync(`${d.fx.logPath}.map`, 'x')
    await expectRefused(d, d.images, {code: 'BACKING_FILE_CHANGED', exitCode: 5, message: [`${d.fx.logPath}.map`, /changed since the checkpoint/]})
  })

  it('control: the undamaged set restores (the damage above is what was refused)', async () => {
    const d = await dumpMemtouch('control')
    const run = await cli(['criu', 'restore', '--images', d.images, '--json'])
    assert.equal(run.status, 0, describeRun(run))
    trackPid(run.json.pid)
    await waitForTicks(d.fx.logPath, run.json.pid, 1)
  })
})

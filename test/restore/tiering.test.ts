/**
 * Tiering policies, proven from the clones' own page accounting (/proc/PID/pagemap,
 * status, maps): moa leaves untouched pages out of memory and makes touched pages
 * anonymous, also where the kernel touches them for the clone (write/read(2), a futex,
 * process_vm_readv); a killed fault server ends its clone instead of hanging it; record
 * reads what a clone accessed and wrote into the pool, where mow (written pages) and
 * hybrid (accessed pages) find it; bits accumulate atomically and reset.
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {closeSync, openSync, readFileSync, readSync} from 'node:fs'
import {join} from 'node:path'

import {type Fixture, procStat, processExists, requestCheck, requestExit, startFixture, trackPid, waitForExit, waitForTicks} from '../helpers/fixtures.js'
import {PROJECT_ROOT, cli, describeRun, installCleanupHooks, note, poolPath, statusBytes, until} from './helpers.js'
import {vmRead} from '../../src/sys/vm-io.js'

const PAGE = 4096
const MIB = 1 << 20

/** The pagemap entries (u64) of `pages` pages at `address` in `pid`. */
function pagemap(pid: number, address: bigint, pages: number): bigint[] {
  const bytes = Buffer.alloc(pages * 8)
  const fd = openSync(`/proc/${pid}/pagemap`, 'r')
  try {
    readSync(fd, bytes, 0, bytes.length, Number(address / BigInt(PAGE)) * 8)
  } finally {
    closeSync(fd)
  }
  return Array.from({length: pages}, (_, i) => bytes.readBigUInt64LE(i * 8))
}

const PRESENT = 1n << 63n
const FILE_PAGE = 1n << 61n

/** Does any mapping of `pid` map the pool file? */
function mapsPool(pid: number, pool: string): boolean {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').some((line) => line.endsWith(pool))
}

async function checkpointed(fixture: string, mib: number, pool: string, name: string): Promise<{fx: Fixture; ck: any}> {
  const fx = await startFixture(fixture, {mib})
  await waitForTicks(fx.logPath, fx.pid, 2)
  const run = await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', pool])
  assert.equal(run.status, 0, describeRun(run))
  return {fx, ck: run.json}
}

async function restored(pool: string, name: string, ...extra: string[]): Promise<any> {
  const run = await cli(['restore', name, '--json', '--pool', pool, ...extra])
  assert.equal(run.status, 0, describeRun(run))
  trackPid(run.json.pid)
  if (run.json.faultServerPid) trackPid(run.json.faultServerPid)
  note(`restore ${name} ${extra.join(' ')}: ${(run.json.stats.restore_time / 1000).toFixed(1)} ms engine, ${run.json.stats.pages_mapped} mapped, ${run.json.stats.pages_restored} copied, ${run.json.stats.pages_lazy} lazy, CLI ${run.ms.toFixed(0)} ms`)
  return run.json
}

describe('tiering: moa, hybrid, recorded access bits', function () {
  this.timeout(240_000)

  installCleanupHooks('tiering')

  it('moa: nothing mapped from the pool, untouched pages take no memory, touched pages are anonymous, kernel touches are served', async () => {
    const pool = poolPath('tiering')
    const {fx, ck} = await checkpointed('memtouch', 16, pool, 'lazy')
    const json = await restored(pool, 'lazy', '--policy', 'moa')
    const clone = json.pid as number
    assert.equal(json.policy, 'moa')
    assert.equal(json.stats.pages_mapped, 0, 'moa maps no page from the pool')
    assert.ok(json.stats.pages_lazy > 16 * MIB / PAGE, `the region is left to first touch: ${JSON.stringify(json.stats)}`)
    assert.equal(json.stats.pages_lazy + json.stats.pages_restored, ck.pages, 'every page is lazy or copied')
    assert.ok(json.pidNamespace, 'a moa clone gets a PID namespace (its init is the sentinel)')
    assert.ok(processExists(json.faultServerPid), 'the fault server runs')
    assert.equal(mapsPool(clone, pool), false, 'no mapping of the clone is backed by the pool')
    await waitForTicks(fx.logPath, clone, 2)

    // Untouched: the clone ticks, but its 16 MiB region is not in its memory.
    const region = BigInt(fx.ready.fields.region!)
    const regionPages = 16 * MIB / PAGE
    const before = pagemap(clone, region, regionPages).filter((e) => e & PRESENT).length
    const anonBefore = statusBytes(clone, 'RssAnon')!
    note(`moa clone before any access: ${before} of ${regionPages} region pages present, RssAnon ${(anonBefore / 1024).toFixed(0)} kB of ${(ck.bytes / 1024).toFixed(0)} kB checkpointed`)
    assert.equal(before, 0, 'no region page is in memory before the clone touches it')
    assert.ok(anonBefore < ck.bytes * 0.1, `RssAnon ${anonBefore} is a small part of ${ck.bytes}`)

    // process_vm_readv of a page the clone never touched: served, equal to the original's.
    const fromClone = new Uint8Array(PAGE)
    const fromOriginal = new Uint8Array(PAGE)
    vmRead(clone, region + 100n * BigInt(PAGE), fromClone)
    vmRead(fx.pid, region + 100n * BigInt(PAGE), fromOriginal)
    assert.deepEqual(fromClone, fromOriginal, 'process_vm_readv of an untouched page reads the checkpointed bytes')
    const served = pagemap(clone, region + 100n * BigInt(PAGE), 1)[0]!
    assert.ok((served & PRESENT) !== 0n && (served & FILE_PAGE) === 0n, 'that page is now the clone\'s own anonymous page')

    // The clone's CHECK: kernel touches first (write(2) from, pread(2) into, FUTEX_WAIT on untouched pages), then every byte.
    const check = await requestCheck(fx.logPath, clone, 60_000)
    assert.equal(check.fields.ok, '1', check.line)
    assert.equal(check.fields.crc, fx.ready.fields.crc)
    const after = pagemap(clone, region, regionPages)
    assert.ok(after.every((e) => (e & PRESENT) !== 0n && (e & FILE_PAGE) === 0n), 'after the CHECK every region page is present and anonymous')
    const anonAfter = statusBytes(clone, 'RssAnon')!
    assert.ok(anonAfter >= 16 * MIB, `RssAnon ${anonAfter} holds the touched region`)
    note(`moa clone after its CHECK: RssAnon ${(anonAfter / 1024).toFixed(0)} kB`)
  })

  it('moa granularity: a first touch copies exactly the page by default, the aligned 64 KiB block around it with --fault-pages 16', async () => {
    const pool = poolPath('tiering')
    const {fx} = await checkpointed('memtouch', 16, pool, 'grain')
    const region = BigInt(fx.ready.fields.region!)
    const regionPages = 16 * MIB / PAGE
    const touched = region + 100n * BigInt(PAGE) + 123n
    for (const [args, block] of [[[], 1], [['--fault-pages', '16'], 16]] as const) {
      const json = await restored(pool, 'grain', '--policy', 'moa', ...args)
      const clone = json.pid as number
      await waitForTicks(fx.logPath, clone, 1)
      vmRead(clone, touched, new Uint8Array(1))
      const blockStart = touched - (touched % BigInt(block * PAGE))
      const present = pagemap(clone, region, regionPages).flatMap((e, i) => ((e & PRESENT) !== 0n ? [region + BigInt(i * PAGE)] : []))
      const expected = Array.from({length: block}, (_, i) => blockStart + BigInt(i * PAGE)).filter((a) => a >= region && a < region + BigInt(16 * MIB))
      assert.deepEqual(present, expected, `--fault-pages ${block}: the pages present after one touch`)
    }
  })

  it('moa: a killed fault server ends its clone (SIGKILL through its init), never leaves it waiting', async () => {
    const pool = poolPath('tiering')
    const {fx} = await checkpointed('memtouch', 16, pool, 'orphaned')
    const json = await restored(pool, 'orphaned', '--policy', 'moa')
    const clone = json.pid as number
    const init = json.pidNamespace.initPid as number
    await waitForTicks(fx.logPath, clone, 2)
    process.kill(json.faultServerPid, 'SIGKILL')
    await until(() => !processExists(clone) && !processExists(init), 'the clone and its init end after the server is killed', 10_000)
    // The original is untouched by all this.
    const check = await fx.check()
    assert.equal(check.fields.ok, '1', check.line)
  })

  it('moa --fill-after: the rest is copied once faults go quiet; the server lets go of the init and ends; the clone runs on alone', async () => {
    const pool = poolPath('tiering')
    const {fx, ck} = await checkpointed('memtouch', 16, pool, 'filled')
    const json = await restored(pool, 'filled', '--policy', 'moa', '--fill-after', '100')
    const clone = json.pid as number
    await until(() => !processExists(json.faultServerPid), 'the fault server ends after the fill', 60_000)
    const anon = statusBytes(clone, 'RssAnon')!
    assert.ok(anon >= ck.bytes * 0.8, `everything is local after the fill: RssAnon ${anon} of ${ck.bytes}`)
    const init = json.pidNamespace.initPid as number
    assert.match(readFileSync(`/proc/${init}/status`, 'utf8'), /^TracerPid:\s+0$/m, 'the init is no longer traced')
    const check = await requestCheck(fx.logPath, clone)
    assert.equal(check.fields.ok, '1', check.line)
    await waitForTicks(fx.logPath, clone, 2)
  })

  it('record: exact with restore --record; mow then copies the written pages, hybrid the accessed ones; --reset clears; the clone records itself at exit', async () => {
    const pool = poolPath('tiering')
    const {fx} = await checkpointed('memtouch', 16, pool, 'rec')
    const region = BigInt(fx.ready.fields.region!)
    const regionPages = 16 * MIB / PAGE
    const first = await restored(pool, 'rec', '--record')
    assert.equal(first.tiering.recording.exact, true, 'fault-around is off on the recorded clone\'s pool mappings')
    assert.equal(first.tiering.recordedBy, 0)
    const clone = first.pid as number
    await waitForTicks(fx.logPath, clone, 2)
    const idle = await cli(['record', 'rec', '--pid', String(clone), '--json', '--pool', pool])
    assert.equal(idle.status, 0, describeRun(idle))
    assert.equal(idle.json.exact, true)
    note(`record of an idle clone: ${idle.json.accessed} accessed, ${idle.json.dirty} written of ${idle.json.pagesJudged}`)
    assert.ok(idle.json.accessed < 64, `an idle clone touched few pages: ${idle.json.accessed}`)
    // The CHECK reads every region page (and pread(2) rewrites one): now they are accessed.
    const check = await requestCheck(fx.logPath, clone)
    assert.equal(check.fields.ok, '1', check.line)
    const busy = await cli(['record', 'rec', '--pid', String(clone), '--json', '--pool', pool])
    assert.equal(busy.status, 0, describeRun(busy))
    assert.ok(busy.json.accessed >= regionPages, `after a full read, ${busy.json.accessed} pages accessed`)
    assert.ok(busy.json.dirty < regionPages / 8, `reading the region is not writing it: ${busy.json.dirty} pages written`)
    assert.equal(busy.json.record.recordings, 2)

    const inspect = await cli(['inspect', 'rec', '--json', '--pool', pool])
    assert.equal(inspect.json.accessRecord.recordings, 2)
    assert.equal(inspect.json.accessRecord.hot, busy.json.record.accessed)
    assert.equal(inspect.json.accessRecord.dirty, busy.json.record.dirty)

    // hybrid: recorded-hot pages local, the rest pool-mapped.
    const hybrid = await restored(pool, 'rec', '--policy', 'hybrid')
    assert.equal(hybrid.tiering.effectivePolicy, 'hybrid')
    assert.ok(hybrid.stats.pages_restored >= regionPages, `hot pages copied: ${hybrid.stats.pages_restored}`)
    const hybridRegion = pagemap(hybrid.pid, region, regionPages)
    assert.ok(hybridRegion.every((e) => (e & PRESENT) !== 0n && (e & FILE_PAGE) === 0n), 'every hot region page is local (anonymous, present) at restore')
    const hybridCheck = await requestCheck(fx.logPath, hybrid.pid)
    assert.equal(hybridCheck.fields.ok, '1', hybridCheck.line)

    // mow with dirty bits: exactly those pages copied (beside the stack), the region stays in the pool.
    const mow = await restored(pool, 'rec', '--policy', 'mow')
    assert.ok(mow.stats.pages_restored >= busy.json.record.dirty && mow.stats.pages_restored <= busy.json.record.dirty + 64,
      `mow copies the ${busy.json.record.dirty} written pages (and the stack): ${mow.stats.pages_restored}`)
    assert.ok(mapsPool(mow.pid, pool), 'mow still maps from the pool')
    const mowCheck = await requestCheck(fx.logPath, mow.pid)
    assert.equal(mowCheck.fields.ok, '1', mowCheck.line)

    // The --record clone records itself when it exits.
    await requestExit(fx.logPath, clone)
    assert.ok(await waitForExit(clone, 10_000))
    await until(() => !processExists(first.faultServerPid), 'the recorder ends with its clone', 10_000)
    const afterExit = await cli(['inspect', 'rec', '--json', '--pool', pool])
    assert.equal(afterExit.json.accessRecord.recordings, 3, 'the exit of the --record clone was recorded')

    const reset = await cli(['record', 'rec', '--reset', '--json', '--pool', pool])
    assert.equal(reset.status, 0, describeRun(reset))
    assert.equal(reset.json.recordings, 0)
    const plain = await restored(pool, 'rec', '--policy', 'hybrid')
    assert.equal(plain.tiering.effectivePolicy, 'mow', 'hybrid without recorded pages is mow, and says so')
    assert.ok(plain.stats.pages_restored < 64)
  })

  it('record: two recorders at once lose no bit (atomic OR in the pool)', async () => {
    const pool = poolPath('tiering')
    await checkpointed('memtouch', 4, pool, 'race')
    // Two processes OR complementary patterns into the same record 200 times each, concurrently.
    const script = join(PROJECT_ROOT, 'dist', 'test', 'restore', 'record-worker.js')
    const runs = [0, 1].map((parity) => new Promise<number>((resolve) => {
      const child = spawn(process.execPath, [script, pool, 'race', String(parity), '200'], {stdio: 'inherit'})
      child.on('exit', (code) => resolve(code ?? 1))
    }))
    assert.deepEqual(await Promise.all(runs), [0, 0])
    const inspect = await cli(['inspect', 'race', '--json', '--pool', pool])
    assert.equal(inspect.json.accessRecord.recordings, 400, 'every recording counted')
    assert.equal(inspect.json.accessRecord.hot, inspect.json.accessRecord.pages, 'even and odd pages from the two writers are all there')
    assert.equal(inspect.json.accessRecord.dirty, Math.floor(inspect.json.accessRecord.pages / 2), 'the dirty bits of the odd pages only')
  })

  it('bad input: record of a process that is not a clone, record without --pid, --record with moa, --fill-after without moa', async () => {
    const pool = poolPath('tiering')
    const {fx} = await checkpointed('memtouch', 4, pool, 'bad')
    const notClone = await cli(['record', 'bad', '--pid', String(fx.pid), '--json', '--pool', pool])
    assert.equal(notClone.status, 3, describeRun(notClone))
    assert.equal(notClone.json.error.code, 'NOT_A_CLONE')
    const noPid = await cli(['record', 'bad', '--json', '--pool', pool])
    assert.equal(noPid.status, 2, describeRun(noPid))
    const moaRecord = await cli(['restore', 'bad', '--policy', 'moa', '--record', '--json', '--pool', pool])
    assert.equal(moaRecord.status, 2, describeRun(moaRecord))
    assert.equal(moaRecord.json.error.code, 'RECORD_POLICY')
    const fill = await cli(['restore', 'bad', '--fill-after', '10', '--json', '--pool', pool])
    assert.equal(fill.status, 2, describeRun(fill))
    const host = await cli(['restore', 'bad', '--policy', 'moa', '--pidns', 'host', '--json', '--pool', pool])
    assert.equal(host.status, 5, describeRun(host))
    assert.equal(host.json.error.code, 'POLICY_NEEDS_PIDNS')
    assert.equal(procStat(fx.pid)?.state !== undefined, true, 'the original runs on')
  })
})

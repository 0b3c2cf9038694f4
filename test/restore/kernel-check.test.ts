/**
 * Restore refuses a checkpoint taken on another kernel build (its vDSO block
 * cannot be placed), before any process exists. The foreign kernel is
 * simulated by changing the recorded vDSO layout of a real checkpoint.
 */
import assert from 'node:assert/strict'

import {decodeImage} from '../../src/image/codec.js'
import {Section} from '../../src/image/sections.js'
import {PageMapView} from '../../src/image/page-map.js'
import {Pool} from '../../src/pool/index.js'
import {buildProcess} from '../../src/restore/build-process.js'
import {checkKernel} from '../../src/restore/host-checks.js'
import {planRestore} from '../../src/restore/plan.js'
import {vdsoLayout} from '../../src/sys/proc.js'
import {UnsupportedError} from '../../src/errors.js'
import {cleanupAll, startFixture, waitForTicks} from '../helpers/fixtures.js'
import {allProcesses, cli, describeRun, poolPath, removePools} from './helpers.js'

describe('restore: a checkpoint from another kernel build is refused', function () {
  this.timeout(60_000)
  // Created in before(): another suite's removePools() would otherwise forget it first.
  let pool = ''
  before(() => {
    pool = poolPath('kernel')
  })

  afterEach(async () => {
    await cleanupAll()
  })
  after(() => removePools())

  it('KERNEL_MISMATCH names both layouts; no stub is started', async () => {
    const fx = await startFixture('memtouch', {mib: 1})
    await waitForTicks(fx.logPath, fx.pid, 2)
    const run = await cli(['checkpoint', String(fx.pid), '--name', 'k', '--pool', pool, '--json'])
    assert.equal(run.status, 0, describeRun(run))

    const opened = Pool.open(pool)
    try {
      const reader = opened.openCheckpoint('k')
      const image = decodeImage(reader.section(Section.processState))
      const local = vdsoLayout('self')
      // The same image on this kernel passes.
      checkKernel(image, local)
      // A [vdso] one page larger, as another kernel build would have it.
      const vdso = image.kernel.vdsoLayout.find((part) => part.name === '[vdso]')!
      vdso.size += 4096n
      assert.throws(() => checkKernel(image, local), (error: unknown) => {
        assert.ok(error instanceof UnsupportedError)
        assert.equal(error.code, 'KERNEL_MISMATCH')
        assert.match(error.message, /vDSO layout/)
        assert.ok(error.hint && /same kernel build/.test(error.hint))
        return true
      })
      // And the builder refuses it before spawning anything.
      const stubsBefore = allProcesses().filter((p) => p.comm === 'cxlfork-stub').length
      const runs = [...new PageMapView(reader.section(Section.pageMap)).entries()].map((e) => ({vaddr: e.vaddr, nrPages: e.nrPages, vmaIndex: e.vmaIndex, storeOffset: e.poolOffset}))
      assert.throws(() => buildProcess(image, planRestore(image, runs, 'mow'), {mapPath: opened.path, localAddress: (o) => reader.address(o)}, {stdio: 'null', setsid: true}),
        (error: unknown) => error instanceof UnsupportedError && error.code === 'KERNEL_MISMATCH')
      assert.equal(allProcesses().filter((p) => p.comm === 'cxlfork-stub').length, stubsBefore, 'no stub was started')
    } finally {
      opened.close()
    }
  })
})

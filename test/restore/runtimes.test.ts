/**
 * What real runtimes hold, end to end: a Node.js program with worker_threads (threads,
 * epoll, eventfds, self-pipes, and V8's heap in MADV_DONTFORK memory) and a C program with
 * MADV_DONTFORK memory, each checkpointed live and restored under mow and local; every clone
 * answers through its own checks (the Node clone's workers answer requests).
 */
import assert from 'node:assert/strict'
import {readFileSync} from 'node:fs'

import {procStat, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, describeRun, installCleanupHooks, note, poolPath} from './helpers.js'

/** VmFlags of the VMA of `pid` that starts at `start`. */
function vmFlags(pid: number, start: bigint): string[] {
  const text = readFileSync(`/proc/${pid}/smaps`, 'utf8')
  const at = text.indexOf(`${start.toString(16)}-`)
  assert.ok(at >= 0, `a VMA at 0x${start.toString(16)} in ${pid}`)
  return (/VmFlags:([^\n]*)/.exec(text.slice(at))?.[1] ?? '').trim().split(/\s+/)
}

describe('restore: real runtimes (Node.js worker_threads, MADV_DONTFORK memory)', function () {
  this.timeout(180_000)

  installCleanupHooks('runtimes')

  it('nodeworkers (Node.js, 2 worker_threads): checkpointed live, restored under mow and local; the clone\'s workers answer', async () => {
    const pool = poolPath('runtimes')
    const fx = await startFixture('nodeworkers')
    assert.ok(procStat(fx.pid)!.threads >= 7, `Node runs its threads: ${procStat(fx.pid)!.threads}`)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'node', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    note(`checkpoint node: ${procStat(fx.pid)!.threads} threads, ${ck.json.fds} fds, ${ck.json.pages} pages, downtime ${(ck.json.downtimeUs / 1000).toFixed(1)} ms`)
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', original.line)
    for (const policy of ['mow', 'local'] as const) {
      const run = await cli(['restore', 'node', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      note(`restore node --policy ${policy}: ${(run.json.stats.restore_time / 1000).toFixed(1)} ms engine, ${run.json.threads} threads`)
      await waitForTicks(fx.logPath, clone, 2)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `the ${policy} clone: main table and every worker's answer: ${check.line}`)
      assert.equal(check.fields.crc, fx.ready.fields.crc)
    }
  })

  it('memtouch --advise dontfork: its MADV_DONTFORK pages are captured (new pool and existing pool), the clone has them, still DONTFORK', async () => {
    const fx = await startFixture('memtouch', {mib: 4, args: ['--advise', 'dontfork']})
    const extra = BigInt(fx.ready.fields.extra!)
    for (const fresh of [true, false]) {
      const pool = poolPath('runtimes')
      if (!fresh) assert.equal((await cli(['pool', 'init', '--size', '64M', '--json', '--pool', pool])).status, 0)
      const ck = await cli(['checkpoint', String(fx.pid), '--name', 'df', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      assert.ok(vmFlags(fx.pid, extra).includes('dc'), 'the original keeps its MADV_DONTFORK')
      const run = await cli(['restore', 'df', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `the clone's CHECK covers the DONTFORK pages' pattern: ${check.line}`)
      assert.ok(vmFlags(clone, extra).includes('dc'), 'and the clone has them DONTFORK too')
    }
    const check = await fx.check()
    assert.equal(check.fields.ok, '1', check.line)
  })
})

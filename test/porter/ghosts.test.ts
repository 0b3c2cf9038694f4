/**
 * Issue 15, ghosts with namespaces and cgroups: a threaded restore (a new PID
 * namespace) and a --netns new restore through the porter are built into
 * ghosts of their kind, each clone passing its own CHECK, in a cgroup of its
 * own with the limits asked for; a memory limit is enforced (the clone that
 * grows past it is OOM-killed); a SIGKILLed porter leaves no ghost and, once
 * restarted and stopped, no cgroup of ours (pool gc removes them too); a
 * function's clones are built into ghosts with the porter's pipes as fds 0-2;
 * a parent cgroup directory planted by another uid is not used; limits the
 * porter cannot enforce get typed errors.
 */
import assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import {chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmdirSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {porterRequest} from '../../src/porter/client.js'
import {processExists, readLog, requestCheck, startFixture, trackDir, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {cli, describeRun, installCleanupHooks, poolPath} from '../restore/helpers.js'
import {type RunningPorter, livingStubs, removeSocketDirs, sleep, socketDir, startPorter, stopPorter} from './helpers.js'

/** Cgroup parents the porters of these tests used (removed at the end if a failed test left them). */
const seenParents = new Set<string>()

async function status(socket: string): Promise<any> {
  const body = (await porterRequest(socket, 'GET', '/v1/status')).body
  for (const parent of body.cgroups?.parents ?? []) seenParents.add(parent)
  return body
}

/** Wait until the porter has `count` ghosts ready of each kind in `kinds`. */
async function readyKinds(socket: string, kinds: readonly string[], count = 1): Promise<any> {
  for (let i = 0; i < 400; i++) {
    const body = await status(socket)
    if (kinds.every((kind) => (body.ghosts.readyByKind[kind] ?? 0) >= count)) return body
    await sleep(25)
  }
  throw new Error(`ghosts of kinds ${kinds.join(', ')} not ready: ${JSON.stringify((await status(socket)).ghosts)}`)
}

/** The clone's cgroup line for a v1 controller, or v2 ('') from /proc/PID/cgroup. */
function cgroupLine(pid: number, controller: string): string | undefined {
  return readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((line) => line.split(':')[1]!.split(',').includes(controller) || (controller === '' && line.startsWith('0::')))
}

/** Entries named like the porter's per-clone cgroups under its parent directories. */
function cgroupDirs(parents: readonly string[]): string[] {
  return parents.flatMap((parent) => (existsSync(parent) ? readdirSync(parent).filter((entry) => /^c\d+-\d+$/.test(entry)).map((entry) => join(parent, entry)) : []))
}

function readNumber(path: string): number {
  return Number(readFileSync(path, 'utf8').trim().split(/\s+/)[0])
}

describe('porter: ghosts of every namespace shape, each in a cgroup of its own (issue 15)', function () {
  this.timeout(240_000)
  installCleanupHooks('porter-ghosts')
  const porters: RunningPorter[] = []

  afterEach(async () => {
    for (const porter of porters.splice(0)) await stopPorter(porter)
  })
  after(async () => {
    // A failed test may leave a clone's cgroup with no porter to sweep it: its clones are killed by now (cleanup hooks).
    await sleep(200)
    for (const parent of seenParents) {
      for (const dir of cgroupDirs([parent])) {
        try {
          rmdirSync(dir) // empty cgroups only
        } catch {
          // a process still in it
        }
      }
      try {
        rmdirSync(parent)
      } catch {
        // gone, or not empty
      }
    }
    removeSocketDirs()
  })

  it('a threaded restore and a --netns new restore are built into ghosts of their kind, with their limits; each clone passes its CHECK', async function () {
    const pool = poolPath('porter-ghosts')
    const threaded = await startFixture('threads', {args: ['--threads', '2']})
    const plain = await startFixture('memtouch', {mib: 8})
    await waitForTicks(threaded.logPath, threaded.pid, 2)
    await waitForTicks(plain.logPath, plain.pid, 2)
    // The threaded clone keeps the original's pid in its namespace; its log lines carry its host pid (fixture.h).
    for (const [fx, name] of [[threaded, 'thr'], [plain, 'web']] as const) {
      const ck = await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
    }
    const socket = `${socketDir()}/p.sock`
    const porter = await startPorter(pool, socket, {ghosts: 1, args: ['--ghost-kinds', 'pidns,netns']})
    porters.push(porter)
    const before = await readyKinds(socket, ['pidns', 'netns'])
    if (!before.cgroups.enabled || before.cgroups.memory === null || before.cgroups.cpu === null) this.skip() // the typed refusal is tested below
    const env = {CXLFORK_PORTER_SOCKET: socket}

    const thr = await cli(['restore', 'thr', '--json', '--pool', pool, '--memory-max', '64M', '--cpu-max', '0.5'], {env})
    assert.equal(thr.status, 0, describeRun(thr))
    trackPid(thr.json.pid)
    trackPid(thr.json.pidNamespace.initPid)
    assert.equal(thr.json.servedBy, 'porter')
    assert.equal(thr.json.ghost, true, `built into a pidns ghost: ${JSON.stringify(thr.json.ghost)}`)
    assert.equal(thr.json.threads, 3)
    assert.equal(thr.json.pidNamespace.pid, threaded.pid, 'the original pid inside its namespace')
    assert.equal(thr.json.cgroup.placed, true, JSON.stringify(thr.json.cgroup))

    const net = await cli(['restore', 'web', '--json', '--pool', pool, '--netns', 'new', '--memory-max', '48M'], {env})
    assert.equal(net.status, 0, describeRun(net))
    trackPid(net.json.pid)
    assert.equal(net.json.ghost, true, `built into a netns ghost: ${JSON.stringify(net.json.ghost)}`)
    assert.equal(net.json.netns, 'new')
    assert.notEqual(readlinkSync(`/proc/${net.json.pid}/ns/net`), readlinkSync('/proc/self/ns/net'), 'a network namespace of its own')
    assert.equal(readFileSync(`/proc/${net.json.pid}/net/dev`, 'utf8').split('\n').filter((line) => line.includes(':')).length, 1, 'loopback only')

    const used = (await porterRequest(socket, 'GET', '/v1/metrics')).body.ghosts
    assert.equal(used.usedByKind.pidns, 1, JSON.stringify(used))
    assert.equal(used.usedByKind.netns, 1, JSON.stringify(used))

    // Each clone in its own cgroup, with its limits.
    for (const [run, memory, quota] of [[thr, 64 << 20, 50_000], [net, 48 << 20, undefined]] as const) {
      const {name, dirs} = run.json.cgroup
      const pid = run.json.pid as number
      for (const controller of ['memory', 'cpu']) {
        const line = cgroupLine(pid, before.cgroups[controller] === 'v2' ? '' : controller)
        assert.ok(line?.endsWith(`/${name}`), `clone ${pid} is in its ${controller} cgroup ${name}: ${line}`)
      }
      if (before.cgroups.memory === 'v1') assert.equal(readNumber(join(dirs.memory, 'memory.limit_in_bytes')), memory)
      else assert.equal(readNumber(join(dirs.v2, 'memory.max')), memory)
      if (quota !== undefined) {
        if (before.cgroups.cpu === 'v1') assert.equal(readNumber(join(dirs.cpu, 'cpu.cfs_quota_us')), quota)
        else assert.equal(readNumber(join(dirs.v2, 'cpu.max')), quota)
      }
    }
    // A pidns ghost: the init and the clone share the cgroup.
    assert.ok(cgroupLine(thr.json.pidNamespace.initPid, before.cgroups.memory === 'v2' ? '' : 'memory')?.endsWith(`/${thr.json.cgroup.name}`))

    // The clones run as their originals did: their own checks pass.
    for (const [fx, pid] of [[threaded, thr.json.pid], [plain, net.json.pid]] as const) {
      await waitForTicks(fx.logPath, pid, 2)
      const check = await requestCheck(fx.logPath, pid)
      assert.equal(check.fields.ok, '1', check.line)
    }
    if (thr.json.threads > 1) assert.equal((await requestCheck(threaded.logPath, thr.json.pid)).fields.threads, '3')
  })

  it('a memory limit is enforced: a clone growing past --memory-max is OOM-killed in its cgroup', async function () {
    const pool = poolPath('porter-ghosts')
    const fx = await startFixture('memtouch', {mib: 8})
    await waitForTicks(fx.logPath, fx.pid, 2)
    assert.equal((await cli(['checkpoint', String(fx.pid), '--name', 'grow', '--json', '--pool', pool])).status, 0)
    const socket = `${socketDir()}/p.sock`
    const porter = await startPorter(pool, socket, {ghosts: 1})
    porters.push(porter)
    const body = await readyKinds(socket, ['plain'])
    if (!body.cgroups.enabled || body.cgroups.memory === null) this.skip()
    const limit = 16 << 20
    const run = await cli(['restore', 'grow', '--json', '--pool', pool, '--memory-max', '16M'], {env: {CXLFORK_PORTER_SOCKET: socket}})
    assert.equal(run.status, 0, describeRun(run))
    const clone = run.json.pid as number
    trackPid(clone)
    assert.equal(run.json.ghost, true)
    await waitForTicks(fx.logPath, clone, 2)
    // Each SIGUSR2 writes 4 MiB of new heap (fixture.h, fx_grow): the 5th cannot fit in 16 MiB.
    let grew = 0
    for (let i = 0; i < 12 && processExists(clone); i++) {
      const from = readLog(fx.logPath).length
      process.kill(clone, 'SIGUSR2')
      for (let j = 0; j < 200 && processExists(clone) && !readLog(fx.logPath).slice(from).some((e) => e.kind === 'GREW' && e.pid === clone); j++) await sleep(10)
      if (readLog(fx.logPath).slice(from).some((e) => e.kind === 'GREW' && e.pid === clone)) grew++
    }
    for (let i = 0; i < 200 && processExists(clone); i++) await sleep(10)
    assert.ok(!processExists(clone), 'the clone is gone')
    assert.ok(grew * 4 < limit / (1 << 20) + 4, `it grew ${grew} x 4 MiB before it died, not past the 16 MiB limit`)
    // The porter reaped its child: killed by SIGKILL (the OOM killer of its cgroup).
    let exit: any
    for (let i = 0; i < 100 && !exit; i++) {
      exit = (await porterRequest(socket, 'GET', '/v1/metrics')).body.recentExits.find((e: any) => e.pid === clone)
      if (!exit) await sleep(50)
    }
    assert.deepEqual(exit, {pid: clone, code: null, signal: 9})
    // Its cgroup is removed once it is reaped.
    for (let i = 0; i < 100 && existsSync(run.json.cgroup.dirs.memory ?? run.json.cgroup.dirs.v2); i++) await sleep(50)
    assert.ok(!existsSync(run.json.cgroup.dirs.memory ?? run.json.cgroup.dirs.v2), 'the dead clone\'s cgroup is removed')
    // The original, outside any limit of ours, grows on.
    assert.equal((await fx.grow()).fields.ok, '1')
  })

  it('porter SIGKILL: no ghost survives; pool gc and a restarted porter remove the cgroups left, a released clone keeps its cgroup until it ends; nothing is left after stop', async function () {
    const pool = poolPath('porter-ghosts')
    const fx = await startFixture('memtouch', {mib: 8})
    await waitForTicks(fx.logPath, fx.pid, 2)
    assert.equal((await cli(['checkpoint', String(fx.pid), '--name', 'web', '--json', '--pool', pool])).status, 0)
    const socket = `${socketDir()}/p.sock`
    const first = await startPorter(pool, socket, {ghosts: 2, args: ['--ghost-kinds', 'plain,pidns']})
    porters.push(first)
    const ready = await readyKinds(socket, ['plain', 'pidns'], 2)
    if (!ready.cgroups.enabled) this.skip()
    const parents = ready.cgroups.parents as string[]
    const released = await porterRequest(socket, 'POST', '/v1/restore', {name: 'web', memoryMax: 64 << 20})
    assert.equal(released.status, 200, JSON.stringify(released.body))
    const clone = released.body.pid as number
    trackPid(clone)
    const ghosts = (await readyKinds(socket, ['plain', 'pidns'], 2)).ghostPids as number[]
    assert.ok(cgroupDirs(parents).length >= 5, `4 ghosts and a clone in cgroups of their own: ${cgroupDirs(parents).join(', ')}`)

    first.child.kill('SIGKILL')
    await first.exited
    for (let i = 0; i < 100 && livingStubs(ghosts).length > 0; i++) await sleep(20)
    assert.deepEqual(livingStubs(ghosts), [], 'no ghost survives the porter')
    assert.ok(processExists(clone), 'the released clone runs on')

    // pool gc removes the cgroups a killed porter left (the running clone's stays: rmdir of a busy cgroup fails).
    const gc = await cli(['pool', 'gc', '--json', '--pool', pool], {env: {CXLFORK_PORTER_SOCKET: socket}})
    assert.equal(gc.status, 0, describeRun(gc))
    assert.ok(gc.json.cgroupsRemoved >= 4, `pool gc removed the dead ghosts' cgroups: ${gc.stdout}`)
    assert.deepEqual([...new Set(cgroupDirs(parents).map((dir) => dir.split('/').at(-1)))], [released.body.cgroup.name], 'only the running clone keeps its cgroup (and its limit)')

    // And a starting porter removes what a killed one left.
    const second = await startPorter(pool, socket, {ghosts: 1})
    porters.push(second)
    const secondGhosts = (await readyKinds(socket, ['plain'])).ghostPids as number[]
    second.child.kill('SIGKILL')
    await second.exited
    for (let i = 0; i < 100 && livingStubs(secondGhosts).length > 0; i++) await sleep(20)
    assert.deepEqual(livingStubs(secondGhosts), [])
    const third = await startPorter(pool, socket, {ghosts: 1})
    porters.push(third)
    const after = await readyKinds(socket, ['plain'])
    assert.ok(after.recovered.cgroupsRemoved >= 1, `the dead ghost's cgroup was removed at start: ${JSON.stringify(after.recovered)}`)
    const left = cgroupDirs(parents).map((dir) => dir.split('/').at(-1))
    assert.ok(left.includes(released.body.cgroup.name), 'the running clone keeps its cgroup')
    assert.ok(left.every((name) => name === released.body.cgroup.name || after.ghostPids.some((pid: number) => name!.endsWith(`-${pid}`))), `only the clone's and the new ghost's cgroups: ${left.join(', ')}`)
    const check = await requestCheck(fx.logPath, clone)
    assert.equal(check.fields.ok, '1', check.line)

    process.kill(clone, 'SIGKILL')
    for (let i = 0; i < 200 && processExists(clone); i++) await sleep(10)
    await stopPorter(third)
    assert.deepEqual(cgroupDirs(parents), [], 'no cgroup of ours is left')
    for (const parent of parents) assert.ok(!existsSync(parent), `${parent} is removed`)
  })

  it('a function scales out into ghosts: the clone answers on the porter\'s pipes (fds 0-2 installed into the ghost), holds no pidfd of the porter, in a cgroup of its own', async function () {
    const pool = poolPath('porter-ghosts')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-fn-ghost-'))
    trackDir(dir)
    const log = join(dir, 'float.log')
    assert.equal((await cli(['pool', 'init', '--size', '64M', '--pool', pool, '--json'])).status, 0)
    const socket = `${socketDir()}/p.sock`
    const porter = await startPorter(pool, socket, {ghosts: 2})
    porters.push(porter)
    const ready = await readyKinds(socket, ['plain'], 2)
    const deployed = await cli(['fn', 'deploy', 'float', '--cmd', `python3 fixtures/faas/floatmath.py ${log} --mib 4 --stdio 1`, '--checkpoint-after', '1', '--max-instances', '3', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(deployed.status, 0, describeRun(deployed))
    const invoke = async (data: unknown): Promise<any> => {
      const reply = await porterRequest(socket, 'POST', '/v1/functions/float/invoke', {data})
      assert.equal(reply.status, 200, JSON.stringify(reply.body))
      trackPid(reply.body.pid)
      return reply.body
    }
    const first = await invoke({i: 0})
    assert.equal(first.start, 'cold')
    const usedBefore = (await status(socket)).ghosts.used
    const results = await Promise.all([1, 2, 3].map((i) => invoke({i, sleepMs: 800})))
    const clones = results.filter((r) => r.start === 'restored')
    assert.equal(clones.length, 2, JSON.stringify(results.map((r) => r.start)))
    assert.equal((await status(socket)).ghosts.used - usedBefore, 2, 'both clones were built into ghosts')
    for (const clone of clones) {
      assert.equal(clone.output.ok, true)
      assert.equal(clone.output.pid, clone.pid)
      assert.equal(clone.output.data.i, results.indexOf(clone) + 1)
      const fds = Object.fromEntries(readdirSync(`/proc/${clone.pid}/fd`).map((fd) => [fd, readlinkSync(`/proc/${clone.pid}/fd/${fd}`)]))
      for (const fd of ['0', '1', '2']) assert.match(fds[fd]!, /^pipe:/, `fd ${fd} of clone ${clone.pid} is a pipe to the porter`)
      assert.ok(!Object.values(fds).some((target) => target.includes('pidfd')), `no pidfd left in the clone: ${JSON.stringify(fds)}`)
      if (ready.cgroups.enabled) assert.ok(readFileSync(`/proc/${clone.pid}/cgroup`, 'utf8').includes(`/cxlfork-`), 'in a cgroup of the porter')
    }
    const rm = await cli(['fn', 'rm', 'float', '--pool', pool, '--socket', socket, '--json'])
    assert.equal(rm.status, 0, describeRun(rm))
  })

  it('a hostile neighbour: a parent cgroup directory planted by another uid is not used; memory limits are then refused, said in status', async function () {
    const socket = `${socketDir()}/p.sock`
    const own = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((line) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(line))
    const mount = '/sys/fs/cgroup/memory'
    if (!own || !existsSync(join(mount, 'memory.limit_in_bytes')) || readFileSync('/sys/fs/cgroup/unified/cgroup.controllers', 'utf8').includes('memory')) this.skip()
    const planted = join(mount, own!.split(':')[2]!, `cxlfork-${createHash('sha256').update(socket).digest('hex').slice(0, 12)}`)
    mkdirSync(planted)
    try {
      chownSync(planted, 65534, 65534)
      const pool = poolPath('porter-ghosts')
      const fx = await startFixture('memtouch', {mib: 4})
      await waitForTicks(fx.logPath, fx.pid, 2)
      assert.equal((await cli(['checkpoint', String(fx.pid), '--name', 'web', '--json', '--pool', pool])).status, 0)
      porters.push(await startPorter(pool, socket, {ghosts: 1}))
      const body = await readyKinds(socket, ['plain'])
      assert.equal(body.cgroups.memory, null, JSON.stringify(body.cgroups))
      assert.match(body.cgroups.notes.join(' '), /not a cgroup directory of uid/)
      const human = await cli(['porter', 'status', '--socket', socket, '--pool', pool])
      assert.match(human.stdout, /memory not limited/, describeRun(human))
      const refused = await porterRequest(socket, 'POST', '/v1/restore', {name: 'web', memoryMax: 64 << 20})
      assert.equal(refused.body.error?.code, 'CGROUP_UNAVAILABLE', JSON.stringify(refused.body))
      assert.deepEqual(readdirSync(planted).filter((entry) => /^c\d+-\d+$/.test(entry)), [], 'nothing created in the planted directory')
    } finally {
      for (const porter of porters.splice(0)) await stopPorter(porter)
      rmdirSync(planted)
    }
  })

  it('limits the porter cannot enforce, or without a porter, are typed errors; a restore without limits is still served', async () => {
    const pool = poolPath('porter-ghosts')
    const fx = await startFixture('memtouch', {mib: 4})
    await waitForTicks(fx.logPath, fx.pid, 2)
    assert.equal((await cli(['checkpoint', String(fx.pid), '--name', 'web', '--json', '--pool', pool])).status, 0)
    const socket = `${socketDir()}/p.sock`
    porters.push(await startPorter(pool, socket, {ghosts: 1, args: ['--no-cgroups']}))
    const body = await readyKinds(socket, ['plain'])
    assert.equal(body.cgroups.enabled, false)
    assert.match(body.cgroups.notes.join(' '), /off/)
    const env = {CXLFORK_PORTER_SOCKET: socket}
    const refused = await cli(['restore', 'web', '--json', '--pool', pool, '--memory-max', '64M'], {env})
    assert.equal(refused.status, 5, describeRun(refused))
    assert.equal(refused.json.error.code, 'CGROUP_UNAVAILABLE')
    const cpu = await porterRequest(socket, 'POST', '/v1/restore', {name: 'web', cpuMax: 0.5})
    assert.equal(cpu.status, 422)
    assert.equal(cpu.body.error.code, 'CGROUP_UNAVAILABLE')
    const bad = await porterRequest(socket, 'POST', '/v1/restore', {name: 'web', cpuMax: 0})
    assert.equal(bad.body.error.code, 'INVALID_LIMIT')
    const noPorter = await cli(['restore', 'web', '--json', '--pool', pool, '--memory-max', '64M', '--no-porter'], {env})
    assert.equal(noPorter.status, 5, describeRun(noPorter))
    assert.equal(noPorter.json.error.code, 'LIMITS_NEED_PORTER')
    const served = await cli(['restore', 'web', '--json', '--pool', pool], {env})
    assert.equal(served.status, 0, describeRun(served))
    trackPid(served.json.pid)
    assert.equal(served.json.ghost, true)
    assert.equal(served.json.cgroup.placed, false)
    assert.match(served.json.cgroup.why, /off/)
    assert.equal((await requestCheck(fx.logPath, served.json.pid)).fields.ok, '1')
  })
})

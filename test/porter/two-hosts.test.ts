/**
 * Issue 15, acceptance: two porters for one pool on two "hosts", each
 * restoring a checkpoint the other's function published. Host A is this
 * machine; host B is the second-host setup of test/restore/namespaces.test.ts:
 * new mount, pid and UTS namespaces (unshare), another hostname, the pool file
 * bind-mounted at another path on a tmpfs of its own, so B's cxlfork processes
 * register in the pool's host table as another host. Each porter deploys a
 * floatmath function (another seed each, so another crc) and publishes its
 * checkpoint after its Nth invocation; each then deploys a function served from
 * the OTHER host's checkpoint (`fn deploy --checkpoint fn.NAME`), whose first
 * invocation is a clone restored from it, answering over its stdio with the
 * other function's crc and invocation count. The pool records each clone's
 * reference under its own host's index; A's porter, restarted, serves B's
 * checkpoint again from its records. Torn down through the CLI: functions
 * removed, both porters stopped, no instance left, and the pool file removed.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readdirSync, readFileSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {processExists, trackDir, trackPid, waitForExit} from '../helpers/fixtures.js'
import {CLI, type CliResult, PROJECT_ROOT, cli, describeRun, installCleanupHooks, note, poolPath} from '../restore/helpers.js'
import {type RunningPorter, removeSocketDirs, sleep, socketDir, startPorter, stopPorter} from './helpers.js'

const OTHER_HOSTNAME = 'cxlfork-fn-hostb'
const logDirs: string[] = []

function logFile(tag: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'cxlfork-fn2h-'))
  logDirs.push(dir)
  return join(dir, `${tag}.log`)
}

/** The crc every invocation of the function logging to `log` must reproduce (its READY line). */
function readyCrc(log: string): string {
  const m = /^READY pid=\d+ fn=floatmath mib=\d+ crc=([0-9a-f]{8})/m.exec(readFileSync(log, 'utf8'))
  assert.ok(m, `a READY line in ${log}`)
  return m[1]!
}

const floatCmd = (log: string, seed: number): string => `python3 ${join(PROJECT_ROOT, 'fixtures/faas/floatmath.py')} ${log} --mib 4 --seed ${seed} --stdio 1`

/** NSpid of /proc/PID/status: its pid in each nested pid namespace, outermost first. */
function nsPids(pid: number): number[] {
  try {
    const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? m[1]!.trim().split(/\s+/).map(Number) : []
  } catch {
    return []
  }
}

/** Living (not zombie) processes whose command line mentions `text`. */
function processesMentioning(text: string): number[] {
  return readdirSync('/proc').filter((entry) => /^\d+$/.test(entry)).map(Number).filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1')
      return stat[stat.lastIndexOf(')') + 2] !== 'Z' && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text)
    } catch {
      return false
    }
  })
}

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

describe('porter: two porters for one pool on two "hosts" (issue 15)', function () {
  this.timeout(240_000)
  installCleanupHooks('porter-two-hosts')
  let porterA: RunningPorter | undefined
  let unshare: ChildProcess | undefined

  afterEach(async () => {
    await stopPorter(porterA)
    porterA = undefined
    // SIGKILL of unshare --kill-child kills host B's init, which takes its pid namespace (porter B, its instances) with it.
    if (unshare && unshare.exitCode === null && unshare.signalCode === null) unshare.kill('SIGKILL')
    unshare = undefined
  })
  after(() => {
    removeSocketDirs()
    for (const dir of logDirs.splice(0)) rmSync(dir, {recursive: true, force: true})
  })

  it('each porter restores the checkpoint the other host\'s function published; the clone answers with the other function\'s state; references are per host', async () => {
    const pool = poolPath('fn-2hosts')
    const init = await cli(['pool', 'init', '--size', '256M', '--pool', pool, '--json'])
    assert.equal(init.status, 0, describeRun(init))
    const socketA = join(socketDir(), 'porter.sock')
    porterA = await startPorter(pool, socketA, {ghosts: 0})

    // Host B: its own namespaces, hostname and view of the pool; its porter runs there until stopped.
    const mnt = mkdtempSync(join(tmpdir(), 'cxlfork-fn2h-ns-'))
    trackDir(mnt)
    const poolB = join(mnt, 'other.pool')
    const socketB = join(mnt, 'porter.sock')
    const script = [
      'set -e',
      'hostname "$OTHER_HOSTNAME"',
      'mount -t tmpfs cxlfork-fn2h "$MNT"',
      ': > "$OTHER_POOL"',
      'mount --bind "$POOL" "$OTHER_POOL"',
      'echo "INITPID $$"',
      'echo "HOSTPOOL $(test -e "$POOL" && echo visible || echo hidden)"',
      '"$NODE" "$CLI" porter start --foreground --pool "$OTHER_POOL" --socket "$SOCKET" --ghosts 0 &',
      'PORTER=$!',
      'echo "PORTER $PORTER"',
      'set +e',
      'wait "$PORTER"',
      'echo "PORTER_EXIT $?"',
      'exec sleep 600',
    ].join('\n')
    unshare = spawn('unshare', ['--mount', '--pid', '--uts', '--fork', '--mount-proc', '--kill-child', 'sh', '-c', script], {
      env: {...process.env, CLI, MNT: mnt, NODE: process.execPath, OTHER_HOSTNAME, OTHER_POOL: poolB, POOL: pool, SOCKET: socketB},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    trackPid(unshare.pid!)
    let out = ''
    unshare.stdout!.on('data', (chunk: Buffer) => (out += chunk.toString()))
    unshare.stderr!.on('data', (chunk: Buffer) => (out += chunk.toString()))
    const field = (key: string): string | undefined => out.split('\n').find((l) => l.startsWith(key + ' '))?.slice(key.length + 1)
    await until('host B\'s porter to start', () => (field('PORTER') !== undefined || unshare!.exitCode !== null ? true : undefined))
    assert.equal(field('INITPID'), '1', `host B's script is init of its pid namespace:\n${out}`)
    const nsInit = await until('host B\'s init', () => {
      const children = readFileSync(`/proc/${unshare!.pid}/task/${unshare!.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
      return children.find((pid) => nsPids(pid)[1] === 1)
    })

    /** The CLI on host B: run inside its namespaces (nsenter forks into its pid namespace), in the project directory. */
    const onB = (args: string[]): Promise<CliResult> => new Promise((resolve) => {
      const t0 = performance.now()
      const all = ['--target', String(nsInit), '--pid', '--mount', '--uts', `--wd=${PROJECT_ROOT}`, '--', process.execPath, CLI, ...args]
      const child = spawn('nsenter', all, {stdio: ['ignore', 'pipe', 'pipe']})
      let stdout = ''
      let stderr = ''
      child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
      child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
      child.on('close', (status, signal) => {
        let json: any
        try {
          json = JSON.parse(stdout)
        } catch {
          json = undefined
        }
        resolve({args: ['(host B)', ...args], cliPid: child.pid ?? -1, json, ms: performance.now() - t0, signal, status, stderr, stdout})
      })
    })
    const fnB = (args: string[]): Promise<CliResult> => onB(['fn', ...args, '--pool', poolB, '--socket', socketB, '--json'])
    const fnA = (args: string[]): Promise<CliResult> => cli(['fn', ...args, '--pool', pool, '--socket', socketA, '--json'])

    const statusB = await until('host B\'s porter to answer', async () => {
      const run = await onB(['porter', 'status', '--pool', poolB, '--socket', socketB, '--json'])
      return run.status === 0 ? run : undefined
    })
    assert.equal(statusB.json.pool, poolB, describeRun(statusB))
    assert.equal(field('HOSTPOOL'), 'visible', 'the mount namespace is a copy of the host\'s')

    // Two hosts in the pool's host table: A (this machine) and B (its namespaces and hostname).
    const info = await cli(['pool', 'info', '--pool', pool, '--json'])
    assert.equal(info.status, 0, describeRun(info))
    const hostA = info.json.hostsSeen.find((host: any) => host.self)
    const hostB = info.json.hostsSeen.find((host: any) => host.hostname === OTHER_HOSTNAME)
    assert.ok(hostA && hostB, `both hosts are in the host table: ${JSON.stringify(info.json.hostsSeen)}`)
    assert.notEqual(hostA.index, hostB.index)
    assert.equal(hostB.self, false)
    assert.equal(hostB.leaseLive, true)

    // Each porter: a function of its own, checkpointed after its Nth invocation into the shared pool.
    const logA = logFile('a')
    const logB = logFile('b')
    const deployA = await fnA(['deploy', 'fa', '--cmd', floatCmd(logA, 11), '--checkpoint-after', '2'])
    assert.equal(deployA.status, 0, describeRun(deployA))
    const deployB = await fnB(['deploy', 'fb', '--cmd', floatCmd(logB, 22), '--checkpoint-after', '3'])
    assert.equal(deployB.status, 0, describeRun(deployB))
    for (let i = 1; i <= 3; i++) {
      const run = await fnA(['invoke', 'fa', '--data', JSON.stringify({i})])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      assert.equal(run.json.output.n, i)
      assert.equal(run.json.checkpointed?.name, i === 2 ? 'fn.fa' : undefined, `fa is checkpointed after its 2nd invocation (invocation ${i})`)
    }
    for (let i = 1; i <= 4; i++) {
      const run = await fnB(['invoke', 'fb', '--data', JSON.stringify({i})])
      assert.equal(run.status, 0, describeRun(run))
      assert.equal(run.json.output.n, i)
      assert.equal(run.json.checkpointed?.name, i === 3 ? 'fn.fb' : undefined, `fb is checkpointed after its 3rd invocation (invocation ${i})`)
    }
    const crcA = readyCrc(logA)
    const crcB = readyCrc(logB)
    assert.notEqual(crcA, crcB, 'the two functions hold different data (seeds)')
    const lsA = await cli(['ls', '--pool', pool, '--json'])
    const lsB = await onB(['ls', '--pool', poolB, '--json'])
    for (const ls of [lsA, lsB]) {
      assert.equal(ls.status, 0, describeRun(ls))
      for (const name of ['fn.fa', 'fn.fb']) assert.ok(JSON.stringify(ls.json).includes(`"${name}"`), `each host sees ${name}: ${describeRun(ls)}`)
    }

    // Each porter serves a function from the checkpoint the other host's function published (one that does not exist is refused at deploy).
    const missing = await fnA(['deploy', 'nothing', '--cmd', floatCmd(logB, 22), '--checkpoint', 'fn.nosuch'])
    assert.deepEqual([missing.status, missing.json?.error?.code], [3, 'CHECKPOINT_NOT_FOUND'], describeRun(missing))
    assert.ok(missing.json.error.hint && !missing.stderr.includes('    at '), describeRun(missing))
    const adoptA = await fnA(['deploy', 'fb-on-a', '--cmd', floatCmd(logB, 22), '--checkpoint', 'fn.fb'])
    assert.equal(adoptA.status, 0, describeRun(adoptA))
    assert.equal(adoptA.json.checkpoint, 'fn.fb')
    const adoptB = await fnB(['deploy', 'fa-on-b', '--cmd', floatCmd(logA, 11), '--checkpoint', 'fn.fa'])
    assert.equal(adoptB.status, 0, describeRun(adoptB))
    assert.equal(adoptB.json.checkpoint, 'fn.fa')

    // On A, a clone of B's function: B's crc, B's invocation count (checkpointed after 3) going on, A's pid.
    const onA1 = await fnA(['invoke', 'fb-on-a', '--data', '{"from":"a"}'])
    assert.equal(onA1.status, 0, describeRun(onA1))
    trackPid(onA1.json.pid)
    assert.equal(onA1.json.start, 'restored', describeRun(onA1))
    assert.equal(onA1.json.output.ok, true)
    assert.equal(onA1.json.output.crc, crcB, 'the clone on A holds B\'s function\'s data')
    assert.equal(onA1.json.output.n, 4, 'and goes on from B\'s checkpointed invocation count')
    assert.deepEqual(onA1.json.output.data, {from: 'a'})
    assert.equal(onA1.json.output.pid, onA1.json.pid, 'the answer comes from the clone A\'s porter names')
    assert.ok(onA1.json.restoreStats.pages_mapped > 0, 'a mow clone maps pages of the pool')
    assert.ok(readFileSync(`/proc/${onA1.json.pid}/maps`, 'utf8').includes(pool), 'the clone on A maps the pool at A\'s path')
    assert.deepEqual(nsPids(onA1.json.pid).length, 1, 'the clone lives in A\'s pid namespace')
    const onA2 = await fnA(['invoke', 'fb-on-a', '--data', '{"from":"a2"}'])
    assert.equal(onA2.status, 0, describeRun(onA2))
    assert.deepEqual([onA2.json.start, onA2.json.pid, onA2.json.output.n, onA2.json.output.crc], ['warm', onA1.json.pid, 5, crcB])

    // On B, a clone of A's function: A's crc, A's count (checkpointed after 2), a pid of B's namespace.
    const onB1 = await fnB(['invoke', 'fa-on-b', '--data', '{"from":"b"}'])
    assert.equal(onB1.status, 0, describeRun(onB1))
    assert.equal(onB1.json.start, 'restored', describeRun(onB1))
    assert.equal(onB1.json.output.crc, crcA, 'the clone on B holds A\'s function\'s data')
    assert.equal(onB1.json.output.n, 3, 'and goes on from A\'s checkpointed invocation count')
    assert.deepEqual(onB1.json.output.data, {from: 'b'})
    assert.equal(onB1.json.output.pid, onB1.json.pid)
    const innerB = onB1.json.pid as number
    const mapsB = spawnSync('nsenter', ['--target', String(nsInit), '--pid', '--mount', '--', 'cat', `/proc/${innerB}/maps`], {encoding: 'utf8'}).stdout
    assert.ok(mapsB.includes(poolB), `the clone on B maps the pool at B's path ${poolB}`)
    const onB2 = await fnB(['invoke', 'fa-on-b', '--data', '{"from":"b2"}'])
    assert.deepEqual([onB2.json.start, onB2.json.pid, onB2.json.output.n, onB2.json.output.crc], ['warm', innerB, 4, crcA], describeRun(onB2))

    // The originals serve on, untouched.
    const faAgain = await fnA(['invoke', 'fa'])
    assert.deepEqual([faAgain.json.start, faAgain.json.output.n, faAgain.json.output.crc], ['warm', 4, crcA], describeRun(faAgain))
    const fbAgain = await fnB(['invoke', 'fb'])
    assert.deepEqual([fbAgain.json.start, fbAgain.json.output.n, fbAgain.json.output.crc], ['warm', 5, crcB], describeRun(fbAgain))

    // Each clone's reference is under its own host's index, seen alike from both hosts.
    const inspectA = async (name: string): Promise<any[]> => {
      const run = await cli(['inspect', name, '--pool', pool, '--json'])
      assert.equal(run.status, 0, describeRun(run))
      return run.json.references
    }
    const refsFb = await inspectA('fn.fb')
    assert.deepEqual(refsFb.map((r) => [r.hostIndex, r.hostname, r.pid, r.local, r.alive]), [[hostA.index, hostA.hostname, onA1.json.pid, true, true]], JSON.stringify(refsFb))
    const refsFa = await inspectA('fn.fa')
    assert.deepEqual(refsFa.map((r) => [r.hostIndex, r.hostname, r.pid, r.local, r.alive]), [[hostB.index, OTHER_HOSTNAME, innerB, false, true]], JSON.stringify(refsFa))
    const fromB = await onB(['inspect', 'fn.fa', '--pool', poolB, '--json'])
    assert.equal(fromB.status, 0, describeRun(fromB))
    assert.deepEqual(fromB.json.references.map((r: any) => [r.hostIndex, r.pid, r.local, r.alive]), [[hostB.index, innerB, true, true]], 'from B, its own clone\'s reference is local')
    note(`two hosts, float 4 MiB: restore of B's checkpoint by A's porter ${onA1.json.startupMs.toFixed(1)} ms (invocation ${onA1.json.latencyMs.toFixed(1)} ms); of A's by B's porter ${onB1.json.startupMs.toFixed(1)} ms (invocation ${onB1.json.latencyMs.toFixed(1)} ms)`)

    // A's porter restarted: its instances died with it, its records (the adopted one too) did not; it serves B's checkpoint again.
    await stopPorter(porterA)
    assert.equal(processExists(onA1.json.pid), false, 'A\'s clone died with its porter')
    porterA = await startPorter(pool, socketA, {ghosts: 0})
    const lsAfter = await fnA(['ls'])
    assert.deepEqual(lsAfter.json.functions.map((fn: any) => [fn.name, fn.checkpoint]), [['fa', 'fn.fa'], ['fb-on-a', 'fn.fb']], describeRun(lsAfter))
    const onA3 = await fnA(['invoke', 'fb-on-a', '--data', '{"from":"a3"}'])
    assert.equal(onA3.status, 0, describeRun(onA3))
    trackPid(onA3.json.pid)
    assert.deepEqual([onA3.json.start, onA3.json.output.n, onA3.json.output.crc], ['restored', 4, crcB], 'a new clone of B\'s checkpoint')
    const refsFbAfter = await inspectA('fn.fb')
    assert.deepEqual(refsFbAfter.map((r) => [r.hostIndex, r.pid, r.alive]), [[hostA.index, onA3.json.pid, true]], 'only the new clone\'s reference: the dead one\'s went at the porter\'s start')

    // Tear down. An adopted checkpoint is not deleted by fn rm; each host's stopped clone releases its reference at once.
    const rmAdoptA = await fnA(['rm', 'fb-on-a'])
    assert.equal(rmAdoptA.status, 0, describeRun(rmAdoptA))
    assert.deepEqual([rmAdoptA.json.instancesStopped, rmAdoptA.json.checkpoint, rmAdoptA.json.checkpointState], [1, 'fn.fb', 'kept'])
    assert.equal(processExists(onA3.json.pid), false)
    const rmAdoptB = await fnB(['rm', 'fa-on-b'])
    assert.equal(rmAdoptB.status, 0, describeRun(rmAdoptB))
    assert.deepEqual([rmAdoptB.json.instancesStopped, rmAdoptB.json.checkpoint, rmAdoptB.json.checkpointState], [1, 'fn.fa', 'kept'])
    assert.deepEqual(await inspectA('fn.fa'), [], 'B\'s clone released its reference (no waiting for B\'s lease)')
    assert.deepEqual(await inspectA('fn.fb'), [])
    // With no reference left on either host, each function's own rm deletes its checkpoint outright.
    const rmA = await fnA(['rm', 'fa'])
    assert.deepEqual([rmA.status, rmA.json?.checkpoint, rmA.json?.checkpointState], [0, 'fn.fa', 'removed'], describeRun(rmA))
    const rmB = await fnB(['rm', 'fb'])
    assert.deepEqual([rmB.status, rmB.json?.checkpoint, rmB.json?.checkpointState], [0, 'fn.fb', 'removed'], describeRun(rmB))
    const lsEnd = await cli(['ls', '--pool', pool, '--json'])
    assert.ok(!/"fn\./.test(lsEnd.stdout), `no checkpoint left: ${lsEnd.stdout}`)
    const fsck = await cli(['pool', 'fsck', '--pool', pool, '--json'])
    assert.equal(fsck.status, 0, describeRun(fsck))

    const stopB = await onB(['porter', 'stop', '--pool', poolB, '--socket', socketB, '--json'])
    assert.equal(stopB.status, 0, describeRun(stopB))
    assert.equal(await until('porter B to exit', () => field('PORTER_EXIT')), '0', `porter B exits cleanly:\n${out}`)
    await stopPorter(porterA)
    assert.deepEqual(await porterA.exited, {code: 0, signal: null}, porterA.output())
    for (const log of [logA, logB]) assert.deepEqual(processesMentioning(log), [], `no instance of ${log} is left`)
    unshare.kill('SIGKILL')
    assert.ok(await waitForExit(nsInit, 5000), 'host B\'s init is gone')
    rmSync(pool)
    assert.equal(existsSync(pool), false, 'no pool file left')
  })
})

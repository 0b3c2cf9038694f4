/**
 * "A second host" on one machine: the checkpoint is restored inside fresh mount, pid and UTS
 * namespaces (unshare), through the pool bind-mounted at another path on a tmpfs, under
 * another hostname. The clone runs there with a small pid, writes to the same log, and
 * checks itself on a signal sent from inside the namespace.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, execFile, spawn} from 'node:child_process'
import {mkdtempSync, readdirSync, readFileSync, readlinkSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {promisify} from 'node:util'

import {
  cleanupAll, lastTick, processExists, readLog, startFixture, trackDir, trackPid, waitForExit, waitForLine, waitForTicks,
} from '../helpers/fixtures.js'
import {CLI, cli, describeRun, note, poolPath, printMeasurements, removePools, sleep, until} from './helpers.js'

const execFileP = promisify(execFile)
const OTHER_HOSTNAME = 'cxlfork-rt-otherhost'
/** Short lease for the namespace's cxlfork commands, so the host sees its references lapse soon after it dies. */
const NS_LEASE_MS = 4000

/** NSpid of /proc/PID/status: the pid in each nested pid namespace, outermost first. */
function nsPids(pid: number): number[] {
  try {
    const m = /^NSpid:\s+(.*)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? m[1]!.trim().split(/\s+/).map(Number) : []
  } catch {
    return []
  }
}

function nsLink(pid: number | 'self', ns: string): string {
  return readlinkSync(`/proc/${pid}/ns/${ns}`)
}

/** Host pid of the process that is `inner` inside the pid namespace of host pid `nsInit`. */
function hostPidOf(inner: number, nsInit: number): number | undefined {
  const pidNs = nsLink(nsInit, 'pid')
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const pid = Number(name)
    const ns = nsPids(pid)
    if (ns.length === 2 && ns[1] === inner) {
      try {
        if (nsLink(pid, 'pid') === pidNs) return pid
      } catch {
        // gone
      }
    }
  }
  return undefined
}

/** Runs `command` inside the namespaces of host pid nsInit (nsenter forks into its pid namespace). */
async function inside(nsInit: number, command: string[]): Promise<string> {
  const {stdout} = await execFileP('nsenter', ['--target', String(nsInit), '--pid', '--mount', '--uts', '--', ...command])
  return stdout.trim()
}

describe('restore: in other mount, pid and UTS namespaces ("a second host")', function () {
  this.timeout(120_000)

  let unshare: ChildProcess | undefined
  afterEach(async () => {
    // SIGKILL of unshare --kill-child kills the namespace's init, which takes every process
    // of the pid namespace with it.
    if (unshare && unshare.exitCode === null && unshare.signalCode === null) unshare.kill('SIGKILL')
    unshare = undefined
    const report = await cleanupAll()
    assert.deepEqual(report.survivors, [], 'every process a test started is gone')
  })
  after(() => {
    removePools()
    printMeasurements('namespaces')
  })

  it('restores through a bind mount of the pool at another path, with its own pid and hostname; the clone checks out', async () => {
    const pool = poolPath('ns')
    const fx = await startFixture('memtouch', {mib: 16})
    await waitForTicks(fx.logPath, fx.pid, 3)
    const before = Number(lastTick(fx.logPath, fx.pid)!.fields.n)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'travel', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))

    const mnt = mkdtempSync(join(tmpdir(), 'cxlfork-rt-ns-'))
    trackDir(mnt)
    const otherPool = join(mnt, 'other.pool')
    const script = [
      'set -e',
      'hostname "$OTHER_HOSTNAME"',
      // a tmpfs of our own at $MNT, with the pool file bind-mounted onto a file in it
      'mount -t tmpfs cxlfork-rt "$MNT"',
      ': > "$OTHER_POOL"',
      'mount --bind "$POOL" "$OTHER_POOL"',
      'echo "FSTYPE $(stat -f -c %T "$OTHER_POOL")"',
      'echo "HOSTNAME $(hostname)"',
      'echo "INITPID $$"',
      'echo "HOSTPOOL $(test -e "$POOL" && echo visible || echo hidden)"',
      'if "$NODE" "$CLI" restore travel --pool "$OTHER_POOL" --json > "$MNT/restore.json" 2>&1; then echo "RESTORE $(tr -d "\\n" < "$MNT/restore.json")"; else echo "RESTORE_FAILED $? $(tr -d "\\n" < "$MNT/restore.json")"; fi',
      'echo READY_NS',
      'exec sleep 600',
    ].join('\n')
    const t0 = performance.now()
    unshare = spawn('unshare', ['--mount', '--pid', '--uts', '--fork', '--mount-proc', '--kill-child', 'sh', '-c', script], {
      env: {...process.env, CLI, CXLFORK_LEASE_MS: String(NS_LEASE_MS), MNT: mnt, NODE: process.execPath, OTHER_HOSTNAME, OTHER_POOL: otherPool, POOL: pool},
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    trackPid(unshare.pid!)
    let out = ''
    let err = ''
    unshare.stdout!.on('data', (chunk: Buffer) => {
      out += chunk.toString()
    })
    unshare.stderr!.on('data', (chunk: Buffer) => {
      err += chunk.toString()
    })
    const lines = await until(() => (out.includes('READY_NS\n') || unshare!.exitCode !== null ? out.split('\n') : undefined),
      'the namespace script to restore', 30_000).catch((error: Error) => {
      throw new Error(`${error.message}\nstdout:\n${out}\nstderr:\n${err}`)
    })
    const field = (key: string) => lines.find((l) => l.startsWith(key + ' '))?.slice(key.length + 1)
    const context = `namespace script stdout:\n${out}\nstderr:\n${err}`
    assert.equal(field('FSTYPE'), 'tmpfs', `the pool is on tmpfs at its new path\n${context}`)
    assert.equal(field('HOSTNAME'), OTHER_HOSTNAME, context)
    assert.equal(field('INITPID'), '1', `the script is init of a new pid namespace\n${context}`)
    assert.equal(field('RESTORE_FAILED'), undefined, `restore inside the namespace failed\n${context}`)
    const restored = JSON.parse(field('RESTORE') ?? 'null')
    assert.ok(restored, context)
    note(`restore inside the namespaces: restore_time ${(restored.stats.restore_time / 1000).toFixed(1)} ms; unshare to READY_NS ${(performance.now() - t0).toFixed(0)} ms`)
    const inner = restored.pid as number
    assert.ok(inner > 1 && inner < 100, `the clone has a small pid in the new pid namespace: ${inner}`)

    // Find the namespace's init and the clone from the outside.
    const nsInit = await until(() => {
      const children = readFileSync(`/proc/${unshare!.pid}/task/${unshare!.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number)
      return children.find((pid) => nsPids(pid)[1] === 1)
    }, 'the namespace init')
    const host = hostPidOf(inner, nsInit)
    assert.ok(host, `clone ${inner} is visible from the host`)
    trackPid(host)
    assert.ok(host !== inner)
    assert.notEqual(nsLink(host, 'pid'), nsLink('self', 'pid'), 'the clone is in another pid namespace')
    assert.notEqual(nsLink(host, 'uts'), nsLink('self', 'uts'), 'the clone is in another UTS namespace')
    assert.notEqual(nsLink(host, 'mnt'), nsLink('self', 'mnt'), 'the clone is in another mount namespace')
    assert.equal(await inside(nsInit, ['hostname']), OTHER_HOSTNAME)
    // Inside, the clone maps the pool through its new path.
    const maps = await inside(nsInit, ['cat', `/proc/${inner}/maps`])
    assert.ok(maps.includes(otherPool), `the clone maps ${otherPool}`)

    // The pool (seen from the host) records a reference of another host, alive by its lease.
    const inspect = await cli(['inspect', 'travel', '--json', '--pool', pool])
    assert.equal(inspect.status, 0, describeRun(inspect))
    const refs = inspect.json.references
    assert.equal(refs.length, 1, describeRun(inspect))
    assert.deepEqual([refs[0].hostname, refs[0].pid, refs[0].local, refs[0].alive], [OTHER_HOSTNAME, inner, false, true])

    // The clone runs on from the checkpoint, in the same log, under its namespace pid.
    const ticks = await waitForTicks(fx.logPath, inner, 3)
    const first = Number(readLog(fx.logPath).find((e) => e.kind === 'TICK' && e.pid === inner)!.fields.n)
    assert.ok(first >= before, `clone n=${first} continues from ${before}`)
    for (const t of ticks) assert.equal(t.fields.clock, 'ok', t.line)

    // CHECK, GREW and CHECK again, on signals sent from inside the namespace.
    const ask = async (signal: string, kind: string) => {
      const from = readLog(fx.logPath).length
      await inside(nsInit, ['kill', `-${signal}`, String(inner)])
      return waitForLine(fx.logPath, (e) => e.kind === kind && e.pid === inner, 20_000, {fromIndex: from, what: `${kind} of the namespaced clone`})
    }
    const check = await ask('USR1', 'CHECK')
    assert.equal(check.fields.ok, '1', check.line)
    assert.equal(check.fields.crc, fx.ready.fields.crc)
    const grew = await ask('USR2', 'GREW')
    assert.equal(grew.fields.ok, '1', grew.line)
    const check2 = await ask('USR1', 'CHECK')
    assert.equal(check2.fields.ok, '1', check2.line)
    assert.equal(check2.fields.grown, '1', check2.line)

    // The original on the host never noticed.
    assert.equal((await fx.check()).fields.ok, '1')

    // Tear the namespace down: its init dies and takes the clone with it.
    unshare.kill('SIGKILL')
    assert.ok(await waitForExit(nsInit, 5000), 'the namespace init is gone')
    assert.ok(await waitForExit(host, 5000), 'the clone died with its pid namespace')
    assert.ok(!processExists(host))
    assert.ok(processExists(fx.pid), 'the original still runs')

    // Once the other host's lease lapses, its dead clone's reference is garbage for gc.
    await sleep(NS_LEASE_MS + 500)
    const gc = await cli(['pool', 'gc', '--json', '--pool', pool])
    assert.equal(gc.status, 0, describeRun(gc))
    assert.equal(gc.json.referencesReleased, 1, `the lapsed host's reference is released: ${describeRun(gc)}`)
    const rm = await cli(['rm', 'travel', '--json', '--pool', pool])
    assert.equal(rm.status, 0, describeRun(rm))
  })
})

/**
 * The fault-injection soak (issue 14, Acceptance). For a fixed time it runs trials
 * chosen by a seeded RNG (the seed is printed; CXLFORK_SOAK_SEED replays a run):
 *
 *   kill-checkpoint  SIGKILL at a named fault point (CXLFORK_FAULT) or after a random delay
 *   kill-restore     SIGKILL at stub-spawned or after a random delay, policy mow or local
 *   kill-rm          SIGKILL of `rm` after a random delay, then rm again
 *   kill-gc          garbage from a checkpoint killed at pages-written, SIGKILL of `pool gc`
 *   flip             one byte XORed in a fresh pool's header, directory word, descriptor,
 *                    process record, page map, page checksums or page data
 *   no-space         checkpoints into a 1 GiB sparse pool on a 48 MiB tmpfs until it is full
 *   hosts            writers in three PID+UTS+mount namespaces ("hosts", as the second-host
 *                    test makes one) racing on one pool, one of them SIGKILLed, beside
 *                    checkpoints and rm from this host
 *
 * After each trial: `pool fsck`, a restore of what should restore with the clone's memory
 * checksum checked (memtouch's CHECK), `pool gc`, and the counts below. Bounded to about
 * 1.5 minutes of trials in CI; CXLFORK_SOAK_MINUTES=N runs N minutes. It asserts the zeros:
 * corrupt pools (damage not detected, or a pool fsck cannot reconcile), silent wrong
 * restores, leaked bytes after gc, debris in the target, orphaned processes, harmed targets.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, execFileSync, spawn} from 'node:child_process'
import {closeSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, rmSync, statfsSync, writeSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {Pool} from '../../src/pool/index.js'
import {cli, type CliResult, describeRun, startCli} from '../helpers/cli.js'
import {cleanupAll, type Fixture, holdersOf, procStat, processExists, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {reapStrayZombies} from '../restore/helpers.js'
import {WORKER, exited} from './helpers.js'
import {makeRng} from '../helpers/seeded.js'

const MINUTES = Number(process.env.CXLFORK_SOAK_MINUTES) > 0 ? Number(process.env.CXLFORK_SOAK_MINUTES) : 1.5
const SEED = Number(process.env.CXLFORK_SOAK_SEED) > 0 ? Number(process.env.CXLFORK_SOAK_SEED) : (Date.now() % 2147483647) + 1
const PREFIX = `/dev/shm/cxlfork-soak-hardening-${process.pid}`

const rng = makeRng(SEED)
const pick = <T>(items: readonly T[]): T => items[Math.floor(rng() * items.length)]!
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Every step of a checkpoint at which the target's state changes, and the last safe point. */
const CHECKPOINT_POINTS = ['snapshot-seized', 'fork-frame-ready', 'fork-mmap-entry', 'fork-mmap-exit', 'fork-trampoline-ready', 'fork-clone-entry',
  'fork-clone-exit', 'fork-munmap-entry', 'fork-munmap-exit', 'fork-done', 'fork-unwind', 'pages-written'] as const
const FLIP_REGIONS = ['header', 'directory', 'descriptor', 'record', 'page-map', 'checksums', 'data'] as const
const KINDS = ['kill-checkpoint', 'kill-restore', 'kill-rm', 'kill-gc', 'flip', 'no-space', 'hosts'] as const
type Kind = (typeof KINDS)[number]

interface Counts {
  trials: number
  byKind: Record<string, number>
  killsLanded: number
  flipsByRegion: Record<string, number>
  flipsDetected: number
  /** Flips of only the state bits of a checkpoint's directory word to deleting or tombstone: what an interrupted rm leaves. */
  stateFlipsReadAsDeleted: number
  restoresChecked: number
  noSpaceRefusals: number
  hostWriterOps: number
  corruptPools: number
  silentWrongRestores: number
  leakedBytes: number
  debris: number
  orphans: number
  targetsHarmed: number
  unexpected: number
}

const counts: Counts = {trials: 0, byKind: {}, killsLanded: 0, flipsByRegion: {}, flipsDetected: 0, stateFlipsReadAsDeleted: 0, restoresChecked: 0, noSpaceRefusals: 0, hostWriterOps: 0,
  corruptPools: 0, silentWrongRestores: 0, leakedBytes: 0, debris: 0, orphans: 0, targetsHarmed: 0, unexpected: 0}
const problems: string[] = []

function problem(counter: 'corruptPools' | 'silentWrongRestores' | 'debris' | 'orphans' | 'targetsHarmed' | 'unexpected', what: string, amount = 1): void {
  counts[counter] += amount
  problems.push(`[seed ${SEED} trial ${counts.trials}] ${counter}: ${what}`)
}

function log(line: string): void {
  process.stderr.write(`soak: ${line}\n`)
}

/** "start-end perms path" of every mapping. */
function mappings(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').trim().split('\n').map((line) => line.split(/\s+/)).map((f) => `${f[0]} ${f[1]} ${f[5] ?? ''}`)
}

function statusField(pid: number, field: string): string | undefined {
  try {
    return new RegExp(`^${field}:\\s+(.*)$`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]
  } catch {
    return undefined
  }
}

/** XORs the byte at `offset` with `mask`; returns what it held. */
function xorByte(path: string, offset: number, mask: number): number {
  const fd = openSync(path, 'r+')
  try {
    const byte = Buffer.alloc(1)
    readSync(fd, byte, 0, 1, offset)
    const old = byte[0]!
    byte[0] = old ^ mask
    writeSync(fd, byte, 0, 1, offset)
    return old
  } finally {
    closeSync(fd)
  }
}

/** Bytes allocated in the pool beyond what its checkpoints own (after gc: leaked). */
function unownedBytes(path: string): number {
  const pool = Pool.open(path)
  try {
    const info = pool.info()
    const owned = pool.list().reduce((sum, checkpoint) => sum + checkpoint.dataBytes + checkpoint.metadataBytes, 0)
    return info.used - owned + info.buildsInProgress
  } finally {
    pool.close()
  }
}

describe('pool: fault-injection soak (issue 14 acceptance)', function () {
  this.timeout((MINUTES * 60 + 240) * 1000)
  let fx: Fixture
  let baseline: string[] = []
  const pool = `${PREFIX}.pool`
  const extraPools: string[] = []
  let mount: string | undefined
  let smallPool = ''
  let usedAtInit = 0
  const namespaces: ChildProcess[] = []
  const startedAt = Date.now()

  before(async function () {
    if (process.getuid?.() !== 0) this.skip() // mounts a tmpfs, makes namespaces and traces processes
    log(`seed ${SEED} (replay with CXLFORK_SOAK_SEED=${SEED}), ${MINUTES} min of trials`)
    // memtouch ends itself after --lifetime (900 s by default), and so would the clones of its checkpoints.
    fx = await startFixture('memtouch', {mib: 8, args: ['--lifetime', String(Math.ceil(MINUTES * 60) + 900)]})
    await waitForTicks(fx.logPath, fx.pid, 2)
    mount = mkdtempSync(join(tmpdir(), 'cxlfork-soak-'))
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=48m', 'tmpfs', mount])
    smallPool = join(mount, 'small.pool')
    expectOk(await cli(['pool', 'init', '--size', '1G', '--force', '--json', '--pool', smallPool]), 'init the small pool')
    usedAtInit = usedOf(mount)
    expectOk(await cli(['pool', 'init', '--size', '256M', '--json', '--pool', pool]), 'init the soak pool')
    expectOk(await cli(['checkpoint', String(fx.pid), '--name', 'base', '--json', '--pool', pool]), 'the base checkpoint')
    baseline = mappings(fx.pid)
  })

  after(async () => {
    for (const ns of namespaces) if (ns.exitCode === null && ns.signalCode === null) ns.kill('SIGKILL')
    for (const clone of fx ? holdersOf(fx.logPath) : []) if (clone !== fx.pid) trackPid(clone)
    const report = await cleanupAll()
    await reapStrayZombies([])
    if (mount) {
      try {
        execFileSync('umount', [mount])
      } catch {
        execFileSync('umount', ['-l', mount])
      }
      rmSync(mount, {recursive: true, force: true})
    }
    for (const path of [pool, ...extraPools]) rmSync(path, {force: true})
    assert.deepEqual(report.survivors, [], 'every process the soak started is gone')
  })

  function usedOf(dir: string): number {
    const fs = statfsSync(dir)
    return (fs.blocks - fs.bfree) * fs.bsize
  }

  function expectOk(run: CliResult, what: string): CliResult {
    if (run.status !== 0) {
      problem('unexpected', `${what}: ${describeRun(run)}`)
      throw new Error(`${what} failed: ${describeRun(run)}`)
    }
    return run
  }

  /** A CLI run killed with SIGKILL `delayMs` after its start (unless it ends first). */
  async function killedAfter(args: string[], delayMs: number, env: Record<string, string> = {}): Promise<CliResult> {
    const run = startCli(args, {env})
    const timer = setTimeout(() => run.child.kill('SIGKILL'), delayMs)
    const result = await run.done
    clearTimeout(timer)
    if (result.signal === 'SIGKILL') counts.killsLanded++
    return result
  }

  /** The target runs, untraced, not stopped, with its memory as at READY; no snapshot left as a zombie. */
  async function checkTarget(what: string): Promise<void> {
    await reapStrayZombies([fx.pid])
    if (!processExists(fx.pid) || statusField(fx.pid, 'TracerPid') !== '0' || ['t', 'T'].includes(procStat(fx.pid)?.state ?? '?')) {
      problem('targetsHarmed', `${what}: the target is gone, traced or stopped`)
      throw new Error(problems.at(-1))
    }
    const check = await requestCheck(fx.logPath, fx.pid)
    if (check.fields['ok'] !== '1' || check.fields['crc'] !== fx.ready.fields['crc']) problem('targetsHarmed', `${what}: target CHECK ${check.line}`)
  }

  /** Restores `name`, checks the clone's memory checksum, kills it. False when the restore was refused. */
  async function restoreAndCheck(poolPath: string, name: string, extra: string[] = [], mustSucceed = true): Promise<boolean> {
    const run = await cli(['restore', name, '--json', '--pool', poolPath, ...extra])
    if (run.status !== 0) {
      if (mustSucceed) problem('unexpected', `restore ${name}: ${describeRun(run)}`)
      return false
    }
    const pid = run.json.pid as number
    trackPid(pid)
    try {
      const check = await requestCheck(fx.logPath, pid)
      counts.restoresChecked++
      if (check.fields['ok'] !== '1' || check.fields['crc'] !== fx.ready.fields['crc']) problem('silentWrongRestores', `${name} from ${poolPath}: ${check.line}`)
    } catch (error) {
      problem('silentWrongRestores', `${name} from ${poolPath}: the clone gave no CHECK (${String(error)})`)
    } finally {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
    return true
  }

  /** fsck must be clean; then gc, and nothing may stay allocated that no checkpoint owns. */
  async function fsckAndGc(poolPath: string, what: string): Promise<void> {
    const fsck = await cli(['pool', 'fsck', '--json', '--pool', poolPath])
    if (fsck.status !== 0 || fsck.json?.clean !== true) problem('corruptPools', `${what}: fsck ${describeRun(fsck)}`)
    const gc = await cli(['pool', 'gc', '--json', '--pool', poolPath])
    if (gc.status !== 0) problem('unexpected', `${what}: gc ${describeRun(gc)}`)
    const left = unownedBytes(poolPath)
    if (left !== 0) {
      counts.leakedBytes += left
      problems.push(`[seed ${SEED} trial ${counts.trials}] leakedBytes: ${what}: ${left} bytes`)
    }
  }

  async function names(poolPath: string): Promise<string[]> {
    const ls = await cli(['ls', '--json', '--pool', poolPath])
    if (ls.status !== 0) {
      problem('unexpected', `ls: ${describeRun(ls)}`)
      return []
    }
    return (ls.json.checkpoints as {name: string; state?: string}[]).map((c) => c.name)
  }

  /** After every trial: the soak pool checks out and a random checkpoint of it restores right. */
  async function afterTrial(kind: Kind): Promise<void> {
    await fsckAndGc(pool, kind)
    const present = await names(pool)
    if (!present.includes('base')) problem('unexpected', `${kind}: the base checkpoint is gone`)
    const name = pick(present)
    await restoreAndCheck(pool, name, rng() < 0.5 ? ['--verify'] : [])
    // Clones of killed restores that made it: checked like any clone, then ended.
    for (const pid of holdersOf(fx.logPath)) {
      if (pid === fx.pid) continue
      trackPid(pid)
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
  }

  // ---- trials ---------------------------------------------------------------

  async function killCheckpoint(n: number): Promise<void> {
    const point = pick([...CHECKPOINT_POINTS, 'delay', 'delay'])
    const name = `kc-${n}`
    const args = ['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', pool]
    const run = point === 'delay' ? await killedAfter(args, Math.floor(rng() * 400)) : await killedAfter(args, 60_000, {CXLFORK_FAULT: point})
    if (run.signal !== 'SIGKILL' && run.status !== 0) problem('unexpected', `checkpoint at ${point}: ${describeRun(run)}`)
    await checkTarget(`checkpoint killed at ${point}`)
    // The next checkpoint takes back any trampoline page a kill left; then the target's maps are as they were.
    expectOk(await cli(['checkpoint', String(fx.pid), '--name', `${name}-next`, '--json', '--pool', pool]), 'the checkpoint after a kill')
    const now = mappings(fx.pid)
    const extra = now.filter((m) => !baseline.includes(m))
    if (extra.length > 0 || now.length !== baseline.length) problem('debris', `after a kill at ${point}: ${extra.join(', ') || 'a mapping is missing'}`, Math.max(1, extra.length))
    await restoreAndCheck(pool, `${name}-next`)
    for (const victim of [name, `${name}-next`]) await cli(['rm', victim, '--json', '--pool', pool])
  }

  async function killRestore(): Promise<void> {
    const policy = pick(['mow', 'local'])
    const args = ['restore', 'base', '--policy', policy, '--json', '--pool', pool]
    const stub = rng() < 0.25
    const run = stub ? await killedAfter(args, 60_000, {CXLFORK_FAULT: 'stub-spawned'}) : await killedAfter(args, Math.floor(rng() * 300))
    if (run.status === 0) {
      trackPid(run.json.pid)
      await restoreCheckOf(run.json.pid, 'an unkilled restore')
    } else if (run.signal !== 'SIGKILL') {
      problem('unexpected', `restore: ${describeRun(run)}`)
    }
    await sleep(50)
    // A clone released before the kill runs on: it must be whole.
    for (const pid of holdersOf(fx.logPath)) if (pid !== fx.pid) await restoreCheckOf(pid, `a clone of a restore killed (${policy}${stub ? ', stub-spawned' : ''})`)
  }

  async function restoreCheckOf(pid: number, what: string): Promise<void> {
    trackPid(pid)
    if (statusField(pid, 'TracerPid') !== '0') {
      await sleep(200) // still being built or being killed by PTRACE_O_EXITKILL
      if (!processExists(pid) || procStat(pid)?.state === 'Z') return
    }
    try {
      const check = await requestCheck(fx.logPath, pid, 10_000)
      counts.restoresChecked++
      if (check.fields['ok'] !== '1' || check.fields['crc'] !== fx.ready.fields['crc']) problem('silentWrongRestores', `${what}: ${check.line}`)
    } catch (error) {
      if (processExists(pid) && procStat(pid)?.state !== 'Z') problem('silentWrongRestores', `${what}: clone ${pid} runs but gives no CHECK (${String(error)})`)
    } finally {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // gone
      }
    }
  }

  async function killRm(n: number): Promise<void> {
    const name = `rm-${n}`
    expectOk(await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', pool]), 'checkpoint for rm')
    const run = await killedAfter(['rm', name, '--json', '--pool', pool], Math.floor(rng() * 250))
    if (run.signal !== 'SIGKILL' && run.status !== 0) problem('unexpected', `rm: ${describeRun(run)}`)
    if (run.signal === 'SIGKILL' && (await names(pool)).includes(name) && rng() < 0.5) {
      // Half the time the checkpoint an interrupted rm left must still restore right.
      await restoreAndCheck(pool, name, [], false)
    }
    const again = await cli(['rm', name, '--json', '--pool', pool])
    if (again.status !== 0 && again.json?.error?.code !== 'CHECKPOINT_NOT_FOUND' && again.json?.error?.code !== 'CHECKPOINT_DELETING') problem('unexpected', `rm again: ${describeRun(again)}`)
    await cli(['pool', 'gc', '--json', '--pool', pool])
    if ((await names(pool)).includes(name)) problem('unexpected', `${name} survived a finished rm`)
  }

  async function killGc(n: number): Promise<void> {
    const dead = await cli(['checkpoint', String(fx.pid), '--name', `gc-${n}`, '--json', '--pool', pool], {env: {CXLFORK_FAULT: 'pages-written'}})
    if (dead.signal !== 'SIGKILL') problem('unexpected', `checkpoint killed at pages-written: ${describeRun(dead)}`)
    await checkTarget('checkpoint killed at pages-written')
    const gc = await killedAfter(['pool', 'gc', '--json', '--pool', pool], Math.floor(rng() * 250))
    if (gc.signal !== 'SIGKILL' && gc.status !== 0) problem('unexpected', `gc: ${describeRun(gc)}`)
  }

  async function flip(n: number): Promise<void> {
    const path = `${PREFIX}-flip-${n}.pool`
    extraPools.push(path)
    try {
      expectOk(await cli(['pool', 'init', '--size', '32M', '--json', '--pool', path]), 'init a flip pool')
      expectOk(await cli(['checkpoint', String(fx.pid), '--name', 'f', '--json', '--pool', path]), 'checkpoint into a flip pool')
      const region = pick(FLIP_REGIONS)
      counts.flipsByRegion[region] = (counts.flipsByRegion[region] ?? 0) + 1
      const {offset, wordOffset} = flipOffset(path, region)
      const mask = 1 + Math.floor(rng() * 255)
      const old = xorByte(path, offset, mask)
      // Bits 63..62 of a directory word (the top of its byte 7) are its state; published is 1.
      const stateOnly = region === 'directory' && offset - wordOffset === 7 && (mask & 0x3f) === 0
      const newState = ((old ^ mask) >> 6) & 3
      const fsck = await cli(['pool', 'fsck', '--json', '--pool', path])
      const fsckSaw = fsck.status !== 0 || fsck.json?.clean !== true
      if (fsck.status === 135 || (fsck.status !== 0 && !fsck.json?.error && !fsck.json?.problems)) problem('unexpected', `fsck after a flip: ${describeRun(fsck)}`)
      // What a user restoring with --verify gets: refused, or a clone that must then be right.
      const restored = await restoreAndCheck(path, 'f', ['--verify'], false)
      if (fsckSaw) counts.flipsDetected++
      else if (stateOnly && newState >= 2 && !restored) {
        // published -> deleting or tombstone: exactly what an rm killed half-way leaves (README, "Reliability"); the
        // checkpoint is lost, never restored wrong. Counted apart, not hidden.
        counts.stateFlipsReadAsDeleted++
      } else problem('corruptPools', `a flip of ${mask.toString(16)} at ${offset} (${region}) passed fsck${restored ? ' and restore --verify' : ''}`)
    } finally {
      for (const pid of holdersOf(fx.logPath)) if (pid !== fx.pid) process.kill(pid, 'SIGKILL')
      rmSync(path, {force: true})
    }
  }

  /** A byte of `region` of checkpoint f in the pool at `path`, chosen by the RNG. */
  function flipOffset(path: string, region: (typeof FLIP_REGIONS)[number]): {offset: number; wordOffset: number} {
    const opened = Pool.open(path)
    try {
      const details = opened.inspect('f')
      const wordOffset = opened.header.directoryOffset + details.directorySlot * 8
      return {offset: pickOffset(details, region, wordOffset), wordOffset}
    } finally {
      opened.close()
    }
  }

  function pickOffset(details: ReturnType<Pool['inspect']>, region: (typeof FLIP_REGIONS)[number], wordOffset: number): number {
    const within = (start: number, length: number): number => start + Math.floor(rng() * length)
    const section = (type: number): number => {
      const found = details.sections.find((s) => s.type === type)
      assert.ok(found, `section ${type} of ${details.sections.map((s) => s.type).join(',')}`)
      return within(found.poolOffset, found.length)
    }
    switch (region) {
      case 'header': return within(0, 4096)
      case 'directory': return within(wordOffset, 8)
      case 'descriptor': return within(details.descriptorPoolOffset, 64) // fixed fields, name, extents: all under its CRC
      case 'record': return section(1)
      case 'page-map': return section(2)
      case 'checksums': return section(4)
      case 'data': {
        const extent = pick(details.dataExtents)
        return within(Number(extent.poolOffset), Number(extent.length))
      }
    }
  }

  async function noSpace(): Promise<void> {
    const made: string[] = []
    for (let i = 0; i < 12; i++) {
      const name = `ns-${i}`
      const run = await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', smallPool])
      if (run.status === 0) {
        made.push(name)
        continue
      }
      if (run.status === 7 && run.json?.error?.code === 'POOL_NO_SPACE') counts.noSpaceRefusals++
      else problem('unexpected', `checkpoint into a full file system: ${describeRun(run)}`)
      break
    }
    if (made.length === 0 || made.length === 12) problem('unexpected', `${made.length} checkpoints fitted a 48 MiB tmpfs`)
    await checkTarget('a full file system')
    const fsck = await cli(['pool', 'fsck', '--json', '--pool', smallPool])
    if (fsck.status !== 0 || fsck.json?.clean !== true) problem('corruptPools', `full file system: ${describeRun(fsck)}`)
    if (made.length > 0) await restoreAndCheck(smallPool, pick(made), ['--verify'])
    for (const name of made) await cli(['rm', name, '--json', '--pool', smallPool])
    await cli(['pool', 'gc', '--json', '--pool', smallPool])
    const left = usedOf(mount!) - usedAtInit + unownedBytes(smallPool)
    if (left > 0) {
      counts.leakedBytes += left
      problems.push(`[seed ${SEED} trial ${counts.trials}] leakedBytes: full file system: ${left} bytes`)
    }
  }

  /** A namespaced "host": PID, UTS and mount namespaces of its own and its own hostname, running a pool worker. */
  function startHost(index: number, path: string, args: string[]): ChildProcess {
    const child = spawn('unshare', ['--mount', '--pid', '--uts', '--fork', '--mount-proc', '--kill-child', 'sh', '-c',
      `hostname "soak-host-${index}" && exec "$NODE" "$WORKER" "$@"`, 'sh', ...args.map((a) => a.replace('POOL', path))],
    {env: {...process.env, NODE: process.execPath, WORKER, CXLFORK_LEASE_MS: '500'}, stdio: ['ignore', 'pipe', 'pipe']})
    namespaces.push(child)
    trackPid(child.pid!)
    return child
  }

  async function hosts(n: number): Promise<void> {
    const path = `${PREFIX}-hosts-${n}.pool`
    extraPools.push(path)
    try {
      expectOk(await cli(['pool', 'init', '--size', '128M', '--json', '--pool', path]), 'init the hosts pool')
      const racers = [0, 1].map((i) => startHost(i, path, ['race', 'POOL', `r${n}`, String(60 + Math.floor(rng() * 60))]))
      const churner = startHost(2, path, ['churn', 'POOL', `c${n}`])
      const outputs = racers.map((child) => {
        let text = ''
        child.stdout!.on('data', (chunk: Buffer) => {
          text += chunk.toString()
        })
        child.stderr!.on('data', (chunk: Buffer) => {
          text += chunk.toString()
        })
        return () => text
      })
      const churnKill = sleep(300 + Math.floor(rng() * 1500)).then(() => churner.kill('SIGKILL'))
      // This host writes beside them.
      const mine: string[] = []
      for (let i = 0; i < 3; i++) {
        const name = `here-${i}`
        const run = await cli(['checkpoint', String(fx.pid), '--name', name, '--json', '--pool', path])
        if (run.status === 0) mine.push(name)
        else if (run.json?.error?.code !== 'POOL_FULL') problem('unexpected', `checkpoint beside the hosts: ${describeRun(run)}`)
      }
      if (mine.length > 1 && rng() < 0.5) await cli(['rm', mine.shift()!, '--json', '--pool', path])
      await churnKill
      const results = await Promise.all(racers.map(exited))
      await exited(churner)
      for (const [i, result] of results.entries()) {
        const text = outputs[i]!()
        if (result.code !== 0) {
          problem('unexpected', `host ${i} worker: exit ${result.code} ${result.signal}: ${text}`)
          continue
        }
        const tally = JSON.parse(text.trim().split('\n').at(-1)!) as Record<string, number>
        counts.hostWriterOps += Object.values(tally).reduce((a, b) => a + b, 0)
        if ((tally['wrong'] ?? 0) > 0) problem('silentWrongRestores', `host ${i} read a checkpoint's data as another's (${tally['wrong']} times)`, tally['wrong'])
      }
      await sleep(700) // the namespaces' leases (500 ms) run out: gc may take what their dead writers held
      await fsckAndGc(path, 'hosts')
      for (const name of mine) await restoreAndCheck(path, name, ['--verify'])
    } finally {
      for (const pid of holdersOf(fx.logPath)) if (pid !== fx.pid) process.kill(pid, 'SIGKILL')
      rmSync(path, {force: true})
    }
  }

  /** cxlfork stubs and fault servers orphaned (ppid 1) for longer than a stub may wait to be seized (5 s). */
  function orphanScan(): void {
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue
      const pid = Number(name)
      const stat = procStat(pid)
      let comm = ''
      try {
        comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
      } catch {
        continue
      }
      if (!stat || stat.ppid !== 1 || stat.state === 'Z' || !/^cxlfork-(stub|fault-ser)/.test(comm)) continue
      const ageMs = (Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 100 - Number(stat.starttime)) * 10
      const born = Date.now() - ageMs
      if (born >= startedAt - 1000 && ageMs > 6000) problem('orphans', `${comm} ${pid} (ppid 1, ${Math.round(ageMs / 1000)} s old)`)
    }
    // Clones of our checkpoints are ended after each trial: none may remain.
    for (const pid of holdersOf(fx.logPath)) if (pid !== fx.pid) problem('orphans', `clone ${pid} still runs`)
  }

  it(`runs ${MINUTES} min of kills, byte flips, a full file system and namespaced writers: 0 corrupt pools, 0 wrong restores, 0 leaked bytes, 0 debris, 0 orphans`, async () => {
    const deadline = startedAt + MINUTES * 60_000
    let n = 0
    while (n < KINDS.length || Date.now() < deadline) {
      const kind: Kind = n < KINDS.length ? KINDS[n]! : pick([...KINDS, 'kill-checkpoint', 'kill-restore', 'flip', 'flip'] as Kind[])
      n++
      counts.trials++
      counts.byKind[kind] = (counts.byKind[kind] ?? 0) + 1
      try {
        switch (kind) {
          case 'kill-checkpoint': await killCheckpoint(n); break
          case 'kill-restore': await killRestore(); break
          case 'kill-rm': await killRm(n); break
          case 'kill-gc': await killGc(n); break
          case 'flip': await flip(n); break
          case 'no-space': await noSpace(); break
          case 'hosts': await hosts(n); break
        }
        if (!['flip', 'no-space', 'hosts'].includes(kind) || n % 4 === 0) await afterTrial(kind)
      } catch (error) {
        if (!problems.some((p) => p.includes(`trial ${counts.trials}]`))) problem('unexpected', `${kind}: ${String((error as Error).stack ?? error)}`)
      }
      if (!processExists(fx.pid)) {
        problem('targetsHarmed', 'the target is gone; the soak stops')
        break
      }
      if (n % 10 === 0) log(`${counts.trials} trials, ${JSON.stringify(counts.byKind)}`)
    }
    await sleep(6500)
    orphanScan()
    await cleanupAll()
    const summary = {seed: SEED, minutes: MINUTES, ...counts}
    log(`result ${JSON.stringify(summary)}`)
    for (const line of problems) log(line)
    assert.equal(counts.corruptPools, 0, 'corrupt pools (damage not detected)')
    assert.equal(counts.silentWrongRestores, 0, 'silent wrong restores')
    assert.equal(counts.leakedBytes, 0, 'leaked bytes after gc')
    assert.equal(counts.debris, 0, 'debris in the target')
    assert.equal(counts.orphans, 0, 'orphaned processes')
    assert.equal(counts.targetsHarmed, 0, 'harmed targets')
    assert.equal(counts.unexpected, 0, 'unexpected outcomes')
    for (const kind of KINDS) assert.ok((counts.byKind[kind] ?? 0) > 0, `${kind} ran`)
    assert.ok(counts.killsLanded > 0 && counts.restoresChecked > 0 && counts.flipsDetected > 0 && counts.noSpaceRefusals > 0)
  })
})

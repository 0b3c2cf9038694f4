/**
 * Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS): carried by checkpoint and restore,
 * on real processes. A single process (memtouch --advise shared) is restored under every
 * policy with its pattern intact, in shared memory of its own; a tree whose parent and
 * children share one region (tree --shared-kib) keeps sharing it in the clone tree: what the
 * clone's parent writes its clone children read, and back, while the original tree and the
 * clone tree never see each other's writes.
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {type LogEvent, readLog, requestCheck, startFixture, trackPid, waitForLine, waitForTicks} from '../helpers/fixtures.js'
import {allProcesses, cli, describeRun, installCleanupHooks, note, poolPath, until} from './helpers.js'

/** The maps line of `pid` that starts at `start`. */
function mapsLine(pid: number, start: bigint): {perms: string; inode: string; path: string} | undefined {
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-[0-9a-f]+ (\S+) \S+ \S+ (\d+)\s*(.*)$/.exec(line)
    if (m && BigInt(`0x${m[1]}`) === start) return {perms: m[2]!, inode: m[3]!, path: m[4]!}
  }
  return undefined
}

function childrenOf(pid: number): number[] {
  return allProcesses().filter((p) => p.ppid === pid).map((p) => p.pid).sort((a, b) => a - b)
}

describe('shared anonymous memory: checkpointed at the downtime, restored as shared memory of the clone\'s own', function () {
  this.timeout(180_000)

  installCleanupHooks('shmem')

  it('memtouch --advise shared: restored under mow, moa, hybrid and local with its pattern, MAP_SHARED, a new object; a clone of the clone too', async () => {
    const pool = poolPath('shmem')
    const fx = await startFixture('memtouch', {mib: 4, args: ['--advise', 'shared']})
    const extra = BigInt(fx.ready.fields.extra!)
    const original = mapsLine(fx.pid, extra)
    assert.ok(original && original.perms === 'rw-s' && original.path === '/dev/zero (deleted)', `the fixture's region is shared anonymous memory: ${JSON.stringify(original)}`)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'shm', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    note(`checkpoint with 64 KiB of shared memory: downtime ${(ck.json.downtimeUs / 1000).toFixed(1)} ms`)
    const inspect = await cli(['inspect', 'shm', '--verify', '--json', '--pool', pool])
    assert.equal(inspect.status, 0, describeRun(inspect))
    assert.deepEqual(inspect.json.sharedMemory, {objects: 1, storedBytes: 16 * 4096}, 'inspect: one object, its 16 pages stored')
    assert.equal(inspect.json.pageData.state, 'verified', 'its bytes are covered by the page checksums')
    for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
      const run = await cli(['restore', 'shm', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      if (run.json.faultServerPid) trackPid(run.json.faultServerPid)
      // CHECK verifies the 16 shared pages' pattern (and everything else memtouch holds).
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `${policy} clone: ${check.line}`)
      const region = mapsLine(clone, extra)
      assert.ok(region, `${policy} clone maps the region at 0x${extra.toString(16)}`)
      assert.equal(region.perms, 'rw-s', `${policy}: still MAP_SHARED`)
      assert.equal(region.path, '/dev/zero (deleted)', `${policy}: still shared anonymous memory`)
      assert.notEqual(region.inode, original.inode, `${policy}: an object of the clone's own, not the original's`)
    }
    // A clone is a process like any other: it checkpoints and restores again.
    const first = await cli(['restore', 'shm', '--json', '--pool', pool])
    assert.equal(first.status, 0, describeRun(first))
    trackPid(first.json.pid)
    await waitForTicks(fx.logPath, first.json.pid, 1)
    const again = await cli(['checkpoint', String(first.json.pid), '--name', 'shm2', '--json', '--pool', pool])
    assert.equal(again.status, 0, describeRun(again))
    const second = await cli(['restore', 'shm2', '--json', '--pool', pool])
    assert.equal(second.status, 0, describeRun(second))
    trackPid(second.json.pid)
    const check = await requestCheck(fx.logPath, second.json.pid)
    assert.equal(check.fields.ok, '1', `clone of a clone: ${check.line}`)
    // The original is untouched by all of it.
    assert.equal((await fx.check()).fields.ok, '1')
  })

  it('a memfd held open and mapped MAP_SHARED, and an unlinked /dev/shm file only held open (python3): the clone\'s fd and mapping are one object again, with the contents and offsets', async () => {
    const pool = poolPath('shmem')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-memfd-'))
    const out = join(dir, 'out')
    // On SIGUSR1 it writes a token through the mapping and reads it back through the fd (same object?), and reads the unlinked file's bytes.
    const script = `import mmap, os, signal, sys, time
os.closerange(3, 1024)
fd = os.memfd_create("cxlfork-test")
os.ftruncate(fd, 1 << 20)
m = mmap.mmap(fd, 1 << 20)
m[4096:4096 + 12] = b"hello memfd!"
os.lseek(fd, 777, 0)
shm = os.open("/dev/shm/cxlfork-test-${process.pid}", os.O_RDWR | os.O_CREAT, 0o600)
os.write(shm, b"unlinked but open")
os.unlink("/dev/shm/cxlfork-test-${process.pid}")
def check(*_):
    me = os.readlink("/proc/self")
    token = ("tok-" + me).encode().ljust(12)[:12]
    m[8192:8192 + 12] = token
    through_fd = os.pread(fd, 12, 8192)
    first = os.pread(fd, 12, 4096)
    pos = os.lseek(fd, 0, 1)
    shm_pos = os.lseek(shm, 0, 1)
    shm_data = os.pread(shm, 17, 0)
    open(${JSON.stringify(out)}, "a").write(f"{me} {through_fd == token} {first.decode()} {pos} {shm_pos} {shm_data.decode()}\\n")
signal.signal(signal.SIGUSR1, check)
open(${JSON.stringify(out)}, "a").write("ready\\n")
while True:
    time.sleep(0.05)
`
    const proc = spawn('python3', ['-c', script], {stdio: 'ignore'})
    trackPid(proc.pid!)
    try {
      await until(() => (existsSync(out) && readFileSync(out, 'utf8').includes('ready')) || undefined, 'the program ready')
      const ck = await cli(['checkpoint', String(proc.pid), '--name', 'memfd', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'memfd', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      process.kill(clone, 'SIGUSR1')
      const line = await until(() => readFileSync(out, 'utf8').split('\n').find((l) => l.startsWith(`${clone} `)), 'the clone\'s check')
      assert.equal(line, `${clone} True hello memfd! 777 17 unlinked but open`, 'mapping and fd are one object, contents and offsets kept')
      assert.match(readFileSync(`/proc/${clone}/maps`, 'utf8'), /rw-s .* \/memfd:cxlfork-test \(deleted\)/, 'the mapping is a memfd of the clone\'s own, under its name')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('pymemfd (memfds with names, sizes off page boundaries, seals SHRINK|GROW|SEAL, WRITE with a read-only mapping, FUTURE_WRITE after a writable one, none, one only mapped, one empty, MFD_NOEXEC_SEAL): every clone under mow and local checks names, fstat sizes, F_GET_SEALS, FD_CLOEXEC, contents, what the seals forbid', async () => {
    const pool = poolPath('shmem')
    const fx = await startFixture('pymemfd')
    const fds = Object.fromEntries(fx.ready.fields.fds!.split(',').map((pair) => pair.split(':') as [string, string]))
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'memfds', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const inspect = await cli(['inspect', 'memfds', '--verify', '--json', '--pool', pool])
    assert.equal(inspect.status, 0, describeRun(inspect))
    assert.equal(inspect.json.sharedMemory.objects, Object.keys(fds).length + 1, 'an object per memfd (and one only mapped)')
    const listed = new Map((inspect.json.sharedMemory.memfds as {name: string; size: number; seals: string}[]).map((memfd) => [memfd.name, memfd]))
    assert.deepEqual(listed.get('cxl-sealed'), {name: 'cxl-sealed', size: 3 * 4096 + 100, seals: 'SEAL|SHRINK|GROW'}, 'inspect lists each memfd')
    assert.equal(listed.get('cxl-future')?.seals, 'FUTURE_WRITE')
    assert.equal(listed.size, Object.keys(fds).length + 1)
    if (fds['cxl-noexec']) assert.equal(listed.get('cxl-noexec')?.seals, 'EXEC')
    for (const policy of ['mow', 'local'] as const) {
      const run = await cli(['restore', 'memfds', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `${policy} clone: ${check.line}`)
      // And from outside: /proc names each fd and mapping after its memfd, a new object each.
      const maps = readFileSync(`/proc/${clone}/maps`, 'utf8')
      for (const [name, fd] of Object.entries(fds)) {
        assert.equal(readlinkSync(`/proc/${clone}/fd/${fd}`), `/memfd:${name} (deleted)`, `${policy}: fd ${fd}`)
        if (fx.ready.fields.mapped!.split(',').includes(name)) assert.ok(maps.includes(`/memfd:${name} (deleted)`), `${policy}: the mapping of ${name} is named after it`)
        assert.notEqual(statSync(`/proc/${clone}/fd/${fd}`).ino, statSync(`/proc/${fx.pid}/fd/${fd}`).ino, `${policy}: ${name} is the clone's own`)
      }
      assert.equal(statSync(`/proc/${clone}/fd/${fds['cxl-sealed']}`).size, 3 * 4096 + 100, `${policy}: exact size`)
    }
    assert.equal((await fx.check()).fields.ok, '1', 'the original is intact')
  })

  it('the CRIU-format path writes it too (pagemap-shmem, test/criu-e2e/shared-memory.test.ts restores it), leaving the target running', async () => {
    const fx = await startFixture('memtouch', {mib: 4, args: ['--advise', 'shared']})
    const images = `${fx.logPath}.images`
    const run = await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json'])
    assert.equal(run.status, 0, describeRun(run))
    assert.ok((run.json.files as string[]).some((file) => /\/pagemap-shmem-\d+\.img$/.test(file)), 'its pages are in pagemap-shmem-SHMID.img')
    assert.equal((await fx.check()).fields.ok, '1')
  })

  for (const policy of ['mow', 'local'] as const) {
    it(`a tree sharing one region between parent and children (tree --shared-kib 256), ${policy}: the clone tree shares one object of its own`, async () => {
      const pool = poolPath('shmem')
      const fx = await startFixture('tree', {args: ['--shared-kib', '256']})
      const children = fx.ready.fields.children!.split(',').map(Number)
      await waitForTicks(fx.logPath, fx.pid, 2)
      const ck = await cli(['checkpoint', String(fx.pid), '--name', 'shtree', '--tree', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'shtree', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const root = run.json.pid as number
      trackPid(root)
      const cloneChildren = childrenOf(root).filter((pid) => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]![0] !== 'Z')
      assert.equal(cloneChildren.length, 3, `three live clone children: ${cloneChildren.join(',')}`)
      const shared = BigInt(fx.ready.fields.shared!)
      const inodes = new Set([root, ...cloneChildren].map((pid) => mapsLine(pid, shared)?.inode))
      assert.equal(inodes.size, 1, `every member of the clone tree maps one object: ${[...inodes].join(',')}`)
      assert.ok(!inodes.has(mapsLine(fx.pid, shared)?.inode), 'not the original\'s')

      /** The parent's CHECK, then each child's CHECK it triggers (lines after `from`). */
      const round = async (parent: number, kids: readonly number[]): Promise<{parent: LogEvent; kids: LogEvent[]}> => {
        const from = readLog(fx.logPath).length
        const check = await requestCheck(fx.logPath, parent)
        assert.equal(check.fields.ok, '1', check.line)
        const lines: LogEvent[] = []
        for (const kid of kids) {
          const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === kid && e.index >= from, 10_000)
          assert.equal(line.fields.ok, '1', `child ${kid}: ${line.line}`)
          lines.push(line)
        }
        return {parent: check, kids: lines}
      }
      // Round 1 in the clone: each clone child reads the nonce its clone parent wrote.
      const first = await round(root, cloneChildren)
      for (const kid of first.kids) assert.equal(kid.fields.snonce, first.parent.fields.snonce, `clone child reads the clone parent's write: ${kid.line}`)
      // Round 2: the clone parent sees what its children wrote back.
      const second = await round(root, cloneChildren)
      assert.equal(second.parent.fields.seen, [1, 2, 3].map(() => first.parent.fields.snonce).join(','), `the clone parent reads its children's writes: ${second.parent.line}`)
      // The original tree goes on sharing among its own members, and saw none of the clone's writes.
      const originalRound = await round(fx.pid, children)
      for (const kid of originalRound.kids) assert.equal(kid.fields.snonce, originalRound.parent.fields.snonce, kid.line)
      for (const seen of originalRound.parent.fields.seen!.split(',')) {
        assert.ok(seen !== first.parent.fields.snonce && seen !== second.parent.fields.snonce, `the original never sees a clone's nonce: ${originalRound.parent.line}`)
      }
      note(`tree --shared-kib 256 (${policy}): checkpoint downtime ${(ck.json.downtimeUs / 1000).toFixed(1)} ms, restore ${(run.json.stats.restore_time / 1000).toFixed(1)} ms`)
    })
  }
})

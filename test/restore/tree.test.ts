/**
 * Process trees (`checkpoint --tree`), end to end on real processes: the tree fixture (a
 * session leader with three live children, one in a process group of its own, and an
 * unreaped zombie) and a bash loop that forks a `sleep` per iteration. Each clone tree
 * lives in a PID namespace of its own, where every member keeps its pid: the parent's
 * waitpid(child) and its zombie's status still work, and children see their parent.
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, readdirSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {procStat, processExists, readLog, requestCheck, requestExit, startFixture, trackPid, waitForLine, waitForTicks} from '../helpers/fixtures.js'
import {allProcesses, cli, comm, describeRun, installCleanupHooks, note, poolPath, sleep, until} from './helpers.js'

function nsPid(pid: number): number {
  const ids = (/^NSpid:\s+(.+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '').trim().split(/\s+/).map(Number)
  return ids[ids.length - 1]!
}

function childrenOf(pid: number): number[] {
  return allProcesses().filter((p) => p.ppid === pid).map((p) => p.pid).sort((a, b) => a - b)
}

/** The clone tree of the fixture: its root's children (host pids) mapped to the pids they have inside. */
function cloneShape(root: number): {pid: number; inside: number; pgidInside: number; state: string}[] {
  return childrenOf(root).map((pid) => {
    const stat = procStat(pid)!
    return {pid, inside: nsPid(pid), pgidInside: stat.pgrp === root ? nsPid(root) : stat.pgrp === pid ? nsPid(pid) : -1, state: stat.state}
  })
}

describe('restore: process trees keep their shape and their pids', function () {
  this.timeout(180_000)

  installCleanupHooks('tree')

  it('the tree fixture without --tree: exit 5 HAS_CHILDREN naming --tree; the tree runs on', async () => {
    const pool = poolPath('tree')
    const fx = await startFixture('tree')
    const run = await cli(['checkpoint', String(fx.pid), '--name', 'no-tree', '--json', '--pool', pool])
    assert.equal(run.status, 5, describeRun(run))
    assert.equal(run.json.error.code, 'HAS_CHILDREN')
    assert.match(run.json.error.hint, /--tree/)
    const check = await fx.check()
    assert.equal(check.fields.ok, '1', check.line)
  })

  it('the tree fixture (3 children, own group, a zombie): checkpointed live with --tree, restored under every policy (mow, moa, hybrid, local); every member passes its own checks', async () => {
    const pool = poolPath('tree')
    const fx = await startFixture('tree')
    const children = fx.ready.fields.children!.split(',').map(Number)
    const zombie = Number(fx.ready.fields.zombie)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'tr', '--tree', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    note(`checkpoint --tree: ${ck.json.tree.length} members, root downtime ${(ck.json.downtimeUs / 1000).toFixed(1)} ms, descendants stopped ${(ck.json.treeDowntimeUs / 1000).toFixed(1)} ms, CLI ${ck.ms.toFixed(0)} ms`)
    assert.deepEqual(ck.json.tree.map((m: {pid: number}) => m.pid).sort((a: number, b: number) => a - b), [fx.pid, ...children, zombie].sort((a, b) => a - b))
    assert.equal(ck.json.tree.find((m: {pid: number}) => m.pid === zombie).zombie, true)
    const inspect = await cli(['inspect', 'tr', '--json', '--pool', pool])
    assert.equal(inspect.status, 0, describeRun(inspect))
    assert.deepEqual(inspect.json.tree.map((m: {pid: number}) => m.pid), ck.json.tree.map((m: {pid: number}) => m.pid), 'inspect lists the members')
    assert.equal(inspect.json.tree.filter((m: {zombie: boolean}) => m.zombie).length, 1)
    assert.ok(inspect.json.tree.every((m: {comm: string}) => m.comm === 'tree'), JSON.stringify(inspect.json.tree))
    // The original tree is intact and still holds its zombie; its parent reads the bytes each child left in its pipe at setup.
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', original.line)
    assert.equal(original.fields.pipe, '7,7,7', original.line)
    assert.equal(procStat(zombie)?.state, 'Z')

    for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
      const run = await cli(['restore', 'tr', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const root = run.json.pid as number
      trackPid(root)
      if (run.json.faultServerPid) trackPid(run.json.faultServerPid)
      note(`restore --tree ${policy}: ${(run.json.stats.restore_time / 1000).toFixed(1)} ms engine, ${run.json.processes} processes, CLI ${run.ms.toFixed(0)} ms`)
      assert.equal(run.json.processes, 5)
      assert.equal(run.json.pidNamespace.pid, fx.pid, 'the root keeps its pid inside')
      assert.equal(comm(run.json.pidNamespace.initPid), 'cxlfork-init')
      const shape = cloneShape(root)
      assert.deepEqual(shape.map((m) => m.inside).sort((a, b) => a - b), [...children, zombie].sort((a, b) => a - b), `every child keeps its pid inside: ${JSON.stringify(shape)}`)
      const zombieClone = shape.find((m) => m.inside === zombie)!
      assert.equal(zombieClone.state, 'Z', 'the zombie is a zombie again')
      assert.equal(comm(zombieClone.pid), comm(zombie), 'with its name')
      const third = shape.find((m) => m.inside === children[2])!
      assert.equal(third.pgidInside, children[2], 'child 2 leads its own process group')
      assert.equal(procStat(root)!.session, root, 'the root leads its session')
      // The parent's CHECK: waitpid(child, WNOHANG) is 0 for each, the zombie's status is 7 (waitid WNOWAIT).
      const from = readLog(fx.logPath).length
      const check = await requestCheck(fx.logPath, root)
      assert.equal(check.fields.ok, '1', `the clone root's own checks: ${check.line}`)
      // The bytes in flight at the checkpoint: each child's "child<i>\n" still in the pipe between the clone parent and clone child.
      assert.equal(check.fields.pipe, '7,7,7', `pipes between clone members with their bytes: ${check.line}`)
      // Its CHECK made every child check itself: ppid, group, session, memory.
      for (const member of shape.filter((m) => m.state !== 'Z')) {
        const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === member.pid && e.index >= from, 10_000)
        assert.equal(line.fields.ok, '1', `clone child ${member.pid} (${member.inside} inside): ${line.line}`)
      }
    }
  })

  it('record of a clone tree: every member\'s accesses go into its own access record; hybrid then copies each member\'s hot pages', async () => {
    const pool = poolPath('tree')
    const fx = await startFixture('tree')
    const children = fx.ready.fields.children!.split(',').map(Number)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'rec', '--tree', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const run = await cli(['restore', 'rec', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    const root = run.json.pid as number
    trackPid(root)
    // The root's CHECK makes every child read its whole 1 MiB region (a CRC): pool pages each child accesses.
    const from = readLog(fx.logPath).length
    assert.equal((await requestCheck(fx.logPath, root)).fields.ok, '1')
    for (const member of cloneShape(root).filter((m) => m.state !== 'Z')) {
      await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === member.pid && e.index >= from, 10_000)
    }
    const rec = await cli(['record', 'rec', '--pid', String(root), '--json', '--pool', pool])
    assert.equal(rec.status, 0, describeRun(rec))
    const members = rec.json.members as {pid: number; clonePid: number; accessed: number; dirty: number}[]
    assert.deepEqual(members.map((m) => m.pid).sort((a, b) => a - b), [fx.pid, ...children].sort((a, b) => a - b), `every live member recorded: ${JSON.stringify(members)}`)
    for (const child of members.filter((m) => m.pid !== fx.pid)) {
      assert.ok(child.accessed >= 256, `child ${child.pid} (clone ${child.clonePid}) read its 1 MiB region: ${child.accessed} pages accessed`)
    }
    const hotChildren = members.filter((m) => m.pid !== fx.pid).reduce((sum, m) => sum + m.accessed, 0)
    const hybrid = await cli(['restore', 'rec', '--policy', 'hybrid', '--json', '--pool', pool])
    assert.equal(hybrid.status, 0, describeRun(hybrid))
    trackPid(hybrid.json.pid)
    assert.equal(hybrid.json.tiering.effectivePolicy, 'hybrid')
    assert.ok(hybrid.json.stats.pages_restored >= hotChildren, `hybrid copies the members' hot pages: ${hybrid.json.stats.pages_restored} restored, children's hot ${hotChildren}`)
    assert.equal((await requestCheck(fx.logPath, hybrid.json.pid)).fields.ok, '1')
    note(`record of a tree: ${members.map((m) => `${m.pid}:${m.accessed}/${m.dirty}`).join(' ')}; hybrid restored ${hybrid.json.stats.pages_restored} pages, mapped ${hybrid.json.stats.pages_mapped}`)
  })

  it('restore --record of a clone tree: every member is recorded at its own exit, and the root still reaps its children', async () => {
    const pool = poolPath('tree')
    const fx = await startFixture('tree')
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'rec-exit', '--tree', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    const run = await cli(['restore', 'rec-exit', '--record', '--json', '--pool', pool])
    assert.equal(run.status, 0, describeRun(run))
    assert.equal(run.json.tiering.recording.exact, true, 'fault-around is off on every member\'s pool mappings')
    const root = run.json.pid as number
    trackPid(root)
    const from = readLog(fx.logPath).length
    assert.equal((await requestCheck(fx.logPath, root)).fields.ok, '1')
    const members = cloneShape(root).filter((m) => m.state !== 'Z')
    assert.equal(members.length, 3)
    for (const member of members) await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === member.pid && e.index >= from, 10_000)
    // EXIT: the root SIGTERMs its children and reaps them (each passes its exit stop at the recorder first), then exits.
    const exit = await requestExit(fx.logPath, root)
    assert.equal(exit.fields.ok ?? '1', '1', exit.line)
    await until(() => !processExists(root), 'the clone root exits once it has reaped its children', 10_000)
    await until(() => !processExists(run.json.faultServerPid), 'the recorder ends with the last member', 10_000)
    const inspect = await cli(['inspect', 'rec-exit', '--json', '--pool', pool])
    assert.equal(inspect.json.accessRecord.recordings, 1, 'the root was recorded at its exit')
    const rootHot = inspect.json.accessRecord.hot as number
    // Each child read its 1 MiB region: recorded into its own record, so hybrid copies those pages too.
    const hybrid = await cli(['restore', 'rec-exit', '--policy', 'hybrid', '--json', '--pool', pool])
    assert.equal(hybrid.status, 0, describeRun(hybrid))
    trackPid(hybrid.json.pid)
    assert.ok(hybrid.json.stats.pages_restored >= rootHot + 3 * 256, `hybrid copies the root's ${rootHot} hot pages and each child's region: ${hybrid.json.stats.pages_restored} restored`)
    assert.equal((await requestCheck(fx.logPath, hybrid.json.pid)).fields.ok, '1')
    note(`restore --record of a tree: root ${rootHot} hot pages; hybrid then restored ${hybrid.json.stats.pages_restored}`)
  })

  it('pyprefork (a pre-forking server, as nginx: socketpairs split between the parent and its workers with bytes in flight both ways, workers dropped to nobody): restored under mow and local, each worker keeps its credentials and its queues', async () => {
    const pool = poolPath('tree')
    const fx = await startFixture('pyprefork')
    const workers = fx.ready.fields.workers!.split(',').map(Number)
    const nobody = (pid: number): void => {
      const status = readFileSync(`/proc/${pid}/status`, 'utf8')
      assert.match(status, /^Uid:\s+65534\s+65534\s+65534\s+65534$/m, `worker ${pid} runs as nobody`)
      assert.match(status, /^Gid:\s+65534\s+65534\s+65534\s+65534$/m)
      assert.match(status, /^Groups:\s+65534\s*$/m)
      assert.match(status, /^CapEff:\s+0+$/m, `worker ${pid} has no effective capability`)
    }
    // A worker drops its privileges after the parent reports READY.
    await until(() => workers.every((worker) => /^Uid:\s+65534\s/m.test(readFileSync(`/proc/${worker}/status`, 'utf8'))), 'the workers run as nobody')
    for (const worker of workers) nobody(worker)
    const alone = await cli(['checkpoint', String(workers[0]), '--name', 'alone', '--json', '--pool', pool])
    assert.equal(alone.status, 5, describeRun(alone))
    assert.equal(alone.json.error.code, 'UNSUPPORTED_FD', 'a worker alone holds one end of its pairs')
    assert.match(alone.json.error.hint, /--tree/)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'prefork', '--tree', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    for (const policy of ['mow', 'local'] as const) {
      const run = await cli(['restore', 'prefork', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const root = run.json.pid as number
      trackPid(root)
      const cloneWorkers = childrenOf(root)
      assert.equal(cloneWorkers.length, workers.length)
      for (const worker of cloneWorkers) nobody(worker)
      assert.match(readFileSync(`/proc/${root}/status`, 'utf8'), /^Uid:\s+0\s+0\s+0\s+0$/m, 'the parent stays root')
      // Two checks: the queued bytes of the checkpoint first, then a round trip that queues them anew.
      for (let round = 0; round < 2; round++) {
        const check = await requestCheck(fx.logPath, root)
        assert.equal(check.fields.ok, '1', `${policy} clone, check ${round + 1}: ${check.line}`)
        for (const answer of check.fields.creds!.split('|')) assert.match(answer, /^uid=65534\/65534\/65534;gid=65534\/65534\/65534;groups=65534$/)
      }
    }
    const original = await fx.check()
    assert.equal(original.fields.ok, '1', `the original runs on: ${original.line}`)
  })

  it('a process under seccomp is refused by name (SECCOMP), untouched: its clone would run unconfined', async () => {
    const pool = poolPath('tree')
    // Strict mode allows read, write, exit and sigreturn: it sits in read(0) until its stdin closes.
    const child = spawn('python3', ['-c', 'import ctypes, os; ctypes.CDLL(None).prctl(22, 1); os.write(1, b"R"); os.read(0, 1); os._exit(0)'], {stdio: ['pipe', 'pipe', 'inherit']})
    trackPid(child.pid!)
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()))
    const run = await cli(['checkpoint', String(child.pid), '--name', 'sc', '--json', '--pool', pool])
    assert.equal(run.status, 5, describeRun(run))
    assert.equal(run.json.error.code, 'SECCOMP')
    assert.match(run.json.error.message, /strict mode/)
    assert.equal(procStat(child.pid!)?.state, 'S', 'the target sleeps on in read(0), untraced')
    child.stdin!.end()
    // Its exit_group(2) is not among strict mode's calls: the kernel kills it, which is how it ends.
    await until(() => child.exitCode !== null || child.signalCode !== null, 'the target ends when its stdin closes')
  })

  it('a POSIX timer on another process\'s CPU clock (its parent\'s) is refused by name (UNSUPPORTED_TIMER) before anything is touched', async () => {
    const pool = poolPath('tree')
    // clock_getcpuclockid(parent) names the parent in the clock id: a clone could not re-create it.
    const script = [
      'import ctypes, os, struct, time',
      'libc = ctypes.CDLL(None, use_errno=True)',
      'clock, timer = ctypes.c_int(), ctypes.c_int()',
      'assert libc.clock_getcpuclockid(os.getppid(), ctypes.byref(clock)) == 0',
      'event = ctypes.create_string_buffer(struct.pack("<qii48x", 0, 0, 1))  # SIGEV_NONE',
      'assert libc.syscall(222, clock, event, ctypes.byref(timer)) == 0, ctypes.get_errno()',
      'time.sleep(600)',
    ].join('\n')
    const child = spawn('python3', ['-c', script], {stdio: 'ignore'})
    trackPid(child.pid!)
    await until(() => existsSync(`/proc/${child.pid}/timers`) && readFileSync(`/proc/${child.pid}/timers`, 'utf8').includes('ID: 0'), 'the timer exists')
    const run = await cli(['checkpoint', String(child.pid), '--name', 'cpuclock', '--json', '--pool', pool])
    assert.equal(run.status, 5, describeRun(run))
    assert.equal(run.json.error.code, 'UNSUPPORTED_TIMER')
    assert.match(run.json.error.message, new RegExp(`process ${child.pid} \\(python3\\) has POSIX timer 0 on the CPU-time clock of process or thread ${process.pid}, which is not one of its own`))
    assert.equal(existsSync(pool), false, 'refused before the pool was created')
    assert.equal(procStat(child.pid!)?.state, 'S', 'the target sleeps on, untraced')
    child.kill('SIGKILL')
  })

  it('file locks (lockf, flock) are taken again by the clone: beside the original that holds them its restore is FILE_LOCK_HELD naming it; once it is gone the clone holds them; criu dump refuses them (FILE_LOCK)', async () => {
    const pool = poolPath('tree')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-lock-'))
    try {
      const posix = join(dir, 'db')
      const whole = join(dir, 'pid')
      const child = spawn('python3', ['-c', `import fcntl, time\nf = open(${JSON.stringify(posix)}, "w")\nfcntl.lockf(f, fcntl.LOCK_EX, 10, 100)\ng = open(${JSON.stringify(whole)}, "w")\nfcntl.flock(g, fcntl.LOCK_SH)\ntime.sleep(600)`], {stdio: 'ignore'})
      trackPid(child.pid!)
      const held = (pid: number): string[] => readFileSync('/proc/locks', 'utf8').split('\n').filter((line) => line.split(/\s+/)[4] === String(pid)).map((line) => line.split(/\s+/).slice(1, 4).concat(line.split(/\s+/).slice(6, 8)).join(' ')).sort()
      await until(() => held(child.pid!).length === 2, 'both locks are held')
      assert.deepEqual(held(child.pid!), ['FLOCK ADVISORY READ 0 EOF', 'POSIX ADVISORY WRITE 100 109'])
      const dumped = await cli(['criu', 'dump', String(child.pid), '--images', join(dir, 'images'), '--json', '--no-porter'])
      assert.equal(dumped.status, 5, describeRun(dumped))
      assert.equal(dumped.json.error.code, 'FILE_LOCK', 'the CRIU format carries no locks: refused')
      assert.match(dumped.json.error.message, new RegExp(`^fd 3 of process ${child.pid} \\(python3\\) holds a POSIX record lock \\(fcntl F_SETLK, lockf\\) for write on ${posix} \\(bytes 100 to 109\\)`))
      const ck = await cli(['checkpoint', String(child.pid), '--name', 'locked', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const inspected = await cli(['inspect', 'locked', '--pool', pool])
      assert.match(inspected.stdout, /fd 3 regular .*holds a POSIX write lock on bytes 100 to 109/)
      const beside = await cli(['restore', 'locked', '--json', '--pool', pool, '--no-porter'])
      assert.equal(beside.status, 7, describeRun(beside))
      assert.equal(beside.json.error.code, 'FILE_LOCK_HELD')
      assert.match(beside.json.error.message, new RegExp(`^fd 3 must hold a POSIX record lock for write on ${posix} \\(bytes 100 to 109\\), which process ${child.pid} \\(python3\\) holds here`))
      assert.equal((await cli(['ls', '--json', '--pool', pool])).json.checkpoints[0].liveRefs, 0, 'the refused restore left no reference')
      child.kill('SIGKILL')
      await until(() => held(child.pid!).length === 0, 'the original and its locks are gone')
      const run = await cli(['restore', 'locked', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      assert.deepEqual(held(run.json.pid), ['FLOCK ADVISORY READ 0 EOF', 'POSIX ADVISORY WRITE 100 109'], 'the clone holds both locks')
      // Another process cannot take what the clone holds.
      const other = spawnSync('python3', ['-c', `import fcntl\nf = open(${JSON.stringify(posix)}, "w")\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 105)\n    print("taken")\nexcept OSError:\n    print("busy")`], {encoding: 'utf8'})
      assert.equal(other.stdout.trim(), 'busy')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a process operating on a System V semaphore set (Apache\'s sysvsem accept mutex) is refused by name (SYSV_IPC) before anything is touched', async () => {
    const pool = poolPath('tree')
    // semget(IPC_PRIVATE, 1, 0600), then semop +1 with SEM_UNDO: the kernel records this process as the semaphore's last user.
    const script = [
      'import ctypes, struct, sys, time',
      'libc = ctypes.CDLL(None, use_errno=True)',
      'semid = libc.semget(0, 1, 0o600)',
      'assert semid >= 0, ctypes.get_errno()',
      'op = ctypes.create_string_buffer(struct.pack("<HhH", 0, 1, 0x1000))',
      'assert libc.semop(semid, op, 1) == 0, ctypes.get_errno()',
      'open(sys.argv[1], "w").write(str(semid))',
      'time.sleep(600)',
    ].join('\n')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-sem-'))
    const idFile = join(dir, 'semid')
    const child = spawn('python3', ['-c', script, idFile], {stdio: 'ignore'})
    trackPid(child.pid!)
    let semid: string | undefined
    try {
      semid = await until(() => (existsSync(idFile) ? readFileSync(idFile, 'utf8') || undefined : undefined), 'the semaphore set exists')
      const run = await cli(['checkpoint', String(child.pid), '--name', 'sem', '--json', '--pool', pool])
      assert.equal(run.status, 5, describeRun(run))
      assert.equal(run.json.error.code, 'SYSV_IPC')
      assert.match(run.json.error.message, new RegExp(`^process ${child.pid} \\(python3\\) operates on the System V semaphore set ${semid} `))
      assert.match(run.json.error.hint, /Mutex pthread/)
      assert.equal(existsSync(pool), false, 'refused before the pool was created')
      assert.equal(procStat(child.pid!)?.state, 'S', 'the target sleeps on, untraced')
    } finally {
      child.kill('SIGKILL')
      if (semid) spawnSync('ipcrm', ['-s', semid])
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a flock() lock on a description a parent and its forked child share: the tree\'s clone holds it once, not refused against itself', async () => {
    const pool = poolPath('tree')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-treelock-'))
    try {
      const script = `import fcntl, os, time\nf = open(${JSON.stringify(join(dir, 'pid'))}, "w")\nfcntl.flock(f, fcntl.LOCK_EX)\nos.fork()\ntime.sleep(600)`
      const root = spawn('python3', ['-c', script], {stdio: 'ignore'})
      trackPid(root.pid!)
      await until(() => readFileSync('/proc/locks', 'utf8').includes(` ${root.pid} `) && allProcesses().some((p) => p.ppid === root.pid), 'the lock is held and the child forked')
      const ck = await cli(['checkpoint', String(root.pid), '--tree', '--kill', '--name', 'treelock', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      await until(() => !readFileSync('/proc/locks', 'utf8').includes(` ${root.pid} `), 'the original tree and its lock are gone')
      const run = await cli(['restore', 'treelock', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      if (run.json.pidNamespace) trackPid(run.json.pidNamespace.initPid)
      assert.match(readFileSync('/proc/locks', 'utf8'), new RegExp(`FLOCK\\s+ADVISORY\\s+WRITE ${run.json.pid} `), 'the clone\'s root holds the lock')
      process.kill(run.json.pidNamespace?.initPid ?? run.json.pid, 'SIGKILL')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('every refused fd is named in one refusal: a lock and a netlink socket (dnsmasq holds one) together', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-blockers-'))
    try {
      const script = `import fcntl, socket, time\nf = open(${JSON.stringify(join(dir, 'db'))}, "w")\nfcntl.lockf(f, fcntl.LOCK_EX)\nn = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)\ntime.sleep(600)`
      const child = spawn('python3', ['-c', script], {stdio: 'ignore'})
      trackPid(child.pid!)
      await until(() => readFileSync('/proc/locks', 'utf8').includes(` ${child.pid} `) && readdirSync(`/proc/${child.pid}/fd`).length >= 5, 'the lock and the socket exist')
      // criu dump: its format carries no locks, so both are refused.
      const run = await cli(['criu', 'dump', String(child.pid), '--images', join(dir, 'images'), '--json', '--no-porter'])
      assert.equal(run.status, 5, describeRun(run))
      assert.equal(run.json.error.code, 'FILE_LOCK', 'the first refused fd gives the code')
      assert.match(run.json.error.message, new RegExp(`^fd 3 of process ${child.pid} \\(python3\\) holds a POSIX record lock .*; and 1 more: fd 4 is a netlink socket \\(NETLINK_ROUTE\\)$`))
      child.kill('SIGKILL')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a grandchild that asked for a signal at its parent\'s death (PR_SET_PDEATHSIG) keeps asking in the clone: it ends when the clone of its parent dies', async () => {
    const pool = poolPath('tree')
    // root -> middle -> leaf; the leaf only sleeps: nothing but the parent-death signal (SIGTERM) ends it.
    // (Killing the clone's root would not tell: its PID namespace ends with it, and every member with it.)
    const script = [
      'import ctypes, os, signal, sys, time',
      'if os.fork() == 0:',
      '    if os.fork() == 0:',
      '        ctypes.CDLL(None).prctl(1, signal.SIGTERM)',
      '        open(sys.argv[1], "w").write("leaf-ready")',
      '    while True: time.sleep(1)',
      'while True: time.sleep(1)',
    ].join('\n')
    // stdio /dev/null and readiness in a file: a pipe to this test would be a socket end outside the tree.
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-pdeath-'))
    const ready = join(dir, 'ready')
    const root = spawn('python3', ['-c', script, ready], {stdio: 'ignore'})
    trackPid(root.pid!)
    await until(() => existsSync(ready) && readFileSync(ready, 'utf8') === 'leaf-ready', 'the leaf has asked for its parent-death signal')
    rmSync(dir, {recursive: true, force: true})
    const [middle] = childrenOf(root.pid!)
    const [leaf] = childrenOf(middle!)
    ;[middle!, leaf!].forEach(trackPid)
    const ck = await cli(['checkpoint', String(root.pid), '--name', 'pdeath', '--tree', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    assert.equal(ck.json.tree.length, 3, describeRun(ck))
    for (const policy of ['mow', 'local'] as const) {
      const run = await cli(['restore', 'pdeath', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const cloneRoot = run.json.pid as number
      trackPid(cloneRoot)
      const [cloneMiddle] = childrenOf(cloneRoot)
      const [cloneLeaf] = childrenOf(cloneMiddle!)
      ;[cloneMiddle!, cloneLeaf!].forEach(trackPid)
      await sleep(100)
      assert.ok(processExists(cloneLeaf!), `${policy}: the clone's leaf runs while its parent does`)
      process.kill(cloneMiddle!, 'SIGKILL')
      await until(() => !processExists(cloneLeaf!), `${policy}: the clone's leaf ${cloneLeaf} ends with its parent ${cloneMiddle} (its parent-death signal)`, 10_000)
      assert.ok(processExists(cloneRoot), `${policy}: the clone's root runs on`)
      process.kill(cloneRoot, 'SIGKILL')
    }
    assert.ok(processExists(leaf!), 'the original leaf runs on')
  })

  for (const point of ['tree-frozen', 'threads-frames-ready', 'tree-member-captured'] as const) {
    it(`cxlfork SIGKILLed at ${point} of a --tree checkpoint: every member runs on untraced, the tree passes its checks`, async () => {
      const pool = poolPath('tree')
      const fx = await startFixture('tree')
      const children = fx.ready.fields.children!.split(',').map(Number)
      await waitForTicks(fx.logPath, fx.pid, 2)
      const run = await cli(['checkpoint', String(fx.pid), '--name', 'killed', '--tree', '--json', '--pool', pool], {env: {CXLFORK_FAULT: point}})
      assert.equal(run.signal, 'SIGKILL', describeRun(run))
      for (const pid of [fx.pid, ...children]) {
        const status = readFileSync(`/proc/${pid}/status`, 'utf8')
        assert.equal(/^TracerPid:\s+(\d+)/m.exec(status)?.[1], '0', `member ${pid} untraced`)
        assert.ok(!/^State:\s+[tT]/m.test(status), `member ${pid} not left stopped`)
      }
      const from = readLog(fx.logPath).length
      const check = await fx.check()
      assert.equal(check.fields.ok, '1', check.line)
      for (const child of children) {
        const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === child && e.index >= from, 10_000)
        assert.equal(line.fields.ok, '1', `child ${child} after the kill at ${point}: ${line.line}`)
      }
    })
  }

  it('a shell pipeline (bash: a producer | a consumer, the pipe on their stdout and stdin): the clone tree keeps one pipe between its members and goes on', async () => {
    const pool = poolPath('tree')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-pipeline-'))
    const out = join(dir, 'out')
    const closeLeaked = 'for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-"; done 2>/dev/null; '
    // The producer counts; the consumer appends what it reads, tagged with its own pid as the host sees it
    // (/proc/self/stat read by the consumer shell itself: its getpid() is the original's in a clone).
    const script = closeLeaked + `i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done | while read n; do read -r me _ < /proc/self/stat; echo "$me $n" >> ${out}; done`
    // Its own process group, so that the whole pipeline is killed at the end, not only the shell.
    const shell = spawn('bash', ['-c', script], {stdio: 'ignore', cwd: dir, detached: true})
    trackPid(shell.pid!)
    try {
      await until(() => childrenOf(shell.pid!).length === 2 && existsSync(out) && readFileSync(out, 'utf8').split('\n').length > 3, 'the pipeline running')
      const ck = await cli(['checkpoint', String(shell.pid), '--name', 'pipeline', '--tree', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const members = ck.json.tree.length
      const run = await cli(['restore', 'pipeline', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      assert.equal(run.json.processes, members)
      // The clone's consumer goes on reading what the clone's producer writes: lines from a pid of the clone tree, counting on.
      const cloneMembers = () => new Set([clone, ...childrenOf(clone), ...childrenOf(clone).flatMap(childrenOf)])
      const fromClone = await until(() => {
        const ids = cloneMembers()
        const lines = readFileSync(out, 'utf8').trim().split('\n').map((line) => line.split(' ').map(Number)).filter(([pid]) => ids.has(pid!))
        return lines.length >= 4 ? lines : undefined
      }, 'lines from the clone\'s consumer', 10_000)
      const numbers = fromClone.map(([, n]) => n!)
      assert.ok(numbers.every((n, i) => i === 0 || n > numbers[i - 1]!), `the clone's numbers count up: ${numbers.join(', ')}`)
      note(`pipeline: ${members} members; the clone's consumer read ${numbers.length} lines, from ${numbers[0]}`)
    } finally {
      process.kill(-shell.pid!, 'SIGKILL')
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a bash loop (a fork per iteration): checkpointed with --tree, the clone goes on forking and reaping (mow, and moa: its children are served too)', async () => {
    const pool = poolPath('tree')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-bashloop-'))
    const counter = join(dir, 'n')
    // fds 0-2 on /dev/null, none above: what a service manager would give it.
    // Closes whatever fds above 2 the test runner leaked to it first (a runner's pipe would be refused).
    const closeLeaked = 'for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-"; done 2>/dev/null; '
    const bash = spawn('bash', ['-c', closeLeaked + `i=0; while true; do i=$((i+1)); echo $i > ${counter}.$$; sleep 0.1; done`], {stdio: 'ignore', cwd: dir})
    trackPid(bash.pid!)
    try {
      await until(() => readdirSync(dir).length > 0 && childrenOf(bash.pid!).length > 0, 'bash running its loop')
      const ck = await cli(['checkpoint', String(bash.pid), '--name', 'bash', '--tree', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      // Under moa every fork of the clone gives the fault server a new userfaultfd (UFFD_EVENT_FORK) to serve the child from.
      for (const policy of ['mow', 'moa'] as const) {
        const run = await cli(['restore', 'bash', '--policy', policy, '--json', '--pool', pool])
        assert.equal(run.status, 0, describeRun(run))
        const clone = run.json.pid as number
        trackPid(clone)
        assert.equal(comm(clone), 'bash')
        // The clone writes its own file (named by $$, its pid inside = the original's)... so watch its children instead:
        // it keeps forking sleeps (new pids inside its namespace) and reaping them.
        const seen = new Set<number>()
        const deadline = Date.now() + 5000
        while (Date.now() < deadline && seen.size < 3) {
          for (const child of childrenOf(clone)) if (comm(child) === 'sleep') seen.add(child)
          await sleep(30)
        }
        assert.ok(seen.size >= 3, `the ${policy} clone forked sleeps one after another: ${[...seen].join(', ')}`)
        const zombies = childrenOf(clone).filter((pid) => procStat(pid)?.state === 'Z')
        assert.ok(zombies.length <= 1, `and reaps them (zombies now: ${zombies.length})`)
      }
    } finally {
      bash.kill('SIGKILL')
      rmSync(dir, {recursive: true, force: true})
    }
  })
})


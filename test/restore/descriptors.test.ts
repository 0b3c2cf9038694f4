/**
 * Descriptors event loops hold, end to end on a real process (fixtures/pyfds.py): pipes
 * with bytes in flight (both ends, and a read end whose writer is gone), eventfds, an
 * epoll interest list, and fds sharing one open file description. The clone checks each
 * one itself, from /proc/self and by using it. What is still refused is refused by name.
 */
import assert from 'node:assert/strict'
import {spawn, spawnSync} from 'node:child_process'
import {appendFileSync, closeSync, constants, existsSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {procStat, requestCheck, startFixture, trackPid, waitForTicks} from '../helpers/fixtures.js'
import {CLI, allProcesses, childPids, cli, cmdline, comm, describeRun, fdTarget, installCleanupHooks, note, poolPath, until} from './helpers.js'

describe('restore: pipes, eventfds, epoll and shared descriptions', function () {
  this.timeout(120_000)

  installCleanupHooks('descriptors')

  it('pyfds: checkpointed live, restored under every policy; the clone finds every descriptor as it was', async () => {
    const pool = poolPath('fds')
    const fx = await startFixture('pyfds')
    await waitForTicks(fx.logPath, fx.pid, 2)
    const before = await fx.check()
    assert.equal(before.fields.ok, '1', before.line)
    const ck = await cli(['checkpoint', String(fx.pid), '--name', 'fds', '--json', '--pool', pool])
    assert.equal(ck.status, 0, describeRun(ck))
    note(`checkpoint pyfds: ${ck.json.fds} fds, downtime ${(ck.json.downtimeUs / 1000).toFixed(1)} ms`)
    const inspect = await cli(['inspect', 'fds', '--json', '--pool', pool])
    assert.equal(inspect.status, 0, describeRun(inspect))
    const kinds = (inspect.json.process.fds as {kind: string}[]).map((fd) => fd.kind)
    for (const kind of ['pipe', 'eventfd', 'epoll', 'regular']) assert.ok(kinds.includes(kind), `inspect lists a ${kind}: ${kinds.join(', ')}`)
    // The original still holds its bytes in flight and its counters (the capture consumed nothing).
    const after = await fx.check()
    assert.equal(after.fields.ok, '1', `the original after the checkpoint: ${after.line}`)
    for (const policy of ['mow', 'moa', 'hybrid', 'local'] as const) {
      const run = await cli(['restore', 'fds', '--policy', policy, '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      await waitForTicks(fx.logPath, clone, 2)
      const check = await requestCheck(fx.logPath, clone)
      assert.equal(check.fields.ok, '1', `the ${policy} clone's own fd checks: ${check.line}`)
    }
  })

  it('stdin on a pipe from a process outside the checkpoint: the clone gets /dev/null there, and the restore says so (stdioOnDevNull, and a note to the operator)', async () => {
    const pool = poolPath('fds')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-stdio-'))
    // `cat` reads a pipe whose writer (sleep) is not checkpointed; its stdout is a file.
    const shell = spawn('bash', ['-c', `sleep 600 | cat > ${join(dir, 'out')}`], {stdio: 'ignore'})
    trackPid(shell.pid!)
    try {
      const cat = await until(() => childPids(shell.pid!).find((pid) => comm(pid) === 'cat' && fdTarget(pid, 1) === join(dir, 'out')), 'cat runs with its output redirected')
      for (const pid of childPids(shell.pid!)) trackPid(pid)
      const stdin = readlinkSync(`/proc/${cat}/fd/0`)
      assert.match(stdin, /^pipe:\[\d+\]$/)
      const ck = await cli(['checkpoint', String(cat), '--name', 'piped', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'piped', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      assert.deepEqual(run.json.stdioOnDevNull, [{originalPid: cat, fd: 0, was: 'pipe', path: stdin}])
      // Reading /dev/null, the clone sees end of input and exits: what the note warns of.
      await until(() => [undefined, 'Z'].includes(procStat(run.json.pid)?.state), 'the clone ends at end of input')
      const human = await cli(['restore', 'piped', '--pool', pool, '--no-porter'])
      assert.equal(human.status, 0, describeRun(human))
      const clone = Number(/as pid (\d+)/.exec(human.stderr)?.[1])
      if (clone > 0) trackPid(clone)
      assert.match(human.stderr, /Note: the original had stdin on a pipe; the clone has \/dev\/null there: reading stdin, it sees end of input at once\. Run restore with --wait/)
      // The CRIU-format path reports the same.
      const dumped = await cli(['criu', 'dump', String(cat), '--images', join(dir, 'images'), '--json', '--no-porter'])
      assert.equal(dumped.status, 0, describeRun(dumped))
      const fromImages = await cli(['criu', 'restore', '--images', join(dir, 'images'), '--json', '--no-porter'])
      assert.equal(fromImages.status, 0, describeRun(fromImages))
      trackPid(fromImages.json.pid)
      assert.deepEqual(fromImages.json.stdioOnDevNull, [{originalPid: cat, fd: 0, was: 'pipe', path: stdin}])
      // With --wait the clone reads this command's stdin instead, and nothing is reported.
      const waited = spawnSync(process.execPath, [CLI, 'restore', 'piped', '--wait', '--json', '--pool', pool, '--no-porter'], {input: 'fed through --wait\n', encoding: 'utf8', timeout: 60_000})
      assert.equal(waited.status, 0, `${waited.stderr}\n${waited.stdout}`)
      assert.deepEqual((JSON.parse(waited.stdout) as {stdioOnDevNull: unknown}).stdioOnDevNull, [])
      assert.match(readFileSync(join(dir, 'out'), 'utf8'), /fed through --wait/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a program on a terminal (fds 0-2 one open pty): the detached clone writes to stdout and stderr (/dev/null) and runs on; the restore names the terminal', async () => {
    const pool = poolPath('fds')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-tty-'))
    const log = join(dir, 'ticks')
    // script(1) gives the program a pseudo-terminal on fds 0-2 (one open file description, dup'd), as a shell in a terminal does.
    // exec: script runs $SHELL -c, and dash (SHELL=/bin/sh, as under CI) forks the command rather than replacing itself.
    const program = `import sys, time\nn = 0\nwhile True:\n    n += 1\n    print('tick', n, flush=True)\n    print('err', n, file=sys.stderr, flush=True)\n    open(${JSON.stringify(log)}, 'a').write(f'{n}\\n')\n    time.sleep(0.05)\n`
    writeFileSync(join(dir, 'prog.py'), program)
    const script = spawn('script', ['-qfc', `exec python3 ${join(dir, 'prog.py')}`, '/dev/null'], {stdio: 'ignore'})
    trackPid(script.pid!)
    try {
      const python = await until(() => childPids(script.pid!).find((pid) => fdTarget(pid, 1)?.startsWith('/dev/pts/')), 'the program runs on a terminal')
      trackPid(python)
      await until(() => existsSync(log) && readFileSync(log, 'utf8').split('\n').length > 3, 'the program ticks')
      const ck = await cli(['checkpoint', String(python), '--name', 'tty', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'tty', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      assert.deepEqual(run.json.stdioOnDevNull.map((entry: {fd: number; was: string}) => [entry.fd, entry.was]), [[0, 'tty'], [1, 'tty'], [2, 'tty']])
      // Writable where the original wrote: stdout and stderr are /dev/null opened for writing, stdin for reading.
      const accessMode = (fd: number): number => Number.parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/${clone}/fdinfo/${fd}`, 'utf8'))![1]!, 8) & 3
      assert.deepEqual([0, 1, 2].map((fd) => readlinkSync(`/proc/${clone}/fd/${fd}`)), ['/dev/null', '/dev/null', '/dev/null'])
      assert.equal(accessMode(0), 0, 'stdin read-only')
      assert.notEqual(accessMode(1), 0, 'stdout writable')
      assert.notEqual(accessMode(2), 0, 'stderr writable')
      // The clone's own ticks go on (each one printed to stdout and stderr first): it did not die of EBADF.
      const ticksOfClone = (): number => readFileSync(log, 'utf8').split('\n').length
      const seen = ticksOfClone()
      process.kill(python, 'SIGSTOP')
      await until(() => ticksOfClone() >= seen + 10, 'the clone ticks on, printing as it goes')
      assert.ok(![undefined, 'Z'].includes(procStat(clone)?.state), 'the clone runs')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('an interactive bash (its terminal kept as fd 255) is refused by name, with a hint that says what to checkpoint instead', async () => {
    const pool = poolPath('fds')
    const script = spawn('script', ['-qfc', 'exec bash --norc -i', '/dev/null'], {stdio: ['pipe', 'ignore', 'ignore']})
    trackPid(script.pid!)
    try {
      const bash = await until(() => childPids(script.pid!).find((pid) => comm(pid) === 'bash' && fdTarget(pid, 255)?.startsWith('/dev/pts/')), 'bash runs interactively on a terminal')
      trackPid(bash)
      const ck = await cli(['checkpoint', String(bash), '--name', 'shell', '--json', '--pool', pool])
      assert.equal(ck.status, 5, describeRun(ck))
      assert.equal(ck.json.error.code, 'UNSUPPORTED_FD')
      assert.match(ck.json.error.message, new RegExp(`^fd 255 of process ${bash} is a terminal \\(/dev/pts/\\d+\\) above stderr`))
      assert.match(ck.json.error.hint, /An interactive shell \(bash keeps its terminal as fd 255\).*checkpoint the program the shell runs instead/)
      assert.equal(existsSync(pool), false, 'refused before the pool was created')
    } finally {
      script.stdin!.end()
    }
  })

  for (const path of ['pool', 'criu'] as const) {
    it(`${path === 'pool' ? 'restore' : 'criu restore'} --wait on a terminal: Ctrl-C reaches the clone (a tree whose root led its own session) and the command stays to exit 130 with it; nothing runs on`, async () => {
      const pool = poolPath('fds')
      const dir = mkdtempSync(join(tmpdir(), 'cxlfork-ctrlc-'))
      const marker = `ctrlc-${path}-${process.pid}`
      const clones = (): number[] => allProcesses().filter((p) => p.comm === 'bash' && cmdline(p.pid).includes(marker)).map((p) => p.pid)
      // A shell loop with a child, leading a session of its own, as the program of a tmux pane does.
      const loop = spawn('bash', ['-c', `: ${marker}; while true; do sleep 0.05; done`], {stdio: 'ignore', detached: true})
      trackPid(loop.pid!)
      try {
        await until(() => childPids(loop.pid!).length > 0, 'the loop runs a child')
        const dumped = path === 'pool'
          ? await cli(['checkpoint', String(loop.pid), '--tree', '--kill', '--name', 'ctrlc', '--json', '--pool', pool])
          : await cli(['criu', 'dump', String(loop.pid), '--tree', '--kill', '--images', join(dir, 'images'), '--json', '--no-porter'])
        assert.equal(dumped.status, 0, describeRun(dumped))
        await until(() => clones().length === 0, 'the original is gone')
        const restore = path === 'pool' ? `restore ctrlc --pool ${pool}` : `criu restore --images ${join(dir, 'images')}`
        // The command alone on the terminal (exec: no shell between, whose own handling of SIGINT differs: dash, bash), script -e exits with its status.
        const term = spawn('script', ['-qefc', `exec ${process.execPath} ${CLI} ${restore} --wait --no-porter`, '/dev/null'], {stdio: ['pipe', 'ignore', 'ignore']})
        trackPid(term.pid!)
        const ended = new Promise<number | null>((resolve) => term.once('exit', (code) => resolve(code)))
        const running = await until(() => (clones().length > 0 ? clones() : undefined), 'the clone runs')
        for (const pid of running) trackPid(pid)
        await new Promise((resolve) => setTimeout(resolve, 300))
        term.stdin!.write('\u0003')
        assert.equal(await ended, 130, 'the clone was interrupted (128 + SIGINT), and the command exited with its status')
        await until(() => clones().length === 0, 'no member of the clone runs on')
      } finally {
        rmSync(dir, {recursive: true, force: true})
      }
    })
  }

  it('restore --wait on a terminal: the clone finds the terminal in the modes its original left its own in (raw), and the command puts the terminal\'s own modes back when the clone ends', async () => {
    const pool = poolPath('fds')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-termios-'))
    const log = join(dir, 'lflag')
    try {
      // A program that put its terminal in raw mode (a REPL with line editing, an editor) and reports the mode it finds.
      const program = `import os, sys, termios, time, tty\ntty.setraw(0)\nwhile True:\n    open(${JSON.stringify(log)}, 'a').write(f"{os.getpid()} {termios.tcgetattr(0)[3] & termios.ICANON}\\n")\n    time.sleep(0.05)\n`
      writeFileSync(join(dir, 'prog.py'), program)
      const original = spawn('script', ['-qfc', `exec python3 ${join(dir, 'prog.py')}`, '/dev/null'], {stdio: ['pipe', 'ignore', 'ignore']})
      trackPid(original.pid!)
      const python = await until(() => childPids(original.pid!).find((pid) => comm(pid)?.startsWith('python3')), 'the program runs on its terminal')
      trackPid(python)
      await until(() => existsSync(log) && readFileSync(log, 'utf8').includes(`${python} 0`), 'the program is in raw mode')
      const ck = await cli(['checkpoint', String(python), '--name', 'raw', '--kill', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      original.stdin!.end()
      // Another terminal, in its default (canonical) modes: the command saves them first and compares after.
      const shell = `stty -g > ${join(dir, 'before')}; ${process.execPath} ${CLI} restore raw --wait --pool ${pool} --no-porter >/dev/null 2>&1; stty -g > ${join(dir, 'after')}`
      const term = spawn('script', ['-qfc', shell, '/dev/null'], {stdio: ['pipe', 'ignore', 'ignore']})
      trackPid(term.pid!)
      const seen = (): string[] => readFileSync(log, 'utf8').split('\n').filter((line) => line && !line.startsWith(`${python} `))
      await until(() => seen().length > 2, 'the clone reports its terminal modes')
      const clone = Number(seen()[0]!.split(' ')[0])
      trackPid(clone)
      assert.deepEqual([...new Set(seen().map((line) => line.split(' ')[1]))], ['0'], 'the clone finds its terminal raw (ICANON off), as its original left it')
      process.kill(clone, 'SIGTERM')
      await until(() => existsSync(join(dir, 'after')) && readFileSync(join(dir, 'after'), 'utf8').length > 0, 'the command ends')
      assert.equal(readFileSync(join(dir, 'after'), 'utf8'), readFileSync(join(dir, 'before'), 'utf8'), 'the terminal has its own modes back')
      assert.match(readFileSync(join(dir, 'before'), 'utf8'), /\S/)
      term.stdin!.end()
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('restore --wait killed (SIGTERM, not from its terminal): its clone, a single process or a tree in its PID namespace, does not outlive it', async () => {
    const pool = poolPath('fds')
    for (const [name, args, tree] of [['waited-one', ['-c', 'import time\nwhile True: time.sleep(0.05)'], false], ['waited-tree', ['-c', 'import os, time\nos.fork()\nwhile True: time.sleep(0.05)'], true]] as const) {
      const original = spawn('python3', [...args, name], {stdio: 'ignore'})
      trackPid(original.pid!)
      await until(() => comm(original.pid!) === 'python3' && (!tree || childPids(original.pid!).length > 0), 'the original runs (and forked)')
      const ck = await cli(['checkpoint', String(original.pid), ...(tree ? ['--tree'] : []), '--kill', '--name', name, '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const clones = (): number[] => allProcesses().filter((p) => p.comm.startsWith('python3') && cmdline(p.pid).includes(name)).map((p) => p.pid)
      await until(() => clones().length === 0, 'the original is gone')
      const waiting = spawn(process.execPath, [CLI, 'restore', name, '--wait', '--pool', pool, '--no-porter'], {stdio: 'ignore'})
      trackPid(waiting.pid!)
      const running = await until(() => (clones().length === (tree ? 2 : 1) ? clones() : undefined), 'the clone runs')
      for (const pid of running) trackPid(pid)
      waiting.kill('SIGTERM')
      await until(() => clones().length === 0, `the ${tree ? 'tree' : 'process'} restored --wait ends with its command`)
    }
  })

  it('a parent and its forked child on one terminal (checkpoint --tree): both clones print to stdout and stderr and run on', async () => {
    const pool = poolPath('fds')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-ttytree-'))
    const log = (who: string): string => join(dir, who)
    // The child inherits the pty on fds 0-2 from its parent: in the checkpoint its fds are the parent's, shared.
    const program = `import os, sys, time\nwho = 'child' if os.fork() == 0 else 'parent'\nn = 0\nwhile True:\n    n += 1\n    print(who, n, flush=True)\n    print(who, n, file=sys.stderr, flush=True)\n    open(os.path.join(${JSON.stringify(dir)}, who), 'a').write(f'{n}\\n')\n    time.sleep(0.05)\n`
    writeFileSync(join(dir, 'prog.py'), program)
    const script = spawn('script', ['-qfc', `exec python3 ${join(dir, 'prog.py')}`, '/dev/null'], {stdio: 'ignore'})
    trackPid(script.pid!)
    try {
      const parent = await until(() => childPids(script.pid!).find((pid) => comm(pid)?.startsWith('python3') && childPids(pid).length === 1), 'the parent runs with its child')
      const child = childPids(parent)[0]!
      trackPid(parent)
      trackPid(child)
      const ticks = (who: string): number => (existsSync(log(who)) ? readFileSync(log(who), 'utf8').split('\n').length : 0)
      await until(() => ticks('parent') > 3 && ticks('child') > 3, 'both tick')
      const ck = await cli(['checkpoint', String(parent), '--tree', '--name', 'ttytree', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      process.kill(child, 'SIGSTOP')
      process.kill(parent, 'SIGSTOP')
      const run = await cli(['restore', 'ttytree', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      if (run.json.pidNamespace) trackPid(run.json.pidNamespace.initPid)
      const seen = {parent: ticks('parent'), child: ticks('child')}
      await until(() => ticks('parent') >= seen.parent + 10 && ticks('child') >= seen.child + 10, 'both clones tick on, printing as they go')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('tail -f blocked in poll(-1): its clone waits on in poll (not failed with EINTR) and prints what is appended after the restore', async () => {
    const pool = poolPath('fds')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-tail-'))
    const log = join(dir, 'app.log')
    const out = join(dir, 'tail.out')
    writeFileSync(log, 'before\n')
    const outFd = openSync(out, 'a')
    const tail = spawn('tail', ['-f', log], {stdio: ['ignore', outFd, 'ignore']})
    closeSync(outFd)
    trackPid(tail.pid!)
    try {
      // poll(2) on inotify and stdout with no timeout: the call a restored process used to get EINTR from, and tail exits on.
      await until(() => {
        try {
          return readFileSync(`/proc/${tail.pid}/syscall`, 'utf8').split(' ')[0] === '7'
        } catch {
          return false
        }
      }, 'tail waits in poll')
      const ck = await cli(['checkpoint', String(tail.pid), '--name', 'tail', '--kill', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      for (const policy of ['mow', 'local'] as const) {
        const run = await cli(['restore', 'tail', '--policy', policy, '--json', '--pool', pool, '--no-porter'])
        assert.equal(run.status, 0, describeRun(run))
        const clone = run.json.pid as number
        trackPid(clone)
        const line = `appended-after-${policy}-restore`
        appendFileSync(log, line + '\n')
        await until(() => readFileSync(out, 'utf8').includes(line), `the ${policy} clone prints the appended line`)
        assert.ok(![undefined, 'Z'].includes(procStat(clone)?.state), `the ${policy} clone runs on`)
        assert.equal(readFileSync(`/proc/${clone}/syscall`, 'utf8').split(' ')[0], '7', 'back in poll')
        process.kill(clone, 'SIGKILL')
      }
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a regular file held open (not mapped) and replaced at its path since the checkpoint: refused as an open file, with what to put back', async () => {
    const pool = poolPath('fds')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-replaced-'))
    const path = join(dir, 'state.txt')
    writeFileSync(path, 'first\n')
    const child = spawn('python3', ['-c', `import time\nf = open(${JSON.stringify(path)})\ntime.sleep(600)`], {stdio: 'ignore'})
    trackPid(child.pid!)
    try {
      // fds come and go while Python starts: a link that vanished is simply not the file yet.
      await until(() => readdirSync(`/proc/${child.pid}/fd`).some((fd) => fdTarget(child.pid!, fd) === path), 'the file is open')
      const ck = await cli(['checkpoint', String(child.pid), '--name', 'replaced', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      rmSync(path)
      writeFileSync(path, 'second\n')
      const run = await cli(['restore', 'replaced', '--json', '--pool', pool, '--no-porter'])
      assert.equal(run.status, 5, describeRun(run))
      assert.equal(run.json.error.code, 'BACKING_FILE_CHANGED')
      assert.equal(run.json.error.message, `${path}, which the checkpoint has open, changed since the checkpoint (another file now has its path)`)
      assert.match(run.json.error.hint, /open file is reopened as the same inode/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('what is still refused is refused by name before the target is touched: a fanotify group; (criu dump carries pyfds\'s pipes and epoll now)', async () => {
    const pool = poolPath('fds')
    const dir = mkdtempSync('/tmp/cxlfork-fanotify-')
    const code = 'import ctypes, os, time\nos.closerange(3, 1024)\nfd = ctypes.CDLL(None).fanotify_init(0, 0)\nassert fd >= 0\ntime.sleep(600)\n'
    const child = spawn('python3', ['-c', code], {stdio: 'ignore'})
    trackPid(child.pid!)
    try {
      await until(() => {
        try {
          return readdirSync(`/proc/${child.pid}/fd`).some((fd) => readlinkSync(`/proc/${child.pid}/fd/${fd}`) === 'anon_inode:[fanotify]')
        } catch {
          return false
        }
      }, 'the fanotify group is open')
      const run = await cli(['checkpoint', String(child.pid), '--name', 'fanotify', '--json', '--pool', pool])
      assert.equal(run.status, 5, describeRun(run))
      assert.equal(run.json.error.code, 'UNSUPPORTED_FD')
      assert.match(run.json.error.message, /a fanotify group/)
    } finally {
      child.kill('SIGKILL')
      rmSync(dir, {recursive: true, force: true})
    }
    const fx = await startFixture('pyfds')
    const images = mkdtempSync('/dev/shm/cxlfork-fds-images-')
    try {
      // The CRIU-format path carries pipes, eventfds and epoll too (test/criu-e2e covers what it restores).
      const dump = await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json'])
      assert.equal(dump.status, 0, describeRun(dump))
      assert.ok((dump.json.files as string[]).some((file) => file.endsWith('/pipes-data.img')), 'the pipes\' bytes are in pipes-data.img')
    } finally {
      rmSync(images, {recursive: true, force: true})
    }
    const check = await fx.check()
    assert.equal(check.fields.ok, '1', check.line)
  })
  it('a FIFO (named pipe) held read-write with bytes in it: reopened at its path; its bytes are refilled only when nobody else holds it; a missing or replaced FIFO is refused by name', async () => {
    const pool = poolPath('descriptors')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-fifo-'))
    const fifo = join(dir, 'queue')
    try {
      spawnSync('mkfifo', [fifo])
      const holder = spawn('python3', ['-c', `import os, time\nfd = os.open(${JSON.stringify(fifo)}, os.O_RDWR)\nos.write(fd, b"queued-in-fifo")\nos.write(1, b"R")\nos.dup2(os.open("/dev/null", os.O_WRONLY), 1)\ntime.sleep(600)`], {stdio: ['ignore', 'pipe', 'ignore']})
      trackPid(holder.pid!)
      await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()))
      // Node's stdout pipe is a socketpair: the holder swaps it for /dev/null once ready.
      await until(() => readlinkSync(`/proc/${holder.pid}/fd/1`) === '/dev/null', 'the holder dropped its stdout')
      const ck = await cli(['checkpoint', String(holder.pid), '--name', 'fifo', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      /** Everything the FIFO holds now, read without blocking. */
      const drain = (): string => {
        const fd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK)
        try {
          const buffer = Buffer.alloc(4096)
          let text = ''
          for (;;) {
            let n = 0
            try {
              n = readSync(fd, buffer)
            } catch {
              break // EAGAIN: empty
            }
            if (n === 0) break
            text += buffer.subarray(0, n).toString()
          }
          return text
        } finally {
          closeSync(fd)
        }
      }
      const beside = await cli(['restore', 'fifo', '--json', '--pool', pool])
      assert.equal(beside.status, 0, describeRun(beside))
      trackPid(beside.json.pid)
      const link = readlinkSync(`/proc/${beside.json.pid}/fd/3`)
      assert.equal(link, fifo, 'the clone has the FIFO open as fd 3')
      const flags = Number.parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/${beside.json.pid}/fdinfo/3`, 'utf8'))![1]!, 8)
      assert.equal(flags & 3, 2, 'read-write, as the original')
      assert.equal(flags & 0o4000, 0, 'blocking, as the original (the restore opened it non-blocking)')
      assert.equal(drain(), 'queued-in-fifo', 'beside its original the clone shares the FIFO and adds no second copy of its bytes')
      process.kill(holder.pid!, 'SIGKILL')
      process.kill(beside.json.pid, 'SIGKILL')
      const gone = (pid: number): boolean => [undefined, 'Z'].includes(procStat(pid)?.state)
      await until(() => gone(holder.pid!) && gone(beside.json.pid), 'the holders are gone')
      const alone = await cli(['restore', 'fifo', '--json', '--pool', pool])
      assert.equal(alone.status, 0, describeRun(alone))
      trackPid(alone.json.pid)
      assert.equal(drain(), 'queued-in-fifo', 'held by nobody else, the FIFO gets its checkpointed bytes back')
      process.kill(alone.json.pid, 'SIGKILL')
      rmSync(fifo)
      const missing = await cli(['restore', 'fifo', '--json', '--pool', pool])
      assert.equal(missing.status, 3, describeRun(missing))
      assert.equal(missing.json.error.code, 'BACKING_FILE_MISSING')
      writeFileSync(fifo, 'a regular file now')
      const replaced = await cli(['restore', 'fifo', '--json', '--pool', pool])
      assert.equal(replaced.status, 5, describeRun(replaced))
      assert.equal(replaced.json.error.code, 'BACKING_FILE_CHANGED')
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
  it('inotify (tail -f, file watchers): every watch comes back at its watch descriptor with its mask (a gap in the wds kept), and the clone gets the events of its files', async () => {
    const pool = poolPath('descriptors')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-inotify-'))
    try {
      writeFileSync(join(dir, 'a'), 'a\n')
      writeFileSync(join(dir, 'b'), 'b\n')
      // Watch 1: a (IN_MODIFY); watch 2: b, removed (a gap); watch 3: the directory (IN_CREATE). Each event read goes to events.log.
      const code = [
        'import ctypes, os, struct, sys',
        'libc = ctypes.CDLL(None, use_errno=True)',
        `d = ${JSON.stringify(dir)}.encode()`,
        'fd = libc.inotify_init1(0)',
        'w1 = libc.inotify_add_watch(fd, d + b"/a", 2)',
        'w2 = libc.inotify_add_watch(fd, d + b"/b", 2)',
        'libc.inotify_rm_watch(fd, w2)',
        'w3 = libc.inotify_add_watch(fd, d, 0x100)',
        'assert (w1, w2, w3) == (1, 2, 3), (w1, w2, w3)',
        'log = os.open(d + b"/events.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)',
        'os.write(1, b"R")',
        'os.dup2(os.open("/dev/null", os.O_WRONLY), 1)',
        'while True:',
        '    data = os.read(fd, 4096)',
        '    at = 0',
        '    while at < len(data):',
        '        wd, mask, cookie, n = struct.unpack_from("iIII", data, at)',
        '        name = data[at + 16:at + 16 + n].rstrip(b"\\0").decode()',
        '        os.write(log, ("%s wd=%d mask=%x name=%s\\n" % (os.readlink("/proc/self"), wd, mask, name)).encode())',
        '        at += 16 + n',
      ].join('\n')
      const watcher = spawn('python3', ['-c', code], {stdio: ['ignore', 'pipe', 'inherit']})
      trackPid(watcher.pid!)
      await new Promise<void>((resolve) => watcher.stdout!.once('data', () => resolve()))
      await until(() => readlinkSync(`/proc/${watcher.pid}/fd/1`) === '/dev/null', 'the watcher dropped its stdout')
      const ck = await cli(['checkpoint', String(watcher.pid), '--name', 'inotify', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'inotify', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      const clone = run.json.pid as number
      trackPid(clone)
      const inotifyFd = readdirSync(`/proc/${clone}/fd`).find((fd) => readlinkSync(`/proc/${clone}/fd/${fd}`) === 'anon_inode:inotify')
      assert.ok(inotifyFd, 'the clone holds an inotify instance')
      const watches = [...readFileSync(`/proc/${clone}/fdinfo/${inotifyFd}`, 'utf8').matchAll(/inotify wd:([0-9a-f]+) ino:([0-9a-f]+) .*?mask:([0-9a-f]+)/g)].map((m) => `${Number.parseInt(m[1]!, 16)}:${m[3]}`).sort()
      assert.deepEqual(watches, ['1:2', '3:100'], 'watch 1 on a (IN_MODIFY) and watch 3 on the directory (IN_CREATE), as the original had them')
      appendFileSync(join(dir, 'a'), 'more\n')
      writeFileSync(join(dir, 'c'), 'new\n')
      const lines = await until(() => {
        const text = readFileSync(join(dir, 'events.log'), 'utf8')
        const mine = text.split('\n').filter((line) => line.startsWith(`${clone} `))
        return mine.length >= 2 ? mine : undefined
      }, 'the clone reads the events of its watches')
      assert.ok(lines.includes(`${clone} wd=1 mask=2 name=`), `IN_MODIFY of a on watch 1: ${lines.join(' | ')}`)
      assert.ok(lines.some((line) => line.startsWith(`${clone} wd=3 mask=100 name=c`)), `IN_CREATE of c on watch 3: ${lines.join(' | ')}`)
      assert.ok(!lines.some((line) => / mask=8000 /.test(line)), `no IN_IGNORED of the skipped watch reaches the clone: ${lines.join(' | ')}`)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
  it('socketpair ends whose peer was closed (stream and datagram, what a JVM leaves): each clone reads what waited in them, then EOF', async () => {
    const pool = poolPath('descriptors')
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-orphan-pair-'))
    const out = join(dir, 'out')
    // On SIGUSR1 it drains both ends into OUT.PID: the stream end's bytes then EOF, the datagram end's messages then EAGAIN.
    const script = `import os, signal, socket, sys, time
os.closerange(3, 1024)
s1, s2 = socket.socketpair()
s2.sendall(b"stream-left"); s2.close()
d1, d2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
d2.send(b"m1"); d2.send(b"m2"); d2.close()
def drain(signo, frame):
    got = []
    while True:
        chunk = s1.recv(64)
        got.append(chunk.decode() or "EOF")
        if not chunk: break
    d1.setblocking(False)
    try:
        while True: got.append(d1.recv(64).decode())
    except BlockingIOError:
        got.append("EAGAIN")
    name = sys.argv[1] + "." + str(int(os.readlink("/proc/self")))
    with open(name + ".tmp", "w") as f: f.write(" ".join(got))
    os.rename(name + ".tmp", name)
signal.signal(signal.SIGUSR1, drain)
open(sys.argv[1] + ".ready", "w").close()
while True: time.sleep(1)`
    const target = spawn('python3', ['-c', script, out], {stdio: 'ignore'})
    trackPid(target.pid!)
    try {
      await until(() => readdirSync(dir).includes('out.ready'), 'the pairs are set up')
      const ck = await cli(['checkpoint', String(target.pid), '--name', 'orphans', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      for (const policy of ['mow', 'local'] as const) {
        const run = await cli(['restore', 'orphans', '--policy', policy, '--json', '--pool', pool])
        assert.equal(run.status, 0, describeRun(run))
        const clone = run.json.pid as number
        trackPid(clone)
        process.kill(clone, 'SIGUSR1')
        await until(() => readdirSync(dir).includes(`out.${clone}`), `${policy}: the clone drained its ends`)
        assert.equal(readFileSync(`${out}.${clone}`, 'utf8'), 'stream-left EOF m1 m2 EAGAIN', policy)
        process.kill(clone, 'SIGKILL')
      }
      process.kill(target.pid!, 'SIGUSR1')
      await until(() => readdirSync(dir).includes(`out.${target.pid}`), 'the original drained its ends')
      assert.equal(readFileSync(`${out}.${target.pid}`, 'utf8'), 'stream-left EOF m1 m2 EAGAIN', 'the original holds the same')
    } finally {
      target.kill('SIGKILL')
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a deleted file (not on a tmpfs) comes back as one, with its contents, offset and flags; one over the 1 MiB limit is refused by name', async () => {
    const pool = poolPath('descriptors')
    const dir = mkdtempSync('/var/tmp/cxlfork-ghost-')
    try {
      const code = [
        'import os, sys, time',
        `d = ${JSON.stringify(dir)}`,
        'fd = os.open(d + "/ghost", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)',
        'os.write(fd, b"ghost-contents")',
        'os.lseek(fd, 6, 0)',
        'os.unlink(d + "/ghost")',
        'if len(sys.argv) > 1:',
        '    big = os.open(d + "/big", os.O_RDWR | os.O_CREAT, 0o600)',
        '    os.write(big, b"x" * (2 << 20))',
        '    os.unlink(d + "/big")',
        'os.write(1, b"R")',
        'os.dup2(os.open("/dev/null", os.O_WRONLY), 1)',
        'time.sleep(600)',
      ].join('\n')
      const start = async (...extra: string[]): Promise<number> => {
        const holder = spawn('python3', ['-c', code, ...extra], {stdio: ['ignore', 'pipe', 'inherit']})
        trackPid(holder.pid!)
        await new Promise<void>((resolve) => holder.stdout!.once('data', () => resolve()))
        await until(() => readlinkSync(`/proc/${holder.pid}/fd/1`) === '/dev/null', 'the holder dropped its stdout')
        return holder.pid!
      }
      const pid = await start()
      const ck = await cli(['checkpoint', String(pid), '--name', 'ghost', '--json', '--pool', pool])
      assert.equal(ck.status, 0, describeRun(ck))
      const run = await cli(['restore', 'ghost', '--json', '--pool', pool])
      assert.equal(run.status, 0, describeRun(run))
      trackPid(run.json.pid)
      const fd = readdirSync(`/proc/${run.json.pid}/fd`).find((n) => readlinkSync(`/proc/${run.json.pid}/fd/${n}`).endsWith('(deleted)'))
      assert.ok(fd, `the clone holds a deleted file: ${readdirSync(`/proc/${run.json.pid}/fd`).map((n) => readlinkSync(`/proc/${run.json.pid}/fd/${n}`)).join(', ')}`)
      assert.equal(readlinkSync(`/proc/${run.json.pid}/fd/${fd}`), `${dir}/ghost (deleted)`, 'under the name it had')
      assert.equal(readFileSync(`/proc/${run.json.pid}/fd/${fd}`, 'utf8'), 'ghost-contents')
      const info = readFileSync(`/proc/${run.json.pid}/fdinfo/${fd}`, 'utf8')
      assert.match(info, /^pos:\s+6$/m, 'at its offset')
      const flags = Number.parseInt(/^flags:\s+([0-7]+)$/m.exec(info)![1]!, 8)
      assert.equal(flags & 3, 2, 'read-write')
      assert.notEqual(flags & 0o2000, 0, 'O_APPEND kept')
      assert.equal(statSync(`/proc/${run.json.pid}/fd/${fd}`).mode & 0o777, 0o640, 'its mode')
      const big = await start('big')
      const refused = await cli(['checkpoint', String(big), '--name', 'big', '--json', '--pool', pool])
      assert.equal(refused.status, 5, describeRun(refused))
      assert.equal(refused.json.error.code, 'UNSUPPORTED_FD')
      assert.match(refused.json.error.message, /a deleted file of 2097152 bytes/)
    } finally {
      rmSync(dir, {recursive: true, force: true})
    }
  })
})

/**
 * Process trees on the CRIU-format path, end to end on real processes: `criu dump --tree`
 * of the tree fixture (a session leader, three live children, one leading a process group
 * of its own, pipes with bytes in flight to the parent, an unreaped zombie) and of a bash
 * loop that forks a `sleep` per iteration; the image set as crit reads it (pstree.img with
 * every member, a TASK_DEAD core for the zombie, each live member's own images); `criu
 * restore` of the set into a clone tree that keeps its shape and its pids in a PID
 * namespace of its own; and `criu import` of the set into the pool, restored zero-copy.
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {existsSync, mkdtempSync, readFileSync, readdirSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

import {type Fixture, procStat, readLog, requestCheck, startFixture, trackPid, waitForLine, waitForTicks} from '../helpers/fixtures.js'
import {allProcesses, until} from '../restore/helpers.js'
import {cli, comm, critDecode, expectCliError, imagesDir, installSuiteHooks, note, okJson, poolFile, sleep} from './helpers.js'

function nsPid(pid: number): number {
  const ids = (/^NSpid:\s+(.+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '').trim().split(/\s+/).map(Number)
  return ids[ids.length - 1]!
}

function childrenOf(pid: number): number[] {
  return allProcesses().filter((p) => p.ppid === pid).map((p) => p.pid).sort((a, b) => a - b)
}

/**
 * A clone of the tree fixture (root `root` here) proves itself: every child keeps its pid
 * inside, the zombie is a zombie again with its name, child 2 leads its own group, the root
 * its session; the root's CHECK (waitpid of each child, the zombie's status 7, the bytes
 * each child left in its pipe) and each child's CHECK (ppid, group, session, memory) pass.
 */
async function assertCloneTree(fx: Fixture, root: number, children: number[], zombie: number, what: string): Promise<void> {
  const shape = childrenOf(root).map((pid) => {
    const stat = procStat(pid)!
    return {pid, inside: nsPid(pid), pgidInside: stat.pgrp === root ? nsPid(root) : stat.pgrp === pid ? nsPid(pid) : -1, state: stat.state}
  })
  assert.deepEqual(shape.map((m) => m.inside).sort((a, b) => a - b), [...children, zombie].sort((a, b) => a - b), `${what}: every child keeps its pid inside: ${JSON.stringify(shape)}`)
  const zombieClone = shape.find((m) => m.inside === zombie)!
  assert.equal(zombieClone.state, 'Z', `${what}: the zombie is a zombie again`)
  assert.equal(comm(zombieClone.pid), 'tree', `${what}: with its name`)
  assert.equal(shape.find((m) => m.inside === children[2])!.pgidInside, children[2], `${what}: child 2 leads its own process group`)
  assert.equal(shape.find((m) => m.inside === children[0])!.pgidInside, fx.pid, `${what}: child 0 is in its parent's group`)
  assert.equal(procStat(root)!.session, root, `${what}: the root leads its session`)
  const from = readLog(fx.logPath).length
  const check = await requestCheck(fx.logPath, root)
  assert.equal(check.fields.ok, '1', `${what}: the clone root's own checks: ${check.line}`)
  assert.equal(check.fields.pipe, '7,7,7', `${what}: pipes between clone members with their bytes in flight: ${check.line}`)
  for (const member of shape.filter((m) => m.state !== 'Z')) {
    const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === member.pid && e.index >= from, 10_000)
    assert.equal(line.fields.ok, '1', `${what}: clone child ${member.pid} (${member.inside} inside): ${line.line}`)
  }
}

describe('criu-e2e: process trees through criu dump --tree, criu restore and criu import', function () {
  this.timeout(180_000)

  installSuiteHooks('criu-e2e tree')

  it('the tree fixture without --tree: exit 5 HAS_CHILDREN naming --tree, no image written, the tree runs on', async () => {
    const fx = await startFixture('tree')
    const images = imagesDir('no-tree')
    const run = await cli(['criu', 'dump', String(fx.pid), '--images', images, '--json'])
    const error = expectCliError(run, {exitCode: 5, code: 'HAS_CHILDREN', message: [String(fx.pid)]})
    assert.match(error.hint!, /--tree/)
    assert.ok(!existsSync(images) || readdirSync(images).length === 0, 'no image written')
    assert.equal((await fx.check()).fields.ok, '1')
  })

  it('the tree fixture (3 children, own group, pipes with bytes, a zombie): dumped live with --tree as CRIU lays a tree out, restored and imported; every member passes its own checks', async () => {
    const fx = await startFixture('tree')
    const children = fx.ready.fields.children!.split(',').map(Number)
    const zombie = Number(fx.ready.fields.zombie)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = imagesDir('tree')
    const dump = okJson(await cli(['criu', 'dump', String(fx.pid), '--tree', '--images', images, '--json']))
    note(`criu dump --tree: ${dump.tree.length} members, root downtime ${(dump.downtimeUs / 1000).toFixed(1)} ms, descendants stopped ${(dump.treeDowntimeUs / 1000).toFixed(1)} ms, ${dump.files.length} images, ${dump.imageBytes} bytes`)
    assert.deepEqual(dump.tree.map((m: {pid: number}) => m.pid).sort((a: number, b: number) => a - b), [fx.pid, ...children, zombie].sort((a, b) => a - b))

    // The set as crit reads it: every member in pstree.img, parents first, with its group and session.
    const pstree = (await critDecode(join(images, 'pstree.img'))).entries as {pid: number; ppid: number; pgid: number; sid: number; threads: number[]}[]
    assert.deepEqual(pstree.map((t) => t.pid), dump.tree.map((m: {pid: number}) => m.pid), 'pstree.img lists every member, the root first')
    assert.equal(pstree[0]!.ppid, 0, 'the root\'s ppid is 0, as CRIU writes it')
    for (const task of pstree.slice(1)) assert.equal(task.ppid, fx.pid, `member ${task.pid}'s parent`)
    for (const task of pstree) assert.equal(task.sid, fx.pid, `member ${task.pid} is in the root's session`)
    assert.equal(pstree.find((t) => t.pid === children[2])!.pgid, children[2], 'child 2 leads its group')
    assert.equal(pstree.find((t) => t.pid === children[0])!.pgid, fx.pid, 'child 0 is in the root\'s group')
    // The zombie: a task core only, TASK_DEAD, its raw wait status (exit 7) in exit_code.
    const zombieCore = (await critDecode(join(images, `core-${zombie}.img`))).entries[0]
    assert.equal(zombieCore.tc.task_state, 2, 'TASK_DEAD')
    assert.equal(zombieCore.tc.exit_code, 7 << 8)
    assert.equal(existsSync(join(images, `mm-${zombie}.img`)), false, 'a zombie has no memory images')
    // Each child asked to die with its parent (PR_SET_PDEATHSIG): the leader's thread_core.pdeath_sig; the root's is not recorded.
    for (const child of children) assert.equal((await critDecode(join(images, `core-${child}.img`))).entries[0].thread_core.pdeath_sig, 9, `child ${child}'s pdeath_sig`)
    assert.equal((await critDecode(join(images, `core-${fx.pid}.img`))).entries[0].thread_core.pdeath_sig, undefined)
    // Each live member: its own core, ids, mm, pagemap (naming its own pages-N.img), fs and fdinfo.
    const pagesIds = new Set<number>()
    const filesIds = new Set<number>()
    for (const pid of [fx.pid, ...children]) {
      for (const kind of ['core', 'ids', 'mm', 'pagemap', 'fs']) assert.ok(existsSync(join(images, `${kind}-${pid}.img`)), `${kind}-${pid}.img`)
      const head = (await critDecode(join(images, `pagemap-${pid}.img`))).entries[0]
      pagesIds.add(head.pages_id)
      assert.ok(existsSync(join(images, `pages-${head.pages_id}.img`)), `pages-${head.pages_id}.img of ${pid}`)
      const ids = (await critDecode(join(images, `ids-${pid}.img`))).entries[0]
      filesIds.add(ids.files_id)
      await critDecode(join(images, `fdinfo-${ids.files_id}.img`))
    }
    assert.equal(pagesIds.size, 4, 'each live member has pages of its own')
    assert.equal(filesIds.size, 4, 'and an fd table of its own')
    const files = (await critDecode(join(images, 'files.img'))).entries as {type: string; pipe?: {pipe_id: number}}[]
    assert.equal(files.filter((f) => f.type === 'PIPE').length, 6, 'each of the 3 pipes has its two ends (one per member) in files.img')
    const pipesData = (await critDecode(join(images, 'pipes-data.img'))).entries as {pipe_id: number; bytes: number}[]
    assert.deepEqual(pipesData.map((p) => p.bytes), [7, 7, 7], 'the bytes each child left in its pipe ("child<i>\\n")')

    const original = await fx.check()
    assert.equal(original.fields.ok, '1', `the original is intact: ${original.line}`)
    assert.equal(procStat(zombie)?.state, 'Z', 'and still holds its zombie')

    const restore = okJson(await cli(['criu', 'restore', '--images', images, '--json']))
    trackPid(restore.pid)
    if (restore.pidNamespace) trackPid(restore.pidNamespace.initPid)
    note(`criu restore of the tree: ${(restore.stats.restore_time / 1000).toFixed(1)} ms engine, ${restore.processes} processes, ${restore.stats.pages_restored} pages copied`)
    assert.equal(restore.processes, 5)
    assert.equal(restore.pidNamespace.pid, fx.pid, 'the root keeps its pid inside')
    assert.equal(comm(restore.pid), 'tree')
    await assertCloneTree(fx, restore.pid, children, zombie, 'criu restore')

    const pool = poolFile('tree')
    const imported = okJson(await cli(['criu', 'import', '--images', images, '--name', 'tree', '--pool', pool, '--json']))
    assert.equal(imported.processes, 5)
    assert.equal(imported.writtenBy, 'cxlfork')
    const inspect = okJson(await cli(['inspect', 'tree', '--pool', pool, '--json']))
    assert.deepEqual(inspect.tree.map((m: {pid: number}) => m.pid), dump.tree.map((m: {pid: number}) => m.pid), 'inspect lists the imported members')
    for (const policy of ['mow', 'local'] as const) {
      const run = okJson(await cli(['restore', 'tree', '--policy', policy, '--pool', pool, '--json']))
      trackPid(run.pid)
      assert.equal(run.processes, 5)
      await assertCloneTree(fx, run.pid, children, zombie, `import, restore --policy ${policy}`)
    }
  })

  it('a bash loop (a fork per iteration): dumped with --tree, restored and imported, the clone goes on forking and reaping', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'cxlfork-criu-bashloop-'))
    // fds 0-2 on /dev/null, none above (the test runner's leaked fds are closed first).
    const closeLeaked = 'for f in /proc/$$/fd/*; do n=${f##*/}; [ "$n" -gt 2 ] 2>/dev/null && eval "exec $n>&-"; done 2>/dev/null; '
    const bash = spawn('bash', ['-c', closeLeaked + `i=0; while true; do i=$((i+1)); echo $i > ${join(dir, 'n')}.$$; sleep 0.1; done`], {stdio: 'ignore', cwd: dir})
    trackPid(bash.pid!)
    try {
      await until(() => readdirSync(dir).length > 0 && childrenOf(bash.pid!).length > 0, 'bash running its loop')
      const images = imagesDir('bash')
      const dump = okJson(await cli(['criu', 'dump', String(bash.pid), '--tree', '--images', images, '--json']))
      assert.ok(dump.tree.length >= 1 && dump.tree[0].pid === bash.pid)
      const pstree = (await critDecode(join(images, 'pstree.img'))).entries as {pid: number}[]
      assert.deepEqual(pstree.map((t) => t.pid), dump.tree.map((m: {pid: number}) => m.pid))
      const pool = poolFile('bash')
      okJson(await cli(['criu', 'import', '--images', images, '--name', 'bash', '--pool', pool, '--json']))
      const runs = [
        {what: 'criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
        {what: 'import + restore', run: await cli(['restore', 'bash', '--pool', pool, '--json'])},
      ]
      for (const {what, run} of runs) {
        const clone = okJson(run).pid as number
        trackPid(clone)
        assert.equal(comm(clone), 'bash')
        assert.equal(okJson(run).processes, dump.tree.length)
        // It keeps forking sleeps (new pids inside its namespace) and reaping them.
        const seen = new Set<number>()
        const deadline = Date.now() + 5000
        while (Date.now() < deadline && seen.size < 3) {
          for (const child of childrenOf(clone)) if (comm(child) === 'sleep') seen.add(child)
          await sleep(30)
        }
        assert.ok(seen.size >= 3, `the ${what} clone forked sleeps one after another: ${[...seen].join(', ')}`)
        const zombies = childrenOf(clone).filter((pid) => procStat(pid)?.state === 'Z')
        assert.ok(zombies.length <= 1, `${what}: and reaps them (zombies now: ${zombies.length})`)
      }
    } finally {
      bash.kill('SIGKILL')
      rmSync(dir, {recursive: true, force: true})
    }
  })

  it('a tree sharing one region between parent and children (tree --shared-kib 256): dumped with --tree as CRIU lays shared memory out (VMA_ANON_SHARED, pagemap-shmem); the restored and imported trees share one object of their own', async () => {
    const fx = await startFixture('tree', {args: ['--shared-kib', '256']})
    const children = fx.ready.fields.children!.split(',').map(Number)
    await waitForTicks(fx.logPath, fx.pid, 2)
    const images = imagesDir('shtree')
    okJson(await cli(['criu', 'dump', String(fx.pid), '--tree', '--images', images, '--json']))
    const shared = BigInt(fx.ready.fields.shared!)
    const vmaOf = async (pid: number) => ((await critDecode(join(images, `mm-${pid}.img`))).entries[0].vmas as {start: string | number; shmid: string | number; status: number}[]).find((vma) => BigInt(vma.start) === shared)!
    const root = await vmaOf(fx.pid)
    assert.ok((root.status & (1 << 8)) !== 0, `VMA_ANON_SHARED: ${JSON.stringify(root)}`)
    for (const child of children) assert.equal(String((await vmaOf(child)).shmid), String(root.shmid), `child ${child} maps the same object`)
    const pagemap = (await critDecode(join(images, `pagemap-shmem-${root.shmid}.img`))).entries
    assert.ok(pagemap.length >= 2, 'pagemap-shmem: a head and the populated pages')

    const pool = poolFile('shtree')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'shtree', '--pool', pool, '--json']))
    const runs = [
      {what: 'criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
      {what: 'import + restore mow', run: await cli(['restore', 'shtree', '--pool', pool, '--json'])},
    ]
    for (const {what, run} of runs) {
      const clone = okJson(run).pid as number
      trackPid(clone)
      const kids = childrenOf(clone).filter((pid) => procStat(pid)?.state !== 'Z')
      assert.equal(kids.length, 3)
      const inode = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').find((line) => BigInt(`0x${line.split('-')[0]}`) === shared)?.split(/\s+/)[4]
      const inodes = new Set([clone, ...kids].map(inode))
      assert.equal(inodes.size, 1, `${what}: every member maps one object: ${[...inodes].join(',')}`)
      assert.ok(!inodes.has(inode(fx.pid)), `${what}: not the original's`)
      // The clone parent writes a nonce each CHECK; its children copy what they read into their own words; the next CHECK sees it.
      const round = async () => {
        const from = readLog(fx.logPath).length
        const check = await requestCheck(fx.logPath, clone)
        assert.equal(check.fields.ok, '1', `${what}: ${check.line}`)
        const lines = []
        for (const kid of kids) {
          const line = await waitForLine(fx.logPath, (e) => e.kind === 'CHECK' && e.pid === kid && e.index >= from, 10_000)
          assert.equal(line.fields.ok, '1', `${what}: child ${kid}: ${line.line}`)
          lines.push(line)
        }
        return {parent: check, kids: lines}
      }
      const first = await round()
      for (const kid of first.kids) assert.equal(kid.fields.snonce, first.parent.fields.snonce, `${what}: a clone child reads its parent's write: ${kid.line}`)
      const second = await round()
      assert.equal(second.parent.fields.seen, [1, 2, 3].map(() => first.parent.fields.snonce).join(','), `${what}: the clone parent reads its children's writes: ${second.parent.line}`)
    }
    assert.equal((await fx.check()).fields.ok, '1', 'the original is intact')
  })
})

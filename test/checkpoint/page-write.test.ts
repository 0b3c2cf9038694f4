/**
 * The snapshot's page write (vmsplice + splice through a pipe, pwrite64 as the
 * fallback) puts every byte at its pool offset, also when a transfer comes up
 * short and the pieces from there on must be rewritten.
 */
import assert from 'node:assert/strict'
import {createHash} from 'node:crypto'
import {readFileSync, rmSync} from 'node:fs'

import {type PageWrite, openPipe, pwriteWrites, startSpliceWrites} from '../../src/checkpoint/page-write.js'
import {type LiveSnapshot, takeLiveSnapshot} from '../../src/checkpoint/snapshot.js'
import {O, SYS} from '../../src/sys/syscall.js'
import {cleanupAll, startFixture, waitForTicks} from '../helpers/fixtures.js'

const FILE = `/dev/shm/cxlfork-page-write-${process.pid}.bin`
const KIB = 1024

/** Pieces of the given sizes over the snapshot's largest page run, laid out back to back in the file. */
function piecesOf(snapshot: LiveSnapshot, sizes: number[]): PageWrite[] {
  const run = [...snapshot.memory.pageRuns].sort((a, b) => b.nrPages - a.nrPages)[0]!
  const writes: PageWrite[] = []
  let at = 0
  for (const size of sizes) {
    assert.ok(at + size <= run.nrPages * 4096, 'the fixture has a page run large enough')
    writes.push({vaddr: run.vaddr + BigInt(at), len: BigInt(size), offset: BigInt(at)})
    at += size
  }
  return writes
}

function sha(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/** What the file holds against what the snapshot's memory holds, over all pieces. */
function assertWritten(snapshot: LiveSnapshot, writes: PageWrite[]): void {
  const total = writes.reduce((sum, w) => sum + Number(w.len), 0)
  const file = readFileSync(FILE)
  assert.equal(file.length, total, 'the file ends where the last piece ends')
  const memory = snapshot.snapshotTracee.readMemory(writes[0]!.vaddr, total)
  assert.equal(sha(file), sha(memory), 'every byte landed at its offset')
}

describe('checkpoint: the snapshot writes its pages', function () {
  this.timeout(60_000)
  let snapshot: LiveSnapshot | undefined
  let fd = -1n

  beforeEach(async () => {
    rmSync(FILE, {force: true})
    const fx = await startFixture('memtouch', {mib: 4})
    await waitForTicks(fx.logPath, fx.pid, 2)
    snapshot = takeLiveSnapshot(fx.pid)
    const child = snapshot.snapshotTracee
    fd = child.syscall(SYS.open, child.scratchWrite(FILE), O.WRONLY | O.CREAT | O.CLOEXEC, 0o600)
    assert.ok(fd >= 0n, `open in the snapshot: ${fd}`)
  })

  afterEach(async () => {
    snapshot?.release()
    snapshot = undefined
    rmSync(FILE, {force: true})
    await cleanupAll()
  })

  it('vmsplice + splice through a 1 MiB pipe writes every piece in full', () => {
    const child = snapshot!.snapshotTracee
    const pipe = openPipe(child)
    assert.ok(pipe, 'a pipe in the snapshot')
    assert.equal(pipe.size, 1 << 20)
    const writes = piecesOf(snapshot!, [1024 * KIB, 1024 * KIB, 64 * KIB, 4 * KIB, 1024 * KIB])
    assert.equal(startSpliceWrites(child, pipe, fd, writes).finish(), writes.length, 'no piece needs rewriting')
    assertWritten(snapshot!, writes)
  })

  it('a short transfer mid-way: the pieces from there on are rewritten with pwrite64, and the file is exact', () => {
    const child = snapshot!.snapshotTracee
    // A default 64 KiB pipe: the 256 KiB piece cannot fit, its vmsplice comes up short
    // and leaves the pipe holding bytes the next splice would put in the wrong place.
    const fds = child.scratchAlloc(8)
    assert.equal(child.syscall(SYS.pipe2, fds, O.CLOEXEC), 0n)
    const view = new DataView(child.readMemory(fds, 8).buffer)
    const pipe = {readFd: BigInt(view.getInt32(0, true)), writeFd: BigInt(view.getInt32(4, true))}
    const writes = piecesOf(snapshot!, [64 * KIB, 64 * KIB, 256 * KIB, 64 * KIB, 32 * KIB])
    const first = startSpliceWrites(child, pipe, fd, writes).finish()
    assert.equal(first, 2, 'the first piece not written in full is the 256 KiB one')
    pwriteWrites(child, fd, writes.slice(first))
    assertWritten(snapshot!, writes)
  })
})

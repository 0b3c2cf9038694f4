/**
 * How a large restore copy is shared between cxlfork (process_vm_writev) and
 * the new process (pread64 from the store file): every byte exactly once, in
 * whole pages, about half each, and nothing handed to the process that it
 * could not read from one file. The copy itself is exercised on real clones by
 * the zdtm suites (local policy and `criu restore`, with their memory checks).
 */
import assert from 'node:assert/strict'

import {type PageCopy, type StoreFileSpan, splitCopies} from '../../src/restore/page-copy.js'

const PAGE = 4096
const MIB = 1 << 20

/** A store of files laid end to end (with a page of gap, as the CRIU-format path lays them), each file's span answered from that. */
function storeOf(files: {path: string; size: number}[]): {localAddress: (o: bigint) => bigint; fileSpan: (o: bigint) => StoreFileSpan | undefined} {
  const laid: {path: string; first: bigint; size: bigint}[] = []
  let next = 0n
  for (const file of files) {
    laid.push({path: file.path, first: next, size: BigInt(file.size)})
    next += BigInt(file.size) + BigInt(PAGE)
  }
  return {
    localAddress: (o) => 0x7000_0000_0000n + o,
    fileSpan: (o) => {
      const file = laid.find((f) => o >= f.first && o < f.first + f.size)
      return file ? {path: file.path, offset: o - file.first, available: file.first + file.size - o, dev: 1n, ino: 2n} : undefined
    },
  }
}

/** Every (remote address → store offset) byte pair, as page-granular intervals, from both sides. */
function coverage(copies: readonly PageCopy[], result: ReturnType<typeof splitCopies>, store: ReturnType<typeof storeOf>): void {
  const want = new Map<bigint, bigint>()
  for (const copy of copies) for (let k = 0; k < copy.len; k += PAGE) want.set(copy.remote + BigInt(k), copy.storeOffset + BigInt(k))
  const got = new Map<bigint, string>()
  const put = (remote: bigint, where: string): void => {
    assert.ok(!got.has(remote), `page 0x${remote.toString(16)} copied twice`)
    got.set(remote, where)
  }
  for (const copy of result.ours) {
    assert.equal(copy.len % PAGE, 0)
    for (let k = 0; k < copy.len; k += PAGE) {
      const remote = copy.remote + BigInt(k)
      assert.equal(copy.storeOffset + BigInt(k), want.get(remote), 'ours: the right store offset')
      put(remote, 'ours')
    }
  }
  for (const read of result.theirs) {
    assert.equal(read.len % PAGE, 0)
    assert.ok(read.span.available >= BigInt(read.len), 'a read stays inside its file')
    for (let k = 0; k < read.len; k += PAGE) {
      const remote = read.remote + BigInt(k)
      const span = store.fileSpan(want.get(remote)!)!
      assert.equal(read.path, span.path, 'theirs: the right file')
      assert.equal(read.span.offset + BigInt(k), span.offset, 'theirs: the right offset in it')
      put(remote, 'theirs')
    }
  }
  assert.equal(got.size, want.size, 'every page copied')
}

describe('restore: a large copy shared with the new process', () => {
  it('one 64 MiB run: the tail half is read by the process, the head written by us', () => {
    const store = storeOf([{path: '/p/pages-1.img', size: 64 * MIB}])
    const copies: PageCopy[] = [{storeOffset: 0n, remote: 0x6000_0000_0000n, len: 64 * MIB}]
    const result = splitCopies(copies, store)
    coverage(copies, result, store)
    assert.deepEqual(result.ours.map((c) => c.len), [32 * MIB])
    assert.deepEqual(result.theirs.map((r) => [r.len, r.span.offset]), [[32 * MIB, BigInt(32 * MIB)]])
  })

  it('many uneven runs: whole pages, every byte once, about half each', () => {
    const store = storeOf([{path: '/p/pool', size: 512 * MIB}])
    const copies: PageCopy[] = []
    let offset = 0n
    let remote = 0x5555_0000_0000n
    for (let i = 0; i < 37; i++) {
      const len = ((i * 7919) % 301 + 1) * PAGE
      copies.push({storeOffset: offset, remote, len})
      offset += BigInt(len + 3 * PAGE)
      remote += BigInt(len + 16 * PAGE)
    }
    const result = splitCopies(copies, store)
    coverage(copies, result, store)
    const total = copies.reduce((s, c) => s + c.len, 0)
    const theirs = result.theirs.reduce((s, r) => s + r.len, 0)
    assert.equal(theirs, Math.floor(total / 2 / PAGE) * PAGE, 'the process reads half, rounded down to a page')
  })

  it('a run not readable as one file stays ours', () => {
    // Two pages files; the last run (in the second) has no file behind its store offset, the one before crosses the first file's end.
    const store = storeOf([{path: '/p/pages-1.img', size: 8 * MIB}, {path: '/p/pages-2.img', size: 8 * MIB}])
    const second = BigInt(8 * MIB + PAGE)
    const copies: PageCopy[] = [
      {storeOffset: 0n, remote: 0x1000_0000n, len: 4 * MIB},
      {storeOffset: second, remote: 0x2000_0000n, len: 4 * MIB},
      {storeOffset: second + BigInt(6 * MIB), remote: 0x3000_0000n, len: 4 * MIB},
    ]
    const result = splitCopies(copies, store)
    coverage(copies, result, store)
    assert.ok(result.ours.some((c) => c.remote === 0x3000_0000n && c.len === 4 * MIB), 'the run past its file\'s end is all ours')
    assert.ok(result.theirs.every((r) => r.remote < 0x3000_0000n), 'the process reads nothing of it')
    assert.deepEqual(result.theirs.map((r) => [r.path, r.len]), [['/p/pages-1.img', 2 * MIB], ['/p/pages-2.img', 4 * MIB]], 'its half comes from the runs before, each from its own file')
  })
})

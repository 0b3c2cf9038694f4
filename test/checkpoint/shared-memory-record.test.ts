/**
 * The shared-memory record of a checkpoint and its memfd field: a record written before the
 * field existed (no `memfd`) still reads, as plain shared memory; a memfd's name, exact size,
 * seals and owner (optional too) round-trip; a malformed or impossible memfd field is a CHECKPOINT_CORRUPT error.
 * (Real processes with memfds: test/restore/shared-memory.test.ts, pymemfd.)
 */
import assert from 'node:assert/strict'

import {CorruptError} from '../../src/errors.js'
import {decodeSharedMemory, encodeSharedMemory} from '../../src/image/shared-memory.js'

const anywhere = (): void => {}
const damaged = (error: unknown): boolean => error instanceof CorruptError && error.code === 'CHECKPOINT_CORRUPT'
const text = (value: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(value))

describe('shared-memory record: the memfd field', () => {
  it('a record without it (as written before memfds were kept) reads as plain shared memory', () => {
    const objects = decodeSharedMemory(text({objects: [{id: '0:1:7', size: '8192', runs: [['0', '4096', '65536']]}]}), anywhere)
    const object = objects.get('0:1:7')!
    assert.equal(object.size, 8192n)
    assert.equal(object.memfd, undefined)
    assert.deepEqual(object.runs, [{offset: 0n, bytes: 4096n, storeOffset: 65536n}])
  })

  it('name, exact size, seals and owner round-trip; an empty memfd (size 0, nothing stored) is allowed', () => {
    const encoded = encodeSharedMemory({objects: [
      {id: 'a', size: 12288n, runs: [{offset: 8192n, bytes: 4096n, storeOffset: 0n}], memfd: {name: 'wl_shm pool', size: 12288n - 4000n, seals: 0x7}},
      {id: 'b', size: 0n, runs: [], memfd: {name: '', size: 0n, seals: 0}},
      {id: 'c', size: 4096n, runs: [], memfd: {name: 'owned', size: 1n, seals: 0x20, owner: {uid: 1000, gid: 100, mode: 0o640}}},
    ]})
    const objects = decodeSharedMemory(encoded, anywhere)
    assert.deepEqual(objects.get('a')!.memfd, {name: 'wl_shm pool', size: 8288n, seals: 7})
    assert.deepEqual(objects.get('b')!.memfd, {name: '', size: 0n, seals: 0})
    assert.deepEqual(objects.get('c')!.memfd, {name: 'owned', size: 1n, seals: 0x20, owner: {uid: 1000, gid: 100, mode: 0o640}})
  })

  it('refuses a malformed field, unknown seal bits, a size past the object, and an empty object that is no memfd', () => {
    const withMemfd = (memfd: unknown, size = '8192') => text({objects: [{id: 'a', size, runs: [], memfd}]})
    for (const bad of [
      withMemfd({name: 'x', size: 100, seals: 0}), // size not a decimal string
      withMemfd({name: 7, size: '100', seals: 0}),
      withMemfd({name: 'x', size: '100', seals: 0x40}), // no such seal
      withMemfd({name: 'x', size: '8193', seals: 0}), // past the object's pages
      withMemfd('x'),
      withMemfd({name: 'x', size: '100', seals: 0, owner: [0, 0, 0o10000]}), // a mode beyond the permission bits
      withMemfd({name: 'x', size: '100', seals: 0, owner: [0, 0]}),
      text({objects: [{id: 'a', size: '0', runs: []}]}),
    ]) assert.throws(() => decodeSharedMemory(bad, anywhere), damaged)
  })
})

/**
 * The restore fast path of bin/run.js takes only what it handles for certain
 * and leaves everything else to the full CLI (help, --wait, --no-porter,
 * unknown, repeated or malformed flags), which parses and refuses as always.
 */
import assert from 'node:assert/strict'

import {parseCriuArgs, parseRestoreArgs} from '../../src/porter/porter-fast.js'

describe('porter: the restore fast path parses only what it is sure of', () => {
  const env = {CXLFORK_POOL: '/dev/shm/from-env.pool'}

  it('takes a name with the flags a porter serves, in any order, --flag VALUE or --flag=VALUE', () => {
    assert.deepEqual(parseRestoreArgs(['web'], {}), {pool: '/dev/shm/cxlfork.pool', json: false, request: {name: 'web', policy: 'mow', verify: false}})
    assert.deepEqual(parseRestoreArgs(['--json', 'web', '--policy=moa', '--fill-after', '500', '--fault-pages', '16', '--pidns', 'new', '--netns', 'new', '--verify', '--pool', '/dev/shm/p.pool'], env), {
      pool: '/dev/shm/p.pool', json: true,
      request: {name: 'web', policy: 'moa', verify: true, pidns: 'new', netns: 'new', fillAfterMs: 500, faultPages: 16},
    })
    assert.equal(parseRestoreArgs(['web', '--record'], env)?.request.record, true)
    assert.equal(parseRestoreArgs(['web'], env)?.pool, '/dev/shm/from-env.pool')
  })

  it('leaves everything else to the CLI', () => {
    for (const argv of [
      [], ['--help'], ['web', '-h'], ['web', '--wait'], ['web', '--no-porter'], ['web', '--bogus'], ['web', 'other'],
      ['web', '--policy'], ['web', '--policy', 'fast'], ['web', '--policy', 'mow', '--policy', 'local'], ['web', '--pidns', 'maybe'],
      ['web', '--fill-after', '-1', '--policy', 'moa'], ['web', '--fill-after', '5'], ['web', '--fault-pages', '0', '--policy', 'moa'],
      ['web', '--fault-pages', '513', '--policy', 'moa'], ['../etc'], ['web', '--pool='],
    ]) {
      assert.equal(parseRestoreArgs(argv, env), undefined, argv.join(' '))
    }
  })
})

describe('porter: the criu dump / criu restore fast path parses only what it is sure of', () => {
  const env = {CXLFORK_POOL: '/dev/shm/from-env.pool'}

  it('takes dump PID --images DIR and restore --images DIR with the flags a porter serves', () => {
    assert.deepEqual(parseCriuArgs(['dump', '42', '--images', 'img'], {}), {
      command: 'dump', pool: '/dev/shm/cxlfork.pool', json: false, request: {pid: 42, images: 'img', kill: false, tree: false, tcpClose: false},
    })
    assert.deepEqual(parseCriuArgs(['dump', '--tree', '--images=/dev/shm/x', '42', '--kill', '--tcp-close', '--json'], env), {
      command: 'dump', pool: '/dev/shm/from-env.pool', json: true, request: {pid: 42, images: '/dev/shm/x', kill: true, tree: true, tcpClose: true},
    })
    assert.deepEqual(parseCriuArgs(['restore', '--images', '/dev/shm/x', '--pidns', 'new', '--netns', 'new', '--json', '--pool', '/dev/shm/p.pool'], env), {
      command: 'restore', pool: '/dev/shm/p.pool', json: true, request: {images: '/dev/shm/x', pidns: 'new', netns: 'new'},
    })
  })

  it('leaves everything else to the CLI (no --images, --wait, --no-porter, help, odd pids and flags, import)', () => {
    for (const argv of [
      [], ['dump'], ['dump', '42'], ['dump', '42', '--images'], ['dump', '0', '--images', 'x'], ['dump', '-1', '--images', 'x'], ['dump', '42x', '--images', 'x'],
      ['dump', '99999999999', '--images', 'x'], ['dump', '42', '43', '--images', 'x'], ['dump', '42', '--images', 'x', '--images', 'y'], ['dump', '42', '--images', 'x', '--no-porter'],
      ['dump', '42', '--images', 'x', '--help'], ['dump', '42', '--images', 'x', '--kill', '--kill'], ['restore'], ['restore', '--images', 'x', '--wait'],
      ['restore', '--images', 'x', '--no-porter'], ['restore', 'x', '--images', 'x'], ['restore', '--images', 'x', '--pidns', 'maybe'], ['import', '--images', 'x', '--name', 'n'],
    ]) {
      assert.equal(parseCriuArgs(argv, env), undefined, argv.join(' '))
    }
  })
})

/**
 * The restore fast path of bin/run.js takes only what it handles for certain
 * and leaves everything else to the full CLI (help, --wait, --no-porter,
 * unknown, repeated or malformed flags), which parses and refuses as always.
 */
import assert from 'node:assert/strict'

import {parseRestoreArgs} from '../../src/porter/porter-fast.js'

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

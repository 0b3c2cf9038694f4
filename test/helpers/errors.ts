/** Assertions on the typed errors cxlfork's libraries throw. */
import {strict as assert} from 'node:assert'

import type {CxlforkError} from '../../src/errors.js'

/** `fn` throws a `type` whose message matches `pattern` and which carries a hint; returns it. */
export function expectError(fn: () => unknown, type: new (...args: never[]) => CxlforkError, pattern: RegExp): CxlforkError {
  try {
    fn()
  } catch (error) {
    assert.ok(error instanceof type, `expected ${type.name}, got ${(error as Error).constructor.name}: ${(error as Error).message}`)
    assert.match((error as Error).message, pattern)
    assert.ok((error as CxlforkError).hint, 'error carries a hint')
    return error as CxlforkError
  }
  assert.fail(`expected ${type.name} matching ${pattern}`)
}

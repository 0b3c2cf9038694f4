/**
 * oclif's command_not_found hook (package.json oclif.hooks). Without it an
 * unknown command prints oclif's plain-text error even under --json, so a
 * script parsing stdout got nothing. It gives the same envelope and exit
 * status (2, a usage error) as every other failure.
 */
import * as Errors from '@oclif/core/errors'
import type {Hook} from '@oclif/core/interfaces'

import {ERROR_CODES} from '../errors.js'

export const commandNotFound: Hook<'command_not_found'> = async function (options) {
  const name = options.id.replaceAll(':', ' ')
  const message = `command ${name} not found`
  const hint = 'Run `cxlfork --help` for the list of commands.'
  const exitCode = ERROR_CODES.COMMAND_NOT_FOUND
  if (options.argv?.includes('--json') || process.argv.includes('--json')) {
    process.stdout.write(JSON.stringify({error: {code: 'COMMAND_NOT_FOUND', message, hint, exitCode}}, null, 2) + '\n')
    process.exitCode = exitCode
    return
  }
  throw new Errors.CLIError(message, {code: 'COMMAND_NOT_FOUND', exit: exitCode, suggestions: [hint]})
}

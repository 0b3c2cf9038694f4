import {UsageError} from '../errors.js'

/** Checkpoint names: safe in shells, file names and JSON without quoting surprises. */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:+@-]{0,127}$/

export function validateCheckpointName(name: string): void {
  if (!NAME_PATTERN.test(name)) {
    throw new UsageError('INVALID_NAME', `invalid checkpoint name ${JSON.stringify(name)}`,
      'Names are 1-128 characters of letters, digits and . _ : + @ -, starting with a letter or digit.')
  }
}

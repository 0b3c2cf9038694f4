import * as Args from '@oclif/core/args'
import * as Flags from '@oclif/core/flags'

import {UsageError} from '../errors.js'
import {validateCheckpointName} from '../pool/names.js'

/** A pid argument: positive integer, parsed by oclif so bad input is a usage error (exit 2). */
export const pidArg = Args.custom<number>({
  parse: async (input) => {
    if (!/^[1-9]\d{0,9}$/.test(input)) {
      throw new UsageError('INVALID_PID', `invalid pid ${JSON.stringify(input)}: expected a positive integer`, 'Give the pid of a running process (see `ps`).')
    }
    return Number(input)
  },
})

/** A checkpoint name, validated while parsing so a bad one is refused before any pool is opened or created. */
export const nameFlag = Flags.custom<string>({
  char: 'n',
  summary: 'Checkpoint name (letters, digits, . _ : + @ -).',
  parse: async (input) => {
    validateCheckpointName(input)
    return input
  },
})

/** Where a clone's pids live (see src/restore/pid-namespace.ts). */
export const pidnsFlag = Flags.option({
  options: ['new', 'host'] as const,
  summary: 'PID namespace of the clone: new (keeps its pid and thread ids) or host (a new pid here).',
  description: 'Default: new for a multi-threaded checkpoint or a process tree, which can only be restored that way, for --policy moa, and for a Python process that loaded asyncio (it ties its event loop to its pid); host otherwise.',
})

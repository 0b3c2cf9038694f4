import {Args, Flags} from '@oclif/core'

/** A pid argument: positive integer, parsed by oclif so bad input is a usage error (exit 2). */
export const pidArg = Args.custom<number>({
  parse: async (input) => {
    if (!/^[1-9]\d{0,9}$/.test(input)) throw new Error(`invalid pid ${JSON.stringify(input)}: expected a positive integer`)
    return Number(input)
  },
})

export const nameFlag = Flags.custom<string>({
  char: 'n',
  summary: 'Checkpoint name (letters, digits, . _ : + @ -).',
})

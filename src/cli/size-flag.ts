import * as Flags from '@oclif/core/flags'

import {parseSize} from '../pool/size.js'

/** A byte-count flag: plain bytes or 512M, 8G, 1T (binary units). */
export const sizeFlag = Flags.custom<bigint>({
  helpValue: '<size>',
  parse: async (input: string) => parseSize(input),
})

import * as Args from '@oclif/core/args'
import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../cli/base-command.js'
import type {RemoveResult} from '../pool/index.js'
import {formatSize} from '../pool/size.js'

export default class Rm extends BaseCommand {
  static override summary = 'Delete a checkpoint.'
  static override description = `Refused while a running clone maps the checkpoint. With --force it is hidden from new restores at once and its \
space is freed by \`cxlfork pool gc\` after its last clone exits; running clones are never disturbed.`

  static override examples = ['<%= config.bin %> rm web-1', '<%= config.bin %> rm web-1 --force']

  static override args = {
    name: Args.string({description: 'Checkpoint name.', required: true}),
  }

  static override flags = {
    force: Flags.boolean({summary: 'Delete once the last clone using it is gone.', default: false}),
  }

  async run(): Promise<RemoveResult> {
    const {args, flags} = await this.parse(Rm)
    const pool = await this.openPool(flags.pool)
    try {
      const result = pool.remove(args.name, {force: flags.force})
      this.say(result.state === 'removed' ? `removed ${result.name}, freed ${formatSize(result.bytesFreed)}`
        : `${result.name} will be removed when its ${result.liveRefs} clone(s) exit (then run \`cxlfork pool gc\`)`)
      return result
    } finally {
      pool.close()
    }
  }
}

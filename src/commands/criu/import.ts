import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import {nameFlag} from '../../cli/flags.js'
import type {CriuImportResult} from '../../criu/import.js'

export default class CriuImportCommand extends BaseCommand {
  static override summary = 'Store a CRIU-format image set in the pool as a checkpoint, for zero-copy restore.'
  static override examples = ['<%= config.bin %> criu import --images /dev/shm/web.img --name web', '<%= config.bin %> restore web --policy mow']
  static override flags = {
    images: Flags.string({summary: 'Directory holding the image set.', required: true}),
    name: nameFlag({required: true}),
  }

  async run(): Promise<CriuImportResult> {
    const {flags} = await this.parse(CriuImportCommand)
    const [{Pool}, {criuImport}] = await Promise.all([import('../../pool/index.js'), import('../../criu/import.js')])
    const pool = Pool.open(flags.pool, {create: true})
    try {
      const result = criuImport(pool, {images: flags.images, name: flags.name})
      this.say(`Imported ${flags.images} as ${result.name}: ${result.pages} pages`)
      return result
    } finally {
      pool.close()
    }
  }
}

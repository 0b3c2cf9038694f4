import {Args} from '@oclif/core'

import {BaseCommand} from '../cli/base-command.js'
import type {CheckpointDetails} from '../pool/index.js'
import {Pool, formatSize} from '../pool/index.js'

/** What inspect prints; process-level details decoded from sections are added alongside `pool`-level facts. */
export type InspectResult = CheckpointDetails

export default class Inspect extends BaseCommand {
  static override summary = 'Show what the pool knows about a checkpoint.'
  static override description = 'Owner, creation time, sizes, data extents, metadata sections (checksums verified) and the clones referencing it, with their liveness.'
  static override examples = ['<%= config.bin %> inspect web-1', '<%= config.bin %> inspect web-1 --json']

  static override args = {
    name: Args.string({description: 'Checkpoint name.', required: true}),
  }

  async run(): Promise<InspectResult> {
    const {args, flags} = await this.parse(Inspect)
    const pool = Pool.open(flags.pool)
    try {
      const details = pool.inspect(args.name)
      this.say(`${details.name}: serial ${details.serial}, uid ${details.uid}, created ${details.createdAt}, ${details.state}`)
      this.say(`data ${formatSize(details.dataBytes)} in ${details.dataExtents.length} extent(s); metadata ${formatSize(details.metadataBytes)}`)
      for (const section of details.sections) this.say(`  section type ${section.type}: ${section.length} bytes at ${section.poolOffset} crc32c ${section.crc32c}`)
      for (const reference of details.references) {
        this.say(`  clone pid ${reference.pid} on ${reference.hostname}: ${reference.alive ? 'alive' : 'gone'}`)
      }
      return details
    } finally {
      pool.close()
    }
  }
}

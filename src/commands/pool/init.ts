import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import {sizeFlag} from '../../cli/size-flag.js'
import {formatSize} from '../../pool/size.js'
import {DEFAULT_POOL_SIZE} from '../../pool/layout.js'

export interface PoolInitResult {
  path: string
  uuid: string
  size: number
  dataBytes: number
  metadataBytes: number
  segmentSize: number
  fileSystem: string
}

export default class PoolInit extends BaseCommand {
  static override summary = 'Create the pool file.'
  static override description = `Creates a sparse pool file (mode 0600) on a shared-memory file system: tmpfs, hugetlbfs, a DAX mount or famfs. \
Memory is only consumed as checkpoints are written. Without --force an existing pool is left alone; with it, the old pool's \
checkpoints are lost (running clones keep their mapping of the old file). Commands that write a checkpoint create the pool \
with the default size on first use.`

  static override examples = [
    '<%= config.bin %> pool init',
    '<%= config.bin %> pool init --size 64G --pool /mnt/cxl/cxlfork.pool',
  ]

  static override flags = {
    size: sizeFlag({summary: `Pool size: bytes or 512M, 8G, 1T (default ${formatSize(DEFAULT_POOL_SIZE)}, minimum 16M).`}),
    force: Flags.boolean({summary: 'Replace an existing pool.', default: false}),
  }

  async run(): Promise<PoolInitResult> {
    const {flags} = await this.parse(PoolInit)
    // The pool (and koffi with it) is loaded only when the command runs.
    const {Pool} = await import('../../pool/index.js')
    const pool = Pool.create(flags.pool, {...(flags.size === undefined ? {} : {size: flags.size}), force: flags.force})
    try {
      const info = pool.info()
      this.say(`created pool ${info.path}: ${formatSize(info.size)} (${formatSize(info.data.bytes)} data, ${formatSize(info.metadata.bytes)} metadata) on ${info.fileSystem}`)
      return {path: info.path, uuid: info.uuid, size: info.size, dataBytes: info.data.bytes, metadataBytes: info.metadata.bytes,
        segmentSize: info.data.segmentSize, fileSystem: info.fileSystem}
    } finally {
      pool.close()
    }
  }
}

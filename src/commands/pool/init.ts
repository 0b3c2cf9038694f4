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
  provisioned: boolean
  residentBytes: number
  sharedGid: number | null
}

export default class PoolInit extends BaseCommand {
  static override summary = 'Create the pool file.'
  static override description = `Creates a pool file (mode 0600) on a shared-memory file system: tmpfs, hugetlbfs, a DAX mount or famfs. \
By default it is sparse: memory is taken as checkpoints are written and given back when they are removed. With --provision \
all of its memory is allocated now and kept, as a CXL device's memory is there from the start: a checkpoint then writes into \
memory that exists (on tmpfs, allocating pages is a large part of writing them), and a file system too small fails here, \
not in the middle of a checkpoint. Without --force an existing pool is left alone; with it, the old pool's \
checkpoints are lost (running clones keep their mapping of the old file); only its owner or root may replace it. A size \
larger than the file system is refused unless --force. A pool is private to its creator; --shared-group makes it \
group-writable (mode 0660) for the members of one group, on purpose (README, "Multi-user pools"). Commands that write a \
checkpoint create the pool with the default size on first use.`

  static override examples = [
    '<%= config.bin %> pool init',
    '<%= config.bin %> pool init --size 64G --pool /mnt/cxl/cxlfork.pool',
    '<%= config.bin %> pool init --size 4G --provision',
    '<%= config.bin %> pool init --size 16G --shared-group cxlfork',
  ]

  static override flags = {
    size: sizeFlag({summary: `Pool size: bytes or 512M, 8G, 1T (default ${formatSize(DEFAULT_POOL_SIZE)}, minimum 16M).`}),
    force: Flags.boolean({summary: 'Replace an existing pool of yours; accept a size larger than the file system.', default: false}),
    'shared-group': Flags.string({summary: 'Share the pool with the members of this group (name or gid): mode 0660.'}),
    provision: Flags.boolean({summary: "Allocate all of the pool's memory now and keep it when checkpoints are removed.", default: false}),
  }

  async run(): Promise<PoolInitResult> {
    const {flags} = await this.parse(PoolInit)
    // The pool (and koffi with it) is loaded only when the command runs.
    const {Pool, resolveGroup} = await import('../../pool/index.js')
    const sharedGid = flags['shared-group'] === undefined ? undefined : resolveGroup(flags['shared-group'])
    const pool = Pool.create(flags.pool, {...(flags.size === undefined ? {} : {size: flags.size}), force: flags.force, oversize: flags.force,
      provision: flags.provision, ...(sharedGid === undefined ? {} : {sharedGid})})
    try {
      const info = pool.info()
      this.say(`created pool ${info.path}: ${formatSize(info.size)} (${formatSize(info.data.bytes)} data, ${formatSize(info.metadata.bytes)} metadata) on ${info.fileSystem}, ${info.provisioned ? 'provisioned' : 'sparse'}${info.sharedGid === null ? '' : `, shared with gid ${info.sharedGid}`}`)
      return {path: info.path, uuid: info.uuid, size: info.size, dataBytes: info.data.bytes, metadataBytes: info.metadata.bytes,
        segmentSize: info.data.segmentSize, fileSystem: info.fileSystem, provisioned: info.provisioned, residentBytes: info.residentBytes, sharedGid: info.sharedGid}
    } finally {
      pool.close()
    }
  }
}

import {BaseCommand} from '../../cli/base-command.js'
import type {PoolInfo} from '../../pool/index.js'
import {formatSize} from '../../pool/size.js'

export default class PoolInfoCommand extends BaseCommand {
  static override summary = 'Show size, usage, checkpoints, live clones and hosts of the pool.'
  static override examples = ['<%= config.bin %> pool info', '<%= config.bin %> pool info --json']

  async run(): Promise<PoolInfo> {
    const {flags} = await this.parse(PoolInfoCommand)
    const pool = await this.openPool(flags.pool)
    try {
      const info = pool.info()
      this.show(`pool        ${info.path} (${info.fileSystem}, uuid ${info.uuid})`)
      this.show(`size        ${formatSize(info.size)}: used ${formatSize(info.used)}, free ${formatSize(info.free)}`)
      this.show(`memory      ${formatSize(info.residentBytes)} resident, ${info.provisioned ? 'provisioned (kept when checkpoints are removed)' : 'sparse (given back when checkpoints are removed)'}`)
      this.show(`data        ${info.data.segmentsUsed}/${info.data.segments} segments of ${formatSize(info.data.segmentSize)}`)
      this.show(`metadata    ${info.metadata.pagesUsed}/${info.metadata.pages} pages of ${formatSize(info.metadata.pageSize)}`)
      this.show(`checkpoints ${info.checkpoints}${info.deleting ? ` (+${info.deleting} awaiting deletion)` : ''}, builds in progress ${info.buildsInProgress}, live clones ${info.liveClones}`)
      if (info.deadBuilds.count > 0) this.show(`dead builds ${info.deadBuilds.count} holding ${formatSize(info.deadBuilds.bytes)} (checkpoints killed half-way): \`cxlfork pool gc\` frees them`)
      for (const host of info.hostsSeen) {
        this.show(`host        #${host.index} ${host.hostname} boot ${host.bootId.slice(0, 8)} lease ${host.leaseLive ? 'until' : 'expired'} ${host.leaseExpiresAt}${host.self ? ' (this host)' : ''}`)
      }
      return info
    } finally {
      pool.close()
    }
  }
}

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
      this.say(`pool        ${info.path} (${info.fileSystem}, uuid ${info.uuid})`)
      this.say(`size        ${formatSize(info.size)}: used ${formatSize(info.used)}, free ${formatSize(info.free)}`)
      this.say(`memory      ${formatSize(info.residentBytes)} resident, ${info.provisioned ? 'provisioned (kept when checkpoints are removed)' : 'sparse (given back when checkpoints are removed)'}`)
      this.say(`data        ${info.data.segmentsUsed}/${info.data.segments} segments of ${formatSize(info.data.segmentSize)}`)
      this.say(`metadata    ${info.metadata.pagesUsed}/${info.metadata.pages} pages of ${formatSize(info.metadata.pageSize)}`)
      this.say(`checkpoints ${info.checkpoints}${info.deleting ? ` (+${info.deleting} awaiting deletion)` : ''}, builds in progress ${info.buildsInProgress}, live clones ${info.liveClones}`)
      if (info.deadBuilds.count > 0) this.say(`dead builds ${info.deadBuilds.count} holding ${formatSize(info.deadBuilds.bytes)} (checkpoints killed half-way): \`cxlfork pool gc\` frees them`)
      for (const host of info.hostsSeen) {
        this.say(`host        #${host.index} ${host.hostname} boot ${host.bootId.slice(0, 8)} lease ${host.leaseLive ? 'until' : 'expired'} ${host.leaseExpiresAt}${host.self ? ' (this host)' : ''}`)
      }
      return info
    } finally {
      pool.close()
    }
  }
}

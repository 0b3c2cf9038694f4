import {BaseCommand} from '../../cli/base-command.js'
import type {GcReport} from '../../pool/index.js'
import {formatSize} from '../../pool/size.js'

export default class PoolGc extends BaseCommand {
  static override summary = 'Reclaim space of dead builders, dead clones and finished deletions.'
  static override description = `Releases build slots and references whose process is gone (same host: that pid with that start time no \
longer exists; other host: its lease in the pool expired), removes checkpoints marked by \`rm --force\` once their last clone is gone, and \
frees every unit owned by nothing alive, and removes the empty per-clone cgroups of a porter of the pool that is not running (killed). Safe to run at any time, concurrently with anything.`

  static override examples = ['<%= config.bin %> pool gc']

  async run(): Promise<GcReport & {cgroupsRemoved: number}> {
    const {flags} = await this.parse(PoolGc)
    const pool = await this.openPool(flags.pool)
    try {
      const {sweepPorterCgroups} = await import('../../porter/control.js')
      const report = {...pool.gc(), cgroupsRemoved: sweepPorterCgroups(pool.path)}
      this.say(`freed ${formatSize(report.bytesFreed)} (${report.segmentsFreed} segments, ${report.pagesFreed} metadata pages); ` +
        `released ${report.buildsReleased} dead builds and ${report.referencesReleased} dead references` +
        (report.checkpointsRemoved.length > 0 ? `; removed ${report.checkpointsRemoved.join(', ')}` : '') +
        (report.cgroupsRemoved > 0 ? `; removed ${report.cgroupsRemoved} cgroup(s) a stopped porter left` : ''))
      return report
    } finally {
      pool.close()
    }
  }
}

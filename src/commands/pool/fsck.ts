import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import {ExitCode} from '../../errors.js'
import type {FsckReport} from '../../pool/index.js'
import {formatSize} from '../../pool/size.js'

export default class PoolFsck extends BaseCommand {
  static override summary = 'Check the pool for corruption.'
  static override description = `Verifies the header, every checkpoint descriptor and section checksum, the page data of every checkpoint against its checksums \
(reads all of it; checkpoints taken before page checksums are listed as not checked), unit ownership and slot tables. \
Leftovers of crashed processes are reported as stale (\`cxlfork pool gc\` reclaims them); anything no crash can produce is corruption. \
Exits ${ExitCode.corrupt} when corruption is found and not repaired. --repair removes damaged checkpoints (never freeing memory a live clone maps) \
and clears impossible table entries.`

  static override examples = ['<%= config.bin %> pool fsck', '<%= config.bin %> pool fsck --repair --json']

  static override flags = {
    repair: Flags.boolean({summary: 'Repair what can be repaired.', default: false}),
  }

  async run(): Promise<FsckReport> {
    const {flags} = await this.parse(PoolFsck)
    const pool = await this.openPool(flags.pool)
    try {
      const report = pool.fsck({repair: flags.repair})
      for (const problem of report.problems) {
        this.show(`${problem.severity.padEnd(7)} ${problem.kind} ${problem.where}: ${problem.message}${problem.repaired ? ' (repaired)' : ''}`)
      }
      for (const name of report.noPageChecksums) this.show(`note    checkpoint ${name}: no page checksums (taken before cxlfork wrote them); its page data is not checked`)
      this.show(report.clean ? `pool ${report.path}: no corruption (${report.checked.checkpoints} checkpoints checked, page data of ${report.checked.pageDataCheckpoints} read: ${formatSize(report.checked.pageDataBytes)})`
        : `pool ${report.path}: ${report.corruptionFound - report.corruptionRepaired} corruption(s) left; run with --repair`)
      if (!report.clean) process.exitCode = ExitCode.corrupt
      return report
    } finally {
      pool.close()
    }
  }
}

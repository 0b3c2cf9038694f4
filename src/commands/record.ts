import * as Args from '@oclif/core/args'
import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../cli/base-command.js'
import type {RecordResult} from '../tiering/record.js'

export default class Record extends BaseCommand {
  static override summary = "Record which of a checkpoint's pages a running clone accessed and wrote."
  static override description = `Reads the clone's page tables: a pool page it maps was accessed, an anonymous page that replaced a pool page was written. \
The bits are OR-ed into the checkpoint's access record in the pool (atomic: several hosts may record at once; bits from several clones accumulate). \
At the next restore, mow copies the pages recorded as written and hybrid the pages recorded as accessed. \
Exact for a clone restored with --record (fault-around off on its pool mappings), which also records by itself when it exits; \
otherwise up to 16 neighbours of each page read count as accessed ("exact": false). --reset clears the record.`

  static override examples = [
    '<%= config.bin %> record web --pid 4242',
    '<%= config.bin %> record web --reset --json',
  ]

  static override args = {name: Args.string({required: true, description: 'Checkpoint name.'})}
  static override flags = {
    pid: Flags.integer({min: 1, summary: 'The running clone of NAME to record (the pid `cxlfork restore` printed).', exclusive: ['reset']}),
    reset: Flags.boolean({summary: 'Clear every recorded bit of the checkpoint.', default: false}),
  }

  async run(): Promise<RecordResult | (RecordResult['record'] & {name: string; reset: true})> {
    const {args, flags} = await this.parse(Record)
    if (flags.pid === undefined && !flags.reset) this.error('give the clone to record with --pid, or --reset', {exit: 2})
    const {recordClone, resetRecords} = await import('../tiering/record.js')
    const pool = await this.openPool(flags.pool)
    try {
      if (flags.reset) {
        const result = resetRecords(pool, args.name)
        this.say(`${args.name}: access record cleared`)
        return result
      }
      const result = recordClone(pool, args.name, flags.pid!)
      this.say(`${args.name}: clone ${result.pid} accessed ${result.accessed} and wrote ${result.dirty} of ${result.pagesJudged} pool-mapped pages${result.exact ? '' : ' (inexact: fault-around was on)'}; ` +
        `record: ${result.record.recordings} clone(s), ${result.record.accessed} accessed, ${result.record.dirty} written`)
      return result
    } finally {
      pool.close()
    }
  }
}

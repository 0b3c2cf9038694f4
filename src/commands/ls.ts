import {BaseCommand} from '../cli/base-command.js'
import type {CheckpointInfo} from '../pool/index.js'
import {formatSize} from '../pool/size.js'

export interface LsResult {
  pool: string
  checkpoints: CheckpointInfo[]
}

export default class Ls extends BaseCommand {
  static override summary = 'List the checkpoints in the pool.'
  static override examples = ['<%= config.bin %> ls', '<%= config.bin %> ls --json']

  async run(): Promise<LsResult> {
    const {flags} = await this.parse(Ls)
    const pool = await this.openPool(flags.pool)
    try {
      const checkpoints = pool.list()
      if (checkpoints.length === 0) this.show(`no checkpoints in ${pool.path}`)
      else {
        const rows = [['NAME', 'UID', 'CREATED', 'DATA', 'META', 'CLONES', 'STATE'],
          ...checkpoints.map((c) => [c.name, String(c.uid), c.createdAt, formatSize(c.dataBytes), formatSize(c.metadataBytes), String(c.liveRefs), c.state])]
        const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)))
        for (const row of rows) this.show(row.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd())
      }
      return {pool: pool.path, checkpoints}
    } finally {
      pool.close()
    }
  }
}

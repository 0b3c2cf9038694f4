import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../cli/base-command.js'
import type {CheckpointCpuCheck} from '../check/cpu-check.js'
import type {CheckResult} from '../check/host-check.js'
import {ExitCode} from '../errors.js'

export type CheckCommandResult = CheckResult & {checkpoint?: CheckpointCpuCheck}

export default class CheckCommand extends BaseCommand {
  static override summary = 'Check that this kernel, user and pool location support cxlfork.'
  static override description = 'Runs real probes: seizes a stub and injects a syscall, reads its memory, follows an entry of /proc/self/map_files (what a checkpoint needs CAP_CHECKPOINT_RESTORE for), asks for PR_SET_MM_MAP and userfaultfd, and checks the pool file system. Prints "Looks good." or names what is missing, with exit status 1. With --checkpoint, also tells whether this CPU can take that checkpoint\'s register state (XSAVE features and layout); when it cannot, names the missing features and exits 5 (CPU_MISMATCH).'
  static override examples = ['<%= config.bin %> check', '<%= config.bin %> check --pool /mnt/cxl/pool --json', '<%= config.bin %> check --checkpoint web-1']

  static override flags = {
    checkpoint: Flags.string({summary: 'Also check that this host\'s CPU can restore this checkpoint.'}),
  }

  async run(): Promise<CheckCommandResult> {
    const {flags} = await this.parse(CheckCommand)
    const {checkHost} = await import('../check/host-check.js')
    const result: CheckCommandResult = checkHost(flags.pool)
    for (const item of result.items) this.show(`${item.ok ? 'ok  ' : 'FAIL'} ${item.name}: ${item.detail}`)
    if (flags.checkpoint !== undefined) {
      const {checkCheckpointCpu} = await import('../check/cpu-check.js')
      const pool = await this.openPool(flags.pool)
      try {
        result.checkpoint = checkCheckpointCpu(pool, flags.checkpoint)
      } finally {
        pool.close()
      }
      const cpu = result.checkpoint
      this.show(`${cpu.ok ? 'ok  ' : 'FAIL'} CPU state of checkpoint ${cpu.checkpoint}: ${cpu.detail}`)
      if (cpu.error) this.show(`${cpu.error.code}: ${cpu.error.message}${cpu.error.hint ? `\n  ${cpu.error.hint}` : ''}`)
    }
    if (result.checkpoint && !result.checkpoint.ok) process.exitCode = ExitCode.unsupported
    else if (!result.ok) process.exitCode = ExitCode.failure
    else this.show('Looks good.')
    return result
  }
}

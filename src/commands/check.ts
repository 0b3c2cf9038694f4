import {BaseCommand} from '../cli/base-command.js'
import type {CheckResult} from '../check/host-check.js'
import {ExitCode} from '../errors.js'

export default class CheckCommand extends BaseCommand {
  static override summary = 'Check that this kernel, user and pool location support cxlfork.'
  static override description = 'Runs real probes: seizes a stub and injects a syscall, reads its memory, asks for PR_SET_MM_MAP and userfaultfd, and checks the pool file system. Prints "Looks good." or names what is missing, with exit status 1.'
  static override examples = ['<%= config.bin %> check', '<%= config.bin %> check --pool /mnt/cxl/pool --json']

  async run(): Promise<CheckResult> {
    const {flags} = await this.parse(CheckCommand)
    const {checkHost} = await import('../check/host-check.js')
    const result = checkHost(flags.pool)
    for (const item of result.items) this.say(`${item.ok ? 'ok  ' : 'FAIL'} ${item.name}: ${item.detail}`)
    if (result.ok) this.say('Looks good.')
    else process.exitCode = ExitCode.failure
    return result
  }
}

import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import type {FunctionInfo} from '../../porter/functions/manager.js'

export default class FnLs extends BaseCommand {
  static override summary = 'List the functions deployed on the pool\'s porter.'
  static override description = 'Your functions (every function for root): command, policy, checkpoint (once taken), running instances, invocations and how they were served (cold, warm, restored). Functions outlive a porter restart; their instances do not.'
  static override examples = ['<%= config.bin %> fn ls', '<%= config.bin %> fn ls --json']
  static override flags = {
    socket: Flags.string({summary: 'Socket of the porter (default: the pool\'s).', helpValue: 'PATH'}),
  }

  async run(): Promise<{functions: FunctionInfo[]}> {
    const {flags} = await this.parse(FnLs)
    const {functionsRequest} = await import('../../porter/functions/client.js')
    const {functions} = await functionsRequest(flags.pool, flags.socket, 'GET', '/v1/functions') as {functions: FunctionInfo[]}
    if (functions.length === 0) this.show('no functions')
    for (const fn of functions) {
      this.show(`${fn.name.padEnd(16)} ${fn.policy.padEnd(6)} instances ${String(fn.instances.length).padStart(3)}/${fn.maxInstances}  invocations ${fn.invocations} (cold ${fn.starts.cold}, warm ${fn.starts.warm}, restored ${fn.starts.restored})  checkpoint ${fn.checkpoint ?? (fn.checkpointError ? `failed: ${fn.checkpointError}` : `after ${fn.checkpointAfter}`)}  ${fn.argv.join(' ')}`)
    }
    return {functions}
  }
}

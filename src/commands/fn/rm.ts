import * as Flags from '@oclif/core/flags'
import * as Args from '@oclif/core/args'

import {BaseCommand} from '../../cli/base-command.js'
import type {FunctionRemoval as RemoveResult} from '../../porter/functions/manager.js'

export default class FnRm extends BaseCommand {
  static override summary = 'Remove a function: stop its instances, delete its checkpoint and its record.'
  static override description = 'Invocations still waiting fail with FUNCTION_NOT_FOUND. A clone restored from the checkpoint by hand (not by the porter) keeps it mapped until it exits; `pool gc` frees it then.'
  static override examples = ['<%= config.bin %> fn rm float']
  static override args = {
    name: Args.string({required: true, description: 'Function name.'}),
  }

  static override flags = {
    socket: Flags.string({summary: 'Socket of the porter (default: the pool\'s).', helpValue: 'PATH'}),
  }

  async run(): Promise<RemoveResult> {
    const {args, flags} = await this.parse(FnRm)
    const [{functionsRequest}, {validateFunctionName}] = await Promise.all([import('../../porter/functions/client.js'), import('../../porter/functions/spec.js')])
    validateFunctionName(args.name)
    const result = await functionsRequest(flags.pool, flags.socket, 'DELETE', `/v1/functions/${encodeURIComponent(args.name)}`) as RemoveResult
    this.say(`removed ${args.name}: ${result.instancesStopped} instance(s) stopped${result.checkpoint ? `, checkpoint ${result.checkpoint} ${result.checkpointState}` : ''}`)
    return result
  }
}

import * as Flags from '@oclif/core/flags'
import * as Args from '@oclif/core/args'

import {BaseCommand} from '../../cli/base-command.js'
import type {InvokeResult} from '../../porter/functions/manager.js'

export default class FnInvoke extends BaseCommand {
  static override summary = 'Invoke a deployed function once and print its response.'
  static override description = `The porter hands the request to an idle instance, or starts one (a cold start, or a clone restored from the function's checkpoint), or queues it when --max-instances are busy. Prints the function's response line; --json adds how it was served (start: cold, warm or restored; the instance's pid; latency and time queued).
Malformed --data is INVALID_FUNCTION_DATA (exit 2); an unknown function FUNCTION_NOT_FOUND (exit 3); another user's FUNCTION_ACCESS (exit 4); a function that crashes, times out or answers something that is not one JSON line FUNCTION_FAILED (exit 1).`
  static override examples = [
    '<%= config.bin %> fn invoke float',
    '<%= config.bin %> fn invoke float --data \'{"n": 3}\' --json',
  ]

  static override args = {
    name: Args.string({required: true, description: 'Function name.'}),
  }

  static override flags = {
    data: Flags.string({summary: 'The request\'s data: any JSON value (default null).', helpValue: 'JSON'}),
    socket: Flags.string({summary: 'Socket of the porter (default: the pool\'s).', helpValue: 'PATH'}),
  }

  async run(): Promise<InvokeResult> {
    const {args, flags} = await this.parse(FnInvoke)
    const [{functionsRequest}, {parseData, validateFunctionName}] = await Promise.all([import('../../porter/functions/client.js'), import('../../porter/functions/spec.js')])
    validateFunctionName(args.name)
    const data = flags.data === undefined ? null : parseData(flags.data)
    const result = await functionsRequest(flags.pool, flags.socket, 'POST', `/v1/functions/${encodeURIComponent(args.name)}/invoke`, {data}) as InvokeResult
    if (!this.jsonEnabled()) process.stdout.write(JSON.stringify(result.output) + '\n')
    this.say(`${result.start} start, pid ${result.pid}, ${result.latencyMs.toFixed(1)} ms${result.startupMs >= 0.1 ? ` (${result.startupMs.toFixed(1)} ms starting the instance)` : ''}${result.queuedMs >= 1 ? ` (${result.queuedMs.toFixed(1)} ms queued)` : ''}${result.checkpointed ? `; checkpointed as ${result.checkpointed.name} in ${result.checkpointed.ms.toFixed(1)} ms` : ''}`)
    return result
  }
}

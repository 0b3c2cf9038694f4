import * as Flags from '@oclif/core/flags'
import * as Args from '@oclif/core/args'

import {BaseCommand} from '../../cli/base-command.js'
import type {FunctionInfo} from '../../porter/functions/manager.js'

export default class FnDeploy extends BaseCommand {
  static override summary = 'Deploy a function on the pool\'s porter.'
  static override description = `A function is a program that reads one JSON request per line on stdin and writes one JSON response per line on stdout (README, "Serverless functions"). The porter cold-starts it at its first invocation, checkpoints that instance into the pool (as fn.NAME) after its --checkpoint-after-th invocation, and scales out by restoring clones of the checkpoint with --policy when invocations outnumber idle instances, up to --max-instances; an instance idle for --keep-alive is stopped.
With --checkpoint NAME it is served from that existing checkpoint instead (one another porter's function published into a shared pool, say): every instance is a clone of it, it is never checkpointed again, and fn rm leaves it in the pool.
The command runs without a shell, in this directory, as the porter's user; it must exist now (EXECUTABLE_NOT_FOUND). A name already deployed is FUNCTION_EXISTS (exit 7).`
  static override examples = [
    '<%= config.bin %> fn deploy float --cmd "python3 fixtures/faas/floatmath.py /tmp/float.log --stdio 1"',
    '<%= config.bin %> fn deploy float --cmd "python3 fn.py" --policy hybrid --checkpoint-after 4 --keep-alive 30s --max-instances 4 --json',
    '<%= config.bin %> fn deploy float-b --cmd "python3 fn.py" --checkpoint fn.float',
  ]

  static override args = {
    name: Args.string({required: true, description: 'Function name (letters, digits, . _ -).'}),
  }

  static override flags = {
    cmd: Flags.string({required: true, summary: 'The program and its arguments (split as a shell splits words, no shell run).', helpValue: 'COMMAND'}),
    policy: Flags.option({options: ['mow', 'moa', 'hybrid', 'local', 'criu'] as const, default: 'mow' as const, summary: 'Restore policy of the clones scaled out from the checkpoint (criu: a CRIU-format image set on /dev/shm instead of the pool, every page copied at restore).'})(),
    'checkpoint-after': Flags.integer({min: 0, max: 1_000_000, default: 16, summary: 'Checkpoint a cold-started instance after this many invocations (0: never; every scale-out is then a cold start).'}),
    'keep-alive': Flags.string({default: '60s', summary: 'Stop an instance idle this long (500ms, 60s, 5m; a bare number is seconds).', helpValue: 'DURATION'}),
    'max-instances': Flags.integer({min: 1, max: 256, default: 8, summary: 'Instances at most at once; further invocations wait for one.'}),
    checkpoint: Flags.string({summary: 'Serve it from this existing checkpoint (e.g. fn.NAME another porter\'s function published in the pool): every instance is a clone of it, --cmd only cold-starts if the restore fails, and fn rm keeps it.', helpValue: 'NAME'}),
    socket: Flags.string({summary: 'Socket of the porter (default: the pool\'s).', helpValue: 'PATH'}),
  }

  async run(): Promise<FunctionInfo> {
    const {args, flags} = await this.parse(FnDeploy)
    const [{functionsRequest}, {parseDuration, splitCommand, validateFunctionName}] = await Promise.all([import('../../porter/functions/client.js'), import('../../porter/functions/spec.js')])
    validateFunctionName(args.name)
    const body = {
      name: args.name, argv: splitCommand(flags.cmd), cwd: process.cwd(), policy: flags.policy, checkpointAfter: flags['checkpoint-after'],
      keepAliveMs: parseDuration(flags['keep-alive']), maxInstances: flags['max-instances'], ...(flags.checkpoint === undefined ? {} : {checkpoint: flags.checkpoint}),
    }
    const info = await functionsRequest(flags.pool, flags.socket, 'POST', '/v1/functions', body) as FunctionInfo
    this.say(`deployed ${info.name}: ${info.argv.join(' ')} (policy ${info.policy}, checkpoint after ${info.checkpointAfter}, keep-alive ${info.keepAliveMs} ms, at most ${info.maxInstances} instances)`)
    return info
  }
}

import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import {pidArg} from '../../cli/flags.js'
import {withTerminationDeferred} from '../../cli/signals.js'
import type {CriuDumpResult} from '../../criu/dump.js'

export default class CriuDumpCommand extends BaseCommand {
  static override summary = 'Dump a running process as a CRIU-format image set (the baseline path).'
  static override description = `Same live capture as checkpoint (the target keeps running unless --kill), but the state is serialized into CRIU protobuf images (inventory, pstree, core, mm, pagemap, pages, files, fdinfo, pipes-data, fs, ids, stats-dump) that CRIU's crit can decode.
Without --images, the set goes beside the pool on the same shared-memory mount, as "CRIU over CXL" keeps its images.`
  static override examples = ['<%= config.bin %> criu dump 4242 --images /dev/shm/web.img', '<%= config.bin %> criu dump 4242 --tree --images /dev/shm/shell.img', '<%= config.bin %> criu dump 4242 --images /dev/shm/web.img --kill --json', '<%= config.bin %> criu dump 4242 --images /dev/shm/web.img --no-porter']
  static override args = {pid: pidArg({required: true, description: 'Process id of the target.'})}
  static override flags = {
    images: Flags.string({summary: 'Directory for the image set (created; must hold no images).'}),
    kill: Flags.boolean({summary: 'End the target (SIGKILL) after a successful dump (with --tree, every member).', default: false}),
    'tcp-close': Flags.boolean({summary: 'Accept established TCP connections; the clone finds them closed (as CRIU\'s --tcp-close).', default: false}),
    tree: Flags.boolean({summary: 'Dump the target and all its descendants (zombies too) as one image set; without it a process with children is refused.', default: false}),
    'no-porter': Flags.boolean({summary: 'Dump in this process even if a porter serves the pool (by default a running porter of your user dumps, its engine already loaded).', default: false}),
  }

  async run(): Promise<CriuDumpResult & {servedBy: 'porter' | 'cli'}> {
    const {args, flags} = await this.parse(CriuDumpCommand)
    const [{criuDumpSummary, criuDumpThroughPorter}, {criuDump, defaultImagesDir}] = await Promise.all([import('../../porter/criu-client.js'), import('../../criu/dump.js')])
    const images = flags.images ?? defaultImagesDir(flags.pool, args.pid)
    if (!flags['no-porter']) {
      const served = await criuDumpThroughPorter(flags.pool, {pid: args.pid, images, kill: flags.kill, tree: flags.tree, tcpClose: flags['tcp-close']})
      if (served) {
        this.say(criuDumpSummary(served))
        return served as unknown as CriuDumpResult & {servedBy: 'porter'}
      }
    }
    await this.progress.start(`Dumping ${args.pid} into ${images}`)
    const result = await withTerminationDeferred(async () => criuDump({pid: args.pid, images, kill: flags.kill, tree: flags.tree, tcpClose: flags['tcp-close']}))
    this.progress.succeed(`Dumped ${args.pid} into ${result.images}`)
    this.say(criuDumpSummary(result))
    return {...result, servedBy: 'cli'}
  }
}

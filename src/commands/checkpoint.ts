import * as Flags from '@oclif/core/flags'
import {lstatSync} from 'node:fs'

import {BaseCommand} from '../cli/base-command.js'
import {nameFlag, pidArg} from '../cli/flags.js'
import {withTerminationDeferred} from '../cli/signals.js'
import type {CheckpointResult} from '../checkpoint/checkpoint.js'
import type {Pool} from '../pool/index.js'

export default class CheckpointCommand extends BaseCommand {
  static override summary = 'Checkpoint a running process into the pool; it keeps running unless --kill.'
  static override description = `The target is stopped only while its registers, signal state and a copy-on-write fork snapshot are taken (the downtime), then runs on while the snapshot's memory is written once into write-once pool segments.
Every thread is captured. A process with children is refused unless --tree, which takes it and all its descendants (zombies included): every member is stopped before the root's snapshot, the root runs on after its own downtime, each descendant after its pages are copied.
Refused with a named reason: System V shared memory and memfd mappings, descriptors it cannot carry, other special files, members in other namespaces or traced by another process.`
  static override examples = [
    '<%= config.bin %> checkpoint 4242 --name web',
    '<%= config.bin %> checkpoint 4242 --name web --kill --json',
    '<%= config.bin %> checkpoint 4242 --name job --tree',
  ]
  static override args = {pid: pidArg({required: true, description: 'Process id of the target.'})}
  static override flags = {
    name: nameFlag({required: true}),
    kill: Flags.boolean({summary: 'End the target (SIGKILL) after a successful checkpoint.', default: false}),
    tree: Flags.boolean({summary: 'Take the target and all its descendants (a process tree).', default: false}),
    'tcp-close': Flags.boolean({summary: 'Accept established TCP connections; the clone finds them closed (as CRIU\'s --tcp-close).', default: false}),
  }

  async run(): Promise<CheckpointResult> {
    const {args, flags} = await this.parse(CheckpointCommand)
    const [{Pool: PoolClass}, {checkpointToPool}] = await Promise.all([import('../pool/index.js'), import('../checkpoint/checkpoint.js')])
    await this.progress.start(`Checkpointing ${args.pid} as ${flags.name}`)
    let pool: Pool | undefined
    try {
      // A pool that does not exist yet is created only once the target has passed every check;
      // what can be checked about creating it is checked now. lstat: a dangling link is something, and refused.
      const openPool = (): Pool => (pool = PoolClass.open(flags.pool, {create: true}))
      const exists = lstatSync(flags.pool, {throwIfNoEntry: false}) !== undefined
      if (!exists) PoolClass.checkCreatable(flags.pool)
      const into = exists ? openPool() : openPool
      const result = await withTerminationDeferred(async (stopPoint) =>
        checkpointToPool(into, {pid: args.pid, name: flags.name, kill: flags.kill, tree: flags.tree, tcpClose: flags['tcp-close'], stopPoint}), 'the checkpoint')
      this.progress.succeed(`Checkpointed ${args.pid} as ${result.name}`)
      this.say(`${result.pages} pages (${(result.bytes / 1048576).toFixed(1)} MiB), ${result.vmas} VMAs, ${result.fds} fds; downtime ${(result.downtimeUs / 1000).toFixed(2)} ms, total ${(result.totalUs / 1000).toFixed(1)} ms${result.tree ? `; tree of ${result.tree.length} processes, descendants stopped ${((result.treeDowntimeUs ?? 0) / 1000).toFixed(1)} ms` : ''}${result.killed ? '; target killed' : ''}`)
      return result
    } finally {
      pool?.close()
    }
  }
}

import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import {pidnsFlag} from '../../cli/flags.js'
import type {CriuRestoreResult} from '../../criu/restore.js'

export default class CriuRestoreCommand extends BaseCommand {
  static override summary = 'Restore a CRIU-format image set by deserializing it and copying every page.'
  static override description = 'Accepts sets written by cxlfork criu dump and by CRIU 4.x: single- and multi-threaded processes and process trees (rebuilt in a PID namespace of their own) with regular files, pipes, eventfds, epoll instances, timerfds, signalfds and TCP/UDP sockets. A clone that listens where its original still listens needs --netns. The restore statistics are also written to stats-restore.img. Without --wait the clone runs detached; with --wait the command exits with its status.'
  static override examples = ['<%= config.bin %> criu restore --images /dev/shm/web.img', '<%= config.bin %> criu restore --images /dev/shm/web.img --wait', '<%= config.bin %> criu restore --images /dev/shm/web.img --netns new']
  static override flags = {
    images: Flags.string({summary: 'Directory holding the image set.', required: true}),
    wait: Flags.boolean({summary: 'Stay until the clone exits and exit with its status.', default: false}),
    pidns: pidnsFlag(),
    netns: Flags.string({summary: "Network namespace of the clone: 'new' (its own, loopback only, no way out) or the path of one to join (/var/run/netns/NAME, /proc/PID/ns/net).", helpValue: 'new|PATH'}),
    'no-porter': Flags.boolean({summary: 'Restore in this process even if a porter serves the pool (by default a running porter of your user restores, unless --wait).', default: false}),
  }

  async run(): Promise<CriuRestoreResult & {servedBy: 'porter' | 'cli'}> {
    const {flags} = await this.parse(CriuRestoreCommand)
    const {criuRestoreSummary, criuRestoreThroughPorter} = await import('../../porter/criu-client.js')
    // --wait needs this command's own stdio, so it stays here.
    if (!flags['no-porter'] && !flags.wait) {
      const served = await criuRestoreThroughPorter(flags.pool, {images: flags.images, ...(flags.pidns === undefined ? {} : {pidns: flags.pidns}), ...(flags.netns === undefined ? {} : {netns: flags.netns})})
      if (served) {
        this.say(criuRestoreSummary(served))
        return served as unknown as CriuRestoreResult & {servedBy: 'porter'}
      }
    }
    const [{criuRestore}, {exitStatusOf}] = await Promise.all([import('../../criu/restore.js'), import('../../restore/build-process.js')])
    const result = this.ignoringTerminalSignals(flags.wait, () => criuRestore({images: flags.images, wait: flags.wait, ...(flags.pidns === undefined ? {} : {pidns: flags.pidns}), ...(flags.netns === undefined ? {} : {netns: flags.netns})}))
    this.say(criuRestoreSummary(result))
    if (result.exit) process.exitCode = exitStatusOf(result.exit)
    return {...result, servedBy: 'cli'}
  }
}

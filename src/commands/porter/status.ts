import {resolve} from 'node:path'

import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import type {PorterStatus} from '../../porter/control.js'

export default class PorterStatusCommand extends BaseCommand {
  static override summary = 'Show whether a porter serves the pool, and how.'
  static override description = `Asks the porter on its socket (GET /v1/status): pid, pool, uptime, ghosts ready and used by kind, which cgroup hierarchies limit each clone's memory and CPU (or why none), what it recovered at start. No porter: PORTER_NOT_RUNNING (exit 3).`
  static override examples = ['<%= config.bin %> porter status', '<%= config.bin %> porter status --json']
  static override flags = {
    socket: Flags.string({summary: 'Socket of the porter (default: derived from the pool path).', helpValue: 'PATH'}),
  }

  async run(): Promise<PorterStatus> {
    const {flags} = await this.parse(PorterStatusCommand)
    const {porterStatus, socketFor} = await import('../../porter/control.js')
    const status = await porterStatus(socketFor(resolve(flags.pool), flags.socket).socket)
    this.show(`porter ${status.pid} (uid ${status.uid}) serves ${status.pool} on ${status.socket}, up ${(status.uptimeMs / 1000).toFixed(1)} s; ghosts ${status.ghosts.ready} ready (${status.ghosts.target} per kind: ${status.ghosts.kinds.join(', ')}), ${status.ghosts.used} used`)
    // Said, never silent: what the porter can limit per clone.
    this.show(status.cgroups.enabled ? `cgroups per clone: memory ${status.cgroups.memory ?? 'not limited'}, cpu ${status.cgroups.cpu ?? 'not limited'}${status.cgroups.notes.length > 0 ? ` (${status.cgroups.notes.join('; ')})` : ''}` : `no cgroups per clone, limits refused: ${status.cgroups.notes.join('; ')}`)
    return status
  }
}

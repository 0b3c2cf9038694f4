import {resolve} from 'node:path'

import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'

export default class PorterStop extends BaseCommand {
  static override summary = 'Stop the porter of the pool.'
  static override description = 'Sends it SIGTERM (SIGKILL after 10 s): it stops listening, kills its ghosts and exits. Clones it restored run on.'
  static override examples = ['<%= config.bin %> porter stop', '<%= config.bin %> porter stop --socket /run/cxlfork/web.sock']
  static override flags = {
    socket: Flags.string({summary: 'Socket of the porter (default: derived from the pool path).', helpValue: 'PATH'}),
  }

  async run(): Promise<{socket: string; pid: number; signal: string}> {
    const {flags} = await this.parse(PorterStop)
    const {socketFor, stopPorter} = await import('../../porter/control.js')
    const result = await stopPorter(socketFor(resolve(flags.pool), flags.socket).socket)
    this.say(`porter ${result.pid} stopped (${result.signal})`)
    return result
  }
}

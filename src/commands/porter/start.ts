import {resolve} from 'node:path'

import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../../cli/base-command.js'
import type {PorterStatus} from '../../porter/control.js'

export default class PorterStart extends BaseCommand {
  static override summary = 'Start the porter: a resident restore service for the pool, on a Unix socket.'
  static override description = `The porter keeps the pool mapped and the engine loaded, and answers HTTP + JSON on a Unix socket (README, "Porter"): restore, checkpoint, ls, inspect, rm, status and metrics, each request authorized by the peer's credentials (SO_PEERCRED) with the CLI's owner rules. \`cxlfork restore\` uses it by itself when it runs (--no-porter bypasses it).
It keeps --ghosts stubs spawned and seized ahead of time for each ghost kind (--ghost-kinds, and every kind a restore asked for since), each in a cgroup of its own where the host allows it, so a restore only builds the image into one; they are refilled between requests and die with the porter.
One porter per pool and host: the default socket is /run/cxlfork/porter-HASH.sock for root (HASH: of the pool's path), else under $XDG_RUNTIME_DIR/cxlfork or /tmp/cxlfork-UID. The socket is mode 0600, or 0660 for --group. Without --foreground the porter runs in the background (its output in SOCKET.log) and the command returns once it answers.`
  static override examples = [
    '<%= config.bin %> porter start',
    '<%= config.bin %> porter start --ghosts 8 --json',
    '<%= config.bin %> porter start --ghosts 2 --ghost-kinds plain,pidns,netns',
    '<%= config.bin %> porter start --group cxlfork',
    '<%= config.bin %> porter start --socket /run/cxlfork/web.sock --foreground',
  ]

  static override flags = {
    socket: Flags.string({summary: 'Unix socket to listen on (default: derived from the pool path).', helpValue: 'PATH'}),
    ghosts: Flags.integer({min: 0, max: 256, default: 4, summary: 'Stubs kept spawned and seized, ready for restores.'}),
    'ghost-kinds': Flags.string({default: 'plain', summary: 'Ghost kinds kept warm from the start (plain, netns, pidns, pidns-netns); a kind a restore asks for is kept warm from then on.', helpValue: 'KIND,...'}),
    cgroups: Flags.boolean({default: true, allowNo: true, summary: 'Put each ghost and clone in a cgroup of its own (limits per restore); --no-cgroups: none, limits refused.'}),
    foreground: Flags.boolean({default: false, summary: 'Run in this process until SIGTERM or SIGINT.'}),
    group: Flags.string({summary: 'Let this group connect (socket mode 0660); each request is still authorized as its peer.', helpValue: 'GROUP'}),
  }

  async run(): Promise<PorterStatus | {stopped: true; pid: number}> {
    const {flags} = await this.parse(PorterStart)
    const [{socketFor, startInBackground}, {resolveGroup}] = await Promise.all([import('../../porter/control.js'), import('../../pool/index.js')])
    const pool = resolve(flags.pool)
    const {socket, isDefault} = socketFor(pool, flags.socket)
    const gid = flags.group === undefined ? undefined : resolveGroup(flags.group)
    const {parseGhostKinds} = await import('../../porter/ghosts.js')
    const ghostKinds = parseGhostKinds(flags['ghost-kinds'])
    if (!flags.foreground) {
      const status = await startInBackground({pool, socket, isDefault, ghosts: flags.ghosts, ghostKinds: ghostKinds.join(','), cgroups: flags.cgroups, ...(flags.group === undefined ? {} : {group: flags.group})})
      this.say(`porter ${status.pid} serves ${status.pool} on ${status.socket} (${status.ghosts.target} ghosts); log ${status.log}`)
      return status
    }
    const {startPorter} = await import('../../porter/server.js')
    const {service, stop} = await startPorter({poolPath: pool, socket, defaultSocket: isDefault, ghosts: flags.ghosts, ghostKinds, cgroups: flags.cgroups, ...(gid === undefined ? {} : {gid})})
    process.stderr.write(`porter ${process.pid} serves ${service.poolPath} on ${socket} (${flags.ghosts} ghosts); released ${service.recovered.referencesReleased} stale reference(s) and ${service.recovered.cgroupsRemoved} cgroup(s) at start; cgroups: ${service.cgroups.enabled ? `memory ${service.cgroups.support.memory ?? 'none'}, cpu ${service.cgroups.support.cpu ?? 'none'}` : 'none'}${service.cgroups.support.notes.length > 0 ? ` (${service.cgroups.support.notes.join('; ')})` : ''}\n`)
    await new Promise<void>((resolveStop) => {
      for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.once(signal, () => resolveStop())
    })
    await stop()
    process.stderr.write(`porter ${process.pid} stopped\n`)
    return {stopped: true, pid: process.pid}
  }
}

import * as Args from '@oclif/core/args'
import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../cli/base-command.js'
import {pidnsFlag} from '../cli/flags.js'
import {sizeFlag} from '../cli/size-flag.js'
import {UnsupportedError} from '../errors.js'
import type {RestoreResult} from '../restore/restore.js'

export default class RestoreCommand extends BaseCommand {
  static override summary = 'Restore a checkpoint from the pool as a new running process.'
  static override description = `Tiering policies: mow (default) maps the checkpoint's pages zero-copy from the pool, copy-on-write when written, and copies the pages recorded as written (cxlfork record); moa maps nothing and copies each page into local memory on its first touch, served by a fault server process (userfaultfd) that ends with the clone, or once every page is in with --fill-after; hybrid copies the pages recorded as accessed and maps the rest zero-copy (as mow without recorded pages); local copies every page into local memory.
Without --wait the command returns once the clone runs, detached in its own session with stdin/stdout/stderr on /dev/null where the original had a terminal or pipe. With --wait the clone uses this command's stdio and the command exits with the clone's status (128+N if killed by signal N).
A multi-threaded checkpoint is restored in a PID namespace of its own, where the clone keeps its original pid and thread ids (its memory holds them: mutex owners, the robust list, glibc's thread descriptors); its init (cxlfork-init, pid 1 there) ends with it.
A restore reads no page data by default (its cost grows with the number of mappings, not with memory); --verify first checks all of it against the checksums written at checkpoint, and --json says whether it did (verified).
A clone that listens where its original still listens needs --netns (else ADDRESS_IN_USE, exit 7), unless the socket has SO_REUSEPORT: then the two share the port.`
  static override examples = [
    '<%= config.bin %> restore web',
    '<%= config.bin %> restore web --policy local --json',
    '<%= config.bin %> restore web --policy moa --fill-after 500',
    '<%= config.bin %> restore web --policy hybrid',
    '<%= config.bin %> restore web --record',
    '<%= config.bin %> restore web --wait',
    '<%= config.bin %> restore web --pidns new',
    '<%= config.bin %> restore web --netns new',
    '<%= config.bin %> restore web --netns /var/run/netns/blue',
    '<%= config.bin %> restore web --verify --json',
    '<%= config.bin %> restore web --no-porter',
  ]
  static override args = {name: Args.string({required: true, description: 'Checkpoint name.'})}
  static override flags = {
    policy: Flags.option({options: ['mow', 'moa', 'hybrid', 'local'] as const, default: 'mow' as const, summary: 'Tiering policy for the restored memory.'})(),
    record: Flags.boolean({summary: "Record the clone's page accesses into the checkpoint when it exits (mow, hybrid): fault-around is turned off on its pool mappings so that the recording is exact.", default: false}),
    'fill-after': Flags.integer({min: 0, summary: 'With --policy moa: once no page was touched for this many ms, copy the rest in the background and end the fault server.', helpValue: 'MS'}),
    'fault-pages': Flags.integer({min: 1, max: 512, summary: 'With --policy moa: pages copied per first touch, the aligned block around the touched page (default 1: strictly page by page; 16 is what the kernel\'s fault-around maps for a file).', helpValue: 'N'}),
    wait: Flags.boolean({summary: "Stay until the clone exits and exit with its status.", default: false}),
    pidns: pidnsFlag(),
    verify: Flags.boolean({summary: 'Check every page against its checksum before mapping anything (reads all page data: ~0.15 s per GiB); refuses a damaged checkpoint with PAGE_DATA_CORRUPT (exit 6).', default: false}),
    'no-porter': Flags.boolean({summary: 'Restore in this process even if a porter serves the pool (by default a running porter restores, unless --wait).', default: false}),
    'memory-max': sizeFlag({summary: "Through the porter: the clone's cgroup memory limit (e.g. 256M); refused (CGROUP_UNAVAILABLE) where the host has no memory controller.", helpValue: 'SIZE'}),
    'cpu-max': Flags.custom<number>({parse: async (input: string) => Number(input)})({summary: "Through the porter: the clone's CPU limit in CPUs (0.5: half of one).", helpValue: 'CPUS'}),
    netns: Flags.string({summary: "Network namespace of the clone: 'new' (its own, loopback only, no way out) or the path of one to join (/var/run/netns/NAME, /proc/PID/ns/net).", helpValue: 'new|PATH'}),
  }

  async run(): Promise<RestoreResult & {servedBy: 'porter' | 'cli'}> {
    const {args, flags} = await this.parse(RestoreCommand)
    if (flags['fill-after'] !== undefined && flags.policy !== 'moa') this.error('--fill-after applies to --policy moa only', {exit: 2})
    if (flags['fault-pages'] !== undefined && flags.policy !== 'moa') this.error('--fault-pages applies to --policy moa only', {exit: 2})
    const limited = flags['memory-max'] !== undefined || flags['cpu-max'] !== undefined
    if (limited && (flags['no-porter'] || flags.wait)) throw new UnsupportedError('LIMITS_NEED_PORTER', '--memory-max and --cpu-max are applied by the porter, to the cgroup of the ghost a clone is built in', 'Start a porter (`cxlfork porter start`) and drop --no-porter / --wait.')
    const {restoreSummary, restoreThroughPorter} = await import('../porter/restore-client.js')
    // A running porter restores (README, "Porter"); --wait needs this command's own stdio, so it stays here.
    if (!flags['no-porter'] && !flags.wait) {
      const served = await restoreThroughPorter(flags.pool, {
        name: args.name, policy: flags.policy, verify: flags.verify, ...(flags.pidns === undefined ? {} : {pidns: flags.pidns}), ...(flags.netns === undefined ? {} : {netns: flags.netns}),
        ...(flags['fill-after'] === undefined ? {} : {fillAfterMs: flags['fill-after']}), ...(flags['fault-pages'] === undefined ? {} : {faultPages: flags['fault-pages']}),
        ...(flags.record ? {record: true} : {}),
        ...(flags['memory-max'] === undefined ? {} : {memoryMax: Number(flags['memory-max'])}), ...(flags['cpu-max'] === undefined ? {} : {cpuMax: flags['cpu-max']}),
      })
      if (limited && !served) throw new UnsupportedError('LIMITS_NEED_PORTER', 'no porter of yours serves this pool: --memory-max and --cpu-max are applied by the porter', 'Start a porter (`cxlfork porter start`) as your user.')
      if (served) {
        this.say(restoreSummary(served))
        return served as unknown as RestoreResult & {servedBy: 'porter'}
      }
    }
    const [{Pool}, {restoreFromPool}, {exitStatusOf}] = await Promise.all([import('../pool/index.js'), import('../restore/restore.js'), import('../restore/build-process.js')])
    const pool = Pool.open(flags.pool)
    try {
      const result = this.ignoringTerminalSignals(flags.wait, () => restoreFromPool(pool, {
        name: args.name, policy: flags.policy, wait: flags.wait, verify: flags.verify, ...(flags.pidns === undefined ? {} : {pidns: flags.pidns}), ...(flags.netns === undefined ? {} : {netns: flags.netns}),
        ...(flags['fill-after'] === undefined ? {} : {fillAfterMs: flags['fill-after']}), ...(flags['fault-pages'] === undefined ? {} : {faultPages: flags['fault-pages']}),
        ...(flags.record ? {record: true} : {}),
      }))
      this.say(restoreSummary(result))
      if (result.exit) {
        this.say(`Clone ${result.pid} ${result.exit.signal === null ? `exited with ${result.exit.code}` : `was killed by signal ${result.exit.signal}`}`)
        process.exitCode = exitStatusOf(result.exit)
      }
      return {...result, servedBy: 'cli'}
    } finally {
      pool.close()
    }
  }
}

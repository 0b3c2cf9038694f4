import * as Args from '@oclif/core/args'
import * as Flags from '@oclif/core/flags'

import {BaseCommand} from '../cli/base-command.js'
import {ExitCode} from '../errors.js'
import type {CheckpointDetails} from '../pool/index.js'
import {formatSize} from '../pool/size.js'
import type {CheckpointContents} from '../image/details.js'

/** Pool-level facts plus, when the sections decode, what the process image holds (image/details.ts). */
export type InspectResult = CheckpointDetails & CheckpointContents

export default class Inspect extends BaseCommand {
  static override summary = 'Show what the pool knows about a checkpoint.'
  static override description = 'Owner, creation time, sizes, data extents, metadata sections (checksums verified) and the clones referencing it, with their liveness.'
  static override examples = ['<%= config.bin %> inspect web-1', '<%= config.bin %> inspect web-1 --json', '<%= config.bin %> inspect web-1 --verify']

  static override flags = {
    verify: Flags.boolean({summary: `Also read the page data and check it against its checksums; exits ${ExitCode.corrupt} if any chunk fails.`, default: false}),
  }

  static override args = {
    name: Args.string({description: 'Checkpoint name.', required: true}),
  }

  async run(): Promise<InspectResult> {
    const {args, flags} = await this.parse(Inspect)
    const pool = await this.openPool(flags.pool)
    try {
      const uid = process.getuid?.() ?? 0
      const details: InspectResult = pool.inspect(args.name, {uid, verifyData: flags.verify})
      const {checkpointContents} = await import('../image/details.js')
      Object.assign(details, checkpointContents(pool.openCheckpoint(args.name, {uid})))
      this.show(`${details.name}: serial ${details.serial}, uid ${details.uid}, created ${details.createdAt}, ${details.state}`)
      this.show(`data ${formatSize(details.dataBytes)} in ${details.dataExtents.length} extent(s); metadata ${formatSize(details.metadataBytes)}`)
      for (const section of details.sections) this.show(`  section type ${section.type}: ${section.length} bytes at ${section.poolOffset} crc32 ${section.crc32}`)
      const data = details.pageData
      if (!details.pageChecksums) this.show('page data: no page checksums (taken before cxlfork wrote them)')
      else if (data?.state === 'verified') this.show(`page data: ${formatSize(data.bytes)} verified, ${data.chunks} chunks match their CRC-32C (${(data.timeUs / 1000).toFixed(1)} ms)`)
      else if (data?.state === 'damaged') {
        this.show(`page data: DAMAGED: ${data.damagedChunks} of ${data.chunks} chunks fail their CRC-32C check`)
        for (const chunk of data.damaged) this.show(`  ${chunk.length} bytes at pool offset ${chunk.poolOffset}`)
        process.exitCode = ExitCode.corrupt
      } else this.show('page data: checksummed (--verify checks it)')
      const proc = details.process
      if (proc) {
        this.show(`process ${proc.pid} (${proc.comm}) uid ${proc.uid}, kernel ${proc.kernel} on ${proc.host}, ${proc.threads} thread(s), ${proc.signalHandlers} signal handler(s)`)
        this.show(`memory ${proc.storedPages} pages stored (${formatSize(proc.storedBytes)}) in ${proc.pageRuns} run(s) over ${proc.vmas.length} VMAs`)
        for (const timer of proc.timers) this.show(`  timer ${timer}`)
        for (const thread of proc.threadStates) {
          this.show(`  thread ${thread.tid} ${thread.comm.padEnd(15)} mask ${thread.sigmask}${thread.syscall === null ? '' : `, stopped in syscall ${thread.syscall}`}`)
        }
        for (const vma of proc.vmas) this.show(`  ${vma.start}-${vma.end} ${vma.perms} ${vma.kind.padEnd(6)} ${String(vma.storedPages).padStart(7)} pages ${vma.path ?? ''}`)
        for (const fd of proc.fds) this.show(`  fd ${fd.fd} ${fd.kind} ${fd.path}${fd.detail ? `: ${fd.detail}` : ''}`)
      }
      if (details.sharedMemory) this.show(`shared anonymous memory: ${details.sharedMemory.objects} object(s), ${formatSize(BigInt(details.sharedMemory.storedBytes))} stored (restored local, shared by the clone's processes)`)
      for (const memfd of details.sharedMemory?.memfds ?? []) this.show(`  memfd ${memfd.name}: ${memfd.size} bytes, seals ${memfd.seals} (made again as a memfd)`)
      const access = details.accessRecord
      if (access) {
        this.show(access.recordings === 0 ? 'access record: nothing recorded (cxlfork record, restore --record)'
          : `access record: ${access.hot} hot and ${access.dirty} dirty of ${access.pages} pages, from ${access.recordings} clone(s), ${access.firstRecordedAt} to ${access.lastRecordedAt}`)
      }
      if (details.tree) {
        this.show(`tree of ${details.tree.length} processes:`)
        for (const member of details.tree) this.show(`  pid ${member.pid} ppid ${member.ppid} pgid ${member.pgid} sid ${member.sid} ${member.comm}${member.zombie ? ' (zombie)' : `, ${member.threads} thread(s)`}`)
      }
      for (const reference of details.references) {
        this.show(`  clone pid ${reference.pid} on ${reference.hostname}: ${reference.alive ? 'alive' : 'gone'}`)
      }
      return details
    } finally {
      pool.close()
    }
  }
}

/**
 * Notes for the report, computed from the run's own figures: for each target
 * missed, where the time (or memory) went according to the engine statistics.
 */
import type {BenchResult, RestoreRow, SizeResult, Summary} from './types.js'
import {plainAnchorMs} from './verdicts.js'

const f = (value: number | undefined): string => (value === undefined || !Number.isFinite(value) ? '–' : value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2))
const stat = (stats: Record<string, Summary>, key: string): number => (stats[key]?.median ?? Number.NaN) / 1000

function row(size: SizeResult, id: string): RestoreRow | undefined {
  return size.paths.flatMap((path) => path.restores).find((restore) => restore.id === id)
}

function breakdown(restore: RestoreRow): string {
  return statsBreakdown(restore.engineStats)
}

function statsBreakdown(s: Record<string, Summary>): string {
  return `forking ${f(stat(s, 'forking_time'))} + open ${f(stat(s, 'open_time'))} + memory ${f(stat(s, 'memory_time'))} + state ${f(stat(s, 'state_time'))} ms, ${f(s['injected_syscalls']?.median)} injected syscalls`
}

export function diagnose(result: BenchResult): string[] {
  const notes: string[] = []
  const bySize = new Map(result.sizes.map((size) => [size.label, size]))
  for (const target of result.targets) {
    if (target.pass) continue
    const label = target.id.split('@')[1] ?? ''
    const threadsDowntime = /^downtime-(\d+)-threads@/.exec(target.id)
    if (threadsDowntime && result.threads) {
      // Before the size rows: this id starts with "downtime" too, but its figures are the threads section's.
      const count = Number(threadsDowntime[1])
      const threadRow = result.threads.rows.find((candidate) => candidate.threads === count)
      const single = result.threads.rows.find((candidate) => candidate.threads === 1)
      if (threadRow) {
        const s = threadRow.checkpointStats
        notes.push(`- **Downtime with ${count} threads at ${label}**: ${f(threadRow.downtimeMs.median)} ms, of which seizing every thread (freezing_time) ${f(stat(s, 'freezing_time'))} ms; the rest is reading each thread's registers and signal state and the fork snapshot${single ? ` (with 1 thread: downtime ${f(single.downtimeMs.median)} ms, freezing_time ${f(stat(single.checkpointStats, 'freezing_time'))} ms)` : ''}.`)
      }
      continue
    }
    const treeRestore = /^mow-restore-tree-(\d+)-vs-(\d+)@/.exec(target.id)
    if (treeRestore && result.trees) {
      // Before the size rows: its label is the trees section's size, which may also be a size row's.
      const most = result.trees.rows.find((candidate) => candidate.processes === Number(treeRestore[1]))
      const fewest = result.trees.rows.find((candidate) => candidate.processes === Number(treeRestore[2]))
      if (most && fewest) {
        const where = (pidNamespace: boolean): string => (pidNamespace ? 'in a PID namespace of its own' : 'in ours')
        notes.push(`- **Engine restore of a ${most.processes}-process tree at ${label} (${f(target.measured)}x that of ${fewest.processes})**: ${f(most.engineMs.median)} ms (${statsBreakdown(most.restoreStats)}, built ${where(most.pidNamespace)}) against ${f(fewest.engineMs.median)} ms (${statsBreakdown(fewest.restoreStats)}, built ${where(fewest.pidNamespace)}).`)
      }
      continue
    }
    const size = bySize.get(label)
    if (!size) continue
    const pool = size.paths.find((path) => path.path === 'pool')
    const mow = row(size, 'pool/mow')
    const written = size.paths.find((path) => path.path === (target.id.startsWith('checkpoint-vs-write-sparse') ? 'pool-sparse' : 'pool'))
    if (target.id.startsWith('checkpoint-vs-write') && written) {
      const s = written.engineStats
      const anchor = plainAnchorMs(size)
      notes.push(`- **Checkpoint into a ${written.poolKind ?? ''} pool vs plain write at ${label} (${f(target.measured)}x)**: checkpoint ${f(written.checkpointMs.median)} ms = downtime ${f(stat(s, 'frozen_time'))} ms + memdump ${f(stat(s, 'memdump_time'))} ms, of which memwrite (the snapshot's vmsplice + splice of ${f(s['pages_written']?.median)} pages into the pool file, with the rest of the checkpoint overlapping it) ${f(stat(s, 'memwrite_time'))} ms; the plain write(2) of the same bytes from memory took ${f(anchor)} ms (into allocated pages ${f(size.plainWriteAllocatedMs.median)}, 1 MiB hot buffer loop ${f(size.plainWriteMs.median)}, mmap+copy ${f(size.plainMmapMs.median)}). The copy into the pool alone is ${f(stat(s, 'memwrite_time') / anchor)}x the plain write.`)
    } else if (target.id.startsWith('command-restore') && mow) {
      const oclif = result.cliVersionMs.median - result.nodeStartupMs.median
      const engine = mow.commandEngineMs.n > 0 ? mow.commandEngineMs.median : mow.engineMs.median
      const rest = mow.commandMs.median - result.cliVersionMs.median - engine
      notes.push(`- **Whole-command restore at ${label}**: ${f(mow.commandMs.median)} ms = node start-up ${f(result.nodeStartupMs.median)} ms + oclif start-up ${f(oclif)} ms (\`cxlfork --version\` takes ${f(result.cliVersionMs.median)} ms) + the engine restore as the command reports it (cold process) ${f(engine)} ms (warm, in process: ${f(mow.engineMs.median)} ms) + ${f(rest)} ms for the rest: loading the restore command, cxlfork's modules and koffi, opening the pool, printing JSON, exiting.`)
    } else if (target.id.startsWith('mow-restore-vs-fork') && mow) {
      notes.push(`- **mow restore vs fork() at ${label}**: engine restore ${f(mow.engineMs.median)} ms (${breakdown(mow)}) against fork() ${f(size.forkMs.median)} ms.`)
    } else if (target.id.startsWith('mow-restore-flat') && mow) {
      const smallest = [...result.sizes].sort((a, b) => a.size - b.size)[0]!
      const small = row(smallest, 'pool/mow')
      if (small) notes.push(`- **mow restore growth ${smallest.label} → ${label} (${f(target.measured)}x)**: ${smallest.label}: ${breakdown(small)}; ${label}: ${breakdown(mow)}.`)
    } else if (target.id.startsWith('downtime') && pool) {
      notes.push(`- **Downtime at ${label}**: ${f(pool.downtimeMs.median)} ms, of which seizing (freezing_time) ${f(stat(pool.engineStats, 'freezing_time'))} ms; the rest is reading registers and signal state and the injected fork snapshot (fork() of this target alone: ${f(size.forkMs.median)} ms).`)
    } else if (target.id.startsWith('mow-rss') && mow) {
      notes.push(`- **mow RssAnon at ${label}**: ${f(mow.rssAnonKb.median)} kB of ${f((pool?.bytes ?? 0) / 1024)} kB checkpointed; pages_restored ${f(mow.engineStats['pages_restored']?.median)} (copied eagerly, e.g. the stack).`)
    }
  }
  return notes
}

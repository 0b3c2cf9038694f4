/**
 * The performance targets, each checked against figures of the same run.
 * "Largest" and "smallest" are the largest and smallest measured sizes
 * (1G and 64M in the reference run).
 */
import type {RestoreRow, SizeResult, Summary, TargetVerdict} from './types.js'

const round = (value: number, digits = 3): number => Math.round(value * 10 ** digits) / 10 ** digits

function row(size: SizeResult, id: string): RestoreRow | undefined {
  for (const path of size.paths) for (const restore of path.restores) if (restore.id === id) return restore
  return undefined
}

function verdict(id: string, description: string, measured: number, limit: number, unit: string): TargetVerdict {
  return {id, description, measured: round(measured), limit: round(limit), unit, pass: measured <= limit}
}

export function plainAnchorMs(size: SizeResult): number {
  return size.plainWriteMemoryMs.median
}

export function evaluateTargets(sizes: readonly SizeResult[], nodeStartupMs: Summary): TargetVerdict[] {
  if (sizes.length === 0) return []
  const bySize = [...sizes].sort((a, b) => a.size - b.size)
  const smallest = bySize[0]!
  const largest = bySize[bySize.length - 1]!
  const out: TargetVerdict[] = []
  const mowLargest = row(largest, 'pool/mow')
  const mowSmallest = row(smallest, 'pool/mow')
  if (mowLargest) {
    out.push(verdict(`mow-restore-vs-fork@${largest.label}`, `mow engine restore at ${largest.label} <= local fork() at ${largest.label}`,
      mowLargest.engineMs.median, largest.forkMs.median, 'ms'))
  }
  if (mowLargest && mowSmallest) {
    out.push(verdict(`mow-restore-flat@${largest.label}`, `mow engine restore at ${largest.label} <= 1.5 x mow engine restore at ${smallest.label}`,
      mowLargest.engineMs.median / mowSmallest.engineMs.median, 1.5, 'x'))
  }
  for (const size of bySize) {
    const mow = row(size, 'pool/mow')
    if (mow) out.push(verdict(`mow-rss@${size.label}`, `RssAnon of a fresh mow clone <= 1% of the checkpointed bytes (${size.label})`, mow.rssAnonPct, 1, '%'))
  }
  for (const [name, idSuffix] of [['pool', ''], ['pool-sparse', '-sparse']] as const) {
    for (const size of bySize) {
      const pool = size.paths.find((path) => path.path === name)
      if (pool) {
        out.push(verdict(`checkpoint-vs-write${idSuffix}@${size.label}`,
          `checkpoint time into a ${pool.poolKind ?? ''} pool <= 1.5 x plain write of the same bytes into a new file (${size.label}, anchor: ${size.plainAnchor})`,
          pool.checkpointMs.median / plainAnchorMs(size), 1.5, 'x'))
      }
    }
  }
  const poolLargest = largest.paths.find((path) => path.path === 'pool')
  if (poolLargest) out.push(verdict(`downtime@${largest.label}`, `target downtime at ${largest.label} <= 50 ms`, poolLargest.downtimeMs.median, 50, 'ms'))
  for (const size of bySize) {
    const mow = row(size, 'pool/mow')
    if (mow) {
      out.push(verdict(`command-restore@${size.label}`, `whole \`cxlfork restore\` (mow) <= node start-up + 150 ms (${size.label})`,
        mow.commandMs.median, nodeStartupMs.median + 150, 'ms'))
    }
  }
  return out
}

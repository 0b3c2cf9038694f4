/** stats-dump.img and stats-restore.img: CRIU's dump and restore statistics (CRIU itself names them without .img). */
import {existsSync} from 'node:fs'
import {join} from 'node:path'

import {encodeMessage, readImage, writeImage} from '../image-file.js'
import type {DumpStats, RestoreStats} from '../set-types.js'
import {big, has, str64} from '../values.js'
import {type ImagePath, type Msg, type PutImage, only, optionalImage} from './common.js'

export function writeDumpStats(put: PutImage, stats: DumpStats): void {
  put('stats-dump.img', 'stats', [encodeMessage('stats_entry', {dump: {
    freezing_time: stats.freezingTime >>> 0, frozen_time: stats.frozenTime >>> 0, memdump_time: stats.memdumpTime >>> 0, memwrite_time: stats.memwriteTime >>> 0,
    pages_scanned: str64(BigInt(stats.pagesScanned)), pages_skipped_parent: str64(BigInt(stats.pagesSkippedParent ?? 0)), pages_written: str64(BigInt(stats.pagesWritten)),
    pages_lazy: str64(BigInt(stats.pagesLazy ?? 0)),
  }}, 'stats-dump.img')])
}

/** Write stats-restore.img (CRIU's restore statistics) into `dir`; returns its path. */
export function writeRestoreStats(dir: string, stats: RestoreStats): string {
  const path = join(dir, 'stats-restore.img')
  writeImage(path, 'stats', [encodeMessage('stats_entry', {restore: {
    pages_compared: str64(BigInt(stats.pagesCompared ?? 0)), pages_skipped_cow: str64(BigInt(stats.pagesSkippedCow ?? 0)),
    forking_time: (stats.forkingTime ?? 0) >>> 0, restore_time: stats.restoreTime >>> 0, pages_restored: str64(BigInt(stats.pagesRestored)),
  }}, 'stats-restore.img')])
  return path
}

function dumpStatsFrom(entry: Msg): DumpStats | undefined {
  if (!has(entry, 'dump')) return undefined
  const d = entry['dump'] as Msg
  const stats: DumpStats = {
    freezingTime: d['freezing_time'], frozenTime: d['frozen_time'], memdumpTime: d['memdump_time'], memwriteTime: d['memwrite_time'],
    pagesScanned: Number(big(d['pages_scanned'])), pagesWritten: Number(big(d['pages_written'])),
  }
  stats.pagesSkippedParent = Number(big(d['pages_skipped_parent']))
  stats.pagesLazy = Number(big(d['pages_lazy']))
  return stats
}

function restoreStatsFrom(entry: Msg): RestoreStats | undefined {
  if (!has(entry, 'restore')) return undefined
  const r = entry['restore'] as Msg
  return {
    restoreTime: r['restore_time'], pagesRestored: has(r, 'pages_restored') ? Number(big(r['pages_restored'])) : 0, forkingTime: r['forking_time'],
    pagesCompared: Number(big(r['pages_compared'])), pagesSkippedCow: Number(big(r['pages_skipped_cow'])),
  }
}

/** The dump and restore statistics a set holds, if any. */
export function readStats(at: ImagePath): {stats?: DumpStats; restoreStats?: RestoreStats} {
  const out: {stats?: DumpStats; restoreStats?: RestoreStats} = {}
  // CRIU names its service images without the .img suffix (stats-dump, stats-restore); cxlfork with it.
  const statsName = (kind: 'dump' | 'restore') => [`stats-${kind}.img`, `stats-${kind}`].find((name) => existsSync(at(name))) ?? `stats-${kind}.img`
  const dumpName = statsName('dump')
  const dumpStats = optionalImage(at(dumpName), () => dumpStatsFrom(only(readImage<Msg>(at(dumpName), 'stats'), dumpName)))
  if (dumpStats) out.stats = dumpStats
  const restoreName = statsName('restore')
  const restoreStats = optionalImage(at(restoreName), () => restoreStatsFrom(only(readImage<Msg>(at(restoreName), 'stats'), restoreName)))
  if (restoreStats) out.restoreStats = restoreStats
  return out
}

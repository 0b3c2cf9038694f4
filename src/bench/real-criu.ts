/**
 * Real CRIU (a CRIU 4.x binary) measured beside cxlfork's paths in the same run:
 * `criu dump` of a target of the size under test, then `criu restore -d` of that
 * image set, each as a whole command, with CRIU's own statistics (stats-dump:
 * frozen_time..., stats-restore: restore_time...) read from the images.
 *
 * CRIU restores a process with its original pid, so a dump that leaves the target
 * running cannot be restored beside it: the real-CRIU target is dumped (CRIU kills
 * it, as `criu dump` does by default), reaped, and restored as itself. The restored
 * process is the same target again (our child: the bench is a child subreaper), so
 * it serves the next repetition. It is a target of its own, not the one the other
 * paths checkpoint, whose later checkpoints would otherwise be of a CRIU-restored
 * process.
 */
import {accessSync, constants, mkdirSync, readdirSync, readFileSync, rmSync, statSync} from 'node:fs'
import {delimiter, join} from 'node:path'
import {spawnSync} from 'node:child_process'

import {CxlforkError, UsageError} from '../errors.js'
import {readImage} from '../criu/image-file.js'
import {big} from '../criu/values.js'
import {wait4} from '../sys/ptrace.js'
import {isAlive, readStatus} from '../sys/proc.js'
import {timedSpawn} from './measure.js'

/** A CRIU binary that the run measures. */
export interface RealCriu {
  bin: string
  /** As `criu --version` prints it, e.g. 4.2. */
  version: string
}

/** The probe's answer: a usable CRIU, or why none is measured. */
export type RealCriuProbe = {criu: RealCriu} | {missing: string}

/** The oldest CRIU whose images and options the real-CRIU rows rely on. */
export const MIN_CRIU_MAJOR = 4

function onPath(name: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') continue
    const candidate = join(dir, name)
    try {
      accessSync(candidate, constants.X_OK)
      if (statSync(candidate).isFile()) return candidate
    } catch {
      // not here
    }
  }
  return undefined
}

const lastLine = (text: string): string => text.trim().split('\n').filter(Boolean).pop() ?? ''

/** Why `bin` cannot be measured (not runnable, older than 4.x, `criu check` fails), or the CRIU it is. */
function check(bin: string): RealCriuProbe {
  const version = spawnSync(bin, ['--version'], {encoding: 'utf8', timeout: 10_000})
  if (version.error || version.status !== 0) {
    return {missing: `${bin} --version failed: ${version.error?.message ?? lastLine(version.stderr || version.stdout)}`}
  }
  const match = /Version:\s*(\d+)\.(\d+)(?:\.(\d+))?/.exec(version.stdout)
  if (!match) return {missing: `${bin} --version printed no version: ${lastLine(version.stdout)}`}
  const text = match.slice(1).filter((part) => part !== undefined).join('.')
  if (Number(match[1]) < MIN_CRIU_MAJOR) return {missing: `${bin} is CRIU ${text}; the real-CRIU rows need CRIU ${MIN_CRIU_MAJOR}.x or later`}
  const checked = spawnSync(bin, ['check'], {encoding: 'utf8', timeout: 60_000})
  if (checked.error || checked.status !== 0) {
    return {missing: `\`${bin} check\` failed (CRIU ${text}): ${checked.error?.message ?? lastLine(checked.stderr || checked.stdout)}`}
  }
  return {criu: {bin, version: text}}
}

/**
 * The CRIU to measure: `explicit` (--criu-bin), which must be usable (a typed error
 * otherwise), or else a `criu` on PATH that is 4.x or later and passes `criu check`;
 * with none, the reason, which the report prints.
 */
export function probeRealCriu(explicit?: string): RealCriuProbe {
  if (explicit !== undefined) {
    const probe = check(explicit)
    if ('missing' in probe) {
      throw new UsageError('CRIU_BIN_UNUSABLE', `--criu-bin ${explicit} cannot be measured: ${probe.missing}`,
        'Build CRIU 4.x (see the README, "Real CRIU"), run as root, and pass its criu binary; or leave --criu-bin out.')
    }
    return probe
  }
  const found = onPath('criu')
  if (found === undefined) return {missing: 'no criu on PATH and no --criu-bin given'}
  return check(found)
}

/** One real-CRIU repetition: whole commands (ms) and CRIU's statistics by their names (µs or counts). */
export interface RealCriuSample {
  dumpMs: number
  restoreMs: number
  /** Bytes of the image set (every file CRIU wrote but its logs). */
  imageBytes: number
  dumpStats: Record<string, number>
  restoreStats: Record<string, number>
  /** RssAnon of the restored process right after `criu restore` returned, kB. */
  rssAnonKb: number
}

const DUMP_STATS = ['freezing_time', 'frozen_time', 'memdump_time', 'memwrite_time', 'pages_scanned', 'pages_skipped_parent', 'pages_written', 'pages_lazy', 'page_pipes', 'page_pipe_bufs', 'shpages_scanned', 'shpages_skipped_parent', 'shpages_written']
const RESTORE_STATS = ['pages_compared', 'pages_skipped_cow', 'forking_time', 'restore_time', 'pages_restored']

/** The fields of CRIU's stats image `name` (stats-dump / stats-restore) in `dir`, as numbers. */
function readStats(dir: string, name: string, part: 'dump' | 'restore', fields: readonly string[]): Record<string, number> {
  const [entry] = readImage<Record<string, Record<string, unknown>>>(join(dir, name), 'stats')
  const stats = entry?.[part]
  if (!stats) throw new CxlforkError('BENCH_CRIU_FAILED', `${join(dir, name)} holds no ${part} statistics`)
  const out: Record<string, number> = {}
  for (const field of fields) if (Object.prototype.hasOwnProperty.call(stats, field)) out[field] = Number(big(stats[field]))
  return out
}

function logTail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').filter((line) => /Error|Warn/.test(line)).slice(-6).join('\n')
  } catch {
    return '(no log)'
  }
}

/**
 * Dump `pid` (our child) into `dir` with real CRIU and restore it from there: on return the
 * target runs again, restored, under the same pid; `dir` is removed. Throws BENCH_CRIU_FAILED
 * with CRIU's last errors if either command fails or the restored process is not running.
 */
export function realCriuCycle(criu: RealCriu, pid: number, dir: string, beforeStep: () => void = () => {}): RealCriuSample {
  mkdirSync(dir, {recursive: true, mode: 0o700})
  try {
    // --shell-job: the target shares the bench's session and process group, as a job of a shell does.
    beforeStep()
    const dump = timedSpawn([criu.bin, 'dump', '-t', String(pid), '-D', dir, '--shell-job', '-o', 'dump.log'])
    if (dump.status !== 0) throw new CxlforkError('BENCH_CRIU_FAILED', `${criu.bin} dump -t ${pid} exited with ${dump.status}:\n${logTail(join(dir, 'dump.log'))}`)
    // CRIU killed the dumped target; it is our child: reap it so its pid is free for the restore.
    try {
      wait4(pid, 0)
    } catch {
      // already reaped
    }
    const imageBytes = readdirSync(dir).filter((name) => !name.endsWith('.log')).reduce((sum, name) => sum + statSync(join(dir, name)).size, 0)
    beforeStep()
    const restore = timedSpawn([criu.bin, 'restore', '-D', dir, '-d', '--shell-job', '-o', 'restore.log'])
    if (restore.status !== 0) throw new CxlforkError('BENCH_CRIU_FAILED', `${criu.bin} restore -D ${dir} exited with ${restore.status}:\n${logTail(join(dir, 'restore.log'))}`)
    if (!isAlive(pid)) throw new CxlforkError('BENCH_CLONE_DIED', `process ${pid} restored by ${criu.bin} is not running`)
    const rssAnonKb = readStatus(pid).rssAnon / 1024
    return {
      dumpMs: dump.ms, restoreMs: restore.ms, imageBytes, rssAnonKb,
      dumpStats: readStats(dir, 'stats-dump', 'dump', DUMP_STATS), restoreStats: readStats(dir, 'stats-restore', 'restore', RESTORE_STATS),
    }
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
}

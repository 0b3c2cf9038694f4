/**
 * Per-clone cgroups for the porter: each ghost is placed in a cgroup of its
 * own, under a parent the porter owns, and a restore may set memory and CPU
 * limits on it (CXLporter's containers).
 *
 * Where: under the porter's own cgroup in each hierarchy (never above it: a
 * porter must not move its clones out of the limits its caller lives in),
 * in a directory `cxlfork-TAG` (TAG: of the porter's socket), each clone's
 * as `cN-PID`, names made by the porter only. Which hierarchies: cgroup v2
 * when its parent offers the memory and cpu controllers; otherwise the v1
 * `memory` and `cpu` hierarchies, plus the v2 tree without controllers,
 * which still groups a clone's processes (cgroup.kill). What the host
 * allows is detected at start and said in `porter status`; a limit the host
 * cannot enforce is refused (CGROUP_UNAVAILABLE), never dropped.
 *
 * Cleanup: a clone's cgroup is removed when it is reaped; the ghosts' and
 * every empty one at stop; a starting porter removes what a SIGKILLed one
 * left (rmdir removes only empty cgroups, so a released clone still running
 * keeps its own and its limits, and the next sweep takes it once it ends).
 */
import {lstatSync, mkdirSync, readdirSync, readFileSync, rmdirSync, rmSync, writeFileSync} from 'node:fs'
import {join} from 'node:path'

import {UnsupportedError, UsageError} from '../errors.js'

export interface CgroupLimits {
  /** Bytes. */
  memoryMax?: number
  /** CPUs (0.5: half of one CPU). */
  cpuMax?: number
}

export interface CgroupSupport {
  /** Which hierarchy enforces memory / cpu limits, or null. */
  memory: 'v2' | 'v1' | null
  cpu: 'v2' | 'v1' | null
  /** Parent directories, one per hierarchy used. */
  parents: string[]
  /** Why something is missing (or why cgroups are off). */
  notes: string[]
}

/** A clone's (or ghost's) cgroup: one directory per hierarchy used. */
export interface CloneCgroup {
  name: string
  dirs: {v2?: string; memory?: string; cpu?: string}
}

const CPU_PERIOD_US = 100_000
const NAME = /^c\d+-\d+$/

interface Mounts {
  v2?: string
  v1: Map<string, string>
}

function mounts(): Mounts {
  const found: Mounts = {v1: new Map()}
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const [, where, type, options] = line.split(' ')
    if (!where || !options) continue
    if (type === 'cgroup2' && found.v2 === undefined) found.v2 = where
    if (type === 'cgroup') for (const option of options.split(',')) if (option === 'memory' || option === 'cpu') found.v1.set(option, where)
  }
  return found
}

/** Our own cgroup path in each hierarchy: '' for v2, the controller names for v1. */
function ownPaths(): Map<string, string> {
  const paths = new Map<string, string>()
  for (const line of readFileSync('/proc/self/cgroup', 'utf8').split('\n')) {
    const match = /^\d+:([^:]*):(.*)$/.exec(line)
    if (!match) continue
    for (const controller of match[1] === '' ? [''] : match[1]!.split(',')) paths.set(controller, match[2]!)
  }
  return paths
}

function readOr(path: string, fallback = ''): string {
  try {
    return readFileSync(path, 'utf8').trim()
  } catch {
    return fallback
  }
}

/** Make (or take over) the porter's parent directory: a real directory of ours, nothing planted. */
function ownParent(dir: string): string | undefined {
  try {
    mkdirSync(dir, {mode: 0o755})
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') return `cannot create ${dir}: ${(error as Error).message}`
  }
  const stat = lstatSync(dir)
  if (!stat.isDirectory() || stat.uid !== (process.geteuid?.() ?? 0)) return `${dir} exists and is not a cgroup directory of uid ${process.geteuid?.()}`
  return undefined
}

export class PorterCgroups {
  readonly support: CgroupSupport
  private readonly parent: {v2?: string; memory?: string; cpu?: string} = {}
  private next = 0

  /**
   * `tag` names the porter's parent directory; `enabled` false: no cgroups (porter start --no-cgroups).
   * `recordPath`: where the parents are written down, for `pool gc` after a SIGKILLed porter.
   */
  constructor(tag: string, enabled = true, private readonly recordPath?: string) {
    this.support = {memory: null, cpu: null, parents: [], notes: []}
    if (!enabled) {
      this.support.notes.push('cgroups are off (porter start --no-cgroups)')
      return
    }
    let found: Mounts
    let own: Map<string, string>
    try {
      found = mounts()
      own = ownPaths()
    } catch (error) {
      this.support.notes.push(`cannot read the cgroup mounts: ${(error as Error).message}`)
      return
    }
    const leaf = `cxlfork-${tag}`
    if (found.v2 !== undefined && own.has('')) {
      const dir = join(found.v2, own.get('')!, leaf)
      const refused = ownParent(dir)
      if (refused) this.support.notes.push(`cgroup v2: ${refused}`)
      else {
        this.parent.v2 = dir
        const offered = readOr(join(dir, 'cgroup.controllers')).split(/\s+/)
        const wanted = ['memory', 'cpu'].filter((c) => offered.includes(c))
        // Enabled for our children; a parent that keeps them to itself leaves them off here.
        for (const controller of wanted) {
          try {
            writeFileSync(join(dir, 'cgroup.subtree_control'), `+${controller}`)
          } catch {
            // not delegated to us
          }
        }
        const enabled = readOr(join(dir, 'cgroup.subtree_control')).split(/\s+/)
        if (enabled.includes('memory')) this.support.memory = 'v2'
        if (enabled.includes('cpu')) this.support.cpu = 'v2'
        if (!this.support.memory || !this.support.cpu) this.support.notes.push(`cgroup v2 at ${found.v2} offers ${offered.filter(Boolean).join(', ') || 'no controllers'} here: ${[this.support.memory ? '' : 'memory', this.support.cpu ? '' : 'cpu'].filter(Boolean).join(' and ')} from v1 if mounted`)
      }
    } else this.support.notes.push('no cgroup v2 mounted')
    for (const controller of ['memory', 'cpu'] as const) {
      if (this.support[controller] !== null) continue
      const mount = found.v1.get(controller)
      if (mount === undefined || !own.has(controller)) {
        this.support.notes.push(`no ${controller} controller: ${controller} limits are refused`)
        continue
      }
      const dir = join(mount, own.get(controller)!, leaf)
      const refused = ownParent(dir)
      if (refused) {
        this.support.notes.push(`cgroup v1 ${controller}: ${refused}; ${controller} limits are refused`)
        continue
      }
      this.parent[controller] = dir
      this.support[controller] = 'v1'
    }
    this.support.parents = [...new Set(Object.values(this.parent))]
    if (recordPath !== undefined && this.enabled) writeFileSync(recordPath, JSON.stringify(this.support.parents), {mode: 0o600})
  }

  get enabled(): boolean {
    return this.support.parents.length > 0
  }

  /** A new cgroup for `pid` (a ghost or stub just spawned), or undefined when the host gives none. */
  place(pid: number): CloneCgroup | undefined {
    if (!this.enabled) return undefined
    const name = `c${this.next++}-${pid}`
    const cgroup: CloneCgroup = {name, dirs: {}}
    try {
      for (const [key, parent] of Object.entries(this.parent) as [keyof CloneCgroup['dirs'], string][]) {
        const dir = join(parent, name)
        if (!Object.values(cgroup.dirs).includes(dir)) mkdirSync(dir)
        cgroup.dirs[key] = dir
        writeFileSync(join(dir, 'cgroup.procs'), String(pid))
      }
      return cgroup
    } catch (error) {
      this.remove(cgroup)
      throw error
    }
  }

  /** Refuse limits the host cannot enforce (before any work is done). */
  check(limits: CgroupLimits): void {
    if (limits.memoryMax !== undefined) {
      if (!Number.isSafeInteger(limits.memoryMax) || limits.memoryMax < 1 << 20) throw new UsageError('INVALID_LIMIT', `memory limit ${limits.memoryMax} is not a size of at least 1 MiB`, 'Give --memory-max as a size, e.g. 256M or 2G.')
      if (this.support.memory === null) throw this.unavailable('memory')
    }
    if (limits.cpuMax !== undefined) {
      if (!Number.isFinite(limits.cpuMax) || limits.cpuMax < 0.01 || limits.cpuMax > 1024) throw new UsageError('INVALID_LIMIT', `CPU limit ${limits.cpuMax} is not a number of CPUs between 0.01 and 1024`, 'Give --cpu-max as CPUs, e.g. 0.5 for half of one.')
      if (this.support.cpu === null) throw this.unavailable('cpu')
    }
  }

  private unavailable(controller: string): UnsupportedError {
    return new UnsupportedError('CGROUP_UNAVAILABLE', `this porter cannot limit ${controller}: ${this.support.notes.join('; ') || 'no cgroup'}`,
      'Restore without the limit, or run the porter as root on a host with the memory and cpu cgroup controllers (v2 delegated, or v1 mounted).')
  }

  /** Write `limits` into the clone's cgroup. */
  apply(cgroup: CloneCgroup | undefined, limits: CgroupLimits): void {
    this.check(limits)
    if (limits.memoryMax === undefined && limits.cpuMax === undefined) return
    if (!cgroup) throw this.unavailable(limits.memoryMax === undefined ? 'cpu' : 'memory')
    if (limits.memoryMax !== undefined) {
      if (this.support.memory === 'v2') writeFileSync(join(cgroup.dirs.v2!, 'memory.max'), String(limits.memoryMax))
      else writeFileSync(join(cgroup.dirs.memory!, 'memory.limit_in_bytes'), String(limits.memoryMax))
    }
    if (limits.cpuMax !== undefined) {
      const quota = Math.max(1000, Math.round(limits.cpuMax * CPU_PERIOD_US))
      if (this.support.cpu === 'v2') writeFileSync(join(cgroup.dirs.v2!, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`)
      else {
        writeFileSync(join(cgroup.dirs.cpu!, 'cpu.cfs_period_us'), String(CPU_PERIOD_US))
        writeFileSync(join(cgroup.dirs.cpu!, 'cpu.cfs_quota_us'), String(quota))
      }
    }
  }

  /** rmdir the clone's cgroup directories; false if one still holds a process. */
  remove(cgroup: CloneCgroup | undefined): boolean {
    if (!cgroup) return true
    let gone = true
    for (const dir of new Set(Object.values(cgroup.dirs))) {
      try {
        rmdirSync(dir)
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') gone = false
      }
    }
    return gone
  }

  /**
   * Remove every empty cgroup of ours not in `keep` (names): those of dead
   * clones, and what a SIGKILLed porter left. Returns how many were removed.
   */
  sweep(keep: ReadonlySet<string> = new Set()): number {
    return sweepParents(this.support.parents, keep)
  }

  /** At stop: sweep, then the parents themselves if nothing is left in them. */
  close(): void {
    this.sweep()
    let left = 0
    for (const parent of this.support.parents) {
      try {
        rmdirSync(parent)
      } catch (error) {
        // a released clone still runs in a cgroup of ours: its limits stay, the next porter or `pool gc` sweeps it
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT') left++
      }
    }
    if (left === 0 && this.recordPath !== undefined) rmSync(this.recordPath, {force: true})
  }
}

/** rmdir every empty `cN-PID` cgroup under `parents` (not in `keep`); a busy one holds a running clone. */
function sweepParents(parents: readonly string[], keep: ReadonlySet<string> = new Set()): number {
  let removed = 0
  for (const parent of parents) {
    let entries: string[]
    try {
      entries = readdirSync(parent)
    } catch {
      continue
    }
    for (const entry of entries) {
      if (!NAME.test(entry) || keep.has(entry)) continue
      try {
        rmdirSync(join(parent, entry))
        removed++
      } catch {
        // busy: a clone still runs in it
      }
    }
  }
  return removed
}

/**
 * `pool gc` for a porter that is not running (SIGKILLed): the empty cgroups
 * under the parents it wrote down at `recordPath`, and the parents once
 * empty. Only directories of our own uid are touched. Returns how many went.
 */
export function sweepRecorded(recordPath: string): number {
  let parents: unknown
  try {
    parents = JSON.parse(readFileSync(recordPath, 'utf8'))
  } catch {
    return 0
  }
  if (!Array.isArray(parents)) return 0
  const ours = parents.filter((parent): parent is string => {
    if (typeof parent !== 'string' || !/\/cxlfork-[0-9a-f]+$/.test(parent)) return false
    try {
      const stat = lstatSync(parent)
      return stat.isDirectory() && stat.uid === (process.geteuid?.() ?? 0)
    } catch {
      return false
    }
  })
  const removed = sweepParents(ours)
  let left = 0
  for (const parent of ours) {
    try {
      rmdirSync(parent)
    } catch {
      left++
    }
  }
  if (left === 0) rmSync(recordPath, {force: true})
  return removed
}


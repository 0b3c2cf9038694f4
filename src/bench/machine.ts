import {readFileSync} from 'node:fs'
import {cpus, loadavg, release, totalmem} from 'node:os'

import type {MachineInfo} from './types.js'

function read(path: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch {
    return ''
  }
}

/** /proc/stat counts CPU time in USER_HZ ticks, 100 per second on Linux. */
const MS_PER_TICK = 10

/**
 * CPU time the hypervisor ran something else while this VM wanted the CPU
 * ("steal", all cores together), in ms since boot; 0 where not reported.
 */
export function stealMs(): number {
  const fields = /^cpu\s+(.+)$/m.exec(read('/proc/stat'))?.[1]?.trim().split(/\s+/)
  return Number(fields?.[7] ?? 0) * MS_PER_TICK
}

/** `at`: the load average and steal when the run started. */
export function machineInfo(at: {load: number; stealMs: number}): MachineInfo {
  const cpu = /^model name\s*:\s*(.+)$/m.exec(read('/proc/cpuinfo'))?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown'
  const thp = /\[(\w+)\]/.exec(read('/sys/kernel/mm/transparent_hugepage/enabled'))?.[1] ?? 'unknown'
  return {
    cpu, cores: cpus().length, ramBytes: totalmem(), kernel: release(), node: process.version, thp,
    loadAverage: [at.load, Math.round(loadavg()[0]! * 100) / 100], stealMs: stealMs() - at.stealMs,
  }
}

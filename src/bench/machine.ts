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

export function machineInfo(loadAtStart: number): MachineInfo {
  const cpu = /^model name\s*:\s*(.+)$/m.exec(read('/proc/cpuinfo'))?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown'
  const thp = /\[(\w+)\]/.exec(read('/sys/kernel/mm/transparent_hugepage/enabled'))?.[1] ?? 'unknown'
  return {cpu, cores: cpus().length, ramBytes: totalmem(), kernel: release(), node: process.version, thp, loadAverage: [loadAtStart, Math.round(loadavg()[0]! * 100) / 100]}
}

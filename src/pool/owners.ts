/**
 * Who holds a build slot or a reference: (host index, pid, process start
 * time), and whether that process still exists.
 *
 * Owner word (u64): high 32 bits are the slot's payload (a build slot's
 * generation, a reference's checkpoint serial); low 32 bits are
 * (host index + 1) << 22 | pid, zero when the slot is free. pid_max is at
 * most 2^22 on Linux, so a pid always fits.
 */
import {readFileSync, statSync} from 'node:fs'

import type {HostTable} from './hosts.js'

const PID_BITS = 22
const PID_MASK = (1 << PID_BITS) - 1
export const MAX_HOST_INDEX = (1 << (32 - PID_BITS)) - 2

export interface Owner {
  hostIndex: number
  pid: number
}

export function encodeOwner(payload: number, owner: Owner): bigint {
  const low = (((owner.hostIndex + 1) << PID_BITS) | owner.pid) >>> 0
  return (BigInt(payload >>> 0) << 32n) | BigInt(low)
}

export function ownerPayload(word: bigint): number {
  return Number(word >> 32n)
}

/** The owner in a word, or undefined when the slot is free. */
export function decodeOwner(word: bigint): Owner | undefined {
  const low = Number(word & 0xffffffffn)
  if (low === 0) return undefined
  return {hostIndex: (low >>> PID_BITS) - 1, pid: low & PID_MASK}
}

/** Field 22 of /proc/PID/stat (clock ticks after boot), or undefined when no such process exists. */
export function processStartTime(pid: number): number | undefined {
  const path = `/proc/${pid}/stat`
  // Most recorded owners a scan meets are long gone: find that out without a thrown ENOENT, which costs
  // ~30 us in Node, against ~3 us for the stat (a porter's pool holds hundreds of dead clones' references).
  if (!statSync(path, {throwIfNoEntry: false})) return undefined
  let stat: string
  try {
    stat = readFileSync(path, 'latin1')
  } catch {
    return undefined
  }
  // comm may contain spaces and parentheses: fields resume after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const startTime = Number(fields[19])
  // A zombie still has a stat file; it will never map anything again.
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined
  return Number.isFinite(startTime) ? startTime : undefined
}

/** Decides whether recorded owners are alive, from the point of view of one host. */
export class Liveness {
  constructor(private readonly hosts: HostTable, readonly selfHostIndex: number, private readonly nowMs: () => number = Date.now) {}

  /**
   * Same host: the pid exists with the recorded start time (a start time of 0
   * means "not written yet" and counts as alive). Other host: its lease runs.
   */
  isAlive(owner: Owner, startTime: number): boolean {
    if (owner.hostIndex === this.selfHostIndex) {
      const actual = processStartTime(owner.pid)
      if (actual === undefined) return false
      return startTime === 0 || actual === startTime
    }
    if (!this.hosts.isClaimed(owner.hostIndex)) return false
    return this.hosts.leaseExpiresAtMs(owner.hostIndex) > this.nowMs()
  }
}

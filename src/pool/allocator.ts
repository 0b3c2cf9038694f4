/**
 * Serials, build slots and unit allocation.
 *
 * A serial names one build, never reused: (build slot index << 24 | the slot's
 * generation). Claiming a build slot bumps its generation in the same CAS that
 * records the owner, so a serial becomes visible in the pool at the very
 * instant it exists; there is no window in which units could carry a serial
 * that gc cannot attribute.
 *
 * A unit (2 MiB data segment or 4 KiB metadata page) state word is 0 when
 * free, else the serial owning it. Allocating is CAS 0 -> serial on each unit
 * of a run; freeing is CAS serial -> 0, which can never hit a later owner.
 */
import {ConflictError} from '../errors.js'
import type {Owner} from './owners.js'
import {decodeOwner, encodeOwner, ownerPayload} from './owners.js'
import type {PoolRegions} from './regions.js'

const GENERATION_BITS = 24
const MAX_GENERATION = (1 << GENERATION_BITS) - 1

export function makeSerial(slot: number, generation: number): number {
  return ((slot << GENERATION_BITS) | generation) >>> 0
}

export function serialSlot(serial: number): number {
  return serial >>> GENERATION_BITS
}

export function serialGeneration(serial: number): number {
  return serial & MAX_GENERATION
}

/** A serial that some build slot could have issued. */
export function isPlausibleSerial(serial: number, buildSlots: number): boolean {
  return serialGeneration(serial) !== 0 && serialSlot(serial) < buildSlots
}

export interface BuildSlotState {
  slot: number
  word: bigint
  generation: number
  owner: Owner | undefined
  startTime: number
}

export class BuildSlots {
  constructor(private readonly regions: PoolRegions) {}

  get count(): number {
    return this.regions.layout.buildSlots
  }

  read(slot: number): BuildSlotState {
    const word = Atomics.load(this.regions.buildSlots, slot * 2)
    return {slot, word, generation: ownerPayload(word) & MAX_GENERATION, owner: decodeOwner(word),
      startTime: Number(Atomics.load(this.regions.buildSlots, slot * 2 + 1))}
  }

  /** Claim a free slot for `owner`; returns the slot and the new build's serial. */
  claim(owner: Owner, startTime: number, firstSlot: number): {slot: number; word: bigint; serial: number} | undefined {
    for (let probe = 0; probe < this.count; probe++) {
      const slot = (firstSlot + probe) % this.count
      const word = Atomics.load(this.regions.buildSlots, slot * 2)
      if (decodeOwner(word) !== undefined) continue
      const generation = ownerPayload(word)
      if (generation >= MAX_GENERATION) continue // this slot has issued all its serials
      const claimed = encodeOwner(generation + 1, owner)
      if (Atomics.compareExchange(this.regions.buildSlots, slot * 2, word, claimed) !== word) continue
      Atomics.store(this.regions.buildSlots, slot * 2 + 1, BigInt(startTime))
      return {slot, word: claimed, serial: makeSerial(slot, generation + 1)}
    }
    return undefined
  }

  /**
   * Free the slot if it still holds `word`. The start time is cleared first:
   * a later owner's start time then reads 0 ("alive") until it writes its own,
   * never a stale value that would make it look dead.
   */
  release(slot: number, word: bigint): boolean {
    if (Atomics.load(this.regions.buildSlots, slot * 2) !== word) return false
    Atomics.store(this.regions.buildSlots, slot * 2 + 1, 0n)
    const free = BigInt(ownerPayload(word)) << 32n
    return Atomics.compareExchange(this.regions.buildSlots, slot * 2, word, free) === word
  }
}

/**
 * Claim `count` contiguous free units for `serial`, first fit from `hint`
 * (wrapping once). Returns the first unit index, or undefined when no run of
 * that length is free. A lost CAS rolls back the units taken so far.
 */
export function allocateRun(states: Uint32Array, count: number, serial: number, hint: number): number | undefined {
  const total = states.length
  if (count <= 0 || count > total) return undefined
  const tryRange = (from: number, to: number): number | undefined => {
    let start = from
    while (start + count <= to) {
      let blocked = -1
      for (let i = start; i < start + count; i++) {
        if (Atomics.load(states, i) !== 0) {
          blocked = i
          break
        }
      }
      if (blocked >= 0) {
        start = blocked + 1
        continue
      }
      let taken = start
      while (taken < start + count && Atomics.compareExchange(states, taken, 0, serial) === 0) taken++
      if (taken === start + count) return start
      for (let i = start; i < taken; i++) Atomics.compareExchange(states, i, serial, 0)
      start = taken + 1
    }
    return undefined
  }
  const from = Math.min(Math.max(hint, 0), total)
  return tryRange(from, total) ?? tryRange(0, Math.min(total, from + count - 1))
}

/**
 * Free every unit owned by `serial`; `beforeFree` runs while the unit is still
 * owned (to punch its hole before anyone else can allocate and write it).
 */
export function freeUnitsOf(states: Uint32Array, serial: number, beforeFree?: (unit: number) => void): number {
  let freed = 0
  for (let unit = 0; unit < states.length; unit++) {
    if (Atomics.load(states, unit) !== serial) continue
    beforeFree?.(unit)
    if (Atomics.compareExchange(states, unit, serial, 0) === serial) freed++
  }
  return freed
}

export function poolFull(what: string, hint?: string): ConflictError {
  return new ConflictError('POOL_FULL', `the pool has no room for ${what}`,
    hint ?? 'Remove checkpoints with `cxlfork rm`, run `cxlfork pool gc`, or create a larger pool.')
}

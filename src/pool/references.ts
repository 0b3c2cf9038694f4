/**
 * References: one slot per running clone that maps a checkpoint, recording
 * (checkpoint serial, host, pid, start time). A checkpoint with a live
 * reference is never freed; references of dead clones are released by gc.
 *
 * Slot: u64 owner word (serial << 32 | owner, see owners.ts; 0 = free),
 * u64 start time of the clone (0 until written, read as "alive").
 */
import {ConflictError} from '../errors.js'
import type {Owner} from './owners.js'
import {decodeOwner, encodeOwner, ownerPayload} from './owners.js'
import type {PoolCatalog} from './catalog.js'
import type {ReferenceInfo} from './types.js'

export interface ReferenceHandle {
  slot: number
  word: bigint
  serial: number
  name: string
  pid: number
}

export interface ReferenceSlot {
  slot: number
  word: bigint
  serial: number
  owner: Owner
  startTime: number
}

export class References {
  constructor(private readonly pool: PoolCatalog) {}

  private get words(): BigUint64Array {
    return this.pool.regions.refSlots
  }

  get count(): number {
    return this.pool.header.refSlots
  }

  read(slot: number): ReferenceSlot | undefined {
    const word = Atomics.load(this.words, slot * 2)
    const owner = decodeOwner(word)
    if (!owner) return undefined
    return {slot, word, serial: ownerPayload(word), owner, startTime: Number(Atomics.load(this.words, slot * 2 + 1))}
  }

  *occupied(): Generator<ReferenceSlot> {
    // Most slots are empty: test both halves of each owner word as u32 (no BigInt
    // per slot), then read occupied ones atomically.
    const words = this.words
    const halves = new Uint32Array(words.buffer, words.byteOffset, words.length * 2)
    for (let slot = 0; slot < this.count; slot++) {
      if ((halves[slot * 4]! | halves[slot * 4 + 1]!) === 0) continue
      const reference = this.read(slot)
      if (reference) yield reference
    }
  }

  isAlive(reference: ReferenceSlot): boolean {
    return this.pool.liveness.isAlive(reference.owner, reference.startTime)
  }

  claim(serial: number, name: string, pid: number, startTime: number): ReferenceHandle {
    const word = encodeOwner(serial, {hostIndex: this.pool.hostIndex, pid})
    const first = Math.floor(Math.random() * this.count)
    for (let attempt = 0; attempt < 2; attempt++) {
      for (let probe = 0; probe < this.count; probe++) {
        const slot = (first + probe) % this.count
        if (Atomics.load(this.words, slot * 2) !== 0n) continue
        if (Atomics.compareExchange(this.words, slot * 2, 0n, word) !== 0n) continue
        Atomics.store(this.words, slot * 2 + 1, BigInt(startTime))
        return {slot, word, serial, name, pid}
      }
      this.collectAll() // full: references of dead clones come back
    }
    throw new ConflictError('REFERENCES_FULL', `all ${this.count} reference slots of pool ${this.pool.path} are in use`,
      'Too many clones are running from this pool; stop some or run `cxlfork pool gc`.')
  }

  /** Release a slot if it still holds `word`; the start time is cleared first (see BuildSlots.release). */
  releaseSlot(slot: number, word: bigint): boolean {
    if (Atomics.load(this.words, slot * 2) !== word) return false
    Atomics.store(this.words, slot * 2 + 1, 0n)
    return Atomics.compareExchange(this.words, slot * 2, word, 0n) === word
  }

  release(handle: ReferenceHandle): void {
    this.releaseSlot(handle.slot, handle.word)
  }

  /** Release every dead reference; returns how many were released and the live count per serial. */
  collectAll(): {released: number; live: Map<number, number>} {
    let released = 0
    const live = new Map<number, number>()
    for (const reference of this.occupied()) {
      if (this.isAlive(reference)) live.set(reference.serial, (live.get(reference.serial) ?? 0) + 1)
      else if (this.releaseSlot(reference.slot, reference.word)) released++
    }
    return {released, live}
  }

  /** Release dead references to `serial`; returns how many live ones remain. */
  collect(serial: number): number {
    let live = 0
    for (const reference of this.occupied()) {
      if (reference.serial !== serial) continue
      if (this.isAlive(reference)) live++
      else this.releaseSlot(reference.slot, reference.word)
    }
    return live
  }

  /** Live references to `serial`, without releasing anything: the liveness of other checkpoints' clones is not looked up. */
  liveCount(serial: number): number {
    let live = 0
    for (const reference of this.occupied()) if (reference.serial === serial && this.isAlive(reference)) live++
    return live
  }

  /** Live references per serial, without releasing anything. */
  liveCounts(): Map<number, number> {
    const live = new Map<number, number>()
    for (const reference of this.occupied()) {
      if (this.isAlive(reference)) live.set(reference.serial, (live.get(reference.serial) ?? 0) + 1)
    }
    return live
  }

  describe(serial: number): ReferenceInfo[] {
    const references: ReferenceInfo[] = []
    for (const reference of this.occupied()) {
      if (reference.serial !== serial) continue
      references.push({slot: reference.slot, hostIndex: reference.owner.hostIndex,
        hostname: this.pool.hosts.describe(reference.owner.hostIndex)?.hostname ?? '?',
        pid: reference.owner.pid, startTime: reference.startTime, alive: this.isAlive(reference),
        local: reference.owner.hostIndex === this.pool.hostIndex})
    }
    return references
  }
}

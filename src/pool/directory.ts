/**
 * The directory: open-addressed u64 words, probed linearly from
 * CRC-32(name). A word is
 *
 *   bits 63..62 state (0 empty, 1 published, 2 deleting, 3 tombstone)
 *   bits 61..32 metadata page index of the descriptor
 *   bits 31..0  serial of the checkpoint
 *
 * Publishing is one CAS of a free word, under the directory lock
 * (directory-lock.ts): the single commit point. The publisher first walks
 * the name's probe chain up to its first empty word, refusing the name if a
 * live entry carries it, and then fills the first free word it passed: a
 * tombstone is reused in place, so deleted names do not wear the directory
 * out. A live entry never becomes empty, so lookups (which take no lock and
 * stop at the first empty word) always reach it. A tombstone becomes empty
 * again only under the lock and only when the words after it up to an empty
 * one are all tombstones: every probe that passed it would have stopped at
 * that empty word anyway.
 *
 * A reused word names another checkpoint: its serial (never reissued, see
 * allocator.ts) differs, so anyone holding the old word sees the change in
 * every CAS or comparison of the whole word, and a descriptor read through
 * the old word fails its serial check.
 */
import {crc32} from './checksum.js'
import type {PoolRegions} from './regions.js'

export const EntryState = {empty: 0, published: 1, deleting: 2, tombstone: 3} as const
export type EntryStateValue = (typeof EntryState)[keyof typeof EntryState]

export interface DirectoryEntry {
  state: EntryStateValue
  descriptorPage: number
  serial: number
}

const PAGE_MASK = (1n << 30n) - 1n

export function encodeEntry(entry: DirectoryEntry): bigint {
  return (BigInt(entry.state) << 62n) | ((BigInt(entry.descriptorPage) & PAGE_MASK) << 32n) | BigInt(entry.serial >>> 0)
}

export function decodeEntry(word: bigint): DirectoryEntry {
  return {state: Number(word >> 62n) as EntryStateValue, descriptorPage: Number((word >> 32n) & PAGE_MASK),
    serial: Number(word & 0xffffffffn)}
}

/** An entry that owns its serial's units: published or being deleted. */
export function isLive(entry: DirectoryEntry): boolean {
  return entry.state === EntryState.published || entry.state === EntryState.deleting
}

export function withState(word: bigint, state: EntryStateValue): bigint {
  return (word & ~(3n << 62n)) | (BigInt(state) << 62n)
}

export class Directory {
  constructor(private readonly regions: PoolRegions) {}

  get slots(): number {
    return this.regions.directory.length
  }

  home(name: string): number {
    return crc32(new TextEncoder().encode(name)) % this.slots
  }

  load(index: number): bigint {
    return Atomics.load(this.regions.directory, index)
  }

  /** CAS one word; true when it held `expected`. */
  swap(index: number, expected: bigint, next: bigint): boolean {
    return Atomics.compareExchange(this.regions.directory, index, expected, next) === expected
  }

  /** Slot indexes in probe order for `name`: the whole ring, from its home; callers stop at the first empty word. */
  *probe(name: string): Generator<number> {
    const home = this.home(name)
    for (let step = 0; step < this.slots; step++) yield (home + step) % this.slots
  }

  /** Every non-empty word with its index. */
  *occupied(): Generator<{index: number; word: bigint; entry: DirectoryEntry}> {
    for (let index = 0; index < this.slots; index++) {
      const word = this.load(index)
      if (word !== 0n) yield {index, word, entry: decodeEntry(word)}
    }
  }

  /**
   * Turn the tombstones just before the empty word `empty` back into empty
   * words, walking backwards until a word that is not a tombstone. Only
   * under the directory lock (no publisher may fill `empty` meanwhile).
   * Returns how many words were emptied.
   */
  sweepBefore(empty: number): number {
    let cleared = 0
    for (let step = 1; step < this.slots; step++) {
      const index = (empty - step + this.slots) % this.slots
      const word = this.load(index)
      if (word === 0n || decodeEntry(word).state !== EntryState.tombstone) break
      if (!this.swap(index, word, 0n)) break
      cleared++
    }
    return cleared
  }

  /** sweepBefore every empty word: every tombstone that no live entry follows in its run. Under the directory lock. */
  sweepAll(): number {
    let cleared = 0
    for (let index = 0; index < this.slots; index++) {
      if (this.load(index) === 0n && this.load((index + this.slots - 1) % this.slots) !== 0n) cleared += this.sweepBefore(index)
    }
    return cleared
  }
}

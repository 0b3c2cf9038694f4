/**
 * The directory: open-addressed u64 words, probed linearly from
 * CRC-32(name). A word is
 *
 *   bits 63..62 state (0 empty, 1 published, 2 deleting, 3 tombstone)
 *   bits 61..32 metadata page index of the descriptor
 *   bits 31..0  serial of the checkpoint
 *
 * Publishing is one CAS of an EMPTY word: the single commit point. Inserts
 * only ever fill the first empty word of a probe chain and entries never
 * become empty again (deletion leaves a tombstone), so two publishers of the
 * same name always race for the same word and the loser sees the winner.
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

  /** Slot indexes in probe order for `name`, up to and including the first empty word. */
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
}

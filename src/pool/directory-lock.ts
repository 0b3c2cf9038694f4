/**
 * The directory lock: one owner word in the counters page that serializes
 * every change to which checkpoint a directory word names. Held for
 * microseconds by
 *
 *   - a publisher, from its uniqueness check of the name through the CAS that
 *     fills the first free word of the probe chain, a tombstone included
 *     (tombstones are reused in place), and the sweep of that chain's tail;
 *   - `rm`, from its count of live references through the flip of the entry
 *     to DELETING (so a refused rm never shows a restore a DELETING entry);
 *   - a restorer, from its check that the entry it opened is still the same
 *     published word through the claim of its reference;
 *   - gc, while it turns tombstones followed by an empty word back into empty
 *     words (tombstone -> empty changes no lookup's result only while no
 *     publisher fills that empty word meanwhile).
 *
 * Readers (lookup, list, open) take no lock: every word they act on is
 * re-checked by CAS or by comparing the whole word (state, descriptor page
 * and the never-reused serial), so a slot reused under them reads as changed.
 *
 * Words (u64, counters page): 0 holder word, (generation << 32) | owner as in
 * owners.ts, owner 0 when free; 1 holder's process start time (0 until
 * written, read as "alive"); 2 next in line, (ms stamp << 32) | owner: a
 * process that has waited claims it and refreshes it while it waits, and
 * others leave a free lock to it while the stamp is fresh (NEXT_FRESH_MS),
 * so a process taking the lock in a loop cannot starve a waiter. The stamp
 * only ever decides who goes first, never whether two hold the lock. Nothing the lock protects spans more than one
 * CAS, so a holder that dies leaves the directory consistent and the next
 * process breaks its lock: on the same host once its pid and start time are
 * gone, from another host once its host's lease ran out or the same holder
 * word has been seen for REMOTE_STALE_MS.
 */
import {ConflictError} from '../errors.js'
import type {Owner} from './owners.js'
import {decodeOwner, encodeOwner, ownerPayload, processStartTime} from './owners.js'
import type {PoolCatalog} from './catalog.js'

/** A holder of another host seen holding the same word this long is taken for dead (holds last microseconds). */
export const REMOTE_STALE_MS = 5_000
/** Give up waiting for a live holder of this host after this long (it is stopped or hung): POOL_BUSY. */
export const LOCAL_WAIT_MS = 30_000
/** A next-in-line claim older than this (not refreshed: its waiter is gone) is ignored. */
const NEXT_FRESH_MS = 50
/** Wait this long before claiming to be next in line. */
const CLAIM_NEXT_AFTER_MS = 1
const OWNER_BITS = 0xffffffffn

const sleepCell = new Int32Array(new SharedArrayBuffer(4))
function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms)
}

export interface LockHold {
  word: bigint
}

export class DirectoryLock {
  /** This process's hold while `with` runs: nested calls run inside it instead of waiting for themselves. */
  private held: LockHold | undefined
  /** This process's start time, read once. */
  private startTime: number | undefined

  constructor(private readonly pool: PoolCatalog) {}

  private get words(): BigUint64Array {
    return this.pool.regions.lockWords
  }

  /** The current holder, or undefined when the lock is free. */
  holder(): {word: bigint; owner: Owner; startTime: number} | undefined {
    const word = Atomics.load(this.words, 0)
    const owner = decodeOwner(word)
    if (!owner) return undefined
    return {word, owner, startTime: Number(Atomics.load(this.words, 1))}
  }

  private get self(): bigint {
    return encodeOwner(0, {hostIndex: this.pool.hostIndex, pid: process.pid})
  }

  /** Whether next-in-line word `next` is a live claim of another process. */
  private othersNext(next: bigint, now: number): boolean {
    if (next === 0n || (next & OWNER_BITS) === this.self) return false
    // Stamps are ms modulo 2^32; one from the future (another host's clock) reads as very old.
    return ((now >>> 0) - Number(next >> 32n)) >>> 0 < NEXT_FRESH_MS
  }

  /** Claim (or refresh) next in line unless another process holds a fresh claim. */
  private claimNext(now: number): void {
    const next = Atomics.load(this.words, 2)
    if (this.othersNext(next, now)) return
    Atomics.compareExchange(this.words, 2, next, (BigInt(now >>> 0) << 32n) | this.self)
  }

  /**
   * Claim the lock once if it is free and no other waiter is next in line;
   * undefined otherwise (a dead holder's lock is broken first).
   */
  tryAcquire(): LockHold | undefined {
    const word = Atomics.load(this.words, 0)
    if (decodeOwner(word) !== undefined) {
      const holder = this.holder()
      if (holder && holder.word === word && !this.pool.liveness.isAlive(holder.owner, holder.startTime)) this.breakLock(word)
      return undefined
    }
    const next = Atomics.load(this.words, 2)
    if (this.othersNext(next, Date.now())) return undefined
    const mine = encodeOwner((ownerPayload(word) + 1) >>> 0, {hostIndex: this.pool.hostIndex, pid: process.pid})
    if (Atomics.compareExchange(this.words, 0, word, mine) !== word) return undefined
    this.startTime ??= processStartTime(process.pid) ?? 0
    Atomics.store(this.words, 1, BigInt(this.startTime))
    if (next !== 0n && (next & OWNER_BITS) === this.self) Atomics.compareExchange(this.words, 2, next, 0n)
    return {word: mine}
  }

  /** Wait for the lock. ConflictError POOL_BUSY if a live holder keeps it for LOCAL_WAIT_MS. */
  acquire(): LockHold {
    let seen: bigint | undefined
    let seenSince = 0
    let pause = 0.05
    const waitingSince = Date.now()
    for (;;) {
      const hold = this.tryAcquire()
      if (hold) return hold
      const now = Date.now()
      if (now - waitingSince >= CLAIM_NEXT_AFTER_MS) this.claimNext(now)
      const holder = this.holder()
      if (!holder) {
        sleepMs(pause) // free but left to the next in line
        continue
      }
      if (holder.word !== seen) {
        seen = holder.word
        seenSince = now
      } else if (holder.owner.hostIndex !== this.pool.hostIndex && now - seenSince > REMOTE_STALE_MS) {
        this.breakLock(holder.word)
        continue
      } else if (now - seenSince > LOCAL_WAIT_MS) {
        throw new ConflictError('POOL_BUSY', `the directory lock of pool ${this.pool.path} has been held by pid ${holder.owner.pid} (host slot ${holder.owner.hostIndex}) for ${Math.round((now - seenSince) / 1000)} s`,
          'That cxlfork process is stopped or hung; resume or end it and retry.')
      }
      sleepMs(pause)
      pause = Math.min(pause * 2, 1)
    }
  }

  release(hold: LockHold): void {
    if (Atomics.load(this.words, 0) !== hold.word) return // broken meanwhile (we were taken for dead)
    // Start time first: a later holder's start time then reads 0 ("alive") until it writes its own, never ours.
    Atomics.store(this.words, 1, 0n)
    Atomics.compareExchange(this.words, 0, hold.word, BigInt(ownerPayload(hold.word)) << 32n)
  }

  /** Run `work` holding the lock. */
  with<T>(work: () => T): T {
    if (this.held) return work()
    const hold = this.acquire()
    this.held = hold
    try {
      return work()
    } finally {
      this.held = undefined
      this.release(hold)
    }
  }

  /** Free a dead holder's lock (same order as release). */
  private breakLock(word: bigint): void {
    if (Atomics.load(this.words, 0) !== word) return
    Atomics.store(this.words, 1, 0n)
    Atomics.compareExchange(this.words, 0, word, BigInt(ownerPayload(word)) << 32n)
  }
}

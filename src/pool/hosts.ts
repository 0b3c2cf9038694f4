/**
 * Host identity, the host table and leases. A host is one kernel instance
 * (boot id) seen through one pid namespace: only there do a pid and its start
 * time identify a process. Processes of other hosts are judged by their host's
 * lease, which every cxlfork command renews.
 */
import {createHash} from 'node:crypto'
import {readFileSync, statSync} from 'node:fs'
import {hostname} from 'node:os'

import {ConflictError} from '../errors.js'
import {crc32} from './checksum.js'
import {HOST_SLOT_SIZE} from './layout.js'
import type {PoolRegions} from './regions.js'

/** An idle host keeps its clones' references this long after its last cxlfork command. */
export const DEFAULT_LEASE_MS = 10 * 60 * 1000

export interface HostIdentity {
  bootId: Uint8Array
  pidNamespace: bigint
  hostname: string
}

// Offsets inside a host slot.
const S_CLAIM = 0 // u32: identity hash, 0 = free
const S_IDENTITY_CRC = 4 // u32: CRC-32 of the identity bytes, 0 while being written
const S_IDENTITY = 8 // boot id (16), pid namespace inode (8), hostname length (4), hostname (60)
const S_IDENTITY_END = 96
const S_LEASE = 104 // i64 ms since the epoch
const S_FIRST_SEEN = 112 // i64 ms since the epoch
const HOSTNAME_MAX = 60

/**
 * This host's identity; CXLFORK_HOST_ID replaces it so tests can play a
 * second host on one machine.
 */
export function localHostIdentity(): HostIdentity {
  const override = process.env.CXLFORK_HOST_ID
  if (override) {
    return {bootId: createHash('sha256').update(override).digest().subarray(0, 16), pidNamespace: 0n, hostname: override}
  }
  const bootId = Buffer.from(readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim().replace(/-/g, ''), 'hex')
  return {bootId, pidNamespace: statSync('/proc/self/ns/pid', {bigint: true}).ino, hostname: hostname()}
}

/** Lease length in ms: CXLFORK_LEASE_MS or the default. */
export function leaseMsFromEnvironment(): number {
  const value = Number(process.env.CXLFORK_LEASE_MS)
  return Number.isFinite(value) && value > 0 ? value : DEFAULT_LEASE_MS
}

function encodeIdentity(identity: HostIdentity): Uint8Array {
  const bytes = new Uint8Array(S_IDENTITY_END - S_IDENTITY)
  const view = new DataView(bytes.buffer)
  bytes.set(identity.bootId.subarray(0, 16), 0)
  view.setBigUint64(16, identity.pidNamespace, true)
  const name = new TextEncoder().encode(identity.hostname).subarray(0, HOSTNAME_MAX)
  view.setUint32(24, name.length, true)
  bytes.set(name, 28)
  return bytes
}

export interface HostRecord {
  index: number
  hostname: string
  bootId: string
  pidNamespace: string
  /** False while the claimer is writing it (or died doing so). */
  complete: boolean
  leaseExpiresAtMs: number
  firstSeenAtMs: number
}

export class HostTable {
  constructor(private readonly regions: PoolRegions) {}

  private get slots(): number {
    return this.regions.layout.hostSlots
  }

  private claimWord(index: number): number {
    return Atomics.load(this.regions.hostWords, index * (HOST_SLOT_SIZE / 4) + S_CLAIM / 4)
  }

  private identityBytes(index: number): Uint8Array {
    const base = index * HOST_SLOT_SIZE
    return this.regions.hostBytes.subarray(base + S_IDENTITY, base + S_IDENTITY_END)
  }

  private identityCrcWord(index: number): number {
    return Atomics.load(this.regions.hostWords, index * (HOST_SLOT_SIZE / 4) + S_IDENTITY_CRC / 4)
  }

  private timeIndex(index: number, field: number): number {
    return index * (HOST_SLOT_SIZE / 8) + field / 8
  }

  /**
   * Find or claim this host's slot. Every process of a host probes the same
   * sequence from the identity hash and claims the first free slot by CAS, so
   * concurrent first commands of one host converge on one slot.
   */
  register(identity: HostIdentity, leaseMs: number, nowMs: number): number {
    const identityBytes = encodeIdentity(identity)
    const identityCrc = crc32(identityBytes) || 1
    const claim = identityCrc
    const words = this.regions.hostWords
    for (let probe = 0; probe < this.slots; probe++) {
      const index = (claim + probe) % this.slots
      const claimIndex = index * (HOST_SLOT_SIZE / 4) + S_CLAIM / 4
      let word = Atomics.load(words, claimIndex)
      if (word === 0) {
        word = Atomics.compareExchange(words, claimIndex, 0, claim)
        if (word === 0) {
          this.fillIdentity(index, identityBytes, identityCrc, nowMs)
          this.renew(index, leaseMs, nowMs)
          return index
        }
      }
      if (word !== claim) continue
      const storedCrc = this.identityCrcWord(index)
      if (storedCrc === 0) {
        // Claimed by a process of this identity that died before writing it: finish its work.
        this.fillIdentity(index, identityBytes, identityCrc, nowMs)
      } else if (!Buffer.from(this.identityBytes(index)).equals(identityBytes)) {
        continue // another host whose identity hashes alike
      }
      this.renew(index, leaseMs, nowMs)
      return index
    }
    throw new ConflictError('HOST_TABLE_FULL', `all ${this.slots} host slots of the pool are taken`,
      'Each boot of each host takes a slot; recreate the pool with `cxlfork pool init --force` when no clone uses it.')
  }

  private fillIdentity(index: number, identityBytes: Uint8Array, identityCrc: number, nowMs: number): void {
    this.identityBytes(index).set(identityBytes)
    Atomics.compareExchange(this.regions.hostTimes, this.timeIndex(index, S_FIRST_SEEN), 0n, BigInt(nowMs))
    Atomics.store(this.regions.hostWords, index * (HOST_SLOT_SIZE / 4) + S_IDENTITY_CRC / 4, identityCrc)
  }

  /** Push the lease forward; never backward (another process of this host may hold a longer one). */
  renew(index: number, leaseMs: number, nowMs: number): void {
    const at = this.timeIndex(index, S_LEASE)
    const expiry = BigInt(Math.round(nowMs + leaseMs))
    for (;;) {
      const current = Atomics.load(this.regions.hostTimes, at)
      if (current >= expiry) return
      if (Atomics.compareExchange(this.regions.hostTimes, at, current, expiry) === current) return
    }
  }

  leaseExpiresAtMs(index: number): number {
    return Number(Atomics.load(this.regions.hostTimes, this.timeIndex(index, S_LEASE)))
  }

  isClaimed(index: number): boolean {
    return index >= 0 && index < this.slots && this.claimWord(index) !== 0
  }

  /** The slot's identity, checked against its CRC; undefined for a free slot. */
  describe(index: number): (HostRecord & {identityCorrupt: boolean}) | undefined {
    if (!this.isClaimed(index)) return undefined
    const bytes = this.identityBytes(index)
    const storedCrc = this.identityCrcWord(index)
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length)
    const nameLength = Math.min(view.getUint32(24, true), HOSTNAME_MAX)
    return {
      index,
      hostname: new TextDecoder().decode(bytes.subarray(28, 28 + nameLength)),
      bootId: Buffer.from(bytes.subarray(0, 16)).toString('hex'),
      pidNamespace: view.getBigUint64(16, true).toString(),
      complete: storedCrc !== 0,
      identityCorrupt: storedCrc !== 0 && (crc32(bytes) || 1) !== storedCrc,
      leaseExpiresAtMs: this.leaseExpiresAtMs(index),
      firstSeenAtMs: Number(Atomics.load(this.regions.hostTimes, this.timeIndex(index, S_FIRST_SEEN))),
    }
  }

  list(): Array<HostRecord & {identityCorrupt: boolean}> {
    const hosts: Array<HostRecord & {identityCorrupt: boolean}> = []
    for (let index = 0; index < this.slots; index++) {
      const record = this.describe(index)
      if (record) hosts.push(record)
    }
    return hosts
  }
}

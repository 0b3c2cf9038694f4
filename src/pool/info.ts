/** `pool info`: what a pool holds, who uses it, how full it is. */
import {fstatSync} from 'node:fs'

import type {PoolCatalog} from './catalog.js'
import {EntryState, isLive} from './directory.js'
import {classifyFileSystem} from './filesystem.js'
import type {HostInfo, PoolInfo} from './types.js'

export function poolInfo(pool: PoolCatalog): PoolInfo {
  const header = pool.header
  const countUsed = (states: Uint32Array): number => {
    let used = 0
    for (let unit = 0; unit < states.length; unit++) if (Atomics.load(states, unit) !== 0) used++
    return used
  }
  const segmentsUsed = countUsed(pool.regions.segmentStates)
  const pagesUsed = countUsed(pool.regions.pageStates)
  let checkpoints = 0
  let deleting = 0
  let tombstones = 0
  let directoryUsed = 0
  for (const {entry} of pool.directory.occupied()) {
    directoryUsed++
    if (entry.state === EntryState.published) checkpoints++
    else if (entry.state === EntryState.deleting) deleting++
    else if (entry.state === EntryState.tombstone) tombstones++
  }
  let buildsInProgress = 0
  // A build whose owner died (a checkpoint killed half-way) holds its units until `pool gc`.
  const deadSerials = new Set<number>()
  for (let slot = 0; slot < pool.buildSlots.count; slot++) {
    const state = pool.buildSlots.read(slot)
    if (!state.owner) continue
    if (pool.liveness.isAlive(state.owner, state.startTime)) buildsInProgress++
    else deadSerials.add(((slot << 24) | state.generation) >>> 0)
  }
  const heldBy = (states: Uint32Array, serials: Set<number>): number => {
    let held = 0
    if (serials.size > 0) for (let unit = 0; unit < states.length; unit++) if (serials.has(Atomics.load(states, unit))) held++
    return held
  }
  // A builder killed after its publish, before it let go of its slot: the units are the checkpoint's now, not garbage (gc keeps them).
  const garbageSerials = new Set(deadSerials)
  for (const {entry} of pool.directory.occupied()) if (isLive(entry)) garbageSerials.delete(entry.serial)
  const deadBytes = heldBy(pool.regions.segmentStates, garbageSerials) * header.segmentSize + heldBy(pool.regions.pageStates, garbageSerials) * header.pageSize
  let liveClones = 0
  for (const count of pool.references.liveCounts().values()) liveClones += count
  const now = Date.now()
  const hostsSeen: HostInfo[] = pool.hosts.list().map((host) => ({
    index: host.index, hostname: host.hostname, bootId: host.bootId,
    leaseExpiresAt: new Date(host.leaseExpiresAtMs).toISOString(), leaseLive: host.leaseExpiresAtMs > now,
    firstSeenAt: new Date(host.firstSeenAtMs).toISOString(), self: host.index === pool.hostIndex,
  }))
  const dataBytes = Number(header.dataSize)
  const dataUsed = segmentsUsed * header.segmentSize
  const metadataUsed = pagesUsed * header.pageSize
  return {
    path: pool.path,
    uuid: header.uuid,
    version: header.version,
    createdAt: new Date(header.createdAtMs).toISOString(),
    fileSystem: classifyFileSystem(pool.path, true, pool.fd).kind,
    size: Number(header.totalSize),
    provisioned: header.provisioned,
    sharedGid: header.sharedGid ?? null,
    residentBytes: Number(fstatSync(pool.fd, {bigint: true}).blocks) * 512,
    used: dataUsed + metadataUsed,
    free: dataBytes - dataUsed + header.metadataSize - metadataUsed,
    overhead: header.metadataOffset,
    data: {bytes: dataBytes, used: dataUsed, free: dataBytes - dataUsed, segmentSize: header.segmentSize,
      segments: header.segmentCount, segmentsUsed},
    metadata: {bytes: header.metadataSize, used: metadataUsed, free: header.metadataSize - metadataUsed, pageSize: header.pageSize,
      pages: header.metadataPageCount, pagesUsed},
    checkpoints,
    deleting,
    buildsInProgress,
    deadBuilds: {count: deadSerials.size, bytes: deadBytes},
    liveClones,
    directory: {slots: header.directorySlots, used: directoryUsed, tombstones},
    hostsSeen,
  }
}

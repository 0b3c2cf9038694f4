/**
 * Garbage collection. Units belong to a serial; a serial is alive while a
 * build slot with a live owner carries it, a directory entry (published or
 * deleting) carries it, or a live clone references it. Everything else is
 * garbage from a dead builder, an aborted publish or an unfinished delete.
 *
 * Order matters: build slots are read before the directory (a publisher
 * publishes before it releases its slot), and each garbage candidate is
 * re-checked against its build slot and then the directory just before it
 * is freed, so a build that began or published while gc ran is never hit.
 * Every step is idempotent: a gc killed half-way is simply run again.
 */
import {isPlausibleSerial, serialGeneration, serialSlot} from './allocator.js'
import {EntryState, isLive, withState} from './directory.js'
import {peekDescriptorName} from './descriptor.js'
import type {PoolCatalog} from './catalog.js'
import type {GcReport} from './types.js'

export function runGc(pool: PoolCatalog): GcReport {
  const report: GcReport = {buildsReleased: 0, referencesReleased: 0, checkpointsRemoved: [], segmentsFreed: 0, pagesFreed: 0, bytesFreed: 0,
    directoryWordsFreed: 0}
  const liveSerials = new Set<number>()

  // 1. Builds: release the slots of dead builders; their units become garbage.
  for (let slot = 0; slot < pool.buildSlots.count; slot++) {
    const state = pool.buildSlots.read(slot)
    if (!state.owner) continue
    if (pool.liveness.isAlive(state.owner, state.startTime)) liveSerials.add(((slot << 24) | state.generation) >>> 0)
    else if (pool.buildSlots.release(slot, state.word)) report.buildsReleased++
  }

  // 2. References: release those of dead clones.
  const {released, live: liveRefs} = pool.references.collectAll()
  report.referencesReleased = released
  for (const serial of liveRefs.keys()) liveSerials.add(serial)

  // 3. Directory: finish deletions whose last clone is gone.
  for (const {index, word, entry} of pool.directory.occupied()) {
    if (entry.state === EntryState.deleting && !liveRefs.has(entry.serial)) {
      const name = peekDescriptorName(pool.regions.metadata, pool.metadataByteOffset(entry.descriptorPage))
      if (pool.directory.swap(index, word, withState(word, EntryState.tombstone))) {
        report.checkpointsRemoved.push(name ?? `serial ${entry.serial}`)
        continue // its units are garbage now; step 5 frees them
      }
    }
    if (isLive(entry)) liveSerials.add(entry.serial)
  }

  // 4. Directory words: tombstones that no live entry follows before an empty word become empty (publishers reuse the rest).
  report.directoryWordsFreed = pool.directoryLock.with(() => pool.directory.sweepAll())

  // 5. Garbage candidates: units whose serial is alive nowhere we looked.
  const candidates = new Set<number>()
  const buildSlots = pool.regions.layout.buildSlots
  for (const states of [pool.regions.segmentStates, pool.regions.pageStates]) {
    for (let unit = 0; unit < states.length; unit++) {
      const serial = Atomics.load(states, unit)
      // An implausible serial is corruption, possibly of a checkpoint's unit: fsck's job, never freed here.
      if (serial !== 0 && !liveSerials.has(serial) && isPlausibleSerial(serial, buildSlots)) candidates.add(serial)
    }
  }
  // Re-check: a build that claimed its slot after step 1 still owns its serial's generation.
  for (const serial of candidates) {
    const state = pool.buildSlots.read(serialSlot(serial))
    if (state.generation < serialGeneration(serial) || (state.owner && state.generation === serialGeneration(serial))) candidates.delete(serial)
  }
  // ... and one that published after step 3 is in the directory now.
  for (const {entry} of pool.directory.occupied()) if (isLive(entry)) candidates.delete(entry.serial)
  if (candidates.size === 0) return report

  for (let unit = 0; unit < pool.regions.segmentStates.length; unit++) {
    const serial = Atomics.load(pool.regions.segmentStates, unit)
    if (!candidates.has(serial)) continue
    pool.punchSegment(unit)
    if (Atomics.compareExchange(pool.regions.segmentStates, unit, serial, 0) === serial) report.segmentsFreed++
  }
  for (let unit = 0; unit < pool.regions.pageStates.length; unit++) {
    const serial = Atomics.load(pool.regions.pageStates, unit)
    if (!candidates.has(serial)) continue
    pool.punchPage(unit)
    if (Atomics.compareExchange(pool.regions.pageStates, unit, serial, 0) === serial) report.pagesFreed++
  }
  report.bytesFreed = report.segmentsFreed * pool.header.segmentSize + report.pagesFreed * pool.header.pageSize
  return report
}

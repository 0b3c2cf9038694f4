/**
 * Consistency check of a pool that may be in use. Only states that no
 * sequence of crashes can produce are "corrupt"; what crashes legitimately
 * leave behind (dead builders, references of dead clones, garbage units,
 * unfinished deletes) is "stale" and is gc's job. Every finding is re-checked
 * against the directory word it came from, so a concurrent delete is not
 * mistaken for damage.
 *
 * Repair never frees data: a damaged checkpoint is tombstoned (its units then
 * become garbage, still spared by gc while a live clone references them),
 * unit words knocked off a valid checkpoint are given back to it, and
 * impossible slot and unit words are cleared.
 */
import {isPlausibleSerial, serialGeneration, serialSlot} from './allocator.js'
import {crc32} from './checksum.js'
import {descriptorPageCount, isMutableSection} from './descriptor.js'
import type {Descriptor} from './descriptor.js'
import {EntryState, isLive, withState} from './directory.js'
import {HOST_SLOT_SIZE} from './layout.js'
import {PAGE_CHECKSUMS_SECTION, type PageDataVerdict, decodePageChecksums, verifyRanges} from './page-checksums.js'
import type {PoolCatalog} from './catalog.js'
import type {FsckProblem, FsckReport} from './types.js'

export function runFsck(pool: PoolCatalog, repair: boolean): FsckReport {
  const {header, regions} = pool
  const problems: FsckProblem[] = []
  const report = (severity: FsckProblem['severity'], kind: string, where: string, message: string, fix?: () => boolean): void => {
    const repaired = severity === 'corrupt' && repair && fix !== undefined ? fix() : false
    problems.push({severity, kind, where, message, repaired})
  }

  // Hosts.
  const hosts = pool.hosts.list()
  for (const host of hosts) {
    if (host.identityCorrupt) {
      report('corrupt', 'HOST_IDENTITY_CORRUPT', `host slot ${host.index}`, 'host identity fails its CRC-32 check', () => {
        // Marked incomplete: its host rewrites it on its next command.
        Atomics.store(regions.hostWords, host.index * (HOST_SLOT_SIZE / 4) + 1, 0)
        return true
      })
    }
  }

  // Build slots.
  const buildSerials = new Set<number>()
  for (let slot = 0; slot < pool.buildSlots.count; slot++) {
    const state = pool.buildSlots.read(slot)
    if (!state.owner) continue
    if (!pool.hosts.isClaimed(state.owner.hostIndex) || state.owner.pid === 0) {
      report('corrupt', 'BUILD_SLOT_INVALID', `build slot ${slot}`, `owner host ${state.owner.hostIndex} pid ${state.owner.pid} is impossible`,
        () => pool.buildSlots.release(slot, state.word))
      continue
    }
    buildSerials.add(((slot << 24) | state.generation) >>> 0)
    if (!pool.liveness.isAlive(state.owner, state.startTime)) {
      report('stale', 'BUILD_DEAD', `build slot ${slot}`, `builder pid ${state.owner.pid} on host ${state.owner.hostIndex} is gone; gc frees its units`)
    }
  }

  // References.
  const referencedSerials = new Set<number>()
  let referenceCount = 0
  for (const reference of pool.references.occupied()) {
    referenceCount++
    if (!pool.hosts.isClaimed(reference.owner.hostIndex) || reference.owner.pid === 0 || !isPlausibleSerial(reference.serial, header.buildSlots)) {
      report('corrupt', 'REFERENCE_INVALID', `reference slot ${reference.slot}`, `owner host ${reference.owner.hostIndex} pid ${reference.owner.pid} serial ${reference.serial} is impossible`,
        () => pool.references.releaseSlot(reference.slot, reference.word))
      continue
    }
    if (pool.references.isAlive(reference)) referencedSerials.add(reference.serial)
    else report('stale', 'REFERENCE_DEAD', `reference slot ${reference.slot}`, `clone pid ${reference.owner.pid} is gone; gc releases it`)
  }

  // Directory entries and everything they own.
  const ownedSerials = new Set(buildSerials)
  for (const {entry} of pool.directory.occupied()) if (isLive(entry)) ownedSerials.add(entry.serial)
  const directorySerials = new Set<number>()
  const firstByName = new Map<string, number>()
  let checkpoints = 0
  const pageData = {checkpoints: 0, bytes: 0}
  const noPageChecksums: string[] = []
  for (const {index, word, entry} of pool.directory.occupied()) {
    if (entry.state === EntryState.empty) {
      // cxlfork empties a word only to 0: state bits of "empty" beside a page and serial are damage (a published
      // word with its state bits knocked out, say). Tombstoned, so probe chains past it stay whole; gc frees its units.
      report('corrupt', 'DIRECTORY_WORD_INVALID', `directory slot ${index}`, `word 0x${word.toString(16)} reads as empty but carries descriptor page ${entry.descriptorPage} and serial ${entry.serial}`,
        () => pool.directory.swap(index, word, withState(word, EntryState.tombstone)))
      continue
    }
    if (!isLive(entry)) continue
    const where = `directory slot ${index} (serial ${entry.serial})`
    const tombstone = (): boolean => pool.directory.swap(index, word, withState(word, EntryState.tombstone))
    const read = pool.readEntry(index, word)
    if (read.kind === 'changed') continue
    checkpoints++
    if (read.kind === 'corrupt') {
      report('corrupt', 'DESCRIPTOR_CORRUPT', where, `${read.name === undefined ? '' : `checkpoint ${read.name}: `}${read.error.message}`, tombstone)
      continue
    }
    const descriptor = read.descriptor
    const named = `${where} checkpoint ${descriptor.name}`
    const damage = checkOwnedUnits(pool, entry.descriptorPage, descriptor, ownedSerials)
    if (pool.directory.load(index) !== word) continue // deleted while we looked
    if (damage.sectionsCorrupt.length > 0) {
      report('corrupt', 'SECTION_CORRUPT', named, `section(s) of type ${damage.sectionsCorrupt.join(', ')} fail their CRC-32 check`, tombstone)
      continue
    }
    const data = checkPageData(pool, descriptor, named)
    if (pool.directory.load(index) !== word) continue // deleted while we read its data
    if (data === undefined) noPageChecksums.push(descriptor.name)
    else if (typeof data === 'string') {
      report('corrupt', 'PAGE_CHECKSUMS_CORRUPT', named, data, tombstone)
      if (!problems.at(-1)!.repaired) directorySerials.add(entry.serial) // still a checkpoint: its units are not garbage
      continue
    } else {
      pageData.checkpoints++
      pageData.bytes += data.bytes
      if (data.state === 'damaged') {
        report('corrupt', 'PAGE_DATA_CORRUPT', named, `${data.damagedChunks} of ${data.chunks} chunks of its page data fail their CRC-32C check, the first at pool offset ${data.damaged[0]!.poolOffset} (${data.damaged[0]!.length} bytes)`, tombstone)
        if (!problems.at(-1)!.repaired) directorySerials.add(entry.serial)
        continue
      }
    }
    if (damage.stolen.length > 0) {
      report('corrupt', 'UNITS_OVERLAP', named, `${damage.stolen.length} of its units are owned by another checkpoint`, tombstone)
      continue
    }
    if (damage.lost.length > 0) {
      report('corrupt', 'UNIT_OWNER_WRONG', named, `${damage.lost.length} of its units are not marked as its own`, () => {
        // Give them back; a unit meanwhile taken by a live build stays taken.
        let ok = true
        for (const {states, unit, found} of damage.lost) {
          if (Atomics.compareExchange(states, unit, found, descriptor.serial) !== found) ok = false
        }
        return ok
      })
    }
    if (!reachable(pool, descriptor.name, index)) {
      report('corrupt', 'DIRECTORY_UNREACHABLE', named, 'lookups by its name cannot reach its directory slot', tombstone)
      continue
    }
    const earlier = firstByName.get(descriptor.name)
    if (earlier !== undefined) {
      report('corrupt', 'NAME_DUPLICATE', named, `name also used by directory slot ${earlier}`, tombstone)
      continue
    }
    firstByName.set(descriptor.name, index)
    directorySerials.add(entry.serial)
    if (entry.state === EntryState.deleting && !referencedSerials.has(entry.serial)) {
      report('stale', 'DELETE_UNFINISHED', named, 'marked for deletion and no live clone remains; gc removes it')
    }
  }

  // Unit words.
  const garbage = new Map<number, number>()
  for (const [states, kind] of [[regions.segmentStates, 'segment'], [regions.pageStates, 'metadata page']] as const) {
    for (let unit = 0; unit < states.length; unit++) {
      const serial = Atomics.load(states, unit)
      if (serial === 0 || directorySerials.has(serial) || buildSerials.has(serial) || referencedSerials.has(serial)) continue
      const fromTheFuture = isPlausibleSerial(serial, header.buildSlots) &&
        serialGeneration(serial) > pool.buildSlots.read(serialSlot(serial)).generation
      if (!isPlausibleSerial(serial, header.buildSlots) || fromTheFuture) {
        report('corrupt', 'UNIT_STATE_INVALID', `${kind} ${unit}`, `owner word ${serial} names no possible build`,
          () => Atomics.compareExchange(states, unit, serial, 0) === serial)
        continue
      }
      garbage.set(serial, (garbage.get(serial) ?? 0) + 1)
    }
  }
  for (const [serial, units] of garbage) {
    report('stale', 'UNITS_GARBAGE', `serial ${serial}`, `${units} unit(s) owned by no checkpoint or live build; gc frees them`)
  }

  const corrupt = problems.filter((problem) => problem.severity === 'corrupt')
  const repaired = corrupt.filter((problem) => problem.repaired).length
  return {
    path: pool.path,
    clean: repaired === corrupt.length,
    corruptionFound: corrupt.length,
    corruptionRepaired: repaired,
    checked: {checkpoints, segments: header.segmentCount, pages: header.metadataPageCount, buildSlots: header.buildSlots,
      references: referenceCount, hosts: hosts.length, pageDataCheckpoints: pageData.checkpoints, pageDataBytes: pageData.bytes},
    noPageChecksums,
    problems,
  }
}

interface OwnedUnitDamage {
  sectionsCorrupt: number[]
  /** Units marked as owned by another checkpoint or build. */
  stolen: Array<{states: Uint32Array; unit: number; found: number}>
  /** Units free or marked with an owner that does not exist. */
  lost: Array<{states: Uint32Array; unit: number; found: number}>
}

function checkOwnedUnits(pool: PoolCatalog, descriptorPage: number, descriptor: Descriptor, ownedElsewhere: Set<number>): OwnedUnitDamage {
  const {header, regions} = pool
  const damage: OwnedUnitDamage = {sectionsCorrupt: [], stolen: [], lost: []}
  const expect = (states: Uint32Array, unit: number): void => {
    const found = Atomics.load(states, unit)
    if (found === descriptor.serial) return
    ;(ownedElsewhere.has(found) ? damage.stolen : damage.lost).push({states, unit, found})
  }
  const descriptorPages = descriptorPageCount(regions.metadata, pool.metadataByteOffset(descriptorPage), header.pageSize)
  for (let page = descriptorPage; page < descriptorPage + descriptorPages; page++) expect(regions.pageStates, page)
  for (const extent of descriptor.extents) {
    const first = Number((extent.poolOffset - header.dataOffset) / BigInt(header.segmentSize))
    const count = Number(extent.length / BigInt(header.segmentSize))
    for (let unit = first; unit < first + count; unit++) expect(regions.segmentStates, unit)
  }
  for (const section of descriptor.sections) {
    if (section.length === 0) continue
    const first = (Number(section.poolOffset) - header.metadataOffset) / header.pageSize
    for (let page = first; page < first + Math.ceil(section.length / header.pageSize); page++) expect(regions.pageStates, page)
    const start = Number(section.poolOffset) - header.metadataOffset
    if (!isMutableSection(section.type) && crc32(regions.metadata.subarray(start, start + section.length)) !== section.crc) damage.sectionsCorrupt.push(section.type)
  }
  return damage
}

/**
 * Page data against its checksums: undefined when the checkpoint has none
 * (taken before they existed), a message when the checksum record itself is
 * unusable, else the verdict.
 */
function checkPageData(pool: PoolCatalog, descriptor: Descriptor, named: string): PageDataVerdict | string | undefined {
  const sections = descriptor.sections.filter((section) => section.type === PAGE_CHECKSUMS_SECTION)
  if (sections.length === 0) return undefined
  const verdicts: PageDataVerdict[] = []
  for (const section of sections) {
    const start = Number(section.poolOffset) - pool.header.metadataOffset
    let decoded
    try {
      decoded = decodePageChecksums(pool.regions.metadata.slice(start, start + section.length), named)
    } catch (error) {
      return (error as Error).message
    }
    for (const range of decoded.ranges) {
      const inside = descriptor.extents.some((extent) => range.poolOffset >= extent.poolOffset && range.poolOffset + range.length <= extent.poolOffset + extent.length)
      if (!inside) return `page checksums cover pool offset ${range.poolOffset} (+${range.length}), outside its data extents`
    }
    verdicts.push(verifyRanges(pool.fd, pool.path, decoded.chunkSize, decoded.ranges))
  }
  const damagedChunks = verdicts.reduce((sum, verdict) => sum + verdict.damagedChunks, 0)
  return {
    state: damagedChunks === 0 ? 'verified' : 'damaged',
    bytes: verdicts.reduce((sum, verdict) => sum + verdict.bytes, 0),
    chunks: verdicts.reduce((sum, verdict) => sum + verdict.chunks, 0),
    damaged: verdicts.flatMap((verdict) => verdict.damaged).slice(0, 16),
    damagedChunks,
    timeUs: verdicts.reduce((sum, verdict) => sum + verdict.timeUs, 0),
  }
}

/** Whether a lookup of `name` probes through to `index` without meeting an empty word. */
function reachable(pool: PoolCatalog, name: string, index: number): boolean {
  for (const probe of pool.directory.probe(name)) {
    if (probe === index) return true
    if (pool.directory.load(probe) === 0n) return false
  }
  return false
}

/**
 * A second process for tiering.test.ts: ORs recordings into checkpoint NAME's
 * access record, as `cxlfork record` does, while another worker does the same.
 * Worker PARITY sets, at its iteration k, the pages i with i % 2 = PARITY and
 * (i >> 1) % ROUNDS = k (accessed; odd pages also dirty), so every page is set
 * exactly once, by one worker, while the other ORs into the same words.
 */
import {Pool} from '../../src/pool/index.js'
import {loadCheckpoint} from '../../src/restore/restore.js'
import {PAGE_FLAG_ACCESSED, PAGE_FLAG_DIRTY} from '../../src/image/page-map.js'

const [poolPath, name, parityText, roundsText] = process.argv.slice(2)
const parity = Number(parityText)
const rounds = Number(roundsText)
const pool = Pool.open(poolPath!)
try {
  const record = loadCheckpoint(pool, name!).members[0]!.loaded!.record!
  for (let k = 0; k < rounds; k++) {
    const flags = new Uint8Array(record.pages)
    for (let i = parity; i < record.pages; i += 2) {
      if ((i >> 1) % rounds === k) flags[i] = PAGE_FLAG_ACCESSED | (parity === 1 ? PAGE_FLAG_DIRTY : 0)
    }
    record.merge(flags, Date.now())
  }
} finally {
  pool.close()
}

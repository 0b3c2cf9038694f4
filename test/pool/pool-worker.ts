/**
 * Worker process for the pool tests.
 *   publish POOL PREFIX COUNT  publish COUNT checkpoints PREFIX-0.., each with
 *                              patterned data, then exit 0
 *   churn POOL PREFIX          loop allocate/write/publish/rm/abort/gc forever
 *                              (the crash test kills it with SIGKILL)
 *   reference POOL NAME        add a reference for this process, print "ref", exit
 *   race POOL PREFIX COUNT     COUNT random steps on 8 shared names PREFIX-0..7:
 *                              publish (data patterned by the build's serial),
 *                              rm, or open + reference + check the data
 *                              against the serial opened; prints its tallies
 *                              as JSON (`wrong` counts referenced data that
 *                              was not the checkpoint opened)
 *   rm-loop POOL NAME          print "ready", then try `rm NAME` (no force)
 *                              until killed; any outcome but CHECKPOINT_IN_USE
 *                              exits 1
 */
import {Pool} from '../../src/pool/index.js'
import {CxlforkError} from '../../src/errors.js'
import {checkPattern, fillPattern, patternSeed} from './helpers.js'

const [mode, poolPath, prefixOrName, countText] = process.argv.slice(2) as [string, string, string, string | undefined]
const SEGMENT = 2n * 1024n * 1024n

function buildOne(pool: Pool, name: string, segments: number): void {
  const builder = pool.beginCheckpoint()
  try {
    const seed = patternSeed(name)
    let written = 0
    for (let extent = 0; extent < segments; extent++) {
      const data = builder.allocateData(SEGMENT * BigInt(1 + (extent % 2)) - 4096n)
      fillPattern(data.address, Number(data.length), (seed + written) >>> 0)
      written += Number(data.length) / 4
    }
    builder.addSection(1, new TextEncoder().encode(JSON.stringify({name, seed})))
    builder.addSection(2, new Uint8Array(5000).fill(seed & 0xff))
    builder.publish(name, {uid: process.getuid?.() ?? 0, summary: {worker: process.pid}})
  } finally {
    builder.abort() // no-op once published
  }
}

const pool = Pool.open(poolPath)
if (mode === 'publish') {
  const count = Number(countText)
  for (let i = 0; i < count; i++) buildOne(pool, `${prefixOrName}-${i}`, 1 + ((process.pid + i) % 3))
  pool.close()
} else if (mode === 'reference') {
  pool.addReference(prefixOrName, {pid: process.pid})
  process.stdout.write('ref\n')
  pool.close()
} else if (mode === 'race') {
  const tally: Record<string, number> = {published: 0, removed: 0, referenced: 0, wrong: 0}
  const count = (key: string): void => {
    tally[key] = (tally[key] ?? 0) + 1
  }
  const SAMPLE = 65536
  for (let i = 0; i < Number(countText); i++) {
    const name = `${prefixOrName}-${Math.floor(Math.random() * 8)}`
    const roll = Math.random()
    try {
      if (roll < 0.4) {
        const builder = pool.beginCheckpoint()
        try {
          const data = builder.allocateData(BigInt(SAMPLE))
          fillPattern(data.address, SAMPLE, builder.serial)
          builder.addSection(1, new TextEncoder().encode(String(builder.serial)))
          builder.publish(name, {uid: process.getuid?.() ?? 0})
          count('published')
        } finally {
          builder.abort()
        }
      } else if (roll < 0.7) {
        pool.remove(name)
        count('removed')
      } else {
        const reader = pool.openCheckpoint(name)
        const handle = pool.addReference(reader, {pid: process.pid})
        try {
          // Referenced: these units can no longer be freed, so they must be the checkpoint opened.
          const section = new TextDecoder().decode(reader.section(1))
          const extent = reader.dataExtents[0]!
          if (section !== String(reader.serial) || checkPattern(reader.address(extent.poolOffset), SAMPLE, reader.serial) !== -1) count('wrong')
          else count('referenced')
        } finally {
          pool.releaseReference(handle)
        }
      }
    } catch (error) {
      if (!(error instanceof CxlforkError)) throw error
      count(error.code)
    }
  }
  process.stdout.write(JSON.stringify(tally) + '\n')
  pool.close()
} else if (mode === 'rm-loop') {
  process.stdout.write('ready\n')
  for (;;) {
    try {
      pool.remove(prefixOrName)
      process.stderr.write(`rm ${prefixOrName} succeeded\n`)
      process.exit(1)
    } catch (error) {
      if (!(error instanceof CxlforkError) || error.code !== 'CHECKPOINT_IN_USE') {
        process.stderr.write(`rm ${prefixOrName}: ${String(error)}\n`)
        process.exit(1)
      }
    }
  }
} else if (mode === 'churn') {
  process.stdout.write('ready\n')
  const mine: string[] = []
  for (let i = 0; ; i++) {
    const roll = Math.random()
    try {
      if (roll < 0.1) {
        const builder = pool.beginCheckpoint()
        const data = builder.allocateData(SEGMENT)
        fillPattern(data.address, 65536, 7)
        builder.abort()
      } else if (roll < 0.3 && mine.length > 0) {
        pool.remove(mine.shift()!, {force: true})
      } else if (roll < 0.35) {
        pool.gc()
      } else {
        const name = `${prefixOrName}-${i}`
        buildOne(pool, name, 1 + (i % 2))
        mine.push(name)
      }
    } catch (error) {
      // A full pool is expected under churn: make room and go on.
      if (!(error instanceof CxlforkError) || error.code !== 'POOL_FULL') throw error
      if (mine.length > 0) pool.remove(mine.shift()!, {force: true})
    }
  }
} else {
  throw new Error(`unknown mode ${mode}`)
}

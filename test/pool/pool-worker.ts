/**
 * Worker process for the pool tests.
 *   publish POOL PREFIX COUNT  publish COUNT checkpoints PREFIX-0.., each with
 *                              patterned data, then exit 0
 *   churn POOL PREFIX          loop allocate/write/publish/rm/abort/gc forever
 *                              (the crash test kills it with SIGKILL)
 *   reference POOL NAME        add a reference for this process, print "ref", exit
 */
import {Pool} from '../../src/pool/index.js'
import {CxlforkError} from '../../src/errors.js'
import {fillPattern, patternSeed} from './helpers.js'

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

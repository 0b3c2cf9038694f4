/**
 * Seeded randomness for tests that kill or delay at random moments: the seed is
 * printed, and the environment variable named by the test replays a run exactly.
 */

/** mulberry32: small, seeded, reproducible. */
export function makeRng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** The seed from `envName` when set to a positive integer, else a fresh one; and its generator. */
export function seeded(envName: string): {seed: number; rng: () => number; replay: string} {
  const fromEnv = Number(process.env[envName])
  const seed = Number.isSafeInteger(fromEnv) && fromEnv > 0 ? fromEnv : (Date.now() % 2147483647) + 1
  return {seed, rng: makeRng(seed), replay: `${envName}=${seed}`}
}

/**
 * Seeded randomness for tests that kill or delay at random moments: the seed is
 * printed, and the environment variable named by the test replays a run exactly.
 */
import {seededRandom} from '../../src/porter/replay/trace.js'

/** mulberry32, the generator the replay's synthetic traces use: small, seeded, reproducible. */
export const makeRng = seededRandom

/** The seed from `envName` when set to a positive integer, else a fresh one; and its generator. */
export function seeded(envName: string): {seed: number; rng: () => number; replay: string} {
  const fromEnv = Number(process.env[envName])
  const seed = Number.isSafeInteger(fromEnv) && fromEnv > 0 ? fromEnv : (Date.now() % 2147483647) + 1
  return {seed, rng: makeRng(seed), replay: `${envName}=${seed}`}
}

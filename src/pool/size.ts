import {UsageError} from '../errors.js'

const UNITS: Record<string, bigint> = {'': 1n, K: 1n << 10n, M: 1n << 20n, G: 1n << 30n, T: 1n << 40n, P: 1n << 50n}

/**
 * Parse a byte count: plain bytes or a binary-suffixed integer (512M, 8G, 1T;
 * K/M/G/T/P, optional "iB"/"B"). No blanks anywhere: ' 8G' is more likely a
 * quoting slip in a script than a size someone meant.
 */
export function parseSize(text: string): bigint {
  const match = /^(\d+)([KMGTP]?)(?:i?B)?$/i.exec(text)
  if (!match) throw new UsageError('INVALID_SIZE', `cannot parse size ${JSON.stringify(text)}`, 'Use bytes or a suffixed number such as 512M or 8G.')
  return BigInt(match[1]!) * UNITS[match[2]!.toUpperCase()]!
}

/** Human-readable binary size, e.g. 8.0 GiB. */
export function formatSize(bytes: number | bigint): string {
  let value = Number(bytes)
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
  let unit = 0
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024
    unit++
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`
}

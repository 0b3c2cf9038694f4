/**
 * Helpers between bigint (cxlfork's model) and the 64-bit values of decoded CRIU
 * messages (bigint from proto-codec; Long-like objects, numbers and strings accepted).
 */

/** A decoded 64-bit value (Long, number, string or bigint) as bigint, keeping its signedness. */
export function big(value: unknown): bigint {
  if (typeof value === 'bigint') return value
  if (typeof value === 'number') return BigInt(Math.trunc(value))
  if (typeof value === 'string') return BigInt(value)
  if (value && typeof value === 'object' && 'low' in value && 'high' in value) {
    const long = value as {low: number; high: number; unsigned?: boolean}
    const bits = (BigInt(long.high >>> 0) << 32n) | BigInt(long.low >>> 0)
    return long.unsigned ? bits : BigInt.asIntN(64, bits)
  }
  return 0n
}

/** Two's-complement u64 view of a bigint. */
export function u64(value: bigint): bigint {
  return BigInt.asUintN(64, value)
}

/** A bigint for a 64-bit field (the codec writes its two's complement bits). */
export function str64(value: bigint): bigint {
  return value
}

/** Whether a decoded proto2 message carries an optional field (absent ones read their default from the prototype). */
export function has(message: object, field: string): boolean {
  return Object.prototype.hasOwnProperty.call(message, field)
}

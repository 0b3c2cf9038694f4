/**
 * Protobuf wire encoding and decoding driven by the parsed schema (proto-schema.ts),
 * interpreted rather than compiled: CRIU's small images hold a few hundred fields, so
 * walking the descriptors costs well under a millisecond, where compiling per-type code
 * cost tens of milliseconds on every command.
 *
 * Values: 64-bit integers decode as bigint and encode from bigint, number, decimal string
 * or a Long-like {low, high}; 32-bit integers and enums are numbers (enums encode from
 * their names too); bytes are Uint8Array. A decoded message holds the fields present as
 * its own properties, and every field's proto2 default on its prototype (has() tells them
 * apart). Fields are encoded in field-number order, repeated scalars unpacked unless
 * declared packed, as protoc and protobufjs do; decoding takes both forms.
 */
import type {FieldDesc, MessageDesc, ScalarType} from './proto-schema.js'

/** A problem with a value to encode or with wire data to decode; the caller adds where. */
export class WireError extends Error {}

const WIRE_VARINT = 0
const WIRE_FIXED64 = 1
const WIRE_LDELIM = 2
const WIRE_FIXED32 = 5

function wireType(field: FieldDesc): number {
  if (field.message) return WIRE_LDELIM
  if (field.enum) return WIRE_VARINT
  switch (field.scalar!) {
    case 'double': case 'fixed64': case 'sfixed64':
      return WIRE_FIXED64
    case 'float': case 'fixed32': case 'sfixed32':
      return WIRE_FIXED32
    case 'string': case 'bytes':
      return WIRE_LDELIM
    default:
      return WIRE_VARINT
  }
}

const textEncoder = new TextEncoder()
const textDecoder = new TextDecoder('utf-8')

// ---- encoding ----

class Writer {
  buf = new Uint8Array(256)
  pos = 0

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.pos + n) size *= 2
    const grown = new Uint8Array(size)
    grown.set(this.buf.subarray(0, this.pos))
    this.buf = grown
  }

  varint32(value: number): void {
    this.room(5)
    let v = value >>> 0
    while (v > 0x7f) {
      this.buf[this.pos++] = (v & 0x7f) | 0x80
      v >>>= 7
    }
    this.buf[this.pos++] = v
  }

  /** An unsigned 64-bit value (two's complement already applied). */
  varint64(value: bigint): void {
    if (value <= 0xffffffffn) {
      this.varint32(Number(value))
      return
    }
    this.room(10)
    let v = value
    while (v > 0x7fn) {
      this.buf[this.pos++] = Number(v & 0x7fn) | 0x80
      v >>= 7n
    }
    this.buf[this.pos++] = Number(v)
  }

  bytes(data: Uint8Array): void {
    this.varint32(data.byteLength)
    this.room(data.byteLength)
    this.buf.set(data, this.pos)
    this.pos += data.byteLength
  }

  fixed(size: 4 | 8, write: (view: DataView) => void): void {
    this.room(size)
    write(new DataView(this.buf.buffer, this.buf.byteOffset + this.pos, size))
    this.pos += size
  }

  finish(): Uint8Array {
    return this.buf.slice(0, this.pos)
  }
}

/** A 64-bit integer value as bigint; undefined when it is none. */
function toBigInt(value: unknown): bigint | undefined {
  if (typeof value === 'bigint') return value
  if (typeof value === 'number') return Number.isInteger(value) ? BigInt(value) : undefined
  if (typeof value === 'string') return /^-?\d+$/.test(value) ? BigInt(value) : undefined
  if (value && typeof value === 'object' && 'low' in value && 'high' in value) {
    const long = value as {low: number; high: number; unsigned?: boolean}
    const bits = (BigInt(long.high >>> 0) << 32n) | BigInt(long.low >>> 0)
    return long.unsigned ? bits : BigInt.asIntN(64, bits)
  }
  return undefined
}

function writeScalar(w: Writer, type: ScalarType, value: unknown, name: string): void {
  const fail = (what: string): never => {
    throw new WireError(`${name}: ${what} expected`)
  }
  switch (type) {
    case 'uint32': case 'int32': case 'sint32': case 'fixed32': case 'sfixed32': {
      if (typeof value !== 'number' || !Number.isInteger(value)) return fail('integer')
      if (type === 'uint32') w.varint32(value)
      else if (type === 'int32') {
        if (value < 0) w.varint64(BigInt.asUintN(64, BigInt(value | 0)))
        else w.varint32(value)
      } else if (type === 'sint32') w.varint32(((value << 1) ^ (value >> 31)) >>> 0)
      else w.fixed(4, (view) => view.setUint32(0, value >>> 0, true))
      return
    }
    case 'uint64': case 'int64': case 'sint64': case 'fixed64': case 'sfixed64': {
      const v = toBigInt(value)
      if (v === undefined) return fail('integer|Long')
      if (type === 'sint64') {
        const s = BigInt.asIntN(64, v)
        w.varint64(BigInt.asUintN(64, (s << 1n) ^ (s >> 63n)))
      } else if (type === 'fixed64' || type === 'sfixed64') w.fixed(8, (view) => view.setBigUint64(0, BigInt.asUintN(64, v), true))
      else w.varint64(BigInt.asUintN(64, v))
      return
    }
    case 'bool':
      if (typeof value !== 'boolean') return fail('boolean')
      w.varint32(value ? 1 : 0)
      return
    case 'double':
    case 'float':
      if (typeof value !== 'number') return fail('number')
      if (type === 'double') w.fixed(8, (view) => view.setFloat64(0, value, true))
      else w.fixed(4, (view) => view.setFloat32(0, value, true))
      return
    case 'string':
      if (typeof value !== 'string') return fail('string')
      w.bytes(textEncoder.encode(value))
      return
    case 'bytes':
      if (!(value instanceof Uint8Array)) return fail('buffer')
      w.bytes(value)
      return
  }
}

function writeValue(w: Writer, field: FieldDesc, value: unknown, path: string): void {
  if (field.message) {
    if (value === null || typeof value !== 'object') throw new WireError(`${path}: object expected`)
    w.bytes(encodeInto(new Writer(), field.message, value as Record<string, unknown>, path).finish())
  } else if (field.enum) {
    let number = value
    if (typeof value === 'string') number = field.enum.values.get(value)
    if (typeof number !== 'number' || !Number.isInteger(number)) throw new WireError(`${path}: enum value expected`)
    if (number < 0) w.varint64(BigInt.asUintN(64, BigInt(number)))
    else w.varint32(number)
  } else {
    writeScalar(w, field.scalar!, value, path)
  }
}

function encodeInto(w: Writer, desc: MessageDesc, value: Record<string, unknown>, path: string): Writer {
  for (const field of desc.fields) {
    const present = Object.prototype.hasOwnProperty.call(value, field.name) ? value[field.name] : undefined
    const where = path === '' ? field.name : `${path}.${field.name}`
    if (present === undefined || present === null) {
      if (field.rule === 'required') throw new WireError(`${where}: missing required field`)
      continue
    }
    const wire = wireType(field)
    if (field.rule === 'repeated') {
      if (!Array.isArray(present)) throw new WireError(`${where}: array expected`)
      if (present.length === 0) continue
      if (field.packed && wire !== WIRE_LDELIM) {
        const inner = new Writer()
        present.forEach((item, i) => writeValue(inner, field, item, `${where}[${i}]`))
        w.varint32((field.id << 3) | WIRE_LDELIM)
        w.bytes(inner.finish())
      } else {
        present.forEach((item, i) => {
          w.varint32((field.id << 3) | wire)
          writeValue(w, field, item, `${where}[${i}]`)
        })
      }
    } else {
      w.varint32((field.id << 3) | wire)
      writeValue(w, field, present, where)
    }
  }
  return w
}

/** Encode a plain object as a message of `desc`. Throws WireError naming the bad field. */
export function encode(desc: MessageDesc, value: Record<string, unknown>): Uint8Array {
  return encodeInto(new Writer(), desc, value, '').finish()
}

// ---- decoding ----

class Reader {
  pos: number
  private view: DataView | undefined

  constructor(readonly buf: Uint8Array, start: number, readonly end: number) {
    this.pos = start
  }

  private dataView(): DataView {
    this.view ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength)
    return this.view
  }

  /** A varint as an unsigned 64-bit bigint when it needs more than 32 bits, else a number. */
  varint(): number | bigint {
    let result = 0
    let shift = 0
    let i = 0
    // Up to 28 bits in a number; the rare longer ones (u64 addresses, negative int32s) as bigint.
    for (; i < 4; i++) {
      if (this.pos >= this.end) throw new WireError('index out of range: varint runs past the end')
      const byte = this.buf[this.pos++]!
      result |= (byte & 0x7f) << shift
      if (byte < 0x80) return result
      shift += 7
    }
    let value = BigInt(result)
    for (; i < 10; i++) {
      if (this.pos >= this.end) throw new WireError('index out of range: varint runs past the end')
      const byte = this.buf[this.pos++]!
      value |= BigInt(byte & 0x7f) << BigInt(shift)
      if (byte < 0x80) {
        value = BigInt.asUintN(64, value)
        return value <= 0xffffffffn ? Number(value) : value
      }
      shift += 7
    }
    throw new WireError('invalid varint encoding')
  }

  length(): number {
    const n = this.varint()
    if (typeof n !== 'number' || n > this.end - this.pos) throw new WireError(`index out of range: ${String(n)} bytes at ${this.pos} of ${this.end}`)
    return n
  }

  fixed32(): DataView {
    if (this.end - this.pos < 4) throw new WireError('index out of range: fixed32 runs past the end')
    this.pos += 4
    return new DataView(this.dataView().buffer, this.dataView().byteOffset + this.pos - 4, 4)
  }

  fixed64(): DataView {
    if (this.end - this.pos < 8) throw new WireError('index out of range: fixed64 runs past the end')
    this.pos += 8
    return new DataView(this.dataView().buffer, this.dataView().byteOffset + this.pos - 8, 8)
  }

  skip(wire: number): void {
    switch (wire) {
      case WIRE_VARINT:
        this.varint()
        return
      case WIRE_FIXED64:
        this.fixed64()
        return
      case WIRE_LDELIM: {
        const n = this.length()
        this.pos += n
        return
      }
      case WIRE_FIXED32:
        this.fixed32()
        return
      case 3: // a group: skip to its end tag
        for (;;) {
          const tag = this.varint()
          if (typeof tag !== 'number') throw new WireError('invalid tag')
          if ((tag & 7) === 4) return
          this.skip(tag & 7)
        }
      default:
        throw new WireError(`invalid wire type ${wire} at offset ${this.pos}`)
    }
  }
}

const asBig = (v: number | bigint): bigint => (typeof v === 'bigint' ? v : BigInt(v))

function readScalar(r: Reader, type: ScalarType): unknown {
  switch (type) {
    case 'uint32': {
      const v = r.varint()
      return typeof v === 'bigint' ? Number(v & 0xffffffffn) : v
    }
    case 'int32': {
      const v = r.varint()
      return typeof v === 'bigint' ? Number(BigInt.asIntN(32, v)) : v | 0
    }
    case 'sint32': {
      const v = r.varint()
      const n = typeof v === 'bigint' ? Number(v & 0xffffffffn) : v
      return (n >>> 1) ^ -(n & 1)
    }
    case 'uint64':
      return asBig(r.varint())
    case 'int64':
      return BigInt.asIntN(64, asBig(r.varint()))
    case 'sint64': {
      const v = asBig(r.varint())
      return BigInt.asIntN(64, (v >> 1n) ^ -(v & 1n))
    }
    case 'bool':
      return r.varint() !== 0
    case 'fixed32':
      return r.fixed32().getUint32(0, true)
    case 'sfixed32':
      return r.fixed32().getInt32(0, true)
    case 'float':
      return r.fixed32().getFloat32(0, true)
    case 'fixed64':
      return r.fixed64().getBigUint64(0, true)
    case 'sfixed64':
      return r.fixed64().getBigInt64(0, true)
    case 'double':
      return r.fixed64().getFloat64(0, true)
    case 'string': {
      const n = r.length()
      r.pos += n
      return textDecoder.decode(r.buf.subarray(r.pos - n, r.pos))
    }
    case 'bytes': {
      const n = r.length()
      r.pos += n
      return r.buf.slice(r.pos - n, r.pos)
    }
  }
}

function readValue(r: Reader, field: FieldDesc): unknown {
  if (field.message) {
    const n = r.length()
    const start = r.pos
    r.pos += n
    return decodeFrom(r.buf, start, start + n, field.message)
  }
  if (field.enum) {
    const v = r.varint()
    return typeof v === 'bigint' ? Number(BigInt.asIntN(32, v)) : v | 0
  }
  return readScalar(r, field.scalar!)
}

const prototypes = new WeakMap<MessageDesc, object>()

function decodeFrom(buf: Uint8Array, start: number, end: number, desc: MessageDesc): Record<string, unknown> {
  let proto = prototypes.get(desc)
  if (!proto) {
    // Not frozen: assigning a field would then fail on the read-only inherited property.
    proto = {...desc.defaults}
    prototypes.set(desc, proto)
  }
  const out = Object.create(proto) as Record<string, unknown>
  const r = new Reader(buf, start, end)
  while (r.pos < end) {
    const tag = r.varint()
    if (typeof tag !== 'number') throw new WireError('invalid tag')
    const id = tag >>> 3
    const wire = tag & 7
    const field = desc.byId.get(id)
    if (!field) {
      r.skip(wire)
      continue
    }
    const expected = wireType(field)
    if (field.rule === 'repeated') {
      let list = Object.prototype.hasOwnProperty.call(out, field.name) ? out[field.name] as unknown[] : undefined
      if (!list) {
        list = []
        out[field.name] = list
      }
      if (wire === WIRE_LDELIM && expected !== WIRE_LDELIM) {
        // Packed scalars.
        const n = r.length()
        const packedEnd = r.pos + n
        const inner = new Reader(buf, r.pos, packedEnd)
        while (inner.pos < packedEnd) list.push(readValue(inner, field))
        r.pos = packedEnd
        continue
      }
      if (wire !== expected) throw new WireError(`invalid wire type ${wire} for ${field.name} at offset ${r.pos}`)
      list.push(readValue(r, field))
    } else {
      if (wire !== expected) throw new WireError(`invalid wire type ${wire} for ${field.name} at offset ${r.pos}`)
      out[field.name] = readValue(r, field)
    }
  }
  if (r.pos > end) throw new WireError('index out of range: a field runs past the end')
  for (const field of desc.fields) {
    if (field.rule === 'required' && !Object.prototype.hasOwnProperty.call(out, field.name)) throw new WireError(`missing required '${field.name}'`)
  }
  return out
}

/** Decode one message of `desc`. Throws WireError on bad wire data or a missing required field. */
export function decode(desc: MessageDesc, bytes: Uint8Array): Record<string, unknown> {
  return decodeFrom(bytes, 0, bytes.byteLength, desc)
}

/**
 * The CRIU message schemas, read from src/criu/proto/*.proto by a small parser of the
 * proto2 subset those files use: messages (nested messages and enums too), enums,
 * required/optional/repeated fields, `[default = X]` and `[packed = true]`. The
 * .proto files stay the one source of the schema; parsing them here costs about a
 * millisecond, where loading protobufjs and compiling its per-type code took
 * 50-150 ms of every `criu` command.
 */

/** Scalar field types, by protobuf name. */
export type ScalarType = 'double' | 'float' | 'int32' | 'int64' | 'uint32' | 'uint64' | 'sint32' | 'sint64'
  | 'fixed32' | 'fixed64' | 'sfixed32' | 'sfixed64' | 'bool' | 'string' | 'bytes'

const SCALARS: ReadonlySet<string> = new Set(['double', 'float', 'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64',
  'fixed32', 'fixed64', 'sfixed32', 'sfixed64', 'bool', 'string', 'bytes'])

export interface EnumDesc {
  name: string
  values: Map<string, number>
  /** proto2's default of a field of this enum: its first value. */
  first: number
}

export interface FieldDesc {
  name: string
  id: number
  rule: 'required' | 'optional' | 'repeated'
  /** The type as written: a scalar name, or a message or enum name resolved into `message` / `enum`. */
  type: string
  scalar?: ScalarType
  message?: MessageDesc
  enum?: EnumDesc
  packed: boolean
  /** The text of `[default = X]`, if any. */
  defaultText?: string
}

export interface MessageDesc {
  name: string
  /** By field number, ascending: the order fields are encoded in. */
  fields: FieldDesc[]
  byId: Map<number, FieldDesc>
  /** Prototype of decoded messages: every field's default, so absent fields read as proto2 defaults. */
  defaults: Record<string, unknown>
}

export interface Schema {
  messages: Map<string, MessageDesc>
  enums: Map<string, EnumDesc>
}

interface RawField {name: string; id: number; rule: FieldDesc['rule']; type: string; packed: boolean; defaultText?: string}
interface RawMessage {name: string; fields: RawField[]; scope: string[]}

export class ProtoSyntaxError extends Error {}

function tokenize(text: string): string[] {
  const tokens: string[] = []
  const pattern = /\s+|\/\/[^\n]*|\/\*[\s\S]*?\*\/|("(?:[^"\\]|\\.)*")|([A-Za-z_][\w.]*|-?\d[\w.]*|[{}[\]=;,<>()])/g
  let match: RegExpExecArray | null
  let at = 0
  while ((match = pattern.exec(text)) !== null) {
    if (match.index !== at) throw new ProtoSyntaxError(`unexpected ${JSON.stringify(text.slice(at, at + 20))}`)
    at = pattern.lastIndex
    const token = match[1] ?? match[2]
    if (token !== undefined) tokens.push(token)
  }
  if (at !== text.length) throw new ProtoSyntaxError(`unexpected ${JSON.stringify(text.slice(at, at + 20))}`)
  return tokens
}

/** Parse the text of one .proto file into `messages` and `enums` (by full, dotted name). */
function parseFile(text: string, messages: RawMessage[], enums: Map<string, EnumDesc>, imports: string[]): void {
  const tokens = tokenize(text)
  let i = 0
  const next = (): string => {
    const token = tokens[i++]
    if (token === undefined) throw new ProtoSyntaxError('unexpected end of file')
    return token
  }
  const expect = (want: string): void => {
    const got = next()
    if (got !== want) throw new ProtoSyntaxError(`expected ${want}, found ${got}`)
  }
  const skipStatement = (): void => {
    while (next() !== ';');
  }
  const parseEnum = (scope: string[]): void => {
    const name = [...scope, next()].join('.')
    expect('{')
    const values = new Map<string, number>()
    for (let token = next(); token !== '}'; token = next()) {
      if (token === 'option' || token === 'reserved') {
        skipStatement()
        continue
      }
      expect('=')
      values.set(token, Number(next()))
      let end = next()
      if (end === '[') {
        while (next() !== ']');
        end = next()
      }
      if (end !== ';') throw new ProtoSyntaxError(`expected ; after enum value ${token}`)
    }
    const first = values.values().next().value
    enums.set(name, {name, values, first: first ?? 0})
  }
  const parseMessage = (scope: string[]): void => {
    const name = next()
    const inner = [...scope, name]
    const message: RawMessage = {name: inner.join('.'), fields: [], scope: inner}
    messages.push(message)
    expect('{')
    for (let token = next(); token !== '}'; token = next()) {
      if (token === 'message') parseMessage(inner)
      else if (token === 'enum') parseEnum(inner)
      else if (token === 'option' || token === 'reserved' || token === 'extensions') skipStatement()
      else if (token === 'required' || token === 'optional' || token === 'repeated') {
        const field: RawField = {rule: token, type: next(), name: next(), id: 0, packed: false}
        expect('=')
        field.id = Number(next())
        let end = next()
        if (end === '[') {
          for (;;) {
            const option = next()
            expect('=')
            const value = next()
            if (option === 'default') field.defaultText = value
            else if (option === 'packed') field.packed = value === 'true'
            const sep = next()
            if (sep === ']') break
            if (sep !== ',') throw new ProtoSyntaxError(`expected , or ] in the options of ${field.name}`)
          }
          end = next()
        }
        if (end !== ';') throw new ProtoSyntaxError(`expected ; after field ${field.name}`)
        if (!Number.isInteger(field.id) || field.id <= 0) throw new ProtoSyntaxError(`bad field number for ${field.name}`)
        message.fields.push(field)
      } else {
        throw new ProtoSyntaxError(`unexpected ${token} in message ${message.name}`)
      }
    }
  }
  while (i < tokens.length) {
    const token = next()
    if (token === 'syntax' || token === 'package' || token === 'option') skipStatement()
    else if (token === 'import') {
      let file = next()
      if (file === 'public' || file === 'weak') file = next()
      imports.push(JSON.parse(file) as string)
      expect(';')
    } else if (token === 'message') parseMessage([])
    else if (token === 'enum') parseEnum([])
    else if (token !== ';') throw new ProtoSyntaxError(`unexpected ${token}`)
  }
}

function scalarDefault(type: ScalarType): unknown {
  switch (type) {
    case 'int64': case 'uint64': case 'sint64': case 'fixed64': case 'sfixed64':
      return 0n
    case 'bool':
      return false
    case 'string':
      return ''
    case 'bytes':
      return new Uint8Array(0)
    default:
      return 0
  }
}

function parseDefault(field: FieldDesc): unknown {
  const text = field.defaultText!
  if (field.enum) {
    const value = field.enum.values.get(text)
    if (value === undefined) throw new ProtoSyntaxError(`default ${text} of ${field.name} is not a value of ${field.enum.name}`)
    return value
  }
  switch (field.scalar) {
    case 'bool':
      return text === 'true'
    case 'string':
    case 'bytes':
      throw new ProtoSyntaxError(`string defaults are not supported (${field.name})`)
    case 'int64': case 'uint64': case 'sint64': case 'fixed64': case 'sfixed64':
      return BigInt(text)
    default:
      return Number(text)
  }
}

/**
 * Parse `files` (read with `read`, following their imports) into one schema. Names are
 * resolved as protoc does for unqualified names: innermost enclosing scope first.
 */
export function parseSchema(files: readonly string[], read: (file: string) => string): Schema {
  const raw: RawMessage[] = []
  const enums = new Map<string, EnumDesc>()
  const seen = new Set<string>()
  const queue = [...files]
  while (queue.length > 0) {
    const file = queue.shift()!
    if (seen.has(file)) continue
    seen.add(file)
    const imports: string[] = []
    try {
      parseFile(read(file), raw, enums, imports)
    } catch (error) {
      if (error instanceof ProtoSyntaxError) throw new ProtoSyntaxError(`${file}: ${error.message}`)
      throw error
    }
    queue.push(...imports)
  }
  const messages = new Map<string, MessageDesc>()
  for (const message of raw) {
    messages.set(message.name, {name: message.name, fields: [], byId: new Map(), defaults: {}})
  }
  const lookup = <T>(map: Map<string, T>, scope: string[], name: string): T | undefined => {
    for (let depth = scope.length; depth >= 0; depth--) {
      const found = map.get([...scope.slice(0, depth), name].join('.'))
      if (found) return found
    }
    return undefined
  }
  for (const message of raw) {
    const desc = messages.get(message.name)!
    for (const rawField of message.fields) {
      const field: FieldDesc = {name: rawField.name, id: rawField.id, rule: rawField.rule, type: rawField.type, packed: rawField.packed}
      if (rawField.defaultText !== undefined) field.defaultText = rawField.defaultText
      if (SCALARS.has(rawField.type)) field.scalar = rawField.type as ScalarType
      else {
        const inner = lookup(messages, message.scope, rawField.type)
        const anEnum = inner ? undefined : lookup(enums, message.scope, rawField.type)
        if (inner) field.message = inner
        else if (anEnum) field.enum = anEnum
        else throw new ProtoSyntaxError(`${message.name}.${field.name}: unknown type ${rawField.type}`)
      }
      if (desc.byId.has(field.id)) throw new ProtoSyntaxError(`${message.name}: field number ${field.id} used twice`)
      desc.byId.set(field.id, field)
      desc.fields.push(field)
      let value: unknown
      if (field.rule === 'repeated') value = Object.freeze([])
      else if (field.message) value = null
      else if (field.defaultText !== undefined) value = parseDefault(field)
      else if (field.enum) value = field.enum.first
      else value = scalarDefault(field.scalar!)
      desc.defaults[field.name] = value
    }
    desc.fields.sort((a, b) => a.id - b.id)
  }
  return {messages, enums}
}

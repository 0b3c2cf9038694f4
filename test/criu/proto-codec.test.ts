/**
 * cxlfork's own protobuf codec (src/criu/proto-schema.ts + proto-codec.ts) against
 * protobufjs, the reference it replaced: the same schema from the same .proto files, and
 * for every record of an image set written for a live process, the same decoded values
 * and byte-identical encodings both ways. Plus the wire forms cxlfork never writes but
 * CRIU's protobuf-c may (packed repeated scalars, negative and zigzag integers, unknown
 * fields) and damaged records.
 */
import {strict as assert} from 'node:assert'
import {type ChildProcess, spawn} from 'node:child_process'
import {createRequire} from 'node:module'
import {existsSync, readdirSync, rmSync, statSync} from 'node:fs'
import {join} from 'node:path'
import type * as Protobuf from 'protobufjs'

import {CorruptError} from '../../src/errors.js'
import {type ImageKind, IMAGE_KINDS, criuSchema, decodeMessage, encodeMessage, readImageRecords} from '../../src/criu/image-file.js'
import {writeCriuImages} from '../../src/criu/images.js'
import {projectRoot} from '../../src/paths.js'
import {expectError} from '../helpers/errors.js'
import {killChild} from '../helpers/fixtures.js'
import {captureLive} from './live-capture.js'
import {ScratchDirs} from './scratch.js'

type Obj = Record<string, any>

const protobuf = createRequire(import.meta.url)('protobufjs') as typeof Protobuf
// Every .proto of the image kinds: a kind added later is compared too.
const PROTO_DIR = join(projectRoot(), 'src/criu/proto')
const PROTO_FILES = readdirSync(PROTO_DIR).filter((file) => file.endsWith('.proto')).sort()

function referenceRoot(): Protobuf.Root {
  const root = new protobuf.Root()
  root.loadSync(PROTO_FILES.map((file) => join(PROTO_DIR, file)), {keepCase: true})
  root.resolveAll()
  return root
}

function allTypes(namespace: Protobuf.NamespaceBase, out: Protobuf.Type[] = []): Protobuf.Type[] {
  for (const nested of namespace.nestedArray) {
    if (nested instanceof protobuf.Type) out.push(nested)
    if (nested instanceof protobuf.Namespace) allTypes(nested, out)
  }
  return out
}

/** Own fields only, 64-bit values as decimal strings, bytes as arrays: protobufjs toObject's form with defaults: false. */
function canonical(value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString()
  if (value instanceof Uint8Array) return [...value]
  if (Array.isArray(value)) return value.map(canonical)
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((key) => [key, canonical((value as Obj)[key])]))
  }
  return value
}

function referenceObject(type: Protobuf.Type, bytes: Uint8Array): unknown {
  const object = type.toObject(type.decode(bytes), {longs: String, enums: Number, bytes: Array, defaults: false, arrays: false})
  return canonical(JSON.parse(JSON.stringify(object)))
}

describe('criu protobuf codec: the same schema, values and bytes as protobufjs', function () {
  this.timeout(120_000)
  const root = referenceRoot()
  const scratch = new ScratchDirs('cxlfork-criu-parity-codec-')

  it('parses every message of src/criu/proto with the fields protobufjs finds', function () {
    const schema = criuSchema()
    const types = allTypes(root)
    assert.ok(types.length >= 40, `${types.length} message types`)
    for (const type of types) {
      const name = type.fullName.replace(/^\./, '')
      const desc = schema.messages.get(name)
      assert.ok(desc, `message ${name}`)
      const theirs = type.fieldsArray.map((field) => [field.name, field.id, field.repeated ? 'repeated' : field.required ? 'required' : 'optional', field.type, field.options?.['default']])
        .sort((a, b) => (a[1] as number) - (b[1] as number))
      const ours = desc.fields.map((field) => [field.name, field.id, field.rule, field.type, field.defaultText === undefined ? undefined : field.enum || field.scalar === 'bool' ? field.defaultText === 'true' ? true : field.defaultText : Number(field.defaultText)])
      assert.deepEqual(ours.map((f) => f.slice(0, 4)), theirs.map((f) => f.slice(0, 4)), name)
      assert.deepEqual(ours.map((f) => f[4]), theirs.map((f) => f[4]), `${name} defaults`)
    }
  })

  describe('every record of a live process\'s image set', function () {
    let child: ChildProcess
    let dir: string

    before(async function () {
      // stdio /dev/null and readiness in a file: a pipe from Node would be a socketpair end outside the process.
      dir = scratch.make()
      const ready = join(dir, 'ready')
      child = spawn('python3', ['-c', 'import time, os, sys\nd = os.open("/tmp", os.O_RDONLY | os.O_DIRECTORY)\nopen(sys.argv[1], "w").close()\ntime.sleep(600)', ready], {stdio: 'ignore'})
      const deadline = Date.now() + 30_000
      while (!existsSync(ready)) {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`python3 did not get ready (exit ${child.exitCode})`)
        await new Promise((resolve) => setTimeout(resolve, 10))
      }
      rmSync(ready)
      process.kill(child.pid!, 'SIGSTOP')
      const capture = captureLive(child.pid!)
      try {
        await writeCriuImages(dir, capture.image, capture.pages, {freezingTime: 1, frozenTime: 2, memdumpTime: 3, memwriteTime: 4, pagesScanned: 5, pagesWritten: 6},
          {vdsoPages: true, modeOf: (path) => statSync(path).mode})
      } finally {
        capture.close()
      }
    })

    after(async function () {
      await killChild(child)
      scratch.removeAll()
    })

    it('decodes to protobufjs\'s values and encodes back to the same bytes, and protobufjs encodes ours to them too', function () {
      let records = 0
      for (const name of readdirSync(dir).filter((file) => !file.startsWith('pages-'))) {
        const kind = (name.startsWith('stats-') ? 'stats' : Object.keys(IMAGE_KINDS).find((k) => name === `${k}.img` || name.startsWith(`${k}-`))) as ImageKind
        assert.ok(kind, name)
        readImageRecords(join(dir, name), kind).forEach((record, i) => {
          const typeName = kind === 'pagemap' && i === 0 ? 'pagemap_head' : IMAGE_KINDS[kind].type
          const type = root.lookupType(typeName)
          const ours = decodeMessage<Obj>(typeName, record, `${name} record ${i}`)
          assert.deepEqual(canonical(ours), referenceObject(type, record), `${name} record ${i}`)
          assert.deepEqual(Buffer.from(encodeMessage(typeName, ours)), Buffer.from(record), `${name} record ${i}: re-encoded`)
          assert.deepEqual(Buffer.from(type.encode(type.fromObject(canonical(ours) as Obj)).finish()), Buffer.from(record), `${name} record ${i}: protobufjs encodes the same bytes`)
          records++
        })
      }
      assert.ok(records >= 12, `${records} records`)
    })
  })

  it('takes what protobuf-c may write: packed scalars, negative and zigzag integers, doubles, unknown fields', function () {
    // mm_entry with mm_saved_auxv (field 13) packed, an unknown field 900 (length-delimited) and one (varint) 901.
    const mm = root.lookupType('mm_entry')
    const plain = {mm_start_code: '4096', mm_end_code: '8192', mm_start_data: '1', mm_end_data: '2', mm_start_stack: '3', mm_start_brk: '4', mm_brk: '5',
      mm_arg_start: '6', mm_arg_end: '7', mm_env_start: '8', mm_env_end: '9', exe_file_id: 3}
    const base = mm.encode(mm.fromObject(plain)).finish()
    const auxv = [33n, 0x7ffd12345000n, 0xffffffffffffffffn]
    const packed = protobuf.Writer.create()
    const Long = protobuf.util.Long as unknown as {fromString(text: string, unsigned: boolean): number}
    for (const word of auxv) packed.uint64(Long.fromString(word.toString(), true))
    const extra = protobuf.Writer.create().uint32((13 << 3) | 2).bytes(packed.finish()).uint32((900 << 3) | 2).string('skip me').uint32((901 << 3) | 0).uint64(12345).finish()
    const record = new Uint8Array([...base, ...extra])
    const ours = decodeMessage<Obj>('mm_entry', record, 'test')
    assert.deepEqual(ours['mm_saved_auxv'], auxv)
    assert.deepEqual(canonical(ours), referenceObject(mm, record))
    // Re-encoded: unpacked (as declared) and without the unknown fields, as protobufjs does.
    assert.deepEqual(Buffer.from(encodeMessage('mm_entry', ours)), Buffer.from(mm.encode(mm.decode(record)).finish()))

    // reg_file_entry: sint32 mnt_id (zigzag, default -1), fown with negative int32s where declared.
    const reg = root.lookupType('reg_file_entry')
    const regValue = {id: 7, flags: 2, pos: '18446744073709551615', fown: {uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0}, name: '/tmp/x', mnt_id: -5, size: '4096', mode: 0o100644}
    const regBytes = reg.encode(reg.fromObject(regValue)).finish()
    const decoded = decodeMessage<Obj>('reg_file_entry', regBytes, 'test')
    assert.equal(decoded['mnt_id'], -5)
    assert.equal(decoded['pos'], 0xffffffffffffffffn)
    assert.deepEqual(Buffer.from(encodeMessage('reg_file_entry', decoded)), Buffer.from(regBytes))
    // An absent optional reads its declared default from the prototype and is not an own field.
    const noMnt = decodeMessage<Obj>('reg_file_entry', reg.encode(reg.fromObject({...regValue, mnt_id: undefined})).finish(), 'test')
    assert.equal(noMnt['mnt_id'], -1)
    assert.ok(!Object.prototype.hasOwnProperty.call(noMnt, 'mnt_id'))

    // inventory: double captured_at in the extension; enums by number and by name.
    const inventory = {img_version: 2, fdinfo_per_id: true, lsmtype: 'NO_LSM', cxlfork: {model_version: 3, captured_at: 1733380000.125, vdso_layout: []}}
    const type = root.lookupType('inventory_entry')
    assert.deepEqual(Buffer.from(encodeMessage('inventory_entry', inventory)), Buffer.from(type.encode(type.fromObject(inventory)).finish()))
    assert.equal(decodeMessage<Obj>('inventory_entry', encodeMessage('inventory_entry', inventory), 'test')['cxlfork']['captured_at'], 1733380000.125)
  })

  it('refuses damaged records and bad values with typed errors naming the field', function () {
    const good = encodeMessage('pstree_entry', {pid: 5, ppid: 0, pgid: 5, sid: 5, threads: [5]})
    expectError(() => decodeMessage('pstree_entry', good.subarray(0, good.length - 1), 'pstree.img record 0'), CorruptError, /pstree.img record 0: cannot decode pstree_entry: index out of range/)
    expectError(() => decodeMessage('pstree_entry', Uint8Array.from([0x08, 0x05]), 'pstree.img record 0'), CorruptError, /missing required 'ppid'/)
    expectError(() => decodeMessage('pstree_entry', Uint8Array.from([0x0f, 0x05]), 'pstree.img record 0'), CorruptError, /invalid wire type 7/)
    expectError(() => decodeMessage('pstree_entry', Uint8Array.from([0x0d, 1, 2, 3, 4]), 'pstree.img record 0'), CorruptError, /invalid wire type 5 for pid/)
    expectError(() => encodeMessage('pstree_entry', {pid: 5, pgid: 5, sid: 5}, 'pstree.img'), CorruptError, /cannot encode pstree_entry for pstree.img: ppid: missing required field/)
    expectError(() => encodeMessage('pstree_entry', {pid: 5.5, ppid: 0, pgid: 5, sid: 5}, 'pstree.img'), CorruptError, /pid: integer expected/)
    expectError(() => encodeMessage('mm_entry', {mm_start_code: 'x'}, 'mm.img'), CorruptError, /mm_start_code: integer\|Long expected/)
  })
})

/**
 * files.img (one entry per file: regular files, directories, devices, pipes) and
 * fdinfo-ID.img (the task's descriptors, naming entries of files.img). cxlfork's extensions
 * carry the model's file identity (device, inode, mtime) and fd kinds; a set CRIU wrote
 * gets the identity of the file now at each path, checked against what CRIU recorded.
 */
import {UnsupportedError} from '../../errors.js'
import type {FdImage, FdKind, FileIdentity, ProcessImage} from '../../image/process-image.js'
import {FD_CLOEXEC, FD_TYPE_NAMES, FD_TYPE_PIPE, FD_TYPE_REG, KID, S_IFCHR, S_IFDIR, S_IFMT} from '../constants.js'
import {hostIdentity} from '../file-identity.js'
import {encodeMessage, readImage} from '../image-file.js'
import type {WriteOptions} from '../set-types.js'
import {big, has, str64, u64} from '../values.js'
import {type ImagePath, type Msg, type Obj, type PutImage, corrupt, fileIdFor, fown, optionalImage} from './common.js'

// ---- writing ----

/**
 * files.img and fdinfo-2.img of `image`: one entry per tracked file (ids 1..n, index + 1),
 * then one per fd, then cwd and root, whose ids fs-PID.img names. Encoded here, written by
 * the caller in CRIU's order.
 */
export function fileRecords(image: ProcessImage, options: WriteOptions): {files: Uint8Array[]; fdinfo: Uint8Array[]; cwdId: number; rootId: number} {
  /** The whole st_mode (type and permission bits, as CRIU records it) when modeOf knows `path` as a file of `type`; else no mode. */
  const setMode = (reg: Obj, path: string, type: number) => {
    const mode = options.modeOf?.(path)
    if (mode !== undefined && (mode & S_IFMT) === type) reg['mode'] = mode >>> 0
  }
  const fileRecords: Uint8Array[] = []
  image.files.forEach((file, i) => {
    fileRecords.push(encodeMessage('file_entry', {type: FD_TYPE_REG, id: i + 1, reg: {
      id: i + 1, flags: 0, pos: str64(0n), fown: fown(), name: file.path, size: str64(u64(file.size)), mode: file.mode >>> 0,
      cxlfork: {file_index: i, device: file.device, inode: str64(u64(file.inode)), mtime_ns: str64(BigInt.asIntN(64, file.mtimeNs))},
    }}, 'files.img'))
  })
  let nextId = image.files.length + 1
  const fdRecords: Uint8Array[] = []
  for (const fdImage of image.fds) {
    const id = nextId++
    const fdExt: Obj = {kind: fdImage.kind, path: fdImage.path}
    if (fdImage.fileIndex !== undefined) fdExt['file_index'] = fileIdFor(image, fdImage.fileIndex, `fd ${fdImage.fd}`) - 1
    if (fdImage.kind === 'pipe') {
      const pipeId = /^pipe:\[(\d+)\]$/.exec(fdImage.path)?.[1]
      fileRecords.push(encodeMessage('file_entry', {type: FD_TYPE_PIPE, id, pipe: {id, pipe_id: Number(pipeId ?? 0) >>> 0, flags: fdImage.flags >>> 0, fown: fown()}}, 'files.img'))
    } else {
      const reg: Obj = {id, flags: fdImage.flags >>> 0, pos: str64(u64(fdImage.offset)), fown: fown(), name: fdImage.path}
      const identity = fdImage.fileIndex === undefined ? undefined : image.files[fdImage.fileIndex]
      if (identity) reg['mode'] = identity.mode >>> 0
      else if (fdImage.kind === 'chardev' || fdImage.kind === 'tty') setMode(reg, fdImage.path, S_IFCHR)
      else if (fdImage.kind === 'directory') setMode(reg, fdImage.path, S_IFDIR)
      fileRecords.push(encodeMessage('file_entry', {type: FD_TYPE_REG, id, reg}, 'files.img'))
    }
    fdRecords.push(encodeMessage('fdinfo_entry', {id, flags: fdImage.cloexec ? FD_CLOEXEC : 0, type: fdImage.kind === 'pipe' ? FD_TYPE_PIPE : FD_TYPE_REG, fd: fdImage.fd, cxlfork: fdExt}, `fdinfo-${KID}.img`))
  }
  const cwdId = nextId++
  const rootId = nextId++
  for (const [id, name] of [[cwdId, image.task.cwd], [rootId, image.task.root]] as const) {
    const reg: Obj = {id, flags: 0, pos: str64(0n), fown: fown(), name}
    setMode(reg, name, S_IFDIR)
    fileRecords.push(encodeMessage('file_entry', {type: FD_TYPE_REG, id, reg}, 'files.img'))
  }
  return {files: fileRecords, fdinfo: fdRecords, cwdId, rootId}
}

export function writeFileImages(put: PutImage, records: {files: Uint8Array[]; fdinfo: Uint8Array[]}): void {
  put('files.img', 'files', records.files)
  put(`fdinfo-${KID}.img`, 'fdinfo', records.fdinfo)
}

// ---- reading ----

/**
 * files.img of a set, and the model's file list built from it as entries are asked for:
 * in cxlfork's sets each file carries its index; in CRIU's, files get indexes in the order
 * they are first named (the executable, the mappings, the descriptors).
 */
export class FileTable {
  readonly entries = new Map<number, Msg>()
  readonly files: FileIdentity[] = []
  private readonly remaps = new Map<number, number>()
  private readonly byName = new Map<string, number>()

  constructor(at: ImagePath, private readonly ours: boolean) {
    for (const entry of readImage<Msg>(at('files.img'), 'files')) this.entries.set(entry['id'], entry)
    // Files CRIU could not reach by name (unlinked, or only via /proc) are dumped through a
    // remap: the name in files.img is then not the file. cxlfork restores by name only.
    const remapPath = at('remap-fpath.img')
    for (const remap of optionalImage(remapPath, () => readImage<Msg>(remapPath, 'remap-fpath')) ?? []) {
      this.remaps.set(remap['orig_id'] as number, has(remap, 'remap_type') ? remap['remap_type'] as number : 0)
    }
  }

  checkRemap(id: number, name: string, what: string): void {
    const type = this.remaps.get(id)
    if (type === undefined) return
    const how = type === 1 ? 'was deleted; CRIU saved its contents as a ghost file' : type === 2 ? 'was reachable only through /proc; CRIU remapped it' : 'was unlinked; CRIU linked it under another name'
    throw new UnsupportedError('CRIU_FILE_REMAP', `${what} refers to ${name} (file id ${id}), which ${how} (remap-fpath.img); the CRIU-format path restores files by name only`,
      'Dump a process whose open and mapped files all still exist under their names.')
  }

  /** The regular-file entry `id` names. */
  regOf(id: number, what: string): Msg {
    const entry = this.entries.get(id)
    if (!entry) throw corrupt(`${what} refers to file id ${id}, which files.img does not hold`)
    this.checkRemap(id, has(entry, 'reg') ? entry['reg']['name'] : `${FD_TYPE_NAMES[entry['type']] ?? entry['type']} file`, what)
    if (entry['type'] !== FD_TYPE_REG || !has(entry, 'reg')) {
      throw new UnsupportedError('CRIU_FILE_TYPE', `${what} refers to file id ${id} of type ${FD_TYPE_NAMES[entry['type']] ?? entry['type']}, not a regular file`,
        'Only regular files (and pipes for descriptors) are supported by the CRIU-format path.')
    }
    return entry['reg'] as Msg
  }

  /** The model's file index of entry `id`, adding the file to the model on first use. */
  fileIndexOf(id: number, what: string): number {
    const reg = this.regOf(id, what)
    if (has(reg, 'cxlfork')) {
      const fileExt = reg['cxlfork'] as Msg
      const index = fileExt['file_index'] as number
      if (!Number.isInteger(index) || index >= this.entries.size) throw corrupt(`${what}: file id ${id} claims file index ${index}, beyond the ${this.entries.size} entries of files.img`)
      if (!this.files[index]) {
        this.files[index] = {
          path: reg['name'], device: fileExt['device'], inode: u64(big(fileExt['inode'])), size: has(reg, 'size') ? u64(big(reg['size'])) : 0n,
          mtimeNs: big(fileExt['mtime_ns']), mode: has(reg, 'mode') ? reg['mode'] : 0,
        }
      }
      return index
    }
    if (this.ours) throw corrupt(`${what}: file id ${id} (${reg['name']}) lacks its cxlfork identity`)
    const known = this.byName.get(reg['name'])
    if (known !== undefined) return known
    this.files.push(hostIdentity(reg, what))
    this.byName.set(reg['name'], this.files.length - 1)
    return this.files.length - 1
  }

  /** cxlfork's sets: every tracked file is present, also those nothing above referenced. */
  checkComplete(): void {
    if (!this.ours) return
    for (let i = 0; i < this.files.length; i++) if (!this.files[i]) throw corrupt(`files.img lacks tracked file index ${i}`)
    // Files tracked by the model but referenced by nothing above still travel in files.img.
    for (const entry of this.entries.values()) {
      if (entry['type'] === FD_TYPE_REG && has(entry['reg'], 'cxlfork')) this.fileIndexOf(entry['id'], 'files.img')
    }
  }
}

/** The task's descriptors, from fdinfo-FILES_ID.img and the entries of files.img they name. */
export function readFds(at: ImagePath, ids: Msg, table: FileTable): FdImage[] {
  const fds: FdImage[] = []
  const filesId = ids['files_id'] as number
  const fdinfoName = `fdinfo-${filesId}.img`
  // CRIU writes the fdinfo image of every files id, empty for a process without fds: a missing one is a lost file, not "no fds".
  const fdinfos = readImage<Msg>(at(fdinfoName), 'fdinfo')
  for (const info of fdinfos) {
    const fdNumber = info['fd'] as number
    const what = `${fdinfoName} fd ${fdNumber}`
    const fdExt = has(info, 'cxlfork') ? info['cxlfork'] as Msg : undefined
    const entry = table.entries.get(info['id'])
    if (!entry) throw corrupt(`${what} refers to file id ${info['id']}, which files.img does not hold`)
    let fdImage: FdImage
    if (info['type'] === FD_TYPE_PIPE && entry['type'] === FD_TYPE_PIPE && has(entry, 'pipe')) {
      const pipe = entry['pipe'] as Msg
      fdImage = {fd: fdNumber, kind: 'pipe', path: fdExt ? fdExt['path'] : `pipe:[${pipe['pipe_id']}]`, flags: pipe['flags'], cloexec: (info['flags'] & FD_CLOEXEC) !== 0, offset: 0n}
    } else if (info['type'] === FD_TYPE_REG && entry['type'] === FD_TYPE_REG && has(entry, 'reg')) {
      const reg = entry['reg'] as Msg
      table.checkRemap(info['id'], reg['name'], what)
      const mode = has(reg, 'mode') ? reg['mode'] as number : 0
      let kind: FdKind
      if (fdExt) kind = fdExt['kind'] as FdKind
      else if ((mode & S_IFMT) === S_IFDIR) kind = 'directory'
      else if ((mode & S_IFMT) === S_IFCHR) kind = /^\/dev\/(pts\/|tty)/.test(reg['name']) ? 'tty' : 'chardev'
      else kind = 'regular'
      fdImage = {fd: fdNumber, kind, path: fdExt ? fdExt['path'] : reg['name'], flags: reg['flags'], cloexec: (info['flags'] & FD_CLOEXEC) !== 0, offset: u64(big(reg['pos']))}
      if (fdExt) {
        if (has(fdExt, 'file_index')) fdImage.fileIndex = fdExt['file_index']
      } else if (kind === 'regular' || kind === 'directory') {
        fdImage.fileIndex = table.fileIndexOf(info['id'], what)
      }
    } else {
      const type = FD_TYPE_NAMES[info['type']] ?? String(info['type'])
      throw new UnsupportedError('CRIU_FD_TYPE', `${what} is of type ${type}, which the CRIU-format path does not restore`,
        'Only regular files, directories, character devices and pipes are supported; close other descriptors before dumping.')
    }
    fds.push(fdImage)
  }
  return fds
}

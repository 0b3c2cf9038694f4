/**
 * files.img (one entry per open file: regular files, directories, devices, pipes, eventfds,
 * epoll instances, timerfds, signalfds) and fdinfo-ID.img (each task's descriptors, naming
 * entries of files.img: fds sharing an open file description name one entry). cxlfork's
 * extensions carry the model's file identity (device, inode, mtime) and fd kinds; a set
 * CRIU wrote gets the identity of the file now at each path, checked against what CRIU
 * recorded. Each kind's own entry is encoded and read by its module (pipes-data.ts,
 * eventfd.ts, eventpoll.ts, timerfd.ts, signalfd.ts).
 */
import {CorruptError, UnsupportedError} from '../../errors.js'
import type {FdImage, FdKind, FileIdentity, ProcessImage, SocketImage, VmaImage} from '../../image/process-image.js'
import {
  FD_CLOEXEC, FD_TYPE_EVENTFD, FD_TYPE_EVENTPOLL, FD_TYPE_INETSK, FD_TYPE_MEMFD, FD_TYPE_UNIXSK, FD_TYPE_NAMES, FD_TYPE_PIPE, FD_TYPE_REG, FD_TYPE_SIGNALFD, FD_TYPE_TIMERFD, S_IFCHR, S_IFDIR, S_IFMT,
} from '../constants.js'
import {hostIdentity} from '../file-identity.js'
import {encodeMessage, readImage} from '../image-file.js'
import type {WriteOptions} from '../set-types.js'
import {AF, SOCK} from '../../sys/sockets.js'
import {O} from '../../sys/syscall.js'
import {big, has, str64, u64} from '../values.js'
import {type ImagePath, type Msg, type Obj, type PutImage, corrupt, fileIdFor, fown, optionalImage} from './common.js'
import {eventfdEntry, eventfdOf} from './eventfd.js'
import {eventpollEntry, eventpollOf} from './eventpoll.js'
import {inetSocketEntry, inetSocketOf} from './inetsk.js'
import type {MemfdFacts} from '../../image/shared-memory.js'
import {MemfdWriter, memfdOf} from './memfd.js'
import {type PipeData, PipesDataWriter, pipeEntry} from './pipes-data.js'
import {SkQueuesWriter} from './sk-queues.js'
import {socketIno, unixConnected, unixSocketEntry, unixSocketOf} from './unixsk.js'
import {signalfdEntry, signalfdOf} from './signalfd.js'
import {timerfdEntry, timerfdOf} from './timerfd.js'

// ---- writing ----

/** The files.img kind of each model fd kind the CRIU-format path writes (others are written as regular files: directories, devices, ttys). */
const FD_TYPES: Partial<Record<FdKind, number>> = {pipe: FD_TYPE_PIPE, eventfd: FD_TYPE_EVENTFD, epoll: FD_TYPE_EVENTPOLL, timerfd: FD_TYPE_TIMERFD, signalfd: FD_TYPE_SIGNALFD, shmem: FD_TYPE_MEMFD}

/** The ids a member's images use: its files.img ids start at `fileBase`; cwd and root are entries of their own. */
export interface MemberFileIds {
  fileBase: number
  cwdId: number
  rootId: number
}

/**
 * files.img, fdinfo-ID.img, pipes-data.img and memfd.img of a set, member by member (parents first).
 * Ids are global: a member's tracked files first, then one entry per open file description
 * (fds that share one, by dup or by inheritance from an earlier member, name one entry, as
 * CRIU writes them), then cwd and root.
 */
export class FileImagesWriter {
  private nextId = 1
  /** file_entry objects, encoded at write(): a socketpair end's peer inode (and its queue's id) may be known only once a later member is added. */
  private readonly files: Obj[] = []
  private readonly fdinfos: {kid: number; records: Uint8Array[]}[] = []
  /** `${pid}:${fd}` -> files.img id. */
  private readonly byFd = new Map<string, number>()
  private readonly pipes = new PipesDataWriter()
  private readonly queues = new SkQueuesWriter()
  private readonly memfds = new MemfdWriter()
  /** Sizes of the captured shared objects by id: a memfd inode's size when the host gives none. */
  private readonly objectSizes = new Map<string, bigint>()
  /** Unix socket entries by `${pid}:${fd}`, to give a pair's creator its peer when the member holding the other end is added. */
  private readonly unixEntries = new Map<string, Obj>()
  /** A cross-member pair's creator (`${pid}:${fd}`) -> the other end's id and inode. */
  private readonly otherEnd = new Map<string, {id: number; ino: number}>()
  private readonly peerQueues: {creator: string; data: Uint8Array}[] = []

  constructor(private readonly options: WriteOptions) {}

  /** The set's shared memory objects (their sizes; a memfd's facts), before the members that hold them open are added. */
  addSharedObjects(objects: readonly {id: string; size?: bigint; memfd?: MemfdFacts}[]): void {
    for (const object of objects) {
      if (object.size !== undefined) this.objectSizes.set(object.id, object.size)
      if (object.memfd) this.mappedMemfds.set(object.id, object.memfd)
    }
  }

  /** Memfds by object id, also those only mapped (their fds closed): written as memfds too, as CRIU does. */
  private readonly mappedMemfds = new Map<string, MemfdFacts>()

  /** Objects some member of the set holds open as a memfd (kind shmem): their mappings are memfd mappings. */
  private readonly heldOpen = new Set<string>()

  /** Every live member's images, before any is added: which objects are held open. */
  addHolders(images: readonly ProcessImage[]): void {
    for (const image of images) for (const fd of image.fds) if (fd.kind === 'shmem' && fd.sharedId !== undefined) this.heldOpen.add(fd.sharedId)
  }

  /** A MEMFD entry for a mapping of an object held open or of a memfd (its own entry, as CRIU writes one per mapping), or undefined. */
  memfdMapping(vma: VmaImage, owner: {uid: number; gid: number}): number | undefined {
    if (vma.sharedId === undefined) return undefined
    const memfd = this.mappedMemfds.get(vma.sharedId)
    if (!this.heldOpen.has(vma.sharedId) && !memfd) return undefined
    if (memfd && !this.heldOpen.has(vma.sharedId)) this.memfds.addMapped(vma.sharedId, memfd, owner)
    const id = this.nextId++
    this.files.push({type: FD_TYPE_MEMFD, id, memfd: this.memfds.mappingEntry(vma.sharedId, id)})
    return id
  }

  /** The whole st_mode (type and permission bits, as CRIU records it) when modeOf knows `path` as a file of `type`; else no mode. */
  private setMode(reg: Obj, path: string, type: number): void {
    const mode = this.options.modeOf?.(path)
    if (mode !== undefined && (mode & S_IFMT) === type) reg['mode'] = mode >>> 0
  }

  /** Encode member `image` (kernel-object id `kid` names its fdinfo image); `root`: the first member, whose files carry no pid. */
  addMember(image: ProcessImage, kid: number, root: boolean): MemberFileIds {
    const pid = image.task.pid
    const fileBase = this.nextId
    image.files.forEach((file, i) => {
      const id = this.nextId++
      this.files.push({type: FD_TYPE_REG, id, reg: {
        id, flags: 0, pos: str64(0n), fown: fown(), name: file.path, size: str64(u64(file.size)), mode: file.mode >>> 0,
        cxlfork: {file_index: i, device: file.device, inode: str64(u64(file.inode)), mtime_ns: str64(BigInt.asIntN(64, file.mtimeNs)), ...(file.ctimeNs === undefined ? {} : {ctime_ns: str64(BigInt.asIntN(64, file.ctimeNs))}), ...(root ? {} : {pid})},
      }})
    })
    const fds = [...image.fds].sort((a, b) => a.fd - b.fd)
    // Ids first (an epoll entry names its targets' ids), entries second.
    const fresh: {fd: FdImage; id: number}[] = []
    for (const fd of fds) {
      const shared = fd.sharedWith !== undefined ? this.byFd.get(`${pid}:${fd.sharedWith}`)
        : fd.sharedFrom?.description ? this.byFd.get(`${fd.sharedFrom.pid}:${fd.sharedFrom.fd}`) : undefined
      const id = shared ?? this.nextId++
      this.byFd.set(`${pid}:${fd.fd}`, id)
      if (shared === undefined) fresh.push({fd, id})
    }
    for (const {fd, id} of fresh) this.files.push(this.fileEntry(image, fd, id))
    const records = fds.map((fd) => {
      const fdExt: Obj = {kind: fd.kind, path: fd.path, ...(fd.pipe ? {pipe_state: true} : {})}
      if (fd.fileIndex !== undefined) fdExt['file_index'] = fileIdFor(image, fd.fileIndex, `fd ${fd.fd}`) - 1
      const type = fd.kind === 'socket' ? (fd.socket?.family === AF.UNIX ? FD_TYPE_UNIXSK : FD_TYPE_INETSK) : FD_TYPES[fd.kind] ?? FD_TYPE_REG
      return encodeMessage('fdinfo_entry', {id: this.byFd.get(`${pid}:${fd.fd}`)!, flags: fd.cloexec ? FD_CLOEXEC : 0, type, fd: fd.fd, cxlfork: fdExt}, `fdinfo-${kid}.img`)
    })
    this.fdinfos.push({kid, records})
    const cwdId = this.nextId++
    const rootId = this.nextId++
    for (const [id, name] of [[cwdId, image.task.cwd], [rootId, image.task.root]] as const) {
      const reg: Obj = {id, flags: 0, pos: str64(0n), fown: fown(), name}
      this.setMode(reg, name, S_IFDIR)
      this.files.push({type: FD_TYPE_REG, id, reg})
    }
    return {fileBase, cwdId, rootId}
  }

  private fileEntry(image: ProcessImage, fd: FdImage, id: number): Obj {
    const pid = image.task.pid
    switch (fd.kind) {
      case 'pipe':
        this.pipes.add(fd)
        return {type: FD_TYPE_PIPE, id, pipe: pipeEntry(fd, id)}
      case 'eventfd':
        return {type: FD_TYPE_EVENTFD, id, efd: eventfdEntry(fd, id)}
      case 'epoll':
        return {type: FD_TYPE_EVENTPOLL, id, epfd: eventpollEntry(fd, id, (target) => this.byFd.get(`${pid}:${target}`))}
      case 'timerfd':
        return {type: FD_TYPE_TIMERFD, id, tfd: timerfdEntry(fd, id)}
      case 'signalfd':
        return {type: FD_TYPE_SIGNALFD, id, sgfd: signalfdEntry(fd, id)}
      case 'shmem':
        return {type: FD_TYPE_MEMFD, id, memfd: this.memfds.entry(fd, id, this.options.shmemFdOf?.(pid, fd.fd),
          fd.sharedId === undefined ? undefined : this.objectSizes.get(fd.sharedId), {uid: image.task.uid, gid: image.task.gid})}
      case 'socket':
        if (fd.socket?.family === AF.UNIX) return {type: FD_TYPE_UNIXSK, id, usk: this.unixEntry(image, fd, id)}
        if (!fd.socket) throw new CorruptError('IMAGE_INCONSISTENT', `fd ${fd.fd} of process ${pid} is a socket without its state`, 'This is a cxlfork bug.')
        return {type: FD_TYPE_INETSK, id, isk: inetSocketEntry(fd, id)}
      default: {
        const reg: Obj = {id, flags: fd.flags >>> 0, pos: str64(u64(fd.offset)), fown: fown(), name: fd.path}
        const identity = fd.fileIndex === undefined ? undefined : image.files[fd.fileIndex]
        if (identity) reg['mode'] = identity.mode >>> 0
        else if (fd.kind === 'chardev' || fd.kind === 'tty') this.setMode(reg, fd.path, S_IFCHR)
        else if (fd.kind === 'directory') this.setMode(reg, fd.path, S_IFDIR)
        return {type: FD_TYPE_REG, id, reg}
      }
    }
  }

  /**
   * A Unix socket's entry and its queue: a pair's end names its other end's inode (in this
   * process, or, for the other end of a pair an earlier member created, that member's end,
   * whose entry then gets this one's inode); what the creator holds for the other end is
   * queued under that end's id.
   */
  private unixEntry(image: ProcessImage, fd: FdImage, id: number): Obj {
    const pid = image.task.pid
    const pair = fd.socket!.pair
    let peer = 0
    if (pair && pair.peerFd >= 0) {
      const other = image.fds.find((candidate) => candidate.fd === pair.peerFd)
      peer = other ? socketIno(other) : 0
    } else if (pair && fd.sharedFrom && !fd.sharedFrom.description) {
      const creator = `${fd.sharedFrom.pid}:${fd.sharedFrom.fd}`
      const creatorEntry = this.unixEntries.get(creator)
      if (creatorEntry) {
        peer = creatorEntry['ino'] as number
        creatorEntry['peer'] = socketIno(fd)
      }
      this.otherEnd.set(creator, {id, ino: socketIno(fd)})
    }
    const entry = unixSocketEntry(fd, id, peer)
    this.unixEntries.set(`${pid}:${fd.fd}`, entry)
    if (pair?.queued) this.queues.add(id, pair.queued)
    for (const message of pair?.messages ?? []) this.queues.add(id, message)
    if (pair?.peerQueued) this.peerQueues.push({creator: `${pid}:${fd.fd}`, data: pair.peerQueued})
    for (const message of pair?.peerMessages ?? []) this.peerQueues.push({creator: `${pid}:${fd.fd}`, data: message})
    return entry
  }

  write(put: PutImage): void {
    // What a pair's creator holds for its other end, queued for that end's id (known now).
    for (const {creator, data} of this.peerQueues) {
      const id = this.otherEnd.get(creator)?.id
      if (id === undefined) throw new CorruptError('IMAGE_INCONSISTENT', `the socketpair end ${creator} has no other end in the tree`, 'This is a cxlfork bug.')
      this.queues.add(id, data)
    }
    put('files.img', 'files', this.files.map((file) => encodeMessage('file_entry', file, 'files.img')))
    for (const {kid, records} of this.fdinfos) put(`fdinfo-${kid}.img`, 'fdinfo', records)
    this.pipes.write(put)
    this.queues.write(put)
    this.memfds.write(put)
  }
}

// ---- reading ----

/** files.img of a set (and remap-fpath.img): the entries every member's table names. */
export class FileEntries {
  readonly entries = new Map<number, Msg>()
  readonly remaps = new Map<number, number>()

  constructor(at: ImagePath) {
    for (const entry of readImage<Msg>(at('files.img'), 'files')) this.entries.set(entry['id'], entry)
    // Files CRIU could not reach by name (unlinked, or only via /proc) are dumped through a
    // remap: the name in files.img is then not the file. cxlfork restores by name only.
    const remapPath = at('remap-fpath.img')
    for (const remap of optionalImage(remapPath, () => readImage<Msg>(remapPath, 'remap-fpath')) ?? []) {
      this.remaps.set(remap['orig_id'] as number, has(remap, 'remap_type') ? remap['remap_type'] as number : 0)
    }
  }
}

/**
 * One member's model file list, built from the set's files.img as entries are asked for:
 * in cxlfork's sets each file carries its index (and, beyond the root, its member's pid);
 * in CRIU's, files get indexes in the order they are first named (the executable, the
 * mappings, the descriptors).
 */
export class FileTable {
  readonly entries: Map<number, Msg>
  readonly files: FileIdentity[] = []
  private readonly remaps: Map<number, number>
  private readonly byName = new Map<string, number>()

  /** `owner`: the member's pid, undefined for the root. */
  constructor(source: FileEntries, private readonly ours: boolean, private readonly owner?: number) {
    this.entries = source.entries
    this.remaps = source.remaps
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
        'Only regular files can be mapped, executed or be a cwd in the CRIU-format path.')
    }
    return entry['reg'] as Msg
  }

  /** The table of the set's root task. */
  get isRoot(): boolean {
    return this.owner === undefined
  }

  private ownedHere(fileExt: Msg): boolean {
    return (has(fileExt, 'pid') ? fileExt['pid'] as number : undefined) === this.owner
  }

  /** The model's file index of entry `id`, adding the file to the model on first use. */
  fileIndexOf(id: number, what: string): number {
    const reg = this.regOf(id, what)
    if (has(reg, 'cxlfork')) {
      const fileExt = reg['cxlfork'] as Msg
      const index = fileExt['file_index'] as number
      if (!Number.isInteger(index) || index >= this.entries.size) throw corrupt(`${what}: file id ${id} claims file index ${index}, beyond the ${this.entries.size} entries of files.img`)
      if (!this.ownedHere(fileExt)) throw corrupt(`${what}: file id ${id} (${reg['name']}) belongs to another process of the set`)
      if (!this.files[index]) {
        this.files[index] = {
          path: reg['name'], device: fileExt['device'], inode: u64(big(fileExt['inode'])), size: has(reg, 'size') ? u64(big(reg['size'])) : 0n,
          mtimeNs: big(fileExt['mtime_ns']), mode: has(reg, 'mode') ? reg['mode'] : 0,
          ...(has(fileExt, 'ctime_ns') ? {ctimeNs: big(fileExt['ctime_ns'])} : {}),
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

  /** cxlfork's sets: every tracked file of this member is present, also those nothing above referenced. */
  checkComplete(): void {
    if (!this.ours) return
    for (let i = 0; i < this.files.length; i++) if (!this.files[i]) throw corrupt(`files.img lacks tracked file index ${i}`)
    // Files tracked by the model but referenced by nothing above still travel in files.img.
    for (const entry of this.entries.values()) {
      if (entry['type'] === FD_TYPE_REG && has(entry['reg'], 'cxlfork') && this.ownedHere(entry['reg']['cxlfork'])) this.fileIndexOf(entry['id'], 'files.img')
    }
  }
}

const inosOf = new WeakMap<Map<number, Msg>, Set<number>>()

/** The inodes of every Unix socket of files.img. */
function unixInos(entries: Map<number, Msg>): Set<number> {
  let inos = inosOf.get(entries)
  if (!inos) {
    inos = new Set([...entries.values()].filter((entry) => has(entry, 'usk')).map((entry) => entry['usk']['ino'] as number))
    inosOf.set(entries, inos)
  }
  return inos
}

/** A descriptor as read, with the files.img id it names (and a pipe's pipe_id), before linkDescriptors ties fds together. */
export interface ReadFd {
  fd: FdImage
  id: number
  pipeId?: number
  /** cxlfork's sets: whether the model carried this pipe's state (else decided as the capture decides). */
  pipeState?: boolean
  /** A Unix socket's inode, its peer's (0: none), and whether it was connected (a pair's end, even one whose peer was closed). */
  unix?: {ino: number; peer: number; connected: boolean}
}

/** One member's descriptors, from fdinfo-FILES_ID.img and the entries of files.img they name. */
export function readFds(at: ImagePath, ids: Msg, table: FileTable, memfdInodes: ReadonlyMap<bigint, Msg> = new Map()): ReadFd[] {
  const out: ReadFd[] = []
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
    const cloexec = (info['flags'] & FD_CLOEXEC) !== 0
    const type = info['type'] as number
    if (type !== entry['type']) throw corrupt(`${what} is of type ${FD_TYPE_NAMES[type] ?? type} but names file id ${info['id']} of type ${FD_TYPE_NAMES[entry['type']] ?? entry['type']}`)
    const base = (kind: FdKind, path: string) => ({fd: fdNumber, kind, path: fdExt ? fdExt['path'] as string : path, cloexec, offset: 0n})
    const id = info['id'] as number
    if (type === FD_TYPE_PIPE && has(entry, 'pipe')) {
      const pipe = entry['pipe'] as Msg
      out.push({fd: {...base('pipe', `pipe:[${pipe['pipe_id']}]`), flags: pipe['flags']}, id, pipeId: pipe['pipe_id'] as number, ...(fdExt ? {pipeState: Boolean(fdExt['pipe_state'])} : {})})
    } else if (type === FD_TYPE_EVENTFD && has(entry, 'efd')) {
      out.push({fd: {...base('eventfd', 'anon_inode:[eventfd]'), ...eventfdOf(entry['efd'] as Msg)}, id})
    } else if (type === FD_TYPE_EVENTPOLL && has(entry, 'epfd')) {
      out.push({fd: {...base('epoll', 'anon_inode:[eventpoll]'), ...eventpollOf(entry['epfd'] as Msg)}, id})
    } else if (type === FD_TYPE_TIMERFD && has(entry, 'tfd')) {
      out.push({fd: {...base('timerfd', 'anon_inode:[timerfd]'), ...timerfdOf(entry['tfd'] as Msg)}, id})
    } else if (type === FD_TYPE_SIGNALFD && has(entry, 'sgfd')) {
      out.push({fd: {...base('signalfd', 'anon_inode:[signalfd]'), ...signalfdOf(entry['sgfd'] as Msg)}, id})
    } else if (type === FD_TYPE_UNIXSK && has(entry, 'usk')) {
      const usk = entry['usk'] as Msg
      const peer = usk['peer'] as number
      const paired = peer !== 0 && unixInos(table.entries).has(peer)
      const socket = unixSocketOf(usk, what, paired)
      out.push({fd: {...base('socket', `socket:[${usk['ino']}]`), ...socket}, id, unix: {ino: usk['ino'] as number, peer: paired ? peer : 0, connected: unixConnected(usk)}})
    } else if (type === FD_TYPE_INETSK && has(entry, 'isk')) {
      const isk = entry['isk'] as Msg
      out.push({fd: {...base('socket', `socket:[${isk['ino']}]`), ...inetSocketOf(isk, what)}, id})
    } else if (type === FD_TYPE_MEMFD && has(entry, 'memfd')) {
      // The object itself (its size and pages) is one of the set's shared objects (images.ts).
      const memfd = memfdOf(entry['memfd'] as Msg, memfdInodes, what)
      out.push({fd: {...base('shmem', memfd.name.startsWith('/') ? `${memfd.name} (deleted)` : `/memfd:${memfd.name} (deleted)`), ...memfd.fd}, id})
    } else if (type === FD_TYPE_REG && has(entry, 'reg')) {
      const reg = entry['reg'] as Msg
      table.checkRemap(id, reg['name'], what)
      const mode = has(reg, 'mode') ? reg['mode'] as number : 0
      let kind: FdKind
      if (fdExt) kind = fdExt['kind'] as FdKind
      else if ((mode & S_IFMT) === S_IFDIR) kind = 'directory'
      else if ((mode & S_IFMT) === S_IFCHR) kind = /^\/dev\/(pts\/|tty)/.test(reg['name']) ? 'tty' : 'chardev'
      else kind = 'regular'
      const fdImage: FdImage = {...base(kind, reg['name']), flags: reg['flags'], offset: u64(big(reg['pos']))}
      if (fdExt) {
        if (has(fdExt, 'file_index')) fdImage.fileIndex = fdExt['file_index']
      } else if (kind === 'regular' || kind === 'directory') {
        fdImage.fileIndex = table.fileIndexOf(id, what)
      }
      out.push({fd: fdImage, id})
    } else {
      throw new UnsupportedError('CRIU_FD_TYPE', `${what} is of type ${FD_TYPE_NAMES[type] ?? String(type)}, which the CRIU-format path does not restore`,
        'Regular files, directories, character devices, pipes, eventfds, epoll instances, timerfds, signalfds, memfds and TCP/UDP sockets are restored; close other descriptors before dumping.')
    }
  }
  return out.sort((a, b) => a.fd.fd - b.fd.fd)
}

/** A stream socket's queue as one run of bytes, a datagram socket's as its messages. */
function queueOf(socket: SocketImage, packets: readonly Uint8Array[] | undefined): {bytes?: Uint8Array; messages?: Uint8Array[]} {
  if (!packets || packets.length === 0) return {}
  if (socket.type !== SOCK.STREAM) return {messages: [...packets]}
  return {bytes: Uint8Array.from(Buffer.concat(packets))}
}

/**
 * Socketpairs: an end whose peer is in the same process names it (peerFd); a pair split
 * across members is created by the end of the earlier member (peerFd -1, with what waits
 * for the other end), whose other end is handed over to the later one (sharedFrom). Each
 * end gets what waits in its own receive queue (sk-queues.img).
 */
function linkUnixPairs(members: readonly {pid: number; fds: readonly ReadFd[]}[], queues: ReadonlyMap<number, Uint8Array[]>): void {
  const byIno = new Map<number, {pid: number; read: ReadFd; rank: number}>()
  members.forEach(({pid, fds}, rank) => {
    for (const read of fds) if (read.unix && !byIno.has(read.unix.ino)) byIno.set(read.unix.ino, {pid, read, rank})
  })
  members.forEach(({pid, fds}, rank) => {
    for (const read of fds) {
      const socket = read.fd.socket
      if (!read.unix || !socket || socket.listening || !read.unix.connected || socket.peer) continue
      const own = queueOf(socket, queues.get(read.id))
      const other = read.unix.peer === 0 ? undefined : byIno.get(read.unix.peer)
      if (!other) {
        // Its peer was closed: what waits in it is read, then EOF.
        socket.pair = {peerFd: -1, peerClosed: true, ...(own.bytes ? {queued: own.bytes} : {}), ...(own.messages ? {messages: own.messages} : {})}
        continue
      }
      const pair: NonNullable<SocketImage['pair']> = {peerFd: other.pid === pid ? other.read.fd.fd : -1,
        ...(own.bytes ? {queued: own.bytes} : {}), ...(own.messages ? {messages: own.messages} : {})}
      if (other.pid !== pid && other.rank < rank) {
        read.fd.sharedFrom = {pid: other.pid, fd: other.read.fd.fd, description: false, sameEnd: false}
      } else if (other.pid !== pid) {
        const theirs = queueOf(socket, queues.get(other.read.id))
        if (theirs.bytes) pair.peerQueued = theirs.bytes
        if (theirs.messages) pair.peerMessages = theirs.messages
      }
      socket.pair = pair
    }
  })
}

/** Kinds whose object a later member of a tree takes over from an earlier one (checkpoint/tree.ts sharedAcrossMembers). */
const HANDED_OVER: ReadonlySet<FdKind> = new Set(['pipe', 'eventfd', 'epoll', 'timerfd', 'signalfd', 'socket'])

/**
 * Tie each member's descriptors together as the pool path's capture does: fds naming one
 * files.img entry share an open file description (sharedWith: the lowest fd; sharedFrom:
 * an earlier member's fd, handed over at restore), ends of one pipe in several members
 * (same pipe_id) are one pipe, and every pipe above stdio, or held by more than one
 * member, gets its size, ends and buffered bytes from pipes-data.img. A pipe at fds 0-2
 * held by one member is its restorer's stdio, as in a pool checkpoint.
 */
export function linkDescriptors(members: readonly {pid: number; fds: readonly ReadFd[]}[], pipesData: ReadonlyMap<number, PipeData>, queues: ReadonlyMap<number, Uint8Array[]> = new Map()): void {
  linkUnixPairs(members, queues)
  const holders = new Map<number, Set<number>>()
  for (const {pid, fds} of members) for (const {pipeId} of fds) if (pipeId !== undefined) holders.set(pipeId, (holders.get(pipeId) ?? new Set()).add(pid))
  const earlier: {pid: number; read: ReadFd}[] = []
  for (const {pid, fds} of members) {
    const leaders = new Map<number, number>()
    const carriesPipe = (read: ReadFd) => read.pipeId !== undefined && (read.pipeState ?? (read.fd.fd > 2 || (holders.get(read.pipeId)?.size ?? 0) > 1))
    const ends = new Map<number, {read: boolean; write: boolean}>()
    for (const read of fds) {
      if (!carriesPipe(read)) continue
      const known = ends.get(read.pipeId!) ?? {read: false, write: false}
      if ((read.fd.flags & 3) === O.WRONLY) known.write = true
      else known.read = true
      ends.set(read.pipeId!, known)
    }
    const dataGiven = new Set<number>()
    for (const read of fds) {
      const {fd} = read
      const leader = leaders.get(read.id)
      if (leader === undefined) leaders.set(read.id, fd.fd)
      else fd.sharedWith = leader
      if (carriesPipe(read)) {
        const pipeId = read.pipeId!
        const end = (fd.flags & 3) === O.WRONLY ? 'write' : 'read'
        const state = pipesData.get(pipeId)
        const first = !dataGiven.has(pipeId)
        dataGiven.add(pipeId)
        const pipeEnds = ends.get(pipeId)!
        fd.pipe = {id: String(pipeId), end, size: state?.size ?? 65_536, peerInProcess: end === 'read' ? pipeEnds.write : pipeEnds.read,
          ...(first && state && state.data.length > 0 ? {data: state.data} : {})}
      }
      if (!HANDED_OVER.has(fd.kind) || (fd.kind === 'pipe' && !fd.pipe)) continue
      let from: NonNullable<FdImage['sharedFrom']> | undefined
      for (const prior of earlier) {
        if (prior.read.fd.kind !== fd.kind) continue
        if (prior.read.id === read.id) {
          from = {pid: prior.pid, fd: prior.read.fd.fd, description: true, sameEnd: true}
          break
        }
        if (fd.kind === 'pipe' && prior.read.pipeId === read.pipeId) {
          const sameEnd = (prior.read.fd.flags & 3) === (fd.flags & 3)
          if (!from || (sameEnd && !from.sameEnd)) from = {pid: prior.pid, fd: prior.read.fd.fd, description: false, sameEnd}
        }
      }
      if (from && (fd.kind === 'pipe' || from.description)) fd.sharedFrom = from
    }
    for (const read of fds) if (HANDED_OVER.has(read.fd.kind)) earlier.push({pid, read})
  }
}

/**
 * The CRIU-format baseline: a ProcessImage, or a process tree of them, written as the
 * image set CRIU 4.x writes (inventory, pstree, and per task core-TID, ids, mm, pagemap,
 * pages-N, fs, fdinfo; files, pipes-data, stats-dump for the set), and read back, from
 * cxlfork's own sets or from sets real CRIU wrote.
 *
 * Where CRIU has a field, the model goes there in CRIU's meaning. What CRIU has no
 * field for (file identity beyond name/size/mode, cmdline, kernel identity, the exact
 * xstate buffer, the model's fd kinds...) goes into field 1000 of the message it
 * belongs to (see proto/cxlfork-ext.proto); CRIU and crit skip it. Reading a set
 * written by CRIU itself fills those parts with the best available values (listed in
 * readCriuImages).
 */
import {closeSync, openSync, statSync, writeSync} from 'node:fs'
import {join} from 'node:path'

import {CorruptError, CxlforkError} from '../errors.js'
import {IMAGE_VERSION, type PageRun, type ProcessImage} from '../image/process-image.js'
import {PAGE_SIZE} from '../sys/page.js'
import type {TreeMember} from '../checkpoint/tree.js'
import {KID, PAGES_ID} from './constants.js'
import {writeImage} from './image-file.js'
import {type ImagePath, type Msg, type PutImage, corrupt} from './kinds/common.js'
import {credentialsFrom, readCores, readPdeathSignal, readCreds, readTaskLimits, readThreads, readZombie, timersFrom, writeCores, writeZombieCore} from './kinds/core.js'
import {FileEntries, FileImagesWriter, FileTable, type ReadFd, linkDescriptors, readFds} from './kinds/files.js'
import {readFs, writeFs} from './kinds/fs.js'
import {readIds, writeIds} from './kinds/ids.js'
import {type Inventory, readInventory, writeInventory} from './kinds/inventory.js'
import {readMm, writeMm} from './kinds/mm.js'
import {memfdFactsOf, memfdSizeOf, readMemfdInodes} from './kinds/memfd.js'
import {readPagemap, writePagemap} from './kinds/pagemap.js'
import {readPipesData} from './kinds/pipes-data.js'
import {readSkQueues} from './kinds/sk-queues.js'
import {type ShmemToWrite, readShmem, writeShmem} from './kinds/shmem.js'
import {readPstree, writePstree} from './kinds/pstree.js'
import {readStats, writeDumpStats} from './kinds/stats.js'
import type {CriuImageSet, CriuMember, DumpStats, PageSource, WriteOptions} from './set-types.js'
import {big, has, u64} from './values.js'

export * from './constants.js'
export type * from './set-types.js'
export type {CriuShmem, ShmemToWrite} from './kinds/shmem.js'
export type {ShmemFdFacts} from './kinds/memfd.js'
export {writeRestoreStats} from './kinds/stats.js'

// ---- writing ----

function checkRuns(image: ProcessImage): void {
  let previousEnd = 0n
  image.pageRuns.forEach((run, i) => {
    const vma = image.vmas[run.vmaIndex]
    const end = run.vaddr + BigInt(run.nrPages) * BigInt(PAGE_SIZE)
    if (!vma || run.nrPages <= 0 || run.vaddr < vma.start || end > vma.end || run.vaddr < previousEnd || run.vaddr % BigInt(PAGE_SIZE) !== 0n) {
      throw new CorruptError('IMAGE_INCONSISTENT', `page run ${i} (${run.vaddr.toString(16)} +${run.nrPages} pages) is not inside VMA ${run.vmaIndex} or not in ascending order`,
        'The captured image is inconsistent; this is a cxlfork bug.')
    }
    previousEnd = end
  })
}

/** The page runs writeCriuImages stores in pages-1.img, in address order. */
export function runsToWrite(image: ProcessImage, options: WriteOptions = {}): PageRun[] {
  return options.vdsoPages ? withVdsoRuns(image) : image.pageRuns
}

/** image.pageRuns with a run for every [vdso] VMA inserted in address order (the model never holds vDSO pages). */
function withVdsoRuns(image: ProcessImage): PageRun[] {
  const vdso: PageRun[] = []
  image.vmas.forEach((vma, vmaIndex) => {
    if (vma.kind === 'vdso') vdso.push({vaddr: vma.start, nrPages: Number((vma.end - vma.start) / BigInt(PAGE_SIZE)), vmaIndex})
  })
  if (vdso.length === 0) return image.pageRuns
  return [...image.pageRuns, ...vdso].sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0))
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let at = 0
  while (at < bytes.byteLength) at += writeSync(fd, bytes, at, bytes.byteLength - at)
}

/** One task of a set to write: a live member with its image and pages, or a zombie (TreeMember.zombieStatus). */
export interface MemberToWrite {
  member: TreeMember
  image?: ProcessImage
  pages?: PageSource
}

/**
 * Write `image` as a CRIU image set into `dir` (which must exist). Pages are pulled from
 * `pages` run by run (runs larger than the chunk are split) into one reusable buffer and
 * written to pages-1.img in large sequential writes.
 */
export async function writeCriuImages(dir: string, image: ProcessImage, pages: PageSource, stats?: DumpStats, options: WriteOptions = {}): Promise<{files: string[]; bytes: number}> {
  const {task} = image
  return writeCriuTree(dir, [{member: {pid: task.pid, ppid: task.ppid, pgid: task.pgid, sid: task.sid}, image, pages}], stats, options)
}

/**
 * Write a process tree (members parents first, the root first and alive) as one CRIU image
 * set: pstree.img lists every task, each live one has its own core, ids, mm, pagemap,
 * pages-N (N = 1 for the root, then 2, 3... in member order), fs and fdinfo images, a
 * zombie its core alone; files.img and pipes-data.img hold every member's files.
 */
export async function writeCriuTree(dir: string, members: readonly MemberToWrite[], stats?: DumpStats, options: WriteOptions = {}, shared: readonly ShmemToWrite[] = []): Promise<{files: string[]; bytes: number}> {
  const root = members[0]
  if (!root?.image || !root.pages) throw new CorruptError('IMAGE_INCONSISTENT', 'the root of the tree has no image', 'This is a cxlfork bug.')
  for (const {image} of members) {
    if (!image) continue
    if (image.threads.length === 0) throw new CorruptError('IMAGE_INCONSISTENT', `the image of process ${image.task.pid} has no threads`, 'This is a cxlfork bug.')
    checkRuns(image)
  }
  const files: string[] = []
  let bytes = 0
  const put: PutImage = (name, kind, records, trailers) => {
    const path = join(dir, name)
    bytes += writeImage(path, kind, records, trailers)
    files.push(path)
  }
  const live = members.filter((entry): entry is MemberToWrite & {image: ProcessImage; pages: PageSource} => entry.image !== undefined && entry.pages !== undefined)
  writeInventory(put, root.image)
  writePstree(put, members.map(({member, image}) => ({pid: member.pid, ppid: member.ppid, pgid: member.pgid, sid: member.sid, threads: image ? image.threads.map((thread) => thread.tid) : [member.pid]})))
  const fileImages = new FileImagesWriter(options)
  fileImages.addSharedObjects(shared)
  fileImages.addHolders(live.map(({image}) => image))
  for (const [i, {image, pages}] of live.entries()) {
    const pagesId = PAGES_ID + i
    const runs = runsToWrite(image, options)
    // Pages first: the slow part. A source that writes them itself runs while the other
    // images are encoded here, and is waited for before the next member's.
    const pagesPath = join(dir, `pages-${pagesId}.img`)
    const fd = openSync(pagesPath, 'w', 0o600)
    files.push(pagesPath)
    let writing: {finish(): void} | null = null
    try {
      writing = pages.start?.({fd, path: pagesPath}, runs) ?? null
      if (!writing) await copyPages(fd, runs, pages, options)
    } catch (error) {
      closeSync(fd)
      throw error
    }
    try {
      writeMemberImages(image, KID + i, pagesId, runs, fileImages, i === 0, put)
    } finally {
      try {
        writing?.finish()
      } finally {
        closeSync(fd)
      }
    }
    bytes += statSync(pagesPath).size
  }
  // Shared anonymous memory: each object once, its pages after the tasks' (pages-N, N past the last task's).
  shared.forEach((object, j) => {
    const written = writeShmem(dir, put, object, PAGES_ID + live.length + j)
    files.push(written.path)
    bytes += written.bytes
  })
  for (const {member} of members) if (member.zombieStatus !== undefined) writeZombieCore(put, {pid: member.pid, zombieStatus: member.zombieStatus, ...(member.comm === undefined ? {} : {comm: member.comm})})
  fileImages.write(put)
  if (stats) writeDumpStats(put, stats)
  return {files, bytes}
}

/** Pages pulled from `pages` run by run (runs larger than the chunk are split) into one reusable buffer, written to `fd` in large sequential writes. */
async function copyPages(fd: number, runs: readonly PageRun[], pages: PageSource, options: WriteOptions): Promise<void> {
  const chunk = Math.max(PAGE_SIZE, Math.floor((options.chunkBytes ?? 8 << 20) / PAGE_SIZE) * PAGE_SIZE)
  const chunkPages = chunk / PAGE_SIZE
  const buffer = new Uint8Array(chunk)
  let fill = 0
  for (const run of runs) {
    for (let done = 0; done < run.nrPages;) {
      const nrPages = Math.min(chunkPages, run.nrPages - done)
      const length = nrPages * PAGE_SIZE
      if (fill + length > chunk) {
        writeAll(fd, buffer.subarray(0, fill))
        fill = 0
      }
      const piece: PageRun = {vaddr: run.vaddr + BigInt(done * PAGE_SIZE), nrPages, vmaIndex: run.vmaIndex}
      await pages.read(piece, buffer.subarray(fill, fill + length))
      fill += length
      done += nrPages
    }
  }
  writeAll(fd, buffer.subarray(0, fill))
}

/** A live member's own images but its pages: core per thread, ids, mm, pagemap, fs (its fds go into the set's files.img and its fdinfo). */
function writeMemberImages(image: ProcessImage, kid: number, pagesId: number, runs: readonly PageRun[], fileImages: FileImagesWriter, root: boolean, put: PutImage): void {
  writeCores(put, image)
  writeIds(put, image.task.pid, kid)
  // Encoded before mm-PID.img: its ids are the files'.
  const ids = fileImages.addMember(image, kid, root)
  writeMm(put, image, ids.fileBase, (vma) => fileImages.memfdMapping(vma, {uid: image.task.uid, gid: image.task.gid}))
  writePagemap(put, image.task.pid, runs, pagesId)
  writeFs(put, image, ids)
}

// ---- reading ----

/**
 * Read a CRIU image set (cxlfork's own, or CRIU 4.x's for a process or a process tree with
 * threads, regular files, pipes, eventfds, epoll instances, timerfds and signalfds) into
 * the model: a ProcessImage per live task, the tree's shape and its zombies.
 *
 * From a set CRIU itself wrote, these model parts are not in the images and get fill-in
 * values: file device/inode/mtime (those of the file now at the path, after checking it
 * against the size and ELF build-id CRIU recorded; '0:0', 0, 0 if it is gone), cmdline ([]: it is in the process's
 * memory), capturedAt (0), kernel release/hostname/boot id (''), vdsoLayout (derived
 * from the [vvar]/[vvar_vclock]/[vdso] VMAs, offsets relative to the first of them),
 * sigactions (only non-default ones), fd paths of regular files (CRIU's file name),
 * EFD_SEMAPHORE (off).
 */
export function readCriuImages(dir: string): CriuImageSet {
  try {
    return readSet(dir)
  } catch (error) {
    if (error instanceof CxlforkError) throw error
    // Anything else (RangeError, TypeError from a malformed but decodable message) is a corrupt set.
    throw corrupt(`${dir}: image set is malformed: ${(error as Error).message}`)
  }
}

function readSet(dir: string): CriuImageSet {
  const at = (name: string) => join(dir, name)
  const inventory = readInventory(at)
  const tasks = readPstree(at)
  const entries = new FileEntries(at)
  const memfdInodes = readMemfdInodes(at)
  const members: CriuMember[] = []
  const reads: {pid: number; fds: ReadFd[]}[] = []
  tasks.forEach(({entry, pid, tids}, i) => {
    const shape = {pid, ppid: entry['ppid'] as number, pgid: entry['pgid'] as number, sid: entry['sid'] as number}
    const zombie = i === 0 ? undefined : readZombie(at, pid)
    if (zombie) {
      members.push({...shape, ...zombie})
      return
    }
    const read = readMember(at, dir, pid, tids, inventory, new FileTable(entries, inventory.ours, i === 0 ? undefined : pid), entry, memfdInodes)
    reads.push({pid, fds: read.fds})
    members.push({...shape, ppid: read.image.task.ppid, ...read.stored, image: read.image})
  })
  linkDescriptors(reads, readPipesData(at), readSkQueues(at))
  // Shared memory objects: each as large as the furthest any VMA of any task maps it, or its memfd inode if larger.
  const sizes = new Map<string, bigint>()
  for (const {fds} of reads) {
    for (const {fd} of fds) if (fd.kind === 'shmem' && fd.sharedId !== undefined) sizes.set(fd.sharedId, memfdSizeOf(memfdInodes, fd.sharedId))
  }
  for (const {image} of members) {
    for (const vma of image?.vmas ?? []) {
      if (vma.sharedId === undefined) continue
      const end = vma.offset + (vma.end - vma.start)
      if (end > (sizes.get(vma.sharedId) ?? 0n)) sizes.set(vma.sharedId, end)
    }
  }
  const root = members[0]!
  const set: CriuImageSet = {
    image: root.image!, pagemap: root.pagemap!, pagesPath: root.pagesPath!, runOffsets: root.runOffsets!, members, writtenBy: inventory.ours ? 'cxlfork' : 'criu',
    sharedObjects: [...sizes].map(([shmid, size]) => {
      const memfd = memfdFactsOf(memfdInodes, shmid)
      return {...readShmem(at, shmid, size), ...(memfd ? {memfd} : {})}
    }),
  }
  return Object.assign(set, readStats(at))
}

/** One live task of a set: its model, its stored pages, and its descriptors still to be tied to the others'. */
function readMember(at: ImagePath, dir: string, pid: number, tids: number[], {entry: inventory, ext: invExt, ours}: Inventory, table: FileTable, task: Msg, memfdInodes: ReadonlyMap<bigint, Msg>): {image: ProcessImage; stored: Pick<CriuMember, 'pagemap' | 'pagesPath' | 'runOffsets'>; fds: ReadFd[]} {
  const ids = readIds(at, dir, pid, inventory)
  const cores = readCores(at, pid, tids)
  const {tc, taskExt} = cores
  const {mm, vmas, exeFileIndex, startStack} = readMm(at, pid, table, ours, invExt ? (invExt['vdso_layout'] ?? []) as Msg[] : undefined)
  const {pagemap, pageRuns, runOffsets, pagesPath} = readPagemap(at, pid, vmas)
  const threads = readThreads(cores, pid, ours)
  const {sigactions, rlimits} = readTaskLimits(cores, pid)
  const creds = readCreds(at, cores, pid)
  const fs = readFs(at, pid)
  const fds = readFds(at, ids, table, memfdInodes)
  table.checkComplete()

  const vdsoAreas = vmas.filter((vma) => vma.kind === 'vvar' || vma.kind === 'vvar_vclock' || vma.kind === 'vdso')
  const vdsoBase = vdsoAreas[0]?.start ?? 0n
  const kernel = invExt
    ? {
        release: invExt['kernel_release'] ?? '', hostname: invExt['hostname'] ?? '', bootId: invExt['boot_id'] ?? '',
        vdsoLayout: ((invExt['vdso_layout'] ?? []) as Msg[]).map((area) => ({name: area['name'] as string, offset: u64(big(area['offset'])), size: u64(big(area['size']))})),
      }
    : {release: '', hostname: '', bootId: '', vdsoLayout: vdsoAreas.map((vma) => ({name: `[${vma.kind}]`, offset: vma.start - vdsoBase, size: vma.end - vma.start}))}

  const pdeathSignal = readPdeathSignal(cores, ours, table.isRoot)
  const timers = timersFrom(has(tc, 'timers') ? tc['timers'] as Msg : undefined)
  const credentials = credentialsFrom(creds, has(mm, 'dumpable') ? mm['dumpable'] as number : undefined, ours ? Boolean(taskExt && has(taskExt, 'credentials') && taskExt['credentials']) : true)
  const image: ProcessImage = {
    version: IMAGE_VERSION,
    capturedAt: invExt && has(invExt, 'captured_at') ? invExt['captured_at'] : 0,
    kernel,
    task: {
      pid, ppid: taskExt && has(taskExt, 'ppid') ? taskExt['ppid'] : task['ppid'], pgid: task['pgid'], sid: task['sid'],
      comm: tc['comm'],
      uid: creds ? creds['uid'] : 0,
      gid: creds ? creds['gid'] : 0,
      umask: has(fs, 'umask') ? fs['umask'] : 0o022,
      personality: tc['personality'],
      cwd: table.regOf(fs['cwd_id'], `fs-${pid}.img cwd_id`)['name'],
      root: table.regOf(fs['root_id'], `fs-${pid}.img root_id`)['name'],
      rlimits,
      sigactions,
      sharedPendingSignals: has(tc, 'signals_s') ? (tc['signals_s']['signals'] as Msg[]).map((s) => new Uint8Array(s['siginfo'])) : [],
      cmdline: taskExt ? ((taskExt['cmdline'] ?? []) as Uint8Array[]).map((arg) => Buffer.from(arg).toString('utf8')) : [],
      ...(credentials ? {credentials} : {}),
      ...(pdeathSignal === undefined ? {} : {pdeathSignal}),
      ...(timers === undefined ? {} : {timers}),
    },
    threads,
    mm: {
      startCode: u64(big(mm['mm_start_code'])), endCode: u64(big(mm['mm_end_code'])), startData: u64(big(mm['mm_start_data'])), endData: u64(big(mm['mm_end_data'])),
      startBrk: u64(big(mm['mm_start_brk'])), brk: u64(big(mm['mm_brk'])), startStack,
      argStart: u64(big(mm['mm_arg_start'])), argEnd: u64(big(mm['mm_arg_end'])), envStart: u64(big(mm['mm_env_start'])), envEnd: u64(big(mm['mm_env_end'])),
      auxv: (((has(mm, 'cxlfork') ? mm['cxlfork']['auxv'] : mm['mm_saved_auxv']) ?? []) as unknown[]).map((word) => u64(big(word))),
      exeFileIndex,
    },
    vmas,
    files: table.files,
    fds: fds.map((read) => read.fd),
    pageRuns,
  }
  return {image, stored: {pagemap, pagesPath, runOffsets}, fds}
}

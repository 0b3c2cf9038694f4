/** The CRIU-format path's public types: page sources, statistics, a read image set, write options. */
import type {TreeMember} from '../checkpoint/tree.js'
import type {PageRun, ProcessImage} from '../image/process-image.js'
import type {WatchFacts} from './kinds/inotify.js'
import type {ShmemFdFacts} from './kinds/memfd.js'
import type {CriuShmem} from './kinds/shmem.js'


/** Where page contents come from when writing: typically the frozen snapshot of the target. */
export interface PageSource {
  /** Fill `into` (exactly run.nrPages * 4096 bytes) with the pages of `run`. */
  read(run: PageRun, into: Uint8Array): void | Promise<void>
  /**
   * Optionally, write the pages of every run itself into pages-1.img, which the writer holds
   * open as `file.fd`, back to back from offset 0 (the snapshot splices them there: one copy,
   * no buffer of ours). Started before the other images are encoded, finished after them;
   * null when it cannot (nothing written): `read` is used instead.
   */
  start?(file: {fd: number; path: string}, runs: readonly PageRun[]): {finish(): void} | null
}

/** CRIU's dump statistics (stats-dump.img); times in microseconds. */
export interface DumpStats {
  freezingTime: number
  frozenTime: number
  memdumpTime: number
  memwriteTime: number
  pagesScanned: number
  pagesWritten: number
  pagesSkippedParent?: number
  pagesLazy?: number
}

/** CRIU's restore statistics (stats-restore.img); times in microseconds. */
export interface RestoreStats {
  restoreTime: number
  pagesRestored: number
  forkingTime?: number
  pagesCompared?: number
  pagesSkippedCow?: number
}

export interface CriuPagemapEntry {
  vaddr: bigint
  nrPages: number
  /** PE_* bits as read (old images without flags: PE_PRESENT, or PE_PARENT for in_parent). */
  flags: number
  /** Byte offset in pagesPath of the entry's first page (entries without PE_PRESENT store none: the offset they would have). */
  pagesOffset: number
}

/** One task of a read set: its place in the tree, and for a live one its model and stored pages (a zombie has its wait status and name instead). */
export interface CriuMember extends TreeMember {
  image?: ProcessImage
  pagemap?: CriuPagemapEntry[]
  pagesPath?: string
  runOffsets?: number[]
}

export interface CriuImageSet {
  /** The root task (the only one of a one-process set); pagemap, pagesPath and runOffsets are its. */
  image: ProcessImage
  pagemap: CriuPagemapEntry[]
  pagesPath: string
  /** Byte offset in pagesPath of each of image.pageRuns. */
  runOffsets: number[]
  /** Every task, parents first, the root first (one entry for a one-process set). */
  members: CriuMember[]
  /** Shared anonymous memory objects the tasks' VMAs map (sharedId = shmid), with their stored pages. */
  sharedObjects: CriuShmem[]
  stats?: DumpStats
  restoreStats?: RestoreStats
  /** 'cxlfork' when cxlfork's extension fields were present (exact model), 'criu' otherwise. */
  writtenBy: 'cxlfork' | 'criu'
}

export interface WriteOptions {
  /** Bytes gathered from the page source before each write to pages-1.img (default 8 MiB). */
  chunkBytes?: number
  /**
   * st_mode of a path the model keeps no file identity for (a character device or
   * directory fd, cwd, root), e.g. from stat() on the dumping host. CRIU's restore compares
   * a recorded reg_file mode with the opened file's whole st_mode, permission bits
   * included; without a mode from here, files.img records none and CRIU checks none.
   */
  modeOf?: (path: string) => number | undefined
  /** The inode of a FIFO at `path` on the dumping host (its pipe_id, as CRIU records it); else each FIFO path gets an id of its own. */
  inodeOf?: (path: string) => number | undefined
  /** Inode, file system and file handle of a file an inotify instance watches, from the dumping host (CRIU's restore may open the handle). */
  watchOf?: (path: string) => WatchFacts | undefined
  /**
   * Also store the [vdso] pages (read from `pages` like the others), which the model does not
   * carry: CRIU's restore parses the dumped vDSO in place to compare it with its own and
   * fails on a zero-filled one ("vdso: Invalid ELF magic"). The reader drops them again.
   */
  vdsoPages?: boolean
  /** fstat and F_GET_SEALS of a held shared memory object (memfd.img's uid, gid, mode, size, seals), from the dumping host; else the owner's ids and the object's size. */
  shmemFdOf?: (pid: number, fd: number) => ShmemFdFacts | undefined
}

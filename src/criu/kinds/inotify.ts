/**
 * An inotify instance (files.img's INOTIFY entry, inotify_file_entry): its flags and every
 * watch with its watch descriptor and mask. A watch names its file as CRIU records it: inode,
 * the file system's kernel dev_t and a file handle (from the dumping host, WriteOptions
 * .watchOf), plus the path as a hint, which CRIU's restore opens instead of the handle. A set
 * CRIU wrote names files by handle only: turned back into a path through a mount of that file
 * system, checked to be the same inode (a watch on a file this host cannot reach is refused).
 */
import {statSync} from 'node:fs'

import {UnsupportedError} from '../../errors.js'
import type {FdImage} from '../../image/process-image.js'
import {pathOfHandle} from '../../sys/file-handle.js'
import {big, has, str64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

/** What the dumping host knows of a watched file. */
export interface WatchFacts {
  sdev: number
  ino: bigint
  handleType: number
  handle: Uint8Array
}

/** CRIU keeps at least this many 64-bit words of handle. */
const HANDLE_WORDS = 16

export function inotifyEntry(fd: FdImage, id: number, watchOf?: (path: string) => WatchFacts | undefined): Obj {
  const wd = (fd.inotify?.watches ?? []).map((watch) => {
    const facts = watchOf?.(watch.path)
    const padded = new Uint8Array(Math.max(HANDLE_WORDS * 8, Math.ceil((facts?.handle.length ?? 0) / 8) * 8))
    if (facts) padded.set(facts.handle)
    const view = new DataView(padded.buffer)
    const handle = Array.from({length: padded.length / 8}, (_, i) => str64(view.getBigUint64(i * 8, true)))
    // id 0, as CRIU 4.2 writes it.
    return {
      id: 0, i_ino: str64(facts?.ino ?? 0n), mask: watch.mask >>> 0, ignored_mask: 0, s_dev: facts?.sdev ?? 0, wd: watch.wd,
      f_handle: {bytes: facts?.handle.length ?? 0, type: facts?.handleType ?? 0, handle, path: watch.path},
    }
  })
  return {id, flags: fd.flags >>> 0, fown: fown(), wd}
}

/** The model's inotify state of an inotify_file_entry; `what` names the fd for errors. */
export function inotifyOf(ify: Msg, what: string): Pick<FdImage, 'flags' | 'inotify'> {
  const watches = ((ify['wd'] ?? []) as Msg[]).map((entry) => {
    const fh = entry['f_handle'] as Msg
    const ino = big(entry['i_ino'])
    let path: string | undefined = has(fh, 'path') && fh['path'] ? fh['path'] as string : undefined
    if (path === undefined) {
      const words = (fh['handle'] ?? []) as unknown[]
      const bytes = new Uint8Array(words.length * 8)
      const view = new DataView(bytes.buffer)
      words.forEach((word, i) => view.setBigUint64(i * 8, BigInt.asUintN(64, big(word)), true))
      path = pathOfHandle(entry['s_dev'] as number, fh['type'] as number, bytes.subarray(0, fh['bytes'] as number))
    }
    let same = false
    try {
      same = path !== undefined && (ino === 0n || statSync(path, {bigint: true}).ino === ino)
    } catch {
      same = false
    }
    if (!same) {
      throw new UnsupportedError('CRIU_FD_TYPE', `${what} is an inotify instance watching inode ${ino} (watch ${entry['wd']}), which has no path on this host`,
        'The watched file must exist on this host, on a file system this mount namespace reaches; dump again after removing the watch.')
    }
    return {wd: entry['wd'] as number, path: path!, mask: entry['mask'] as number}
  })
  return {flags: ify['flags'] as number, inotify: {watches}}
}

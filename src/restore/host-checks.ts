/** What a restore refuses before it spawns anything: another kernel's vDSO layout, files that are gone or changed. */
import {statSync} from 'node:fs'

import {NotFoundError, UnsupportedError} from '../errors.js'
import {type FileIdentity, type ProcessImage} from '../image/process-image.js'
import {kernelRelease} from '../sys/host.js'
import {MAP} from '../sys/syscall.js'
import {type VdsoLayout, deviceName} from '../sys/proc.js'


/**
 * Refuse a checkpoint whose vDSO cannot be placed on this kernel: programs
 * cache vDSO pointers, so it must land where it was, with the same layout,
 * which only the same kernel build has.
 */
export function checkKernel(image: ProcessImage, local: VdsoLayout): void {
  const want = image.kernel.vdsoLayout.map((part) => `${part.name}@${part.offset}+${part.size}`).join(',')
  if (want !== local.signature) {
    throw new UnsupportedError('KERNEL_MISMATCH',
      `the checkpoint's vDSO layout (${want}, kernel ${image.kernel.release}) differs from this kernel's (${local.signature}, kernel ${kernelRelease()})`,
      'Restore on a host running the same kernel build as the one that took the checkpoint.')
  }
}

/** Refuse missing or changed files the image maps; files open as fds must only still exist as the same inode. */
export function checkFiles(image: ProcessImage): void {
  // Content the clone depends on: the executable and privately mapped files (pages never written are read
  // from the file). A file only mapped MAP_SHARED is live shared state, changing by design (a JVM's
  // hsperfdata, a database's shared file): the same file, large enough for its mappings, is what counts.
  const mapped = new Set<number>([image.mm.exeFileIndex])
  const sharedEnd = new Map<number, bigint>()
  for (const vma of image.vmas) {
    if (vma.fileIndex === undefined) continue
    if ((vma.flags & MAP.SHARED) !== 0) sharedEnd.set(vma.fileIndex, [sharedEnd.get(vma.fileIndex) ?? 0n, vma.offset + (vma.end - vma.start)].reduce((a, b) => (a > b ? a : b)))
    else mapped.add(vma.fileIndex)
  }
  image.files.forEach((file, index) => {
    let st
    try {
      st = statSync(file.path, {bigint: true})
    } catch {
      throw new NotFoundError('BACKING_FILE_MISSING', `${file.path}, which the checkpoint ${mapped.has(index) || sharedEnd.has(index) ? 'maps' : 'has open'}, does not exist on this host`,
        'Make the same file available at the same path (same mount) before restoring.')
    }
    const sameInode = deviceName(st.dev) === file.device && st.ino === file.inode
    const changed = !sameInode || (mapped.has(index) && (st.size !== file.size || st.mtimeNs !== file.mtimeNs || (file.ctimeNs !== undefined && st.ctimeNs !== file.ctimeNs)))
    if (changed) {
      throw new UnsupportedError('BACKING_FILE_CHANGED', `${file.path}, which the checkpoint ${mapped.has(index) ? 'maps' : 'has open'}, changed since the checkpoint (${describeChange(file, st)})`,
        mapped.has(index)
          ? 'Pages the clone never wrote are read from this file: restore only with the exact file the checkpoint was taken with.'
          : 'An open file is reopened as the same inode, as CRIU does: put that file back at its path (it was replaced, e.g. deleted and recreated), or take a new checkpoint.')
    }
    const needed = sharedEnd.get(index)
    // A shared mapping past the end of its file would fault (SIGBUS) on first touch; a page's tail may pass it.
    if (needed !== undefined && needed > ((st.size + 4095n) / 4096n) * 4096n) {
      throw new UnsupportedError('BACKING_FILE_CHANGED', `${file.path} shrank since the checkpoint (${st.size} bytes; its shared mapping reaches byte ${needed})`,
        'The checkpoint maps this file shared; restore it once the file has its size again.')
    }
  })
}

function describeChange(file: FileIdentity, st: {dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint}): string {
  if (deviceName(st.dev) !== file.device || st.ino !== file.inode) return 'another file now has its path'
  if (st.size !== file.size) return `size ${file.size} -> ${st.size}`
  if (st.mtimeNs !== file.mtimeNs) return 'modification time differs'
  return 'inode change time differs: it was rewritten or its metadata changed'
}


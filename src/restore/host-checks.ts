/** What a restore refuses before it spawns anything: another kernel's vDSO layout, files that are gone or changed. */
import {statSync} from 'node:fs'

import {NotFoundError, UnsupportedError} from '../errors.js'
import {type FileIdentity, type ProcessImage} from '../image/process-image.js'
import {kernelRelease} from '../sys/host.js'
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
  const mapped = new Set<number>([image.mm.exeFileIndex])
  for (const vma of image.vmas) if (vma.fileIndex !== undefined) mapped.add(vma.fileIndex)
  image.files.forEach((file, index) => {
    let st
    try {
      st = statSync(file.path, {bigint: true})
    } catch {
      throw new NotFoundError('BACKING_FILE_MISSING', `${file.path}, which the checkpoint ${mapped.has(index) ? 'maps' : 'has open'}, does not exist on this host`,
        'Make the same file available at the same path (same mount) before restoring.')
    }
    const sameInode = deviceName(st.dev) === file.device && st.ino === file.inode
    const changed = !sameInode || (mapped.has(index) && (st.size !== file.size || st.mtimeNs !== file.mtimeNs || (file.ctimeNs !== undefined && st.ctimeNs !== file.ctimeNs)))
    if (changed) {
      throw new UnsupportedError('BACKING_FILE_CHANGED', `${file.path} changed since the checkpoint (${describeChange(file, st)})`,
        'The checkpoint maps this file; restore it only with the exact file it was taken with.')
    }
  })
}

function describeChange(file: FileIdentity, st: {dev: bigint; ino: bigint; size: bigint; mtimeNs: bigint}): string {
  if (deviceName(st.dev) !== file.device || st.ino !== file.inode) return 'another file now has its path'
  if (st.size !== file.size) return `size ${file.size} -> ${st.size}`
  if (st.mtimeNs !== file.mtimeNs) return 'modification time differs'
  return 'inode change time differs: it was rewritten or its metadata changed'
}


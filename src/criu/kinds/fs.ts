/** fs-PID.img: the task's cwd and root (ids of files.img entries) and umask. */
import type {ProcessImage} from '../../image/process-image.js'
import {encodeMessage, readImage} from '../image-file.js'
import {type ImagePath, type Msg, type PutImage, only} from './common.js'

export function writeFs(put: PutImage, image: ProcessImage, ids: {cwdId: number; rootId: number}): void {
  const name = `fs-${image.task.pid}.img`
  put(name, 'fs', [encodeMessage('fs_entry', {cwd_id: ids.cwdId, root_id: ids.rootId, umask: image.task.umask >>> 0}, name)])
}

export function readFs(at: ImagePath, pid: number): Msg {
  return only(readImage<Msg>(at(`fs-${pid}.img`), 'fs'), `fs-${pid}.img`)
}

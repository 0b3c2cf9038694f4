/** ids-PID.img: the task's kernel-object ids (files_id names its fdinfo image). */
import {NotFoundError} from '../../errors.js'
import {encodeMessage, readImage} from '../image-file.js'
import {has} from '../values.js'
import {type ImagePath, type Msg, type PutImage, only, optionalImage} from './common.js'

/** `kid`: the member's own kernel-object id (constants.ts KID for the root; each member has its own objects). */
export function writeIds(put: PutImage, pid: number, kid: number): void {
  put(`ids-${pid}.img`, 'ids', [encodeMessage('task_kobj_ids_entry', {vm_id: kid, files_id: kid, fs_id: kid, sighand_id: kid}, `ids-${pid}.img`)])
}

/** ids-PID.img, or else inventory's root_ids (sets of old CRIUs). */
export function readIds(at: ImagePath, dir: string, pid: number, inventory: Msg): Msg {
  const ids = optionalImage(at(`ids-${pid}.img`), () => only(readImage<Msg>(at(`ids-${pid}.img`), 'ids'), `ids-${pid}.img`)) ??
    (has(inventory, 'root_ids') ? inventory['root_ids'] as Msg : undefined)
  if (!ids) throw new NotFoundError('CRIU_IMAGE_MISSING', `ids-${pid}.img is missing from ${dir} and inventory.img has no root_ids`, 'The image set is incomplete; dump the process again.')
  return ids
}

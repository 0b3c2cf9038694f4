/** inventory.img: the set's image version and root ids; cxlfork's extension holds the model version and kernel identity. */
import {UnsupportedError} from '../../errors.js'
import {IMAGE_VERSION, type ProcessImage} from '../../image/process-image.js'
import {CRTOOLS_IMAGES_V1, CRTOOLS_IMAGES_V1_1, ROOT_KID} from '../constants.js'
import {encodeMessage, readImage} from '../image-file.js'
import {has, str64, u64} from '../values.js'
import {type ImagePath, type Msg, type PutImage, only} from './common.js'

export function writeInventory(put: PutImage, image: ProcessImage): void {
  const ext = image.kernel
  put('inventory.img', 'inventory', [encodeMessage('inventory_entry', {
    img_version: CRTOOLS_IMAGES_V1_1,
    fdinfo_per_id: true,
    root_ids: {vm_id: ROOT_KID, files_id: ROOT_KID, fs_id: ROOT_KID, sighand_id: ROOT_KID},
    lsmtype: 0,
    cxlfork: {
      model_version: image.version, captured_at: image.capturedAt, kernel_release: ext.release, hostname: ext.hostname, boot_id: ext.bootId,
      vdso_layout: ext.vdsoLayout.map((area) => ({name: area.name, offset: str64(u64(area.offset)), size: str64(u64(area.size))})),
    },
  }, 'inventory.img')])
}

export interface Inventory {
  entry: Msg
  /** cxlfork's extension: present in the sets cxlfork wrote (`ours`). */
  ext: Msg | undefined
  ours: boolean
}

/** inventory.img, refused unless its image version is the one CRIU 1.1 to 4.x write (and, for cxlfork's sets, this model's). */
export function readInventory(at: ImagePath): Inventory {
  const entry = only(readImage<Msg>(at('inventory.img'), 'inventory'), 'inventory.img')
  const version = entry['img_version'] as number
  if (version !== CRTOOLS_IMAGES_V1_1) {
    throw new UnsupportedError('CRIU_IMAGE_VERSION',
      version === CRTOOLS_IMAGES_V1
        ? 'inventory.img has image version 1 (CRIU 1.0 images without head magic), which is not supported'
        : `inventory.img has unknown image version ${version}; supported is ${CRTOOLS_IMAGES_V1_1} (CRIU 1.1 to 4.x)`,
      'Dump the process again with CRIU 3.x/4.x or cxlfork.')
  }
  if (!entry['fdinfo_per_id']) {
    throw new UnsupportedError('CRIU_IMAGE_VERSION', 'inventory.img lacks fdinfo_per_id: images from CRIU before 1.3 are not supported', 'Dump the process again with a current CRIU.')
  }
  const ext = has(entry, 'cxlfork') ? entry['cxlfork'] as Msg : undefined
  if (ext && ext['model_version'] !== IMAGE_VERSION) {
    throw new UnsupportedError('CRIU_IMAGE_VERSION', `inventory.img was written by a cxlfork with model version ${ext['model_version']}, this one reads ${IMAGE_VERSION}`,
      'Read the images with the cxlfork version that wrote them.')
  }
  return {entry, ext, ours: ext !== undefined}
}

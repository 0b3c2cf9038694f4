/** pstree.img: the task (one process: cxlfork writes and reads single-process sets) and its threads. */
import {UnsupportedError} from '../../errors.js'
import type {ProcessImage} from '../../image/process-image.js'
import {encodeMessage, readImage} from '../image-file.js'
import {type ImagePath, type Msg, type PutImage, corrupt} from './common.js'

export function writePstree(put: PutImage, image: ProcessImage): void {
  const threads = image.threads.map((thread) => thread.tid)
  put('pstree.img', 'pstree', [encodeMessage('pstree_entry', {pid: image.task.pid, ppid: 0, pgid: image.task.pgid, sid: image.task.sid, threads}, 'pstree.img')])
}

/** The one task of pstree.img, and its thread ids with the leader first. */
export function readPstree(at: ImagePath): {task: Msg; pid: number; tids: number[]} {
  const tree = readImage<Msg>(at('pstree.img'), 'pstree')
  if (tree.length === 0) throw corrupt('pstree.img holds no task')
  if (tree.length > 1) {
    throw new UnsupportedError('CRIU_PROCESS_TREE', `pstree.img holds ${tree.length} tasks (${tree.map((t) => t['pid']).join(', ')}); only single-process image sets are supported`,
      'Dump a single process (no children).')
  }
  const task = tree[0]!
  const pid = task['pid'] as number
  const tids: number[] = task['threads']?.length ? [...task['threads']] : [pid]
  if (tids[0] !== pid && tids.includes(pid)) tids.splice(tids.indexOf(pid), 1), tids.unshift(pid)
  return {task, pid, tids}
}

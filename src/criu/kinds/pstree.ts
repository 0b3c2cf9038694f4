/**
 * pstree.img: every task of the set, parents before their children (the root first, its
 * ppid 0 as CRIU writes it), with process group, session and thread ids. A zombie is a
 * task of its own with its pid as its one thread, as CRIU records it.
 */
import {encodeMessage, readImage} from '../image-file.js'
import {type ImagePath, type Msg, type PutImage, corrupt} from './common.js'

export interface PstreeTask {
  pid: number
  ppid: number
  pgid: number
  sid: number
  /** Thread ids, the leader first. */
  threads: number[]
}

export function writePstree(put: PutImage, tasks: readonly PstreeTask[]): void {
  put('pstree.img', 'pstree', tasks.map((task, i) => encodeMessage('pstree_entry', {pid: task.pid, ppid: i === 0 ? 0 : task.ppid, pgid: task.pgid, sid: task.sid, threads: task.threads}, 'pstree.img')))
}

/** Every task of pstree.img, each with its thread ids, the leader first; parents must come before their children. */
export function readPstree(at: ImagePath): {entry: Msg; pid: number; tids: number[]}[] {
  const tree = readImage<Msg>(at('pstree.img'), 'pstree')
  if (tree.length === 0) throw corrupt('pstree.img holds no task')
  const seen = new Set<number>()
  return tree.map((entry, i) => {
    const pid = entry['pid'] as number
    if (seen.has(pid)) throw corrupt(`pstree.img lists task ${pid} twice`)
    if (i > 0 && !seen.has(entry['ppid'] as number)) throw corrupt(`pstree.img: task ${pid} comes before its parent ${entry['ppid']} or its parent is not in the set`)
    seen.add(pid)
    const tids: number[] = entry['threads']?.length ? [...entry['threads']] : [pid]
    if (tids[0] !== pid && tids.includes(pid)) tids.splice(tids.indexOf(pid), 1), tids.unshift(pid)
    return {entry, pid, tids}
  })
}

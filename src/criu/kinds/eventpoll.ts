/**
 * file_entry.epfd (eventpoll_file_entry): an epoll instance and its interest list, each
 * target named by its fd number (tfd) and the files.img id of the file it was added with,
 * as CRIU 4.x writes them inline (older CRIUs kept them in eventpoll-tfd.img).
 */
import type {FdImage} from '../../image/process-image.js'
import {big, str64, u64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

/** `idOf`: the files.img id of the member's fd `n` (0 if it has none, which cannot happen for a checked target). */
export function eventpollEntry(fd: FdImage, id: number, idOf: (fd: number) => number | undefined): Obj {
  const targets = fd.epoll?.targets ?? []
  return {
    id, flags: fd.flags >>> 0, fown: fown(),
    tfd: targets.map((target) => ({id: idOf(target.fd) ?? 0, tfd: target.fd >>> 0, events: target.events >>> 0, data: str64(u64(target.data))})),
  }
}

export function eventpollOf(entry: Msg): Pick<FdImage, 'flags' | 'epoll'> {
  const targets = ((entry['tfd'] ?? []) as Msg[]).map((target) => ({fd: target['tfd'] as number, events: (target['events'] as number) >>> 0, data: u64(big(target['data']))}))
  return {flags: entry['flags'] as number, epoll: {targets}}
}

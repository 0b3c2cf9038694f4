/** file_entry.efd (eventfd_file_entry): an eventfd's counter and flags; EFD_SEMAPHORE in cxlfork's extension. */
import type {FdImage} from '../../image/process-image.js'
import {big, str64, u64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

export function eventfdEntry(fd: FdImage, id: number): Obj {
  const state = fd.eventfd ?? {count: 0n, semaphore: false}
  return {id, flags: fd.flags >>> 0, fown: fown(), counter: str64(u64(state.count)), cxlfork: {semaphore: state.semaphore}}
}

export function eventfdOf(entry: Msg): Pick<FdImage, 'flags' | 'eventfd'> {
  const semaphore = entry['cxlfork'] ? Boolean(entry['cxlfork']['semaphore']) : false
  return {flags: entry['flags'] as number, eventfd: {count: u64(big(entry['counter'])), semaphore}}
}

/** file_entry.sgfd (signalfd_entry): the signals a signalfd reads. */
import type {FdImage} from '../../image/process-image.js'
import {big, str64, u64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

export function signalfdEntry(fd: FdImage, id: number): Obj {
  return {id, flags: fd.flags >>> 0, fown: fown(), sigmask: str64(u64(fd.signalfd?.mask ?? 0n))}
}

export function signalfdOf(entry: Msg): Pick<FdImage, 'flags' | 'signalfd'> {
  return {flags: entry['flags'] as number, signalfd: {mask: u64(big(entry['sigmask']))}}
}

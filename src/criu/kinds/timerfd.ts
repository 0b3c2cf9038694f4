/**
 * file_entry.tfd (timerfd_entry): a timerfd's clock, the time left (vsec/vnsec, relative,
 * as /proc's fdinfo gives it) and its interval (isec/insec). Expirations not yet read
 * (ticks) are not carried by the model; a set that has some is read as none pending.
 */
import type {FdImage} from '../../image/process-image.js'
import {big, str64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

export function timerfdEntry(fd: FdImage, id: number): Obj {
  const timer = fd.timerfd ?? {clockid: 1, value: [0, 0], interval: [0, 0]}
  return {
    id, flags: fd.flags >>> 0, fown: fown(), clockid: timer.clockid >>> 0, ticks: str64(0n), settime_flags: 0,
    vsec: str64(BigInt(timer.value[0])), vnsec: str64(BigInt(timer.value[1])), isec: str64(BigInt(timer.interval[0])), insec: str64(BigInt(timer.interval[1])),
  }
}

export function timerfdOf(entry: Msg): Pick<FdImage, 'flags' | 'timerfd'> {
  const n = (field: string): number => Number(big(entry[field]))
  return {flags: entry['flags'] as number, timerfd: {clockid: entry['clockid'] as number, value: [n('vsec'), n('vnsec')], interval: [n('isec'), n('insec')]}}
}

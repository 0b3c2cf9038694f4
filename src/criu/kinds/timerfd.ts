/**
 * file_entry.tfd (timerfd_entry): a timerfd's clock, the time left (vsec/vnsec, relative,
 * as /proc's fdinfo gives it), its interval (isec/insec) and the expirations not yet read
 * (ticks). A periodic timer that fired unread has no time left in /proc: it is written due
 * in one interval, so that CRIU, which arms only what has time left, keeps it running.
 */
import {type FdImage, timerfdFirstExpiry} from '../../image/process-image.js'
import {big, str64} from '../values.js'
import {type Msg, type Obj, fown} from './common.js'

export function timerfdEntry(fd: FdImage, id: number): Obj {
  const timer: NonNullable<FdImage['timerfd']> = fd.timerfd ?? {clockid: 1, value: [0, 0], interval: [0, 0]}
  const [vsec, vnsec] = timerfdFirstExpiry(timer)
  return {
    id, flags: fd.flags >>> 0, fown: fown(), clockid: timer.clockid >>> 0, ticks: str64(BigInt(timer.ticks ?? 0)), settime_flags: 0,
    vsec: str64(BigInt(vsec)), vnsec: str64(BigInt(vnsec)), isec: str64(BigInt(timer.interval[0])), insec: str64(BigInt(timer.interval[1])),
  }
}

export function timerfdOf(entry: Msg): Pick<FdImage, 'flags' | 'timerfd'> {
  const n = (field: string): number => Number(big(entry[field]))
  const ticks = n('ticks')
  return {flags: entry['flags'] as number, timerfd: {clockid: entry['clockid'] as number, value: [n('vsec'), n('vnsec')], interval: [n('isec'), n('insec')], ...(ticks > 0 ? {ticks} : {})}}
}

/**
 * sk-queues.img: what waits in a Unix socket's receive queue, one sk_packet_entry per
 * packet (a datagram, or a stream's bytes) naming the socket by its files.img id
 * (id_for), each followed in the file by its bytes, as CRIU writes them.
 */
import {existsSync} from 'node:fs'

import {UnsupportedError} from '../../errors.js'
import {decodeMessage, encodeMessage, readImageRecords} from '../image-file.js'
import {type ImagePath, type Msg, type PutImage} from './common.js'

export class SkQueuesWriter {
  private readonly packets: {id: number; data: Uint8Array}[] = []

  add(id: number, data: Uint8Array): void {
    this.packets.push({id, data})
  }

  write(put: PutImage): void {
    if (this.packets.length === 0) return
    put('sk-queues.img', 'sk-queues', this.packets.map(({id, data}) => encodeMessage('sk_packet_entry', {id_for: id, length: data.length}, 'sk-queues.img')),
      this.packets.map(({data}) => data))
  }
}

/** The packets queued on each socket, by its files.img id, in queue order (empty when the set has no sk-queues.img). */
export function readSkQueues(at: ImagePath): Map<number, Uint8Array[]> {
  const out = new Map<number, Uint8Array[]>()
  const path = at('sk-queues.img')
  if (!existsSync(path)) return out
  const data: Uint8Array[] = []
  const records = readImageRecords(path, 'sk-queues', {
    length: (record, i) => decodeMessage<Msg>('sk_packet_entry', record, `sk-queues.img record ${i}`)['length'] as number,
    onTrailer: (i, bytes) => {
      data[i] = Uint8Array.from(bytes)
    },
  })
  records.forEach((record, i) => {
    const entry = decodeMessage<Msg>('sk_packet_entry', record, `sk-queues.img record ${i}`)
    if ((entry['scm'] as Msg[] | undefined)?.length) {
      throw new UnsupportedError('CRIU_FD_TYPE', `sk-queues.img record ${i} carries descriptors or credentials (SCM) with it, which cxlfork does not restore`, 'Dump the process once the message is read.')
    }
    const id = entry['id_for'] as number
    out.set(id, [...(out.get(id) ?? []), data[i] ?? new Uint8Array(0)])
  })
  return out
}

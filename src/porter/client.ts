/**
 * A porter client: one HTTP/1.1 request over the Unix socket, JSON in and
 * out. Written on node:net rather than node:http because the restore fast
 * path (bin/run.js) pays for every module it loads, and a request with
 * `Connection: close` needs no more than this. No koffi, no engine.
 */
import {connect} from 'node:net'

export interface PorterReply {
  status: number
  body: any
}

/** Why a porter could not be asked at all (then the caller does the work itself). */
export class PorterUnreachable extends Error {
  /** `requestSent`: the request may have been served (never redo it then). */
  constructor(readonly socket: string, readonly reason: string, readonly requestSent = false) {
    super(`no porter answers at ${socket}: ${reason}`)
  }
}

/**
 * Send `method path` with an optional JSON body; resolves with the status
 * and the parsed JSON reply. Rejects with PorterUnreachable when nothing
 * listens (ENOENT, ECONNREFUSED: a stale socket) or the reply is not HTTP+JSON.
 */
export function porterRequest(socket: string, method: string, path: string, body?: unknown, timeoutMs = 120_000): Promise<PorterReply> {
  return new Promise((resolvePromise, reject) => {
    const payload = body === undefined ? '' : JSON.stringify(body)
    const conn = connect(socket)
    const chunks: Buffer[] = []
    let sent = false
    const timer = setTimeout(() => {
      conn.destroy()
      reject(new PorterUnreachable(socket, `no reply within ${timeoutMs} ms`, sent))
    }, timeoutMs)
    timer.unref?.()
    conn.on('connect', () => {
      sent = true
      conn.end(`${method} ${path} HTTP/1.1\r\nHost: porter\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`)
    })
    let settled = false
    const finish = (): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      const text = Buffer.concat(chunks).toString('utf8')
      const split = text.indexOf('\r\n\r\n')
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(text)
      if (split < 0 || !status) {
        reject(new PorterUnreachable(socket, 'the reply is not HTTP', sent))
        return
      }
      // The porter always answers with Content-Length (no chunked bodies).
      const rest = text.slice(split + 4)
      try {
        resolvePromise({status: Number(status[1]), body: rest.length === 0 ? {} : JSON.parse(rest)})
      } catch {
        reject(new PorterUnreachable(socket, 'the reply is not JSON', sent))
      }
    }
    // Done as soon as the whole body is in: the porter may be busy (refilling ghosts) before it closes the connection.
    conn.on('data', (chunk: Buffer) => {
      chunks.push(chunk)
      const all = Buffer.concat(chunks)
      const split = all.indexOf('\r\n\r\n')
      if (split < 0) return
      const length = /\r\ncontent-length:\s*(\d+)/i.exec(all.subarray(0, split).toString('latin1'))
      if (length && all.length - split - 4 >= Number(length[1])) {
        finish()
        conn.destroy()
      }
    })
    conn.on('error', (error: NodeJS.ErrnoException) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      reject(new PorterUnreachable(socket, error.code ?? error.message, sent))
    })
    conn.on('close', () => finish())
  })
}

/**
 * Wait until the porter `pid` answers /v1/status on `socket`: 'listening', 'gone' as soon as
 * `gone()` says it exited, or 'timeout'. For whoever started one and must wait for it (the bench, tests).
 */
export async function awaitPorter(socket: string, pid: number, gone: () => boolean, timeoutMs = 30_000): Promise<'listening' | 'gone' | 'timeout'> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (gone()) return 'gone'
    try {
      const reply = await porterRequest(socket, 'GET', '/v1/status', undefined, 5000)
      if (reply.status === 200 && reply.body.pid === pid) return 'listening'
    } catch (error) {
      if (!(error instanceof PorterUnreachable)) throw error
    }
    if (Date.now() > deadline) return 'timeout'
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/**
 * The porter process: HTTP/1.1 + JSON on a Unix socket (Node's http server
 * listening on the path), each request's peer read from the kernel
 * (SO_PEERCRED), dispatched to the service one at a time (the engine is
 * synchronous and the main thread is the tracer of every ghost; only a
 * function's invocation is answered later, when the function answers). Every error
 * becomes the CLI's JSON envelope `{error: {code, message, hint, exitCode}}`
 * with an HTTP status, and the porter stays up.
 */
import {chmodSync, chownSync} from 'node:fs'
import {type IncomingMessage, type ServerResponse, createServer} from 'node:http'
import type {Socket} from 'node:net'

import {CxlforkError, ERROR_CODES, UsageError} from '../errors.js'
import {type PeerCredentials, peerCredentials} from './peer.js'
import type {GhostKind} from './ghosts.js'
import {PorterService} from './service.js'
import {lockPidFile, prepareSocketDir, removeStaleSocket} from './socket-file.js'

/** Largest request body read (a restore or checkpoint request is a few hundred bytes). */
export const MAX_BODY_BYTES = 64 * 1024

export interface PorterStartOptions {
  poolPath: string
  socket: string
  /** The socket path is the default one (its directory may be created). */
  defaultSocket: boolean
  ghosts: number
  ghostKinds?: GhostKind[]
  /** false: no per-clone cgroups. */
  cgroups?: boolean
  /** Give the socket to this group, mode 0660 (default: 0600, the porter's user only). */
  gid?: number
  /** Called once the socket accepts connections. */
  onListening?: (service: PorterService) => void
}

const HTTP_STATUS: Record<number, number> = {1: 500, 2: 400, 3: 404, 4: 403, 5: 422, 6: 500, 7: 409}

function statusOf(error: CxlforkError): number {
  if (error.code === 'PORTER_BODY_TOO_LARGE') return 413
  if (error.code === 'PORTER_METHOD') return 405
  return HTTP_STATUS[error.exitCode] ?? 500
}

function errorBody(error: unknown): {status: number; body: unknown} {
  if (error instanceof CxlforkError) return {status: statusOf(error), body: {error: error.toJSON()}}
  // A bug of ours: said as INTERNAL, as the CLI does, without a stack.
  return {status: 500, body: {error: {code: 'INTERNAL', message: `internal error: ${(error as Error)?.message ?? String(error)}`, exitCode: ERROR_CODES.INTERNAL}}}
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body)
  res.writeHead(status, {'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), Connection: 'close'})
  res.end(text)
}

/** The peer of an accepted connection, read once from its descriptor. */
function peerOf(socket: Socket & {cxlforkPeer?: PeerCredentials | null}): PeerCredentials | null {
  if (socket.cxlforkPeer === undefined) {
    const fd = (socket as unknown as {_handle?: {fd?: number}})._handle?.fd
    socket.cxlforkPeer = fd !== undefined && fd >= 0 ? peerCredentials(fd) ?? null : null
  }
  return socket.cxlforkPeer
}

/** Start the porter; resolves once it listens, with a function that stops it. */
export async function startPorter(options: PorterStartOptions): Promise<{service: PorterService; stop: () => Promise<void>}> {
  prepareSocketDir(options.socket, options.defaultSocket)
  const pidFile = lockPidFile(options.socket)
  let service: PorterService
  try {
    removeStaleSocket(options.socket)
    service = new PorterService({poolPath: options.poolPath, socket: options.socket, ghosts: options.ghosts, ...(options.ghostKinds ? {ghostKinds: options.ghostKinds} : {}), ...(options.cgroups === false ? {cgroups: false} : {})})
  } catch (error) {
    pidFile.release()
    throw error
  }

  const server = createServer({requestTimeout: 30_000, headersTimeout: 10_000, keepAliveTimeout: 1000}, (req: IncomingMessage, res: ServerResponse) => {
    const peer = peerOf(req.socket)
    const chunks: Buffer[] = []
    let size = 0
    let refused = false
    req.on('data', (chunk: Buffer) => {
      if (refused) return
      size += chunk.length
      if (size > MAX_BODY_BYTES) {
        refused = true
        const {status, body} = errorBody(new UsageError('PORTER_BODY_TOO_LARGE', `the request body is larger than ${MAX_BODY_BYTES} bytes`, 'Requests are small JSON objects; see the README, "Porter".'))
        send(res, status, body)
        req.socket.destroySoon()
        return
      }
      chunks.push(chunk)
    })
    req.on('end', async () => {
      if (refused) return
      let reply: {status: number; body: unknown}
      try {
        if (!peer) throw new CxlforkError('PORTER_FAILED', 'the kernel did not say who is connected (SO_PEERCRED)', 'Connect through the porter\'s Unix socket.')
        const text = Buffer.concat(chunks).toString('utf8')
        let body: unknown
        if (text.trim().length > 0) {
          try {
            body = JSON.parse(text)
          } catch (error) {
            throw new UsageError('PORTER_BAD_REQUEST', `the request body is not JSON: ${(error as Error).message}`, 'Send a JSON object, e.g. {"name": "web"}.')
          }
        }
        const url = new URL(req.url ?? '/', 'http://porter')
        reply = await service.handle(req.method ?? 'GET', url, body, peer)
      } catch (error) {
        reply = errorBody(error)
      }
      send(res, reply.status, reply.body)
    })
  })
  // Malformed HTTP (Node's parser refused it): the same JSON envelope, and the porter goes on.
  // A client that half-closes after its request (ours does) still gets the reply of a request answered later (a function's invocation).
  Object.assign(server, {httpAllowHalfOpen: true})
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable) return
    const tooLarge = error.code === 'HPE_HEADER_OVERFLOW'
    const {status, body} = errorBody(new UsageError(tooLarge ? 'PORTER_BODY_TOO_LARGE' : 'PORTER_BAD_REQUEST', `malformed HTTP request: ${error.code ?? error.message}`, 'Speak HTTP/1.1 with a JSON body; see the README, "Porter".'))
    const text = JSON.stringify(body)
    socket.end(`HTTP/1.1 ${tooLarge ? 431 : status} ${tooLarge ? 'Request Header Fields Too Large' : 'Bad Request'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`)
  })

  // Created 0600 (umask) so that no one else can connect between bind and chmod.
  const oldMask = process.umask(0o177)
  try {
    await new Promise<void>((resolveListen, reject) => {
      server.once('error', reject)
      server.listen(options.socket, () => {
        server.off('error', reject)
        resolveListen()
      })
    })
  } catch (error) {
    service.close()
    pidFile.release()
    throw new CxlforkError('PORTER_FAILED', `cannot listen on ${options.socket}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, 'Another process may have taken the path; remove it or pass --socket.')
  } finally {
    process.umask(oldMask)
  }
  if (options.gid !== undefined) {
    chownSync(options.socket, -1, options.gid)
    chmodSync(options.socket, 0o660)
  }
  options.onListening?.(service)

  let stopping: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopping ??= new Promise<void>((resolveStop) => {
      server.close(() => resolveStop())
      server.closeAllConnections()
    }).then(() => {
      service.close()
      pidFile.release()
    })
    return stopping
  }
  return {service, stop}
}

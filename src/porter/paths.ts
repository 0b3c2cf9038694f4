/**
 * Where a porter listens. One porter per host and pool, so the default
 * socket is named after the pool's absolute path: root's porters live in
 * /run/cxlfork (root-owned, never world-writable), a user's in
 * $XDG_RUNTIME_DIR/cxlfork or /tmp/cxlfork-UID. Kept free of koffi and of
 * the engine: the restore fast path (bin/run.js) computes it before anything
 * else is loaded.
 */
import {join, resolve} from 'node:path'

export const ROOT_SOCKET_DIR = '/run/cxlfork'

/** The directory a porter run by `uid` uses by default. */
export function defaultSocketDir(uid: number, env: NodeJS.ProcessEnv = process.env): string {
  if (uid === 0) return ROOT_SOCKET_DIR
  const runtime = env.XDG_RUNTIME_DIR
  return runtime && runtime.startsWith('/') ? join(runtime, 'cxlfork') : `/tmp/cxlfork-${uid}`
}

/**
 * porter-<FNV-1a 64 of the pool's absolute path, 16 hex digits>.sock. Not
 * node:crypto: loading it was a fifth of the restore fast path's own cost.
 * The name only has to be stable; the socket's directory is what is trusted.
 */
export function socketName(poolPath: string): string {
  let hash = 0xcbf29ce484222325n
  for (const byte of new TextEncoder().encode(resolve(poolPath))) hash = ((hash ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn
  return `porter-${hash.toString(16).padStart(16, '0')}.sock`
}

export function defaultSocketPath(poolPath: string, uid: number, env: NodeJS.ProcessEnv = process.env): string {
  return join(defaultSocketDir(uid, env), socketName(poolPath))
}

/**
 * Where a client looks for the porter of `poolPath`: $CXLFORK_PORTER_SOCKET
 * if set, then its own default, then root's (a member of a porter's --group).
 */
export function candidateSockets(poolPath: string, uid: number, env: NodeJS.ProcessEnv = process.env): string[] {
  const candidates: string[] = []
  if (env.CXLFORK_PORTER_SOCKET) candidates.push(env.CXLFORK_PORTER_SOCKET)
  candidates.push(defaultSocketPath(poolPath, uid, env))
  if (uid !== 0) candidates.push(defaultSocketPath(poolPath, 0, env))
  return candidates
}

/** The lock and pid file of the porter listening at `socket` (flock held for its whole life). */
export function pidFilePath(socket: string): string {
  return `${socket}.pid`
}

export function logFilePath(socket: string): string {
  return `${socket}.log`
}

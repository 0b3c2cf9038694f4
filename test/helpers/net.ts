/** Loopback helpers for socket tests: a free TCP port, and one line read from a server. */
import {createConnection, createServer} from 'node:net'

/** A port nobody listens on now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as {port: number}).port
      server.close(() => resolve(port))
    })
    server.on('error', reject)
  })
}

/** One line read from 127.0.0.1:port in our namespace. */
export function ask(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = ''
    const sock = createConnection({host: '127.0.0.1', port})
    sock.on('data', (chunk) => (text += chunk.toString()))
    sock.on('end', () => resolve(text.trim()))
    sock.on('error', reject)
    sock.setTimeout(5000, () => sock.destroy(new Error('timeout')))
  })
}

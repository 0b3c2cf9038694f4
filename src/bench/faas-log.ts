/**
 * A FaaS function's log, read as it grows: the original, its clones and its
 * forked children all append `KIND key=value ...` lines to one file.
 */
import {closeSync, openSync, readSync} from 'node:fs'

import {CxlforkError} from '../errors.js'

const POLL_MS = 1
const sleeper = new Int32Array(new SharedArrayBuffer(4))
const pause = (ms: number): void => void Atomics.wait(sleeper, 0, 0, ms)

export interface LogEvent {
  kind: string
  fields: Record<string, string>
  /** performance.now() when the line was read. */
  at: number
}

/** The function's log, read as it grows: one file that the original, its clones and forked children all append to. */
export class FunctionLog {
  private fd: number
  private rest = ''
  private readonly events: LogEvent[] = []
  private readonly buffer = Buffer.alloc(65536)

  constructor(readonly path: string) {
    this.fd = openSync(path, 'a+')
  }

  private pump(): void {
    for (;;) {
      const got = readSync(this.fd, this.buffer, 0, this.buffer.length, null)
      if (got <= 0) break
      this.rest += this.buffer.toString('utf8', 0, got)
    }
    const lines = this.rest.split('\n')
    this.rest = lines.pop() ?? ''
    const at = performance.now()
    for (const line of lines) {
      const [kind, ...pairs] = line.trim().split(/\s+/)
      if (!kind) continue
      const fields: Record<string, string> = {}
      for (const pair of pairs) {
        const eq = pair.indexOf('=')
        if (eq > 0) fields[pair.slice(0, eq)] = pair.slice(eq + 1)
      }
      this.events.push({kind, fields, at})
    }
  }

  /** Index of the next event to come. */
  mark(): number {
    this.pump()
    return this.events.length
  }

  /**
   * The first event from index `from` on that `match` accepts (each event is taken once), waiting up to
   * `timeoutMs`; `alive` says whether whoever must write it still can (else the wait fails at once).
   */
  waitFor(from: number, match: (event: LogEvent) => boolean, what: string, alive: () => boolean, timeoutMs: number): LogEvent {
    const deadline = performance.now() + timeoutMs
    let index = from
    for (;;) {
      this.pump()
      for (; index < this.events.length; index++) {
        const event = this.events[index]!
        if (event.kind === 'FATAL' || match(event)) {
          if (event.kind === 'FATAL') throw new CxlforkError('BENCH_TARGET_FAILED', `${what}: the function logged FATAL ${JSON.stringify(event.fields)}`)
          this.events[index] = {kind: '', fields: {}, at: event.at}
          return event
        }
      }
      if (!alive()) {
        this.pump()
        if (index === this.events.length) throw new CxlforkError('BENCH_CLONE_DIED', `${what}: the process ended before logging it (log ${this.path})`)
        continue
      }
      if (performance.now() > deadline) throw new CxlforkError('BENCH_TARGET_FAILED', `${what}: nothing after ${timeoutMs / 1000} s (log ${this.path})`)
      pause(POLL_MS)
    }
  }

  close(): void {
    closeSync(this.fd)
  }
}

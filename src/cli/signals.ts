/**
 * SIGINT, SIGTERM and SIGHUP during a checkpoint. A terminating signal must
 * not kill cxlfork in the middle of an injected syscall (the kernel would let
 * the target run on with injected registers), and an operator who sends one
 * expects the checkpoint to stop, as CRIU and podman do. So while `work`
 * runs the signals are only recorded (sys/termination: a real handler, which
 * synchronous code can ask at any instant), and `work` calls `stopPoint` at
 * each safe point: there a recorded signal throws InterruptedError, the work
 * unwinds (the target released and running as it was, the half-built
 * checkpoint given back to the pool) and the command exits 128+N. A signal
 * that comes after the last safe point (the checkpoint is already published)
 * lets the work finish; the command then says so and still exits 128+N.
 */
import {InterruptedError} from '../errors.js'

const NAMES: Record<number, string> = {1: 'SIGHUP', 2: 'SIGINT', 15: 'SIGTERM'}

/** Throws InterruptedError if a terminating signal was received; a no-op otherwise. */
export type StopPoint = () => void

export async function withTerminationDeferred<T>(work: (stopPoint: StopPoint) => Promise<T>, what = 'the operation',
  outcome = 'the target runs on as it was and nothing was kept'): Promise<T> {
  const {TerminationLatch} = await import('../sys/termination.js')
  const latch = TerminationLatch.install()
  const stopPoint: StopPoint = () => {
    const signo = latch.received()
    if (signo !== 0) {
      throw new InterruptedError(signo, `${NAMES[signo] ?? `signal ${signo}`} received: ${what} was stopped at a safe point; ${outcome}`,
        'Run it again when wanted.')
    }
  }
  let finished = false
  try {
    const result = await work(stopPoint)
    finished = true
    return result
  } finally {
    latch.restore()
    const signo = latch.received()
    if (finished && signo !== 0) {
      process.stderr.write(`cxlfork: ${NAMES[signo] ?? `signal ${signo}`} received after ${what} had completed; its result is kept\n`)
      process.exitCode = 128 + signo
    }
  }
}

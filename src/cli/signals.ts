/**
 * While a target is seized, a terminating signal must not kill cxlfork in the
 * middle of an injected syscall: the kernel would let the target run on with
 * injected registers. Listening for the signals makes Node queue them; the
 * checkpoint engine is synchronous, so they are seen only once the target has
 * been released, and the command then exits with 128+signal.
 */
const DEFERRED = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const
const NUMBERS: Record<(typeof DEFERRED)[number], number> = {SIGINT: 2, SIGTERM: 15, SIGHUP: 1}

export async function withTerminationDeferred<T>(work: () => Promise<T>): Promise<T> {
  let received: (typeof DEFERRED)[number] | undefined
  const onSignal = (signal: (typeof DEFERRED)[number]): void => {
    received ??= signal
  }
  for (const signal of DEFERRED) process.on(signal, onSignal)
  try {
    return await work()
  } finally {
    for (const signal of DEFERRED) process.off(signal, onSignal)
    // Give a signal that arrived during the synchronous work its turn, then honour it.
    await new Promise((resolve) => setImmediate(resolve))
    if (received) {
      process.stderr.write(`cxlfork: ${received} received; the target was released first\n`)
      process.exitCode = 128 + NUMBERS[received]
    }
  }
}

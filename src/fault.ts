/**
 * Fault injection for tests, in the spirit of CRIU's CRIU_FAULT: when
 * CXLFORK_FAULT names a point, cxlfork SIGKILLs itself there, so tests can
 * prove that dying at that exact instant leaves the target unharmed. When
 * CXLFORK_FAULT_STOP names it, cxlfork stops itself there (SIGSTOP), so a
 * test can send it a signal at that exact instant and then SIGCONT it.
 */
export function faultPoint(name: string): void {
  if (process.env.CXLFORK_FAULT === name) process.kill(process.pid, 'SIGKILL')
  if (process.env.CXLFORK_FAULT_STOP === name) process.kill(process.pid, 'SIGSTOP')
}

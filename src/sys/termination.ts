/**
 * A termination latch: while installed, SIGINT, SIGTERM and SIGHUP do not end
 * the process but are recorded, and synchronous code can ask at any instant
 * whether one came. Node queues signals for its event loop, which a
 * synchronous checkpoint never returns to, so its own listeners cannot be
 * asked; this installs a real handler instead, the classic sig_atomic_t flag
 * of C, written here as machine code (x86_64) on a page of our own:
 *
 *   handler(signo):  mov rdx, FLAG ; xor eax, eax ; lock cmpxchg [rdx], edi ; ret
 *   restorer:        mov eax, 15 (rt_sigreturn) ; syscall
 *
 * The first signal's number stays in FLAG (cmpxchg from 0). The handler is
 * async-signal-safe (one store, on any thread the kernel picks), and
 * SA_RESTART restarts what it interrupts, as libuv's own handler does.
 */
import {MAP, PROT, SYS, syscall} from './syscall.js'
import {mmap, mprotect, view} from './vm-io.js'

export const TERMINATING_SIGNALS = {SIGHUP: 1, SIGINT: 2, SIGTERM: 15} as const

const SA_RESTART = 0x10000000n
const SA_RESTORER = 0x04000000n
const SIGACTION_BYTES = 32 // handler, flags, restorer, mask (8 bytes: the kernel's sigset)
const RESTORER_OFFSET = 32

interface LatchPage {
  code: bigint
  flag: Int32Array
}

let page: LatchPage | undefined

/** One code page (r-x) and one flag page (rw-), made once per process and kept. */
function latchPage(): LatchPage {
  if (page) return page
  const base = mmap(null, 8192, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
  const flagAddress = base + 4096n
  const code = view(base, 64)
  const handler = [0x48, 0xba, ...littleEndian64(flagAddress), 0x31, 0xc0, 0xf0, 0x0f, 0xb1, 0x3a, 0xc3]
  code.set(handler, 0)
  code.set([0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05], RESTORER_OFFSET)
  mprotect(base, 4096, PROT.READ | PROT.EXEC)
  const flagBytes = view(flagAddress, 4)
  page = {code: base, flag: new Int32Array(flagBytes.buffer, flagBytes.byteOffset, 1)}
  return page
}

function littleEndian64(value: bigint): number[] {
  return Array.from({length: 8}, (_, i) => Number((value >> BigInt(8 * i)) & 0xffn))
}

export class TerminationLatch {
  private constructor(private readonly latch: LatchPage, private readonly saved: Map<number, Uint8Array>) {}

  /** Record `signals` instead of dying of them, until restore(). */
  static install(signals: readonly number[] = Object.values(TERMINATING_SIGNALS)): TerminationLatch {
    const latch = latchPage()
    Atomics.store(latch.flag, 0, 0)
    const action = new Uint8Array(SIGACTION_BYTES)
    const fields = new DataView(action.buffer)
    fields.setBigUint64(0, latch.code, true)
    fields.setBigUint64(8, SA_RESTART | SA_RESTORER, true)
    fields.setBigUint64(16, latch.code + BigInt(RESTORER_OFFSET), true)
    fields.setBigUint64(24, 0xffffffffffffffffn, true) // every signal blocked while it runs
    const saved = new Map<number, Uint8Array>()
    for (const signo of signals) {
      const old = new Uint8Array(SIGACTION_BYTES)
      syscall('rt_sigaction', SYS.rt_sigaction, signo, action, old, 8)
      saved.set(signo, old)
    }
    return new TerminationLatch(latch, saved)
  }

  /** The first signal received since install(), or 0. */
  received(): number {
    return Atomics.load(this.latch.flag, 0)
  }

  /** Put back the actions install() replaced; a signal already recorded stays readable. */
  restore(): void {
    for (const [signo, old] of this.saved) syscall('rt_sigaction', SYS.rt_sigaction, signo, old, null, 8)
    this.saved.clear()
  }
}

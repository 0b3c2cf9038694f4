/**
 * What a checkpoint records about the CPU its state came from, and what this
 * host makes of it: the layout recorded at checkpoint time (or inferred for
 * checkpoints from before layouts were recorded), the verdict for this CPU,
 * and each thread's XSAVE buffer laid out for this CPU.
 */
import {CorruptError, UnsupportedError} from '../errors.js'
import type {ProcessImage, ThreadImage} from './process-image.js'
import {hostXsaveLayout} from '../cpu/host-xsave.js'
import {bufferXcr0, bufferXstateBv, inferLayout, referenceLayouts, type XsaveLayout} from '../cpu/xsave-layout.js'
import {cpuMismatchError, cpuVerdict, type CpuVerdict, translateXstate} from '../cpu/xsave-translate.js'

/**
 * The layout to record for a buffer this host's kernel just produced: this
 * CPU's, cut to the features of the buffer's XCR0 word. Undefined if CPUID and
 * the kernel disagree on the size; restore then infers it as for old checkpoints.
 */
export function recordLayout(xstate: Uint8Array, host: XsaveLayout = hostXsaveLayout()): XsaveLayout | undefined {
  return inferLayout(xstate, [host])
}

function wellFormed(layout: unknown): layout is XsaveLayout {
  const l = layout as XsaveLayout
  return typeof l === 'object' && l !== null && typeof l.xcr0 === 'bigint' && Number.isInteger(l.size) && Array.isArray(l.components) &&
    l.components.every((c) => Number.isInteger(c?.feature) && Number.isInteger(c?.offset) && Number.isInteger(c?.size))
}

/**
 * The layout `thread.xstate` was saved in. Checkpoints without a recorded one
 * (written before layouts were) get the first of this host's layout and the
 * Intel and AMD tables whose extent for the buffer's XCR0 matches its size.
 */
export function savedLayout(thread: ThreadImage, host: XsaveLayout, what: string): XsaveLayout {
  if (thread.xsaveLayout !== undefined) {
    if (!wellFormed(thread.xsaveLayout)) throw new CorruptError('IMAGE_CORRUPT', `${what}: the recorded XSAVE layout is malformed`, 'The checkpoint is damaged; take a new one.')
    return thread.xsaveLayout
  }
  const inferred = inferLayout(thread.xstate, [host, ...referenceLayouts()])
  if (!inferred) {
    throw new UnsupportedError('CPU_MISMATCH',
      `${what}: its ${thread.xstate.byteLength}-byte XSAVE state (XCR0 0x${bufferXcr0(thread.xstate).toString(16)}) fits neither this CPU's layout nor a known vendor layout, and the checkpoint does not record its own`,
      'Restore it on the kind of CPU it was taken on, or take the checkpoint again with this cxlfork (it records the layout).')
  }
  return inferred
}

/** Verdict for every thread of `image` on `host`: the first thread that cannot be restored, else the first thread's. */
export function imageCpuVerdict(image: ProcessImage, host: XsaveLayout = hostXsaveLayout()): CpuVerdict {
  const verdicts = image.threads.map((thread) => cpuVerdict(savedLayout(thread, host, `thread ${thread.tid}`), bufferXstateBv(thread.xstate), host))
  return verdicts.find((v) => !v.ok) ?? verdicts[0]!
}

/** Throws CPU_MISMATCH (exit 5) unless `host` can take every thread's state. */
export function assertCpuFits(image: ProcessImage, what: string, host: XsaveLayout = hostXsaveLayout()): void {
  const verdict = imageCpuVerdict(image, host)
  if (!verdict.ok) throw cpuMismatchError(verdict, what)
}

/** `thread.xstate` laid out for `host` (the same buffer when no translation is needed). */
export function xstateForHost(thread: ThreadImage, what: string, host: XsaveLayout = hostXsaveLayout()): Uint8Array {
  return translateXstate(thread.xstate, savedLayout(thread, host, what), host, what)
}

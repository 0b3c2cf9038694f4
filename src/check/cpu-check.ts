/**
 * `cxlfork check --checkpoint NAME`: can this host's CPU take the checkpoint's
 * register state? Reads the checkpoint's state record only (no memory) and
 * gives the verdict restore would reach, without spawning anything.
 */
import {imageCpuVerdict} from '../image/cpu-state.js'
import {hostXsaveLayout} from '../cpu/host-xsave.js'
import type {XsaveLayout} from '../cpu/xsave-layout.js'
import {cpuMismatchError} from '../cpu/xsave-translate.js'
import {type CxlforkError} from '../errors.js'
import {decodeImage} from '../image/codec.js'
import {Section} from '../image/sections.js'
import type {Pool} from '../pool/index.js'
import {getuid} from '../sys/syscall.js'

export interface CheckpointCpuCheck {
  checkpoint: string
  /** This host can restore the checkpoint's CPU state. */
  ok: boolean
  /** The state is moved to this CPU's XSAVE layout on restore. */
  translate: boolean
  /** Features the state depends on, and those this CPU lacks. */
  needed: string[]
  missing: string[]
  detail: string
  /** The error restore would fail with (CPU_MISMATCH, exit 5). */
  error?: ReturnType<CxlforkError['toJSON']>
}

export function checkCheckpointCpu(pool: Pool, name: string, host: XsaveLayout = hostXsaveLayout()): CheckpointCpuCheck {
  const reader = pool.openCheckpoint(name, {uid: getuid()})
  const image = decodeImage(reader.section(Section.processState))
  const verdict = imageCpuVerdict(image, host)
  const result: CheckpointCpuCheck = {checkpoint: name, ok: verdict.ok, translate: verdict.translate, needed: verdict.needed, missing: verdict.missing, detail: verdict.detail}
  if (!verdict.ok) result.error = cpuMismatchError(verdict, `checkpoint ${name}`).toJSON()
  return result
}

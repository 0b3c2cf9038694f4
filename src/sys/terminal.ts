/**
 * Terminal modes (struct termios through TCGETS/TCSETSW). A terminal's modes belong to the
 * terminal, not to an fd: a program in raw mode (an editor, a REPL with line editing) left its
 * terminal so, and a clone given another terminal (restore --wait) finds that one's modes.
 */
import {closeSync, constants, openSync} from 'node:fs'

import {SYS, syscallRaw} from './syscall.js'

const TCGETS = 0x5401
const TCSETSW = 0x5403
/** The kernel's struct termios: four tcflag_t, c_line, c_cc[19]. */
export const TERMIOS_SIZE = 36

/** The modes of the terminal open as `fd`, or undefined when it is not a terminal. */
export function getTermios(fd: number): Uint8Array | undefined {
  const termios = new Uint8Array(TERMIOS_SIZE)
  return syscallRaw(SYS.ioctl, fd, TCGETS, termios) < 0n ? undefined : termios
}

/** Set the modes of the terminal open as `fd` once its output is written (TCSETSW); false when it is not a terminal. */
export function setTermios(fd: number, termios: Uint8Array): boolean {
  return syscallRaw(SYS.ioctl, fd, TCSETSW, termios) >= 0n
}

/** The modes of the terminal another process has open as `fd` (through /proc/PID/fd, without becoming its controlling process). */
export function readTermiosOf(pid: number, fd: number): Uint8Array | undefined {
  let own: number
  try {
    own = openSync(`/proc/${pid}/fd/${fd}`, constants.O_RDONLY | constants.O_NOCTTY | constants.O_NONBLOCK)
  } catch {
    return undefined
  }
  try {
    return getTermios(own)
  } finally {
    closeSync(own)
  }
}

/**
 * What a deployed function is (its record, as `fn deploy` asks for it and
 * the porter keeps it) and the parsing shared by the commands and the
 * porter: durations, the command line, the request data. No koffi, no
 * engine: the commands load this before they know a porter answers.
 */
import {UsageError} from '../../errors.js'

export const FUNCTION_POLICIES = ['mow', 'moa', 'hybrid', 'local', 'criu'] as const
export type FunctionPolicy = (typeof FUNCTION_POLICIES)[number]
/** The pool restore policies; `criu` instead dumps a CRIU-format image set and restores clones from it (copying every page). */
export type PoolFunctionPolicy = Exclude<FunctionPolicy, 'criu'>

/** The deploy request: what `fn deploy` sends, validated again by the porter. */
export interface FunctionSpec {
  name: string
  /** argv of the function's program (no shell): argv[0] is looked up in PATH by the porter. */
  argv: string[]
  /** Working directory the program runs in (the deploying command's, absolute). */
  cwd: string
  policy: FunctionPolicy
  /** Checkpoint a cold-started instance after this many invocations of its own (0: never). */
  checkpointAfter: number
  /** An instance idle this long is stopped, ms. */
  keepAliveMs: number
  /** Instances at most at once; invocations beyond wait for one. */
  maxInstances: number
}

/** What the porter keeps of a function across its own restarts. */
export interface FunctionRecord extends FunctionSpec {
  owner: number
  createdAt: string
  /** Its checkpoint in the pool, once taken; for policy `criu`, the directory of its CRIU-format image set. */
  checkpoint: string | null
  /** Why the last checkpoint attempt failed, if it did (the function then keeps cold-starting). */
  checkpointError?: string
}

/** The checkpoint of function NAME in the pool (shown by `cxlfork ls`). */
export function checkpointNameOf(name: string): string {
  return `fn.${name}`
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/

export function validateFunctionName(name: string): void {
  if (!NAME.test(name)) {
    throw new UsageError('INVALID_NAME', `invalid function name ${JSON.stringify(name)}`, 'Function names are 1-64 characters of letters, digits and . _ -, starting with a letter or digit.')
  }
}

/** `60s`, `500ms`, `2m`, `1h`, or a bare number of seconds, to ms. */
export function parseDuration(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim())
  const ms = m ? Number(m[1]) * {ms: 1, s: 1000, m: 60_000, h: 3_600_000}[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'] : Number.NaN
  if (!Number.isFinite(ms) || ms < 1 || ms > 7 * 24 * 3_600_000) {
    throw new UsageError('INVALID_DURATION', `invalid duration ${JSON.stringify(text)}`, 'Give a number with a unit, e.g. 500ms, 60s, 5m (a bare number is seconds), from 1 ms to 7 days.')
  }
  return Math.round(ms)
}

/**
 * A command line to argv, as a POSIX shell splits words: blanks separate,
 * single quotes keep everything, double quotes and backslashes escape. No
 * expansion, no operators: a function is one program, not a pipeline.
 */
export function splitCommand(command: string): string[] {
  const words: string[] = []
  let word = ''
  let inWord = false
  let quote: '"' | "'" | undefined
  for (let i = 0; i < command.length; i++) {
    const c = command[i]!
    if (quote === "'") {
      if (c === "'") quote = undefined
      else word += c
    } else if (quote === '"') {
      if (c === '"') quote = undefined
      else if (c === '\\' && i + 1 < command.length && '"\\$`'.includes(command[i + 1]!)) word += command[++i]
      else word += c
    } else if (c === "'" || c === '"') {
      quote = c
      inWord = true
    } else if (c === '\\' && i + 1 < command.length) {
      word += command[++i]
      inWord = true
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word)
      word = ''
      inWord = false
    } else if ('|&;<>()$`'.includes(c)) {
      throw new UsageError('INVALID_FUNCTION', `--cmd: ${JSON.stringify(c)} is shell syntax; a function is one program with its arguments, run without a shell`,
        'Quote the character, or wrap the program in a script of its own.')
    } else {
      word += c
      inWord = true
    }
  }
  if (quote) throw new UsageError('INVALID_FUNCTION', `--cmd: unterminated ${quote} quote`, 'Close the quote.')
  if (inWord) words.push(word)
  if (words.length === 0) throw new UsageError('INVALID_FUNCTION', '--cmd is empty', 'Give the program to run, e.g. --cmd "python3 fn.py".')
  return words
}

/** --data: any JSON text. */
export function parseData(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch (error) {
    throw new UsageError('INVALID_FUNCTION_DATA', `--data is not JSON: ${(error as Error).message}`, 'Pass a JSON value, e.g. --data \'{"n": 3}\' (quote it for the shell).')
  }
}

import {Command} from '@oclif/core/command'
import * as Errors from '@oclif/core/errors'
import * as Flags from '@oclif/core/flags'

import {CxlforkError, ERROR_CODES, InterruptedError} from '../errors.js'
import type {Pool} from '../pool/index.js'
import {Progress, interactiveStderr} from './progress.js'

export const DEFAULT_POOL_PATH = '/dev/shm/cxlfork.pool'

/**
 * Base of every cxlfork command: the `--pool` flag, `--json`, progress on
 * stderr, and one mapping from typed errors to exit codes and JSON envelopes.
 */
export abstract class BaseCommand extends Command {
  static override enableJsonFlag = true

  static override baseFlags = {
    pool: Flags.string({
      summary: 'Pool file on a shared-memory file system.',
      description: `Defaults to $CXLFORK_POOL, else ${DEFAULT_POOL_PATH}.`,
      env: 'CXLFORK_POOL',
      default: DEFAULT_POOL_PATH,
      helpGroup: 'GLOBAL',
    }),
  }

  private progressInstance: Progress | undefined

  /** Spinner and human lines on stderr; silent under --json or without a TTY. */
  protected get progress(): Progress {
    this.progressInstance ??= new Progress(!this.jsonEnabled() && interactiveStderr())
    return this.progressInstance
  }

  /** Open the pool at `path` (the --pool flag). The pool module, and koffi with it, is loaded only here, when a command runs. */
  protected async openPool(path: string): Promise<Pool> {
    const {Pool} = await import('../pool/index.js')
    return Pool.open(path)
  }

  /**
   * What a command did, and notes beside its result, go to stderr: stdout stays for the data a
   * script pipes on (a clone's own output under --wait, a function's result, --json).
   */
  protected say(line: string): void {
    if (!this.jsonEnabled()) process.stderr.write(line + '\n')
  }

  /**
   * Run `work` (a restore --wait: build the clone, then wait for it) with SIGINT and SIGQUIT ignored, as
   * system(3) ignores them while its command runs: the clone is in this command's process group, the
   * terminal's foreground job, so Ctrl-C and Ctrl-\\ reach it, and this command stays to report how it ended.
   */
  protected ignoringTerminalSignals<T>(enabled: boolean, work: () => T): T {
    if (!enabled) return work()
    const ignore = (): void => {}
    process.on('SIGINT', ignore)
    process.on('SIGQUIT', ignore)
    try {
      return work()
    } finally {
      process.off('SIGINT', ignore)
      process.off('SIGQUIT', ignore)
    }
  }

  /** What a command was asked to show (a listing, an inspection, a check's findings) goes to stdout, so `cxlfork ls | grep` works. */
  protected show(line: string): void {
    if (!this.jsonEnabled()) process.stdout.write(line + '\n')
  }

  /**
   * --json output: plain JSON on stdout. oclif's default runs it through its
   * colorizer token by token, which costs milliseconds of start-up and
   * nothing a script can use.
   */
  override logJson(json: unknown): void {
    process.stdout.write(JSON.stringify(json, null, 2) + '\n')
  }

  protected override async catch(err: Error & {exitCode?: number}): Promise<unknown> {
    this.progressInstance?.fail()
    if (err instanceof CxlforkError) {
      const exit = err instanceof InterruptedError ? err.status : err.exitCode
      process.exitCode = exit
      if (this.jsonEnabled()) {
        this.logJson({error: err.toJSON()})
        return
      }
      throw new Errors.CLIError(err.message, {
        code: err.code,
        exit,
        ...(err.hint === undefined ? {} : {suggestions: [err.hint]}),
      })
    }
    if (err instanceof Errors.CLIError || (err as {oclif?: unknown}).oclif !== undefined) {
      // Parse and usage errors from oclif keep their own exit code (2).
      if (this.jsonEnabled()) {
        process.exitCode = (err as Errors.CLIError).oclif?.exit ?? ERROR_CODES.USAGE
        this.logJson({error: {code: 'USAGE', message: err.message, exitCode: process.exitCode}})
        return
      }
      throw err
    }
    // Anything else is a bug in cxlfork: say so without a stack unless DEBUG is set.
    process.exitCode = ERROR_CODES.INTERNAL
    const message = `internal error: ${err.message}`
    if (process.env.DEBUG) process.stderr.write(String(err.stack) + '\n')
    if (this.jsonEnabled()) {
      this.logJson({error: {code: 'INTERNAL', message, exitCode: ERROR_CODES.INTERNAL}})
      return
    }
    throw new Errors.CLIError(message, {code: 'INTERNAL', exit: ERROR_CODES.INTERNAL,
      suggestions: ['Re-run with DEBUG=1 for a stack trace and report it.']})
  }
}

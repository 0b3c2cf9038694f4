/**
 * Spinner for slow steps. ora and chalk are loaded lazily, only when stderr is
 * a TTY and --json is off, to keep start-up lean and scripted output clean.
 */
/**
 * Spinners and colour only on a terminal with a width: under a pty of zero
 * columns (script(1), some CI runners) ora's line clearing never ends.
 */
export function interactiveStderr(): boolean {
  return Boolean(process.stderr.isTTY) && (process.stderr.columns ?? 0) > 0
}

type Spinner = {start(text?: string): Spinner; succeed(text?: string): Spinner; fail(text?: string): Spinner; stop(): Spinner; text: string}

export class Progress {
  private spinner: Spinner | undefined

  constructor(private readonly enabled: boolean) {}

  async start(text: string): Promise<void> {
    if (!this.enabled) return
    const {default: ora} = await import('ora')
    this.spinner = ora({text, stream: process.stderr}).start() as unknown as Spinner
  }

  succeed(text?: string): void {
    this.spinner?.succeed(text)
    this.spinner = undefined
  }

  fail(text?: string): void {
    this.spinner?.fail(text)
    this.spinner = undefined
  }

  /** Colour a word for human output; plain text when not on a TTY. */
  async paint(kind: 'ok' | 'warn' | 'bad' | 'dim', text: string): Promise<string> {
    if (!this.enabled) return text
    const {default: chalk} = await import('chalk')
    return kind === 'ok' ? chalk.green(text) : kind === 'warn' ? chalk.yellow(text) : kind === 'bad' ? chalk.red(text) : chalk.dim(text)
  }
}

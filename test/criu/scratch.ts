/** Temporary directories of the codec tests: made on demand, copies of an image set, all removed at the end. */
import {copyFileSync, mkdtempSync, readdirSync, rmSync} from 'node:fs'
import {tmpdir} from 'node:os'
import {join} from 'node:path'

export class ScratchDirs {
  private readonly made: string[] = []

  constructor(private readonly prefix: string) {}

  make(): string {
    const dir = mkdtempSync(join(tmpdir(), this.prefix))
    this.made.push(dir)
    return dir
  }

  /** A copy of the image set in `dir`, to damage or reshape. */
  copyOf(dir: string): string {
    const copy = this.make()
    for (const name of readdirSync(dir)) copyFileSync(join(dir, name), join(copy, name))
    return copy
  }

  removeAll(): void {
    for (const dir of this.made.splice(0)) rmSync(dir, {recursive: true, force: true})
  }
}

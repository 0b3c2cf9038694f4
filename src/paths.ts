import {existsSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

/** The project root (the directory holding package.json), found from this file's location in src/ or dist/src/. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url))
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('cxlfork: cannot locate package.json above ' + fileURLToPath(import.meta.url))
    dir = parent
  }
  return dir
}

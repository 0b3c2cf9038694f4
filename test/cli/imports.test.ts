/**
 * Issue 9: imports point one way, from commands down to the system layer. The
 * rooms of src/ (its folders, and each top-level file on its own) form no
 * cycle: a cycle between two rooms means neither has one job.
 */
import assert from 'node:assert/strict'
import {readdirSync, readFileSync, statSync} from 'node:fs'
import {dirname, join, relative, resolve} from 'node:path'
import {fileURLToPath} from 'node:url'

// Compiled to dist/test/cli: the TypeScript sources are three levels up.
const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'src')

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name)
    if (statSync(path).isDirectory()) return name === 'generated' ? [] : sourceFiles(path)
    return path.endsWith('.ts') ? [path] : []
  })
}

/** The room of a source file: its top folder under src/, or the file itself at the top. */
function roomOf(path: string): string {
  const parts = relative(SRC, path).split('/')
  return parts.length > 1 ? `${parts[0]}/` : parts[0]!
}

/** Room -> room -> the imports that make that edge (type-only imports included: they couple the rooms too). */
function roomGraph(): Map<string, Map<string, string[]>> {
  const graph = new Map<string, Map<string, string[]>>()
  for (const file of sourceFiles(SRC)) {
    const text = readFileSync(file, 'utf8')
    for (const match of text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+'(\.{1,2}\/[^']+)'/gm)) {
      const target = resolve(dirname(file), match[1]!).replace(/\.js$/, '.ts')
      const [from, to] = [roomOf(file), roomOf(target)]
      if (from === to) continue
      const edges = graph.get(from) ?? new Map<string, string[]>()
      graph.set(from, edges)
      edges.set(to, [...(edges.get(to) ?? []), `${relative(SRC, file)} -> ${relative(SRC, target)}`])
    }
  }
  return graph
}

/** One cycle of rooms, as a path that returns to its start, or undefined. */
function findCycle(graph: Map<string, Map<string, string[]>>): string[] | undefined {
  const state = new Map<string, 'open' | 'done'>()
  const stack: string[] = []
  const visit = (room: string): string[] | undefined => {
    state.set(room, 'open')
    stack.push(room)
    for (const next of graph.get(room)?.keys() ?? []) {
      if (state.get(next) === 'open') return [...stack.slice(stack.indexOf(next)), next]
      if (state.get(next) === undefined) {
        const found = visit(next)
        if (found) return found
      }
    }
    stack.pop()
    state.set(room, 'done')
    return undefined
  }
  for (const room of graph.keys()) {
    if (state.get(room) !== undefined) continue
    const found = visit(room)
    if (found) return found
  }
  return undefined
}

describe('src/: the rooms import one way (issue 9)', () => {
  it('finds the rooms and their imports (commands/ reaches the system layer, sys/)', () => {
    const graph = roomGraph()
    assert.ok(graph.get('commands/')?.size, 'commands/ imports other rooms')
    const reaches = (from: string, to: string, seen = new Set<string>()): boolean => {
      if (from === to) return true
      seen.add(from)
      return [...(graph.get(from)?.keys() ?? [])].some((next) => !seen.has(next) && reaches(next, to, seen))
    }
    assert.ok(reaches('commands/', 'sys/'), 'commands/ reaches sys/')
    assert.equal(graph.get('sys/')?.has('commands/') ?? false, false)
  })

  it('no cycle between rooms', () => {
    const graph = roomGraph()
    const cycle = findCycle(graph)
    const edges = cycle?.slice(1).map((room, i) => `${cycle[i]} -> ${room}: ${graph.get(cycle[i]!)!.get(room)!.slice(0, 3).join(', ')}`)
    assert.equal(cycle, undefined, `a cycle ${cycle?.join(' -> ')}\n${edges?.join('\n')}`)
  })
})

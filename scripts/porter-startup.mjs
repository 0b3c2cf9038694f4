#!/usr/bin/env node
// The whole `cxlfork restore` command through a porter, beside the same command with
// --no-porter and `node -e 0`, interleaved, medians (README, "Porter"; BENCHMARKS.md).
// Usage (as root, after `npm run build`): node scripts/porter-startup.mjs [RUNS]
// Makes its own pool, target (`sleep`), checkpoint and porter, and removes them.
import {spawn, spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {loadavg} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const cli = join(root, 'bin', 'run.js')
const runs = Number(process.argv[2] ?? 21)
const pool = `/dev/shm/cxlfork-porter-startup-${process.pid}.pool`
const dir = mkdtempSync('/tmp/cxlfork-porter-startup-')
const socket = join(dir, 'p.sock')
const env = {...process.env, CXLFORK_PORTER_SOCKET: socket}
const run = (args) => spawnSync(process.execPath, [cli, ...args], {encoding: 'utf8', env})
const target = spawn('sleep', ['3600'], {stdio: 'ignore'})
const clones = []
try {
  const ck = run(['checkpoint', String(target.pid), '--name', 'startup', '--pool', pool, '--json'])
  if (ck.status !== 0) throw new Error(ck.stdout + ck.stderr)
  const started = run(['porter', 'start', '--pool', pool, '--socket', socket, '--ghosts', '4', '--json'])
  if (started.status !== 0) throw new Error(started.stdout + started.stderr)
  const cases = {
    'node -e 0': ['-e', '0'],
    'restore (porter)': [cli, 'restore', 'startup', '--pool', pool, '--json'],
    'restore (--no-porter)': [cli, 'restore', 'startup', '--pool', pool, '--json', '--no-porter'],
  }
  const times = Object.fromEntries(Object.keys(cases).map((k) => [k, []]))
  const engine = []
  for (let i = 0; i < runs; i++) {
    for (const [name, args] of Object.entries(cases)) {
      const t0 = performance.now()
      const r = spawnSync(process.execPath, args, {encoding: 'utf8', env})
      times[name].push(performance.now() - t0)
      if (name === 'node -e 0') continue
      const json = JSON.parse(r.stdout)
      if (!json.pid || json.servedBy !== (name === 'restore (porter)' ? 'porter' : 'cli')) throw new Error(r.stdout + r.stderr)
      clones.push(json.pid)
      if (json.servedBy === 'porter') engine.push(json.stats.restore_time / 1000)
      process.kill(json.pid, 'SIGKILL')
    }
  }
  const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]
  console.log(`${new Date().toISOString()}, ${runs} interleaved runs, load ${loadavg().map((x) => x.toFixed(1)).join(' ')}`)
  for (const [name, v] of Object.entries(times)) console.log(`${name.padEnd(24)} median ${median(v).toFixed(1)} ms (min ${Math.min(...v).toFixed(1)}, max ${Math.max(...v).toFixed(1)})`)
  console.log(`engine restore inside the porter: median ${median(engine).toFixed(1)} ms`)
} finally {
  run(['porter', 'stop', '--socket', socket, '--pool', pool])
  for (const pid of clones) try { process.kill(pid, 'SIGKILL') } catch { /* gone */ }
  target.kill('SIGKILL')
  rmSync(pool, {force: true})
  rmSync(dir, {recursive: true, force: true})
}

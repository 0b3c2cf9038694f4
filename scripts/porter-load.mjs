#!/usr/bin/env node
// Restores through a porter, measured from the request on its socket to the reply that
// says the clone runs (README, "Porter"; BENCHMARKS.md). Two parts per size:
//  - latency: RUNS sequential `mow` restores, each clone checked (its memory pattern on
//    a sample of pages) and killed before the next request; p50/p99/max;
//  - throughput: CLIENTS concurrent clients restoring for SECONDS, each clone killed as
//    soon as its reply is in; restores per second (the porter serves one at a time).
// Usage (as root, after `npm run build`):
//   node scripts/porter-load.mjs [--sizes 64M,1G] [--runs 200] [--clients 4] [--seconds 10] [--ghosts 4]
// Makes its own pool, targets (bench's generated ELF), checkpoints and porter; removes them.
import {spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync} from 'node:fs'
import {loadavg} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const {TargetFiles, spawnTarget, stopProcess, verifyPattern} = await import(join(root, 'dist', 'src', 'bench', 'target.js'))
const {porterRequest} = await import(join(root, 'dist', 'src', 'porter', 'client.js'))
const {readMaps} = await import(join(root, 'dist', 'src', 'sys', 'proc.js'))

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : fallback
}
const sizes = opt('--sizes', '64M,1G').split(',')
const runs = Number(opt('--runs', 200))
const clients = Number(opt('--clients', 4))
const seconds = Number(opt('--seconds', 10))
const ghosts = Number(opt('--ghosts', 4))
const bytesOf = (size) => Number(size.slice(0, -1)) * {K: 1024, M: 1024 ** 2, G: 1024 ** 3}[size.at(-1)]

const cli = join(root, 'bin', 'run.js')
const pool = `/dev/shm/cxlfork-porter-load-${process.pid}.pool`
const dir = mkdtempSync('/tmp/cxlfork-porter-load-')
const socket = join(dir, 'p.sock')
const env = {...process.env, CXLFORK_PORTER_SOCKET: socket}
const run = (argv) => {
  const r = spawnSync(process.execPath, [cli, ...argv], {encoding: 'utf8', env})
  if (r.status !== 0) throw new Error(`cxlfork ${argv.join(' ')}: ${r.stdout}${r.stderr}`)
  return r.stdout ? JSON.parse(r.stdout) : undefined
}
const quantile = (values, q) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]
}
const kill = (pid) => {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {
    // gone
  }
}

const files = new TargetFiles(false)
const targets = []
const report = {date: new Date().toISOString(), load: loadavg(), runs, clients, seconds, ghosts, sizes: []}
try {
  run(['pool', 'init', '--size', `${Math.ceil(sizes.reduce((sum, size) => sum + bytesOf(size), 0) / 1024 ** 3) + 1}G`, '--pool', pool, '--json'])
  for (const size of sizes) {
    const target = spawnTarget(files.executable(bytesOf(size)))
    targets.push(target.pid)
    run(['checkpoint', String(target.pid), '--name', `load-${size}`, '--pool', pool, '--json'])
  }
  run(['porter', 'start', '--pool', pool, '--socket', socket, '--ghosts', String(ghosts), '--json'])
  for (const size of sizes) {
    const name = `load-${size}`
    const latency = []
    const engine = []
    const phases = {forking_time: [], open_time: [], memory_time: [], state_time: []}
    let ghosted = 0
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now()
      const reply = await porterRequest(socket, 'POST', '/v1/restore', {name})
      latency.push(performance.now() - t0)
      if (reply.status !== 200) throw new Error(JSON.stringify(reply.body))
      engine.push(reply.body.stats.restore_time / 1000)
      for (const [phase, values] of Object.entries(phases)) values.push(reply.body.stats[phase] / 1000)
      if (reply.body.ghost === true) ghosted++
      // Every 20th clone: sampled pages of its memory hold the target's pattern.
      if (i % 20 === 0) {
        const region = readMaps(reply.body.pid).find((vma) => vma.size === bytesOf(size))
        if (!region || verifyPattern(reply.body.pid, region.start, bytesOf(size)) !== -1) throw new Error(`clone ${reply.body.pid} of ${name}: wrong memory`)
      }
      kill(reply.body.pid)
      // Let the porter refill its ghosts, as requests spaced in time would.
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
    let done = 0
    let failed = 0
    const until = performance.now() + seconds * 1000
    const t0 = performance.now()
    await Promise.all(Array.from({length: clients}, async () => {
      while (performance.now() < until) {
        const reply = await porterRequest(socket, 'POST', '/v1/restore', {name})
        if (reply.status === 200) {
          done++
          kill(reply.body.pid)
        } else failed++
      }
    }))
    const elapsed = (performance.now() - t0) / 1000
    const row = {
      size, runs, ghosted,
      latencyMs: {p50: quantile(latency, 0.5), p99: quantile(latency, 0.99), max: Math.max(...latency)},
      engineMs: {p50: quantile(engine, 0.5), p99: quantile(engine, 0.99)},
      // Where the engine's time goes (medians): stub, reading the checkpoint, memory, the rest of the state.
      phasesP50Ms: Object.fromEntries(Object.entries(phases).map(([phase, values]) => [phase, quantile(values, 0.5)])),
      throughput: {clients, seconds: elapsed, restores: done, failed, perSecond: done / elapsed},
    }
    report.sizes.push(row)
    console.log(`${size}: request->reply p50 ${row.latencyMs.p50.toFixed(2)} ms, p99 ${row.latencyMs.p99.toFixed(2)} ms, max ${row.latencyMs.max.toFixed(2)} ms (engine p50 ${row.engineMs.p50.toFixed(2)} ms, ${ghosted}/${runs} into ghosts); ${clients} clients: ${row.throughput.perSecond.toFixed(1)} restores/s (${done} in ${elapsed.toFixed(1)} s, ${failed} failed)`)
  }
  report.loadAfter = loadavg()
  console.log(JSON.stringify(report))
} finally {
  try {
    run(['porter', 'stop', '--socket', socket, '--pool', pool])
  } catch {
    // not started
  }
  for (const pid of targets) stopProcess(pid)
  files.remove()
  rmSync(pool, {force: true})
  rmSync(dir, {recursive: true, force: true})
}

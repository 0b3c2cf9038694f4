#!/usr/bin/env node
// Restores through a porter with and without ghosts (README, "Porter", "Ghosts"; BENCHMARKS.md).
// Two porters on one pool, asked in turn so that host drift weighs on each alike:
//   ghosts     --ghosts 1 --ghost-kinds plain,pidns,netns (cgroups on)
//   no-ghosts  --ghosts 0 (each stub spawned per restore; with limits, then moved into a cgroup)
// Cases: a threaded restore (fixtures/threads.c, 3 threads: a new PID namespace), a
// `--netns new` restore of memtouch (16 MiB), the threaded one with a memory limit (its
// clone in a cgroup of its own), and a function scale-out (floatmath 4 MiB,
// keep-alive 1 s: each invocation after scale-in is a restore). Per restore the porter's
// reply gives stats.forking_time (spawn + seize, or taking a ghost) and restore_time (the
// engine); for functions the invocation's startupMs and latencyMs. Medians and p90 of RUNS.
// Before each request the script waits until the porter's ghosts are refilled (untimed).
// Usage (as root, after `npm run build`): node scripts/porter-ghosts.mjs [--runs 41] [--fn-runs 15]
import {spawn, spawnSync} from 'node:child_process'
import {mkdtempSync, readFileSync, rmSync} from 'node:fs'
import {cpus, loadavg} from 'node:os'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const {porterRequest} = await import(join(root, 'dist', 'src', 'porter', 'client.js'))
const {compileFixtures} = await import(join(root, 'dist', 'test', 'helpers', 'fixtures.js'))

const args = process.argv.slice(2)
const opt = (name, fallback) => {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : fallback
}
const runs = opt('--runs', 41)
const fnRuns = opt('--fn-runs', 15)
const cli = join(root, 'bin', 'run.js')
const pool = `/dev/shm/cxlfork-porter-ghosts-${process.pid}.pool`
const dir = mkdtempSync('/tmp/cxlfork-porter-ghosts-')
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const run = (argv) => {
  const r = spawnSync(process.execPath, [cli, ...argv], {encoding: 'utf8'})
  if (r.status !== 0) throw new Error(`cxlfork ${argv.join(' ')}: ${r.stderr}`)
  return JSON.parse(r.stdout)
}
const kill = (pid) => {
  try {
    process.kill(pid, 'SIGKILL')
  } catch {}
}

async function startTarget(name, extra) {
  const bin = join(await compileFixtures(), name)
  const log = join(dir, `${name}.log`)
  const child = spawn(bin, [log, ...extra], {cwd: dir, stdio: 'ignore'})
  for (let i = 0; i < 500; i++) {
    try {
      if (/^READY/m.test(readFileSync(log, 'utf8'))) return child
    } catch {}
    await sleep(20)
  }
  throw new Error(`${name} not ready`)
}

const configs = [
  {name: 'ghosts', flags: ['--ghosts', '1', '--ghost-kinds', 'plain,pidns,netns']},
  {name: 'no-ghosts', flags: ['--ghosts', '0']},
]
const porters = []
const targets = []
try {
  run(['pool', 'init', '--size', '512M', '--pool', pool, '--json'])
  targets.push(await startTarget('threads', ['--threads', '2']), await startTarget('memtouch', ['--mib', '16']))
  run(['checkpoint', String(targets[0].pid), '--name', 'thr', '--pool', pool, '--json'])
  run(['checkpoint', String(targets[1].pid), '--name', 'web', '--pool', pool, '--json'])
  for (const config of configs) {
    const socket = join(dir, `${config.name}.sock`)
    const child = spawn(process.execPath, [cli, 'porter', 'start', '--foreground', '--pool', pool, '--socket', socket, ...config.flags], {stdio: 'ignore'})
    porters.push({...config, socket, child})
  }
  for (const porter of porters) {
    for (let i = 0; ; i++) {
      try {
        if ((await porterRequest(porter.socket, 'GET', '/v1/status')).status === 200) break
      } catch {}
      if (i > 600) throw new Error(`porter ${porter.name} did not start`)
      await sleep(50)
    }
  }
  const refilled = async (porter) => {
    for (let i = 0; i < 400; i++) {
      const s = (await porterRequest(porter.socket, 'GET', '/v1/status')).body.ghosts
      if (s.target === 0 || s.kinds.every((kind) => (s.readyByKind[kind] ?? 0) >= s.target)) return
      await sleep(10)
    }
  }
  const results = {}
  const add = (key, value) => (results[key] ??= []).push(value)
  const cases = [
    {name: 'threaded (pidns new)', body: {name: 'thr'}},
    {name: 'netns new', body: {name: 'web', netns: 'new'}},
    {name: 'threaded, --memory-max', body: {name: 'thr', memoryMax: 256 << 20}},
  ]
  for (let r = 0; r < runs; r++) {
    for (const c of cases) {
      for (const porter of r % 2 ? [...porters].reverse() : porters) {
        await refilled(porter)
        const reply = await porterRequest(porter.socket, 'POST', '/v1/restore', c.body)
        if (reply.status !== 200) throw new Error(JSON.stringify(reply.body))
        kill(reply.body.pid)
        if (reply.body.pidNamespace) kill(reply.body.pidNamespace.initPid)
        if (porter.name === 'ghosts' && reply.body.ghost !== true) throw new Error(`no ghost: ${reply.body.ghost}`)
        add(`${c.name}|${porter.name}|forking_time`, reply.body.stats.forking_time / 1000)
        add(`${c.name}|${porter.name}|restore_time`, reply.body.stats.restore_time / 1000)
      }
    }
  }
  // Functions: after scale-in (keep-alive 1 s) every invocation restores a clone.
  for (const porter of porters) {
    const deploy = spawnSync(process.execPath, [cli, 'fn', 'deploy', `f${porter.name.replace('-', '')}`, '--cmd', `python3 ${join(root, 'fixtures/faas/floatmath.py')} ${join(dir, `${porter.name}.float.log`)} --mib 4 --stdio 1`,
      '--checkpoint-after', '1', '--keep-alive', '1s', '--pool', pool, '--socket', porter.socket, '--json'], {encoding: 'utf8'})
    if (deploy.status !== 0) throw new Error(deploy.stderr)
    await porterRequest(porter.socket, 'POST', `/v1/functions/f${porter.name.replace('-', '')}/invoke`, {data: {}})
  }
  for (let r = 0; r < fnRuns; r++) {
    for (const porter of r % 2 ? [...porters].reverse() : porters) {
      const fn = `f${porter.name.replace('-', '')}`
      for (let i = 0; i < 500; i++) {
        if ((await porterRequest(porter.socket, 'GET', `/v1/functions/${fn}`)).body.instances.length === 0) break
        await sleep(20)
      }
      await refilled(porter)
      const reply = await porterRequest(porter.socket, 'POST', `/v1/functions/${fn}/invoke`, {data: {r}})
      if (reply.status !== 200 || reply.body.start !== 'restored') throw new Error(JSON.stringify(reply.body).slice(0, 300))
      add(`function scale-out|${porter.name}|startupMs`, reply.body.startupMs)
      add(`function scale-out|${porter.name}|latencyMs`, reply.body.latencyMs)
    }
  }
  const pct = (values, p) => {
    const sorted = [...values].sort((a, b) => a - b)
    return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]
  }
  const rows = Object.entries(results).map(([key, values]) => {
    const [what, config, metric] = key.split('|')
    return {what, config, metric, n: values.length, p50: +pct(values, 0.5).toFixed(2), p90: +pct(values, 0.9).toFixed(2), min: +Math.min(...values).toFixed(2)}
  })
  console.log(JSON.stringify({date: new Date().toISOString(), cpus: cpus().length, cpu: cpus()[0]?.model, loadavg: loadavg(), runs, fnRuns}))
  for (const row of rows) console.log(`${row.what.padEnd(22)} ${row.config.padEnd(10)} ${row.metric.padEnd(13)} n=${row.n} p50 ${row.p50} ms  p90 ${row.p90} ms  min ${row.min} ms`)
} finally {
  for (const porter of porters) porter.child.kill('SIGTERM')
  for (const target of targets) target.kill('SIGKILL')
  await sleep(1500)
  spawnSync(process.execPath, [cli, 'pool', 'gc', '--pool', pool])
  rmSync(pool, {force: true})
  rmSync(dir, {recursive: true, force: true})
}

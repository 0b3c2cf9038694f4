/** BENCHMARKS.md from a BenchResult: what is measured and how, the machine, tables, targets, notes. */
import type {BenchResult, RestoreRow, SizeResult, Summary, ThreadsResult, TreesResult} from './types.js'
import {plainAnchorMs} from './verdicts.js'
import {faasSection} from './faas-report.js'
import {cell, fmt, table} from './md-format.js'




const mib = (bytes: number): string => `${(bytes / 1048576).toFixed(1)} MiB`

function restoreRows(size: SizeResult): RestoreRow[] {
  return size.paths.flatMap((path) => path.restores)
}

function threadsMethod(threads: ThreadsResult, runs: number): string {
  return `- **Threads**: at ${threads.label}, for each thread count one target with that many threads (the same program; after touching its memory and before reporting ready it starts THREADS-1 threads with a raw \`clone(CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM)\`, each on a 64 KiB stack of its own and idle in \`pause()\`), checkpointed ${runs} times into the provisioned pool while it runs. **Downtime** is \`frozen_time\`: from seizing the first thread until every thread runs again. Each checkpoint is restored once in process (**engine restore**, ${threads.policy}); a multi-threaded clone is built in a PID namespace of its own (a pid-1 init plus the clone, every thread with its original id), a single-threaded one as in the size rows. Each clone's memory is checked as above and its threads counted in \`/proc/CLONE/task\`, then it is killed and its namespace's init reaped. The whole command is not timed here: what it adds to the engine does not depend on the thread count.`
}

function threadsSection(threads: ThreadsResult, runs: number): string[] {
  const out: string[] = ['## Threads', '']
  out.push(`Checkpoint and engine restore (${threads.policy}) of one ${threads.label} target per thread count, ${runs} repetitions each, in the provisioned pool. Engine statistics in ms.`, '')
  out.push(table(['Threads', 'Checkpointed', 'Checkpoint downtime', 'Checkpoint', 'Engine restore', 'freezing_time', 'restore forking_time', 'restore state_time', 'Clones checked'],
    threads.rows.map((row) => [
      String(row.threads), mib(row.bytes), cell(row.downtimeMs), cell(row.checkpointMs), cell(row.engineMs), cell(row.checkpointStats['freezing_time'], 1e-3),
      cell(row.restoreStats['forking_time'], 1e-3), cell(row.restoreStats['state_time'], 1e-3), `${row.clonesVerified} of ${row.checkpointMs.n}`,
    ])), '')
  for (const ratio of threads.ratios) out.push(`${ratio.description}: **${fmt(ratio.value)}${ratio.unit === 'x' ? 'x' : ` ${ratio.unit}`}** (informational, no limit).`, '')
  return out
}

function treesMethod(trees: TreesResult, runs: number): string {
  return `- **Trees**: at ${trees.label}, for each process count one target tree (the same program; after touching its memory and before reporting ready it forks PROCESSES-1 children, each with \`PR_SET_PDEATHSIG\` SIGKILL and idle in \`pause()\`; they never write, so each child's pages are the parent's, copy-on-write), checkpointed with all its descendants (\`checkpoint --tree\`) ${runs} times into the provisioned pool while it runs. A checkpoint stores every member's present anonymous pages, so it holds about PROCESSES x ${trees.label} (the **Checkpointed** column). **Root downtime** is the root's \`frozen_time\`; **descendants stopped** is how long the children were stopped (from before the root's snapshot until their pages were copied; none with one process). Each checkpoint is restored once in process (**engine restore**, ${trees.policy}): a tree of more than one process into a PID namespace of its own (a pid-1 init plus the members, each with its original pid), a one-process tree, as any single process, in ours (the **PID namespace** column), so the ratio of the two includes the namespace's cost. The clone tree is checked (the members built, the root's children in \`/proc\`, every member's memory as above), then its root is killed, which ends the namespace, its init reaped and the children waited for.`
}

function treesSection(trees: TreesResult, runs: number): string[] {
  const out: string[] = ['## Trees', '']
  out.push(`Tree checkpoint and engine restore (${trees.policy}) of one target tree per process count, the root touching ${trees.label}, ${runs} repetitions each, in the provisioned pool. Engine statistics in ms.`, '')
  out.push(table(['Processes', 'Checkpointed', 'Root downtime', 'Descendants stopped', 'Checkpoint', 'Engine restore', 'PID namespace', 'restore forking_time', 'restore memory_time', 'restore state_time', 'Clone trees checked'],
    trees.rows.map((row) => [
      String(row.processes), mib(row.bytes), cell(row.downtimeMs), cell(row.treeDowntimeMs), cell(row.checkpointMs), cell(row.engineMs), row.pidNamespace ? 'own' : 'ours',
      cell(row.restoreStats['forking_time'], 1e-3), cell(row.restoreStats['memory_time'], 1e-3), cell(row.restoreStats['state_time'], 1e-3),
      `${row.clonesVerified} of ${row.checkpointMs.n}`,
    ])), '')
  for (const ratio of trees.ratios) out.push(`${ratio.description}: **${fmt(ratio.value)}${ratio.unit === 'x' ? 'x' : ` ${ratio.unit}`}** (informational, no limit).`, '')
  return out
}

function realCriuMethod(result: BenchResult): string {
  const real = result.realCriu
  if ('missing' in real) {
    return `- **Real CRIU**: not measured in this run: ${real.missing}. Give \`--criu-bin PATH\` (CRIU 4.x or later; the README says how to build it on Debian) or put such a \`criu\` on PATH to get the \`real-criu\` rows.`
  }
  return `- **Real CRIU** (\`real-criu\` rows): CRIU ${real.version} (\`${real.bin}\`, \`criu check\` passed). For each size a second target, the same program, is spawned beside the first; each repetition dumps it with \`criu dump -t PID -D DIR --shell-job -o dump.log\` into a directory beside the pool (the **checkpoint** column is that whole command, wall clock, started like the whole restore commands; CRIU kills the dumped process, as \`criu dump\` does by default), reaps it, and restores it with \`criu restore -D DIR -d --shell-job -o restore.log\` (the **whole command** column). CRIU restores a process under its original pid, so it cannot run beside the process it was dumped from: the restored process is that target again, checked like every clone, and the next repetition dumps it. **Downtime** is CRIU's own \`frozen_time\` (stats-dump), **engine restore** its own \`restore_time\` (stats-restore; CRIU has no warm in-process restore, so both restore columns show it), **checkpointed** the bytes of every image file. One untimed dump and restore of the warm-up target comes first.`
}

function realCriuSection(result: BenchResult): string[] {
  if ('missing' in result.realCriu) return ['## Against real CRIU', '', `No real CRIU was measured in this run (${result.realCriu.missing}), so there is no real-CRIU row and no ratio against it.`, '']
  const out: string[] = ['## Against real CRIU', '']
  out.push(`Medians of the same run; CRIU ${result.realCriu.version}. Ratios > 1: cxlfork's figure is larger (slower). cxlfork's checkpoints are timed in process (engine), real CRIU's as whole commands (a native binary: no runtime start-up to leave out).`, '')
  const ratio = (a: Summary | undefined, b: Summary | undefined): string => (a && b && a.n > 0 && b.n > 0 ? `${fmt(a.median / b.median)}x` : '–')
  out.push(table(['Size', 'real `criu dump`', 'real frozen_time', '`criu` path checkpoint (in process)', '/ real dump', 'pool checkpoint (in process)', '/ real dump', 'pool downtime / real frozen_time',
    'real `criu restore`', 'real restore_time', '`cxlfork criu restore` (whole)', '/ real restore', '`cxlfork restore` mow (whole)', '/ real restore', 'mow engine / real restore_time'],
  result.sizes.flatMap((size) => {
    const real = size.paths.find((path) => path.path === 'real-criu')
    if (!real) return []
    const realRestore = real.restores[0]
    const criu = size.paths.find((path) => path.path === 'criu')
    const pool = size.paths.find((path) => path.path === 'pool')
    const copy = criu?.restores.find((row) => row.policy === 'copy')
    const mow = pool?.restores.find((row) => row.policy === 'mow')
    return [[
      size.label, cell(real.checkpointMs), cell(real.downtimeMs), cell(criu?.checkpointMs), ratio(criu?.checkpointMs, real.checkpointMs), cell(pool?.checkpointMs),
      ratio(pool?.checkpointMs, real.checkpointMs), ratio(pool?.downtimeMs, real.downtimeMs), cell(realRestore?.commandMs), cell(realRestore?.engineMs), cell(copy?.commandMs),
      ratio(copy?.commandMs, realRestore?.commandMs), cell(mow?.commandMs), ratio(mow?.commandMs, realRestore?.commandMs), ratio(mow?.engineMs, realRestore?.engineMs),
    ]]
  })), '')
  out.push('The CRIU-format path against real CRIU on the same work (the parity targets below): engine times in process against real CRIU\'s own, and whole commands against real CRIU\'s plus Node\'s start-up (`node -e 0`: ' + cell(result.nodeStartupMs) + ' ms).', '')
  out.push(table(['Size', 'real `criu dump`', '`criu` path dump (engine)', '/ real', '`cxlfork criu dump` (whole, CLI alone)', '(whole, through a porter)', 'real dump + node -e 0',
    'real restore_time', '`criu` path restore (engine)', '/ real', '`cxlfork criu restore` (whole, CLI alone)', '(whole, through a porter)', 'real restore + node -e 0'],
  result.sizes.flatMap((size) => {
    const real = size.paths.find((path) => path.path === 'real-criu')
    const criu = size.paths.find((path) => path.path === 'criu')
    if (!real || !criu) return []
    const realRestore = real.restores[0]
    const copy = criu.restores.find((row) => row.policy === 'copy')
    const plus = (a: Summary | undefined): string => (a && a.n > 0 ? fmt(a.median + result.nodeStartupMs.median) : '–')
    return [[
      size.label, cell(real.checkpointMs), cell(criu.checkpointMs), ratio(criu.checkpointMs, real.checkpointMs), cell(criu.checkpointCommandMs), cell(criu.checkpointCommandPorterMs), plus(real.checkpointMs),
      cell(realRestore?.engineMs), cell(copy?.engineMs), ratio(copy?.engineMs, realRestore?.engineMs), cell(copy?.commandMs), cell(copy?.commandPorterMs), plus(realRestore?.commandMs),
    ]]
  })), '')
  return out
}

export function renderMarkdown(result: BenchResult, extraNotes: readonly string[] = []): string {
  const m = result.machine
  const runs = result.config.runs
  const out: string[] = []
  out.push('# cxlfork benchmarks', '')
  out.push(`Generated by \`cxlfork bench\` on ${result.date.slice(0, 10)}. Every figure is a **median (min–max) of ${runs} repetitions**, all taken in the same run, so every ratio below compares numbers measured side by side. Times in ms unless stated.`, '')
  out.push('## What is measured, and how', '')
  out.push(
    `- **Target**: ${result.config.target}. It is a real process of ~16 kB besides SIZE, single-threaded and alone in every section but the threads and trees ones, no libc (so RssAnon and page counts are exactly the touched memory). One target per size is checkpointed ${runs} times while it keeps running.`,
    '- **Checkpoint** (`checkpointToPool`, in process): the whole checkpoint into a temporary pool file on /dev/shm; **downtime** is the time the target is stopped (`frozen_time`: seize, registers, signal state, fork snapshot), after which the snapshot\'s pages are copied into the pool while the target runs on. Two pools: the `pool` path writes into a **provisioned** pool (`pool init --provision`: all its memory allocated when it was made, as a CXL device\'s memory is there from the start; a removed checkpoint\'s memory stays for the next), the `pool-sparse` path, checkpoints only, into a **sparse** one (tmpfs allocates each page as it is first written, and gets it back when the checkpoint is removed). In each repetition the sparse checkpoint comes after the provisioned one and its restores.',
    '- **Plain write** (anchor): the same bytes written into a new file on the pool\'s file system with no fsync, timed open-to-close: `write(2)` of SIZE distinct bytes held in memory (a SIZE-byte buffer filled before timing, written 1 MiB per call). Like the checkpoint, it reads bytes that do not fit in any cache. Also shown, not used as the anchor: the same `write(2)` loop into a file whose pages were allocated first (`fallocate`, not timed), which is what a checkpoint into a provisioned pool does without the snapshot; a `write(2)` loop rewriting one cache-hot 1 MiB buffer (faster, but not the same bytes), and `ftruncate` + `mmap(MAP_SHARED)` + 1 MiB copies. In every repetition the anchor is measured right before the checkpoints, and the two other writes after them (run in between, they slowed the next checkpoint by 5–7 ms at 64 MiB).',
    '- **Engine restore** (`restoreFromPool`, in process, `stats.restore_time`): from opening the checkpoint to a detached, running clone; **whole command**: wall clock of `node bin/run.js restore NAME --policy P --json --pool POOL` from spawn to exit (the clone is detached and running by then), compared with **Node start-up** (`node -e 0`, wall clock, same spawn method). Both are started with `posix_spawn` (vfork semantics) and waited for with `wait4`, so the bench process\'s own size (it holds a SIZE-byte buffer for the plain-write anchor) does not add a page-table copy to each spawn, as `child_process` (fork) would: 28 ms at 1 GiB, measured.',
    '- **RssAnon**: `/proc/CLONE/status` right after the engine restore, against the checkpointed bytes. Each clone\'s memory is then checked (first, middle and last page hold the target\'s pattern), and the clone is killed.',
    '- **Local fork()**: `fork()` of the same target, parent side: `clone(CLONE_PARENT|SIGCHLD)` injected with ptrace (target seized with no options, so no EXITKILL), minus the median of 5 injected no-op `getpid()`s; what remains is the kernel\'s fork plus one `PTRACE_EVENT_FORK` stop (tens of µs). The child is killed, the target detached.',
    '- **Warm-up**: before any timing, one untimed checkpoint, restore per policy, fork and plain write of a 4 MiB target, so JIT and FFI binding costs of the first call do not land in the smallest size.',
    '- **Cold start**: spawning a fresh target of the same size until it reports (one byte on a pipe) that it has touched all its memory.',
    '- **CRIU-format path** (`criu` rows): `criuDump` in process into an image set beside the pool (the snapshot splices the pages into pages-1.img itself while the other images are encoded) and `criuRestore` in process (pages copied into the new process from two sides at once: `process_vm_writev` of half from here, `pread64` of the other half from pages-1.img by the new process itself on the other CPU); the **whole command** columns are `node bin/run.js criu restore --images DIR --json --no-porter` and, once per repetition after the restores, `node bin/run.js criu dump PID --images DIR --json --no-porter` (the target keeps running; its images are deleted right after). The **through a porter** columns are the same commands without `--no-porter`, served by a porter the bench starts for its pool (`porter start --foreground --ghosts 0`; its engine warmed up like the bench\'s own), each checked to say `servedBy: "porter"` and each clone checked like the others.',
    realCriuMethod(result),
    result.config.primeFreePages
      ? '- **Primed free pages** (`--prime`, the default): before each timed step that takes new memory (every checkpoint, restore, whole command, real CRIU\'s dump and restore, plain write and cold start) the bench touches SIZE bytes of fresh anonymous memory (`MAP_POPULATE`) and frees them, so that every path starts from pages the host backs. On a VM with free page reporting, memory idle for ~2 s is handed back to the host, and touching it again is ~4x slower (1 GiB: 2.25 s against 0.55 s on this VM); without priming, whichever step came right after a kill (real CRIU\'s restore follows its own dump\'s kill) won by the host\'s state.'
      : '- **Free pages not primed** (`--no-prime`): each step takes memory as the host leaves it (see `--prime`).',
    ...(result.threads ? [threadsMethod(result.threads, runs)] : []),
    ...(result.trees ? [treesMethod(result.trees, runs)] : []),
    '',
  )
  out.push('## Run', '')
  out.push('```', result.command, '```', '')
  out.push(table(['', ''], [
    ['Date', result.date],
    ['CPU', `${m.cpu}, ${m.cores} cores`],
    ['RAM', `${(m.ramBytes / 2 ** 30).toFixed(1)} GiB`],
    ['Kernel', m.kernel],
    ['Node', m.node],
    ['Transparent huge pages', `${m.thp} (target: ${result.config.hugePages ? 'MADV_HUGEPAGE' : 'MADV_NOHUGEPAGE, 4 KiB pages'})`],
    ['Load average (1 min), start / end', `${m.loadAverage[0]} / ${m.loadAverage[1]} (${m.cores} cores; other work on the machine during the run shows here)`],
    ['CPU steal during the run', `${(m.stealMs / 1000).toFixed(2)} s of ${(result.durationS * m.cores).toFixed(1)} s of CPU (${((100 * m.stealMs) / (result.durationS * 1000 * m.cores)).toFixed(1)} %; time the hypervisor ran other guests, which load average does not show)`],
    ['Pool', `${result.config.poolTemporary ? 'temporary ' : ''}${result.config.pool}`],
    ['Real CRIU', 'missing' in result.realCriu ? `none measured: ${result.realCriu.missing}` : `CRIU ${result.realCriu.version} (${result.realCriu.bin})`],
    ['Duration', `${result.durationS} s`],
  ]), '')

  out.push('## Checkpoint', '')
  out.push(table(['Size', 'Path', 'Checkpointed (pool: memory; criu: image bytes)', 'Checkpoint', 'Downtime', 'Plain write: same bytes from memory into a new file (anchor)', 'Plain write: same bytes into allocated pages', 'Plain write: 1 MiB hot buffer loop', 'Plain write: mmap+copy', 'Checkpoint / anchor', 'Checkpoint / write into allocated pages'],
    result.sizes.flatMap((size) => size.paths.map((path) => [
      size.label, path.poolKind === undefined ? path.path : `${path.path} (${path.poolKind})`, mib(path.bytes), cell(path.checkpointMs), cell(path.downtimeMs), cell(size.plainWriteMemoryMs),
      cell(size.plainWriteAllocatedMs), cell(size.plainWriteMs), cell(size.plainMmapMs),
      `${fmt(path.checkpointMs.median / plainAnchorMs(size))}x`, `${fmt(path.checkpointMs.median / size.plainWriteAllocatedMs.median)}x`,
    ]))), '')
  out.push('Where checkpoint time goes (engine statistics, CRIU names, ms):', '')
  out.push(table(['Size', 'Path', 'freezing_time', 'frozen_time', 'memdump_time', 'memwrite_time', 'pages_written'],
    result.sizes.flatMap((size) => size.paths.map((path) => [
      size.label, path.path, cell(path.engineStats['freezing_time'], 1e-3), cell(path.engineStats['frozen_time'], 1e-3), cell(path.engineStats['memdump_time'], 1e-3),
      cell(path.engineStats['memwrite_time'], 1e-3), fmt(path.engineStats['pages_written']?.median ?? Number.NaN),
    ]))), '')

  out.push('## Restore', '')
  out.push(`Node start-up (\`node -e 0\`): ${cell(result.nodeStartupMs)} ms; the floor of any cxlfork command (\`node bin/run.js --version\`: Node + oclif): ${cell(result.cliVersionMs)} ms.`, '')
  out.push(table(['Size', 'Path/policy', 'Engine restore', 'Whole command', '(its own engine time, cold)', 'RssAnon (kB)', 'RssAnon / checkpointed'],
    result.sizes.flatMap((size) => restoreRows(size).map((restore) => [
      size.label, restore.id, cell(restore.engineMs), cell(restore.commandMs), cell(restore.commandEngineMs), cell(restore.rssAnonKb), `${fmt(restore.rssAnonPct)} %`,
    ]))), '')
  out.push('Where engine restore time goes (ms; `injected_syscalls` is a count):', '')
  out.push(table(['Size', 'Path/policy', 'restore_time', 'forking_time', 'open_time', 'memory_time', 'state_time', 'injected_syscalls', 'pages_restored', 'pages_mapped'],
    result.sizes.flatMap((size) => restoreRows(size).map((restore) => {
      const s = restore.engineStats
      return [size.label, restore.id, cell(s['restore_time'], 1e-3), cell(s['forking_time'], 1e-3), cell(s['open_time'], 1e-3), cell(s['memory_time'], 1e-3),
        cell(s['state_time'], 1e-3), fmt(s['injected_syscalls']?.median ?? Number.NaN), fmt(s['pages_restored']?.median ?? Number.NaN), fmt(s['pages_mapped']?.median ?? Number.NaN)]
    }))), '')

  out.push(...realCriuSection(result))
  if (result.threads) out.push(...threadsSection(result.threads, runs))
  if (result.trees) out.push(...treesSection(result.trees, runs))
  if (result.faas) out.push(...faasSection(result.faas, runs))

  out.push('## Anchors: local fork() and cold start', '')
  out.push(table(['Size', 'fork() (parent side)', 'Injected clone (raw)', 'Injected no-op', 'Cold start'],
    result.sizes.map((size) => [size.label, cell(size.forkMs), cell(size.forkInjectionMs), cell(size.noopInjectionMs), cell(size.coldStartMs)])), '')

  out.push('## Targets', '')
  out.push(table(['Target', 'Measured', 'Limit', 'Verdict'],
    result.targets.map((t) => [t.description, `${fmt(t.measured)} ${t.unit}`, `${fmt(t.limit)} ${t.unit}`, t.pass ? 'PASS' : '**FAIL**'])), '')
  const failed = result.targets.filter((t) => !t.pass).length
  out.push(`${result.targets.length - failed} of ${result.targets.length} targets pass.`, '')
  if (extraNotes.length > 0) {
    out.push('## Notes', '')
    out.push(...extraNotes, '')
  }
  return out.join('\n')
}

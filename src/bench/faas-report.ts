/** The FaaS section's verdicts against the targets, and its part of BENCHMARKS.md. */
import {cell, fmt, table} from './md-format.js'
import type {FaasFunctionResult, FaasResult, FaasRow} from './faas-spec.js'
import type {TargetVerdict} from './types.js'

const round = (value: number, digits = 3): number => Math.round(value * 10 ** digits) / 10 ** digits

function verdict(id: string, description: string, measured: number, limit: number, unit: string): TargetVerdict {
  return {id, description, measured: round(measured), limit: round(limit), unit, pass: round(measured) <= round(limit)}
}

function rowOf(fn: FaasFunctionResult, id: string): FaasRow | undefined {
  return fn.rows.find((row) => row.id === id && row.firstMs.n > 0)
}

/** The targets, after the paper, per function; local memory is RssAnon after the first invocation. */
export function faasTargets(faas: FaasResult): TargetVerdict[] {
  const out: TargetVerdict[] = []
  for (const fn of faas.functions) {
    const [fork, mow, moa, hybrid, local] = ['fork', 'mow', 'moa', 'hybrid', 'local'].map((id) => rowOf(fn, id))
    const at = `${fn.name}:${fn.mib}M`
    if (mow && fork) {
      out.push(verdict(`faas-mow-first-vs-fork@${at}`, `mow first invocation <= 1.2 x a local fork's first invocation (${at})`, mow.firstMs.median / fork.firstMs.median, 1.2, 'x'))
    }
    if (mow && local && fn.readMostly) {
      out.push(verdict(`faas-mow-memory@${at}`, `RssAnon of a mow clone after its first invocation <= 15% of a local clone's (${at}, read-mostly)`,
        100 * mow.rssAnonKb.median / local.rssAnonKb.median, 15, '%'))
    }
    if (moa && local) out.push(verdict(`faas-moa-memory-below-local@${at}`, `RssAnon of a moa clone <= a local clone's (${at})`, moa.rssAnonKb.median / local.rssAnonKb.median, 1, 'x'))
    if (moa && mow) out.push(verdict(`faas-moa-memory-above-mow@${at}`, `RssAnon of a mow clone <= a moa clone's (${at})`, mow.rssAnonKb.median / moa.rssAnonKb.median, 1, 'x'))
    if (hybrid && mow) out.push(verdict(`faas-hybrid-warm-vs-mow@${at}`, `hybrid warm invocation <= mow's (${at})`, hybrid.warmMs.median / mow.warmMs.median, 1, 'x'))
    if (hybrid && local) out.push(verdict(`faas-hybrid-memory@${at}`, `RssAnon of a hybrid clone <= a local clone's (${at})`, hybrid.rssAnonKb.median / local.rssAnonKb.median, 1, 'x'))
  }
  return out
}




const mibOfKb = (value: number): string => fmt(value / 1024)

/** The FaaS section of BENCHMARKS.md. */
export function faasSection(faas: FaasResult, runs: number): string[] {
  const out: string[] = ['## FaaS functions', '']
  out.push(`Functions modeled on FunctionBench, in Python (${faas.python}), from \`fixtures/faas/\`. Each repetition cold-starts the function (spawn until READY: init builds the state, runs one invocation, \`gc.freeze()\`), checkpoints it, restores it per policy and invokes each clone: once (**first**), then ${faas.warm} more times (**warm**, pooled over repetitions; the clones of every policy and the fork child stay up after their first invocation and take their warm invocations in turn, one each per round, so that a drift of the host weighs on every row alike; \`mow-unrecorded\` takes its own before the others exist). Invocation times are what the function measured around its call (\`perf_counter\`); the round trip (SIGUSR1 until the DONE line is read) is in the JSON. Every result's crc equals the one the function computed at init. Access bits come from a \`--record\` mow clone that served one invocation and exited, so \`mow\` then copies the pages it wrote and \`hybrid\` those it accessed; \`mow-unrecorded\` is a mow clone before any bits existed. **fork** is a child the initialized function forks (\`os.fork()\` on SIGUSR2; its time is the parent's \`os.fork()\`), measured as a clone. Memory is read after the first invocation: **RssAnon** (the clone's local memory) and **Pss** from \`smaps_rollup\` (pool pages it maps count in part; a fork child's RssAnon counts the pages it still shares copy-on-write with the function's process, its Pss half of each). A \`moa\` clone's fault server is a process of its own (Node), reported apart. ${runs} repetitions; medians (min–max).`, '')
  out.push(table(['Function', 'State (--mib)', 'Checkpointed', 'Invocation', 'Cold start (exec + init)', 'Checkpoint', 'RssAnon of the function', 'Recorded: accessed / written pages'],
    faas.functions.map((fn) => [
      `${fn.name}${fn.readMostly ? ' (read-mostly)' : ''}`, `${fn.mib} MiB`, `${fmt(fn.bytes / 1048576)} MiB`, fn.invocation, cell(fn.coldStartMs), cell(fn.checkpointMs),
      `${mibOfKb(fn.originalRssAnonKb.median)} MiB`, `${fmt(fn.recordedAccessed.median)} / ${fmt(fn.recordedDirty.median)}`,
    ])), '')
  out.push('Per clone (ms; memory in MiB):', '')
  out.push(table(['Function', 'Row', 'Restore (engine)', 'Whole command', 'First invocation', 'Warm invocation', 'First / fork\'s first', 'RssAnon', 'RssAnon / local\'s', 'Pss', 'Pages copied / mapped / lazy at restore', 'Fault server RSS / Pss'],
    faas.functions.flatMap((fn) => {
      const fork = rowOf(fn, 'fork')
      const local = rowOf(fn, 'local')
      return fn.rows.filter((row) => row.firstMs.n > 0).map((row) => [
        fn.name, row.id, cell(row.restoreMs), cell(row.commandMs), cell(row.firstMs), cell(row.warmMs),
        fork ? `${fmt(row.firstMs.median / fork.firstMs.median)}x` : '–', mibOfKb(row.rssAnonKb.median),
        local ? `${fmt(100 * row.rssAnonKb.median / local.rssAnonKb.median)} %` : '–', mibOfKb(row.pssKb.median),
        row.id === 'fork' ? '–' : `${fmt(row.pagesRestored.median)} / ${fmt(row.pagesMapped.median)} / ${fmt(row.pagesLazy.median)}`,
        row.faultServerRssKb && row.faultServerRssKb.n > 0 ? `${mibOfKb(row.faultServerRssKb.median)} / ${mibOfKb(row.faultServerPssKb?.median ?? Number.NaN)}` : '–',
      ])
    })), '')
  if (faas.functions.some((fn) => fn.concurrent.length > 0)) {
    out.push(`${faas.clones} clones together (last repetition; all invoked at once, memory summed after; MiB):`, '')
    out.push(table(['Function', 'Row', 'Sum of RssAnon', 'Sum of Pss', 'Fault servers: RSS / Pss', 'First invocation under contention (median, ms)'],
      faas.functions.flatMap((fn) => fn.concurrent.map((set) => [
        fn.name, `${set.clones} x ${set.id}`, mibOfKb(set.rssAnonKb), mibOfKb(set.pssKb),
        set.faultServersRssKb === undefined ? '–' : `${mibOfKb(set.faultServersRssKb)} / ${mibOfKb(set.faultServersPssKb ?? Number.NaN)}`, fmt(set.firstMs),
      ]))), '')
  }
  return out
}

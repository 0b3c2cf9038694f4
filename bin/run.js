#!/usr/bin/env node
// oclif and every command come from one CommonJS bundle made by `npm run build`
// (dist/cxlfork.cjs). It is compiled here with the V8 code cache that the build
// writes next to it: Node 20 has no compile cache for ES modules, and compiling
// the bundle was most of cxlfork's own start-up (README, "Start-up"). A missing
// or rejected cache (another Node or V8 build) only costs that time back.
import {readFileSync, writeFileSync} from 'node:fs'
import Module, {createRequire} from 'node:module'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import vm from 'node:vm'

const bundle = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'cxlfork.cjs')

// `restore` with a porter running for the pool: a small bundle asks the porter,
// without oclif or the engine (README, "Porter"). It answers undefined for
// anything it does not handle (no porter, --help, --wait, --no-porter, odd
// flags), and the full CLI below runs as always.
if (process.argv[2] === 'restore' && !process.argv.includes('--no-porter')) {
  let fastRestore
  try {
    fastRestore = createRequire(import.meta.url)(join(dirname(bundle), 'porter-client.cjs')).fastRestore
  } catch {
    fastRestore = undefined
  }
  const status = fastRestore ? await fastRestore(process.argv.slice(3)) : undefined
  if (status !== undefined) process.exit(status)
}

const cacheFile = `${bundle}.cache`
let cachedData
try {
  cachedData = readFileSync(cacheFile)
} catch {
  cachedData = undefined
}
// No import() may run inside the bundle: Node 20 loses the dynamic-import
// callback of a script compiled from a code cache (ERR_VM_DYNAMIC_IMPORT_CALLBACK_MISSING).
// esbuild turns imports of bundled modules into plain calls; builtins are
// imported statically (a test checks the bundle).
let source
try {
  source = readFileSync(bundle, 'utf8')
} catch {
  process.stderr.write(`cxlfork is not built (${bundle} is missing): run \`npm run build\` first.\n`)
  process.exit(1)
}
const script = new vm.Script(Module.wrap(source), {filename: bundle, cachedData})
// Registered like any required module, so oclif's own require of the bundle
// (the explicit command strategy) finds it loaded instead of compiling it again.
const bundleModule = new Module(bundle)
bundleModule.filename = bundle
bundleModule.paths = Module._nodeModulePaths(dirname(bundle))
Module._cache[bundle] = bundleModule
script.runInThisContext().call(bundleModule.exports, bundleModule.exports, createRequire(bundle), bundleModule, bundle, dirname(bundle))
bundleModule.loaded = true

await bundleModule.exports.execute({dir: import.meta.url})

// `npm run build` runs `--version` once with this set: the cache then holds
// what start-up compiles (the bundle's top level, oclif's config and runner).
if (process.env.CXLFORK_WRITE_CODE_CACHE === '1') writeFileSync(cacheFile, script.createCachedData())

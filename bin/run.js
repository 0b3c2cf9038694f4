#!/usr/bin/env node
// oclif and every command come from one CommonJS bundle made by `npm run build`
// (dist/cxlfork.cjs). It is compiled here with the V8 code cache that the build
// writes next to it: Node 20 has no compile cache for ES modules, and compiling
// the bundle was most of cxlfork's own start-up (README, "Start-up"). A missing
// or rejected cache (another Node or V8 build) only costs that time back.
//
// This file is CommonJS (bin/package.json says so), not an ES module: Node's ES loader
// costs ~10 ms of CPU at every start (resolving, loading, translating the entry, and an
// ES facade for each builtin imported, whose lazy exports node:fs then loads), a third
// of what cxlfork adds to Node's own start-up on the porter's fast path.
'use strict'
const {readFileSync, writeFileSync} = require('node:fs')
const Module = require('node:module')
const {createRequire} = Module
const {dirname, join} = require('node:path')
const vm = require('node:vm')

const bundle = join(__dirname, '..', 'dist', 'cxlfork.cjs')

// `restore`, `criu dump` and `criu restore` with a porter running for the pool:
// a small bundle asks the porter, without oclif or the engine (README, "Porter").
// It answers undefined for anything it does not handle (no porter, --help,
// --wait, --no-porter, odd flags), and the full CLI below runs as always.
async function main() {
  const command = process.argv[2]
  const criu = command === 'criu' && (process.argv[3] === 'dump' || process.argv[3] === 'restore')
  if ((command === 'restore' || criu) && !process.argv.includes('--no-porter')) {
    let client
    try {
      client = require(join(dirname(bundle), 'porter-client.cjs'))
    } catch {
      client = undefined
    }
    const status = client ? await (criu ? client.fastCriu : client.fastRestore)(process.argv.slice(3)) : undefined
    if (status !== undefined) process.exit(status)
  }
  await runCli()
}

async function runCli() {
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

  // The project's root, not bin/: oclif looks for the package.json above `dir`, and bin/ has its own (type: commonjs).
  await bundleModule.exports.execute({dir: join(__dirname, '..', 'package.json')})

  // `npm run build` runs `--version` once with this set: the cache then holds
  // what start-up compiles (the bundle's top level, oclif's config and runner).
  if (process.env.CXLFORK_WRITE_CODE_CACHE === '1') writeFileSync(cacheFile, script.createCachedData())
}

main().catch((error) => {
  process.stderr.write(`cxlfork: ${error?.message ?? error}\n`)
  process.exitCode = 1
})

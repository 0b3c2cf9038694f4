#!/usr/bin/env node
// Commands and oclif come from the esbuild bundle made by `npm run build` (dist/bundle).
import {execute} from '../dist/bundle/cli/entry.js'

await execute({dir: import.meta.url})

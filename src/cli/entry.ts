/**
 * The oclif runner as bin/run.js loads it: from dist/bundle, where esbuild
 * puts it and every command together, sharing one copy of @oclif/core in a
 * common chunk. One bundle instead of ~250 module files is what keeps a
 * command's start-up near Node's own (README, "Start-up").
 */
export {execute} from '@oclif/core/execute'

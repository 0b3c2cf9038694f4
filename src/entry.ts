/**
 * What bin/run.js loads: oclif's runner and every command, which esbuild
 * bundles into the one CommonJS file dist/cxlfork.cjs (package.json's
 * oclif.commands: the "explicit" strategy, identifier COMMANDS). A single
 * CommonJS script is what V8's code cache can serve whole (README,
 * "Start-up"). Commands keep their engine imports inside run(), so loading
 * every command class costs little.
 */
import Bench from './commands/bench.js'
import Check from './commands/check.js'
import Checkpoint from './commands/checkpoint.js'
import CriuDump from './commands/criu/dump.js'
import CriuImport from './commands/criu/import.js'
import CriuRestore from './commands/criu/restore.js'
import FnDeploy from './commands/fn/deploy.js'
import FnInvoke from './commands/fn/invoke.js'
import FnLs from './commands/fn/ls.js'
import FnRm from './commands/fn/rm.js'
import Inspect from './commands/inspect.js'
import Ls from './commands/ls.js'
import PoolFsck from './commands/pool/fsck.js'
import PoolGc from './commands/pool/gc.js'
import PoolInfo from './commands/pool/info.js'
import PoolInit from './commands/pool/init.js'
import PorterReplay from './commands/porter/replay.js'
import PorterStart from './commands/porter/start.js'
import PorterStatus from './commands/porter/status.js'
import PorterStop from './commands/porter/stop.js'
import Record from './commands/record.js'
import Restore from './commands/restore.js'
import Rm from './commands/rm.js'

export {execute} from '@oclif/core/execute'
/** package.json oclif.hooks.command_not_found names this export. */
export {commandNotFound as COMMAND_NOT_FOUND} from './cli/not-found.js'

/** Command ids as oclif names them (topic and command joined by ':'). */
export const COMMANDS = {
  bench: Bench,
  check: Check,
  checkpoint: Checkpoint,
  'criu:dump': CriuDump,
  'criu:import': CriuImport,
  'criu:restore': CriuRestore,
  'fn:deploy': FnDeploy,
  'fn:invoke': FnInvoke,
  'fn:ls': FnLs,
  'fn:rm': FnRm,
  inspect: Inspect,
  ls: Ls,
  'pool:fsck': PoolFsck,
  'pool:gc': PoolGc,
  'pool:info': PoolInfo,
  'pool:init': PoolInit,
  'porter:replay': PorterReplay,
  'porter:start': PorterStart,
  'porter:status': PorterStatus,
  'porter:stop': PorterStop,
  record: Record,
  restore: Restore,
  rm: Rm,
}

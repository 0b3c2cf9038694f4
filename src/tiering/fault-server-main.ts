/**
 * Entry point of the clone keeper process (fault-server.ts): fd 0 carries
 * requests from the restoring command, fd 1 its replies. It serves `moa`
 * faults, and for `restore --record` records the clone's accesses at its exit.
 */
import {Pool} from '../pool/index.js'
import {FaultServer} from './fault-server.js'
import {recordClone} from './record.js'

const server = new FaultServer(0, 1)
server.onExitRecord = (clone) => {
  const pool = Pool.open(clone.pool)
  try {
    recordClone(pool, clone.name, clone.pid)
  } finally {
    pool.close()
  }
}
process.exitCode = server.run()

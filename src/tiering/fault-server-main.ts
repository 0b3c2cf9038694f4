/**
 * Entry point of the clone keeper process (fault-server.ts): fd 0 carries
 * requests from the restoring command, fd 1 its replies. It serves `moa`
 * faults, and with the argument `record` (restore --record) records the
 * accesses of each clone process (every member of a tree) at its exit; only then is the pool code loaded.
 */
import {FaultServer} from './fault-server.js'

const server = new FaultServer(0, 1)
if (process.argv[2] === 'record') {
  const [{Pool}, {recordMemberAtExit}] = await Promise.all([import('../pool/index.js'), import('./record.js')])
  server.onExitRecord = (clone) => {
    const pool = Pool.open(clone.pool)
    try {
      recordMemberAtExit(pool, clone.name, clone.pid, clone.member)
    } finally {
      pool.close()
    }
  }
}
process.exitCode = server.run()

/**
 * `cxlfork check`: probes, for real, what checkpoint and restore need from
 * this kernel and this user, like `criu check`. Every probe runs the actual
 * mechanism (a seized stub, an injected syscall, a real userfaultfd) rather
 * than trusting configuration files.
 */
import {existsSync, statfsSync} from 'node:fs'
import {dirname, resolve} from 'node:path'

import {CxlforkError} from '../errors.js'
import {spawnStub} from '../inject/stub.js'
import {CAP_CHECKPOINT_RESTORE, CAP_SYS_ADMIN, CAP_SYS_PTRACE, effectiveCapabilities, requireMapFilesAccess, setMmMapRefusal} from '../sys/capabilities.js'
import {close} from '../sys/file-io.js'
import {O, PR, SYS, syscallRaw} from '../sys/syscall.js'
import {vmRead} from '../sys/vm-io.js'
import {classifyFileSystem} from '../pool/filesystem.js'

export interface CheckItem {
  name: string
  ok: boolean
  detail: string
}

export interface CheckResult {
  ok: boolean
  items: CheckItem[]
}

function probe(name: string, run: () => string): CheckItem {
  try {
    return {name, ok: true, detail: run()}
  } catch (error) {
    const message = error instanceof CxlforkError ? `${error.code}: ${error.message}${error.hint ? ` (${error.hint})` : ''}` : (error as Error).message
    return {name, ok: false, detail: message}
  }
}

export function checkHost(poolPath: string, minFreeBytes = 64n << 20n): CheckResult {
  const items: CheckItem[] = []
  const caps = effectiveCapabilities()
  const has = (bit: bigint): boolean => ((caps >> bit) & 1n) === 1n
  items.push(probe('ptrace and syscall injection', () => {
    const stub = spawnStub()
    try {
      const pid = Number(stub.tracee.syscallChecked('getpid', 39))
      if (pid !== stub.pid) throw new Error(`injected getpid returned ${pid}, expected ${stub.pid}`)
      vmRead(stub.pid, stub.image[0], new Uint8Array(16))
      return `seized a stub, injected getpid, read its memory with process_vm_readv`
    } finally {
      stub.kill()
    }
  }))
  // The same probe and sentence as a checkpoint's refusal (NOT_PERMITTED), here on our own process.
  items.push(probe('checkpoint: file mappings through /proc/PID/map_files', () => {
    requireMapFilesAccess('self')
    return 'readable'
  }))
  items.push(probe('PR_SET_MM_MAP (restore mm fields, exe link)', () => {
    if (!has(CAP_CHECKPOINT_RESTORE) && !has(CAP_SYS_ADMIN)) throw setMmMapRefusal()
    const size = new Uint32Array(1)
    const r = syscallRaw(SYS.prctl, PR.SET_MM, PR.SET_MM_MAP_SIZE, size, 0, 0)
    if (r < 0n) throw new Error(`prctl(PR_SET_MM_MAP_SIZE) failed with errno ${-r}`)
    return `struct prctl_mm_map is ${size[0]} bytes; capability present`
  }))
  items.push(probe('CAP_SYS_PTRACE', () => {
    if (!has(CAP_SYS_PTRACE)) throw new Error('missing: only your own processes can be checkpointed')
    return 'present'
  }))
  items.push(probe('userfaultfd (migrate-on-access)', () => {
    const fd = syscallRaw(SYS.userfaultfd, O.CLOEXEC, 0, 0, 0, 0)
    if (fd < 0n) throw new Error(`userfaultfd() failed with errno ${-fd}`)
    close(Number(fd))
    return 'available'
  }))
  const absolute = resolve(poolPath)
  items.push(probe(`pool file system (${absolute})`, () => {
    const exists = existsSync(absolute)
    const verdict = classifyFileSystem(absolute, exists)
    if (!verdict.shareable) throw new Error(`${verdict.mountPoint} is ${verdict.kind}, which hosts cannot share; use tmpfs (/dev/shm), a DAX mount or famfs`)
    const stats = statfsSync(exists ? absolute : dirname(absolute), {bigint: true})
    const free = stats.bavail * stats.bsize
    if (!exists && free < minFreeBytes) throw new Error(`only ${free} bytes free on ${verdict.mountPoint}`)
    return `${verdict.kind} at ${verdict.mountPoint}, ${(Number(free) / 1073741824).toFixed(1)} GiB free${exists ? ', pool exists' : ', pool will be created on first use'}`
  }))
  return {ok: items.every((item) => item.ok), items}
}

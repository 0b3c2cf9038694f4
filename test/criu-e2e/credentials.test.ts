/**
 * Credentials on the CRIU-format path: a real process that dropped from root to nobody
 * (setgroups, setresgid, setresuid: ids real, effective, saved and fs, no capability
 * left) is dumped by `criu dump`, crit finds its ids, groups and capability sets in the
 * creds of its core, and the clones of `criu restore` and of `criu import` + restore run
 * with exactly those credentials, not as root who restored them.
 */
import assert from 'node:assert/strict'
import {spawn} from 'node:child_process'
import {readFileSync} from 'node:fs'
import {join} from 'node:path'

import {trackPid} from '../helpers/fixtures.js'
import {until} from '../restore/helpers.js'
import {cli, critDecode, imagesDir, installSuiteHooks, okJson, poolFile} from './helpers.js'

const status = (pid: number): string => readFileSync(`/proc/${pid}/status`, 'utf8')
const field = (pid: number, name: string): string => new RegExp(`^${name}:\\s+(.*)$`, 'm').exec(status(pid))?.[1]?.trim().replace(/\s+/g, ' ') ?? ''

describe('criu-e2e: credentials through criu dump, restore and import', function () {
  this.timeout(120_000)

  installSuiteHooks('criu-e2e credentials')

  it('a process that dropped to nobody (groups 100, no capabilities): crit reads its creds, and every clone runs as it did', async function () {
    if (process.getuid?.() !== 0) this.skip()
    const code = 'import os, time\nos.closerange(3, 1024)\nos.setgroups([100])\nos.setresgid(65534, 65534, 65534)\nos.setresuid(65534, 65534, 65534)\nwhile True:\n    time.sleep(0.05)\n'
    const child = spawn('python3', ['-c', code], {stdio: 'ignore', cwd: '/'})
    trackPid(child.pid!)
    const pid = child.pid!
    await until(() => field(pid, 'Uid') === '65534 65534 65534 65534', 'the process runs as nobody')
    const want = {Uid: '65534 65534 65534 65534', Gid: '65534 65534 65534 65534', Groups: '100', CapEff: '0000000000000000', CapPrm: '0000000000000000', CapBnd: field(pid, 'CapBnd')}

    const images = imagesDir('creds')
    okJson(await cli(['criu', 'dump', String(pid), '--images', images, '--json']))
    const creds = (await critDecode(join(images, `core-${pid}.img`))).entries[0].thread_core.creds
    assert.deepEqual([creds.uid, creds.euid, creds.suid, creds.fsuid, creds.gid, creds.egid, creds.sgid, creds.fsgid], Array.from({length: 8}, () => 65_534))
    assert.deepEqual(creds.groups, [100])
    assert.deepEqual(creds.cap_eff.map(Number), [0, 0], 'no effective capability')
    const bounding = BigInt(`0x${want.CapBnd}`)
    assert.deepEqual(creds.cap_bnd.map(Number), [Number(bounding & 0xffff_ffffn), Number(bounding >> 32n)], 'the bounding set, two words')

    const pool = poolFile('creds')
    okJson(await cli(['criu', 'import', '--images', images, '--name', 'creds', '--pool', pool, '--json']))
    const runs = [
      {what: 'criu restore', run: await cli(['criu', 'restore', '--images', images, '--json'])},
      {what: 'criu import + restore mow', run: await cli(['restore', 'creds', '--pool', pool, '--json'])},
    ]
    for (const {what, run} of runs) {
      const clone = okJson(run).pid as number
      trackPid(clone)
      for (const [name, value] of Object.entries(want)) assert.equal(field(clone, name), value, `${what}: the clone's ${name}`)
      assert.match(field(clone, 'State'), /^[SR]/, `${what}: the clone runs on`)
    }
  })
})

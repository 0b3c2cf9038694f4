/** The hand-assembled CRC-32C (src/sys/crc32c.ts) against the standard check value and the table-driven CRC, block by block. */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'

import {crc32c, crc32cBlocks, crc32cNative} from '../../src/sys/crc32c.js'
import {MAP, PROT} from '../../src/sys/syscall.js'
import {mmap, munmap, view} from '../../src/sys/vm-io.js'

describe('sys: CRC-32C of memory blocks', () => {
  it('gives the standard check value (CRC-32C of "123456789" is 0xe3069283)', () => {
    assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283)
  })

  it('the SSE4.2 code equals the table-driven CRC for every block, four at a time and the rest one by one', () => {
    assert.equal(crc32cNative(), true, 'this CPU has SSE4.2')
    const length = 7 * 65536 + 3 * 4096 // 7 whole blocks (one group of four, three alone) and a short last block
    const address = mmap(null, length, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
    try {
      const bytes = view(address, length)
      bytes.set(randomBytes(length))
      const out = new Uint32Array(8)
      assert.equal(crc32cBlocks(address, length, 65536, out), 8)
      for (let i = 0; i < 8; i++) assert.equal(out[i], crc32c(bytes.subarray(i * 65536, Math.min(length, (i + 1) * 65536))), `block ${i}`)
      bytes[5 * 65536 + 17]! ^= 1
      const again = new Uint32Array(8)
      crc32cBlocks(address, length, 65536, again)
      assert.deepEqual([...again].map((crc, i) => crc !== out[i]), [false, false, false, false, false, true, false, false], 'one flipped bit changes its block\'s CRC only')
    } finally {
      munmap(address, length)
    }
  })
})

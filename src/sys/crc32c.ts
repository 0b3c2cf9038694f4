/**
 * CRC-32C (Castagnoli, as iSCSI, ext4 and btrfs use it) of fixed-size blocks
 * of memory, for page data. Node's zlib CRC-32 runs at ~3.3 GB/s here
 * (300 ms per GiB), slower than the page write it must keep up with; the
 * SSE4.2 `crc32` instruction over four blocks at once (four independent
 * dependency chains, so the instruction's 3-cycle latency is hidden) runs at
 * ~16-30 GB/s on data in cache. As for CPUID (cpuid.ts), the code is a few
 * bytes in a private PROT_READ|PROT_EXEC page called through koffi. A CPU
 * without SSE4.2 gets a table-driven CRC-32C in JavaScript (same values,
 * ~40x slower).
 */
import {cpuid} from './cpuid.js'
import {koffi} from './ffi.js'
import {MAP, PROT} from './syscall.js'
import {mmap, mprotect, view} from './vm-io.js'

/**
 * void crc32c4(base (rdi), stride (rsi), len (rdx, a multiple of 16), out (rcx))
 * out[i] = CRC-32C of [base + i*stride, +len) for i = 0..3 (stride 0: one block, four times).
 */
const CRC32C4_CODE = [
  0x4c, 0x8d, 0x04, 0x76, //                   lea r8, [rsi+rsi*2]
  0xb8, 0xff, 0xff, 0xff, 0xff, //             mov eax, -1
  0x41, 0x89, 0xc1, //                         mov r9d, eax
  0x41, 0x89, 0xc2, //                         mov r10d, eax
  0x41, 0x89, 0xc3, //                         mov r11d, eax
  0x48, 0x85, 0xd2, //                         test rdx, rdx
  0x74, 0x44, //                               jz done
  // loop:
  0xf2, 0x48, 0x0f, 0x38, 0xf1, 0x07, //       crc32 rax, [rdi]
  0xf2, 0x4c, 0x0f, 0x38, 0xf1, 0x0c, 0x37, // crc32 r9, [rdi+rsi]
  0xf2, 0x4c, 0x0f, 0x38, 0xf1, 0x14, 0x77, // crc32 r10, [rdi+rsi*2]
  0xf2, 0x4e, 0x0f, 0x38, 0xf1, 0x1c, 0x07, // crc32 r11, [rdi+r8]
  0xf2, 0x48, 0x0f, 0x38, 0xf1, 0x47, 0x08, // crc32 rax, [rdi+8]
  0xf2, 0x4c, 0x0f, 0x38, 0xf1, 0x4c, 0x37, 0x08, // crc32 r9, [rdi+rsi+8]
  0xf2, 0x4c, 0x0f, 0x38, 0xf1, 0x54, 0x77, 0x08, // crc32 r10, [rdi+rsi*2+8]
  0xf2, 0x4e, 0x0f, 0x38, 0xf1, 0x5c, 0x07, 0x08, // crc32 r11, [rdi+r8+8]
  0x48, 0x83, 0xc7, 0x10, //                   add rdi, 16
  0x48, 0x83, 0xea, 0x10, //                   sub rdx, 16
  0x75, 0xbc, //                               jnz loop
  // done:
  0xf7, 0xd0, //                               not eax
  0x41, 0xf7, 0xd1, //                         not r9d
  0x41, 0xf7, 0xd2, //                         not r10d
  0x41, 0xf7, 0xd3, //                         not r11d
  0x89, 0x01, //                               mov [rcx], eax
  0x44, 0x89, 0x49, 0x04, //                   mov [rcx+4], r9d
  0x44, 0x89, 0x51, 0x08, //                   mov [rcx+8], r10d
  0x44, 0x89, 0x59, 0x0c, //                   mov [rcx+12], r11d
  0xc3, //                                     ret
]

type Crc4 = (base: bigint, stride: bigint, len: bigint, out: Uint32Array) => void

let native: Crc4 | null | undefined

function loadNative(): Crc4 | null {
  if (native !== undefined) return native
  native = null
  if (process.arch !== 'x64' || process.env.CXLFORK_CRC32C_JS === '1') return native
  if (((cpuid(1).ecx >>> 20) & 1) === 0) return native // no SSE4.2
  const page = mmap(null, 4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS)
  view(page, 4096).set(CRC32C4_CODE, 0)
  mprotect(page, 4096, PROT.READ | PROT.EXEC)
  const proto = koffi.proto('void cxlfork_crc32c4_fn(uint64_t base, uint64_t stride, uint64_t len, _Out_ uint32_t *out)')
  native = koffi.decode(page, proto) as Crc4
  return native
}

let table: Uint32Array | undefined

function crc32cJs(bytes: Uint8Array): number {
  if (!table) {
    table = new Uint32Array(256)
    for (let i = 0; i < 256; i++) {
      let c = i
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1
      table[i] = c >>> 0
    }
  }
  let c = -1
  for (let i = 0; i < bytes.length; i++) c = table[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8)
  return (c ^ -1) >>> 0
}

/** Whether the fast (SSE4.2) path is in use; `cxlfork bench` and the README's figures name it. */
export function crc32cNative(): boolean {
  return loadNative() !== null
}

/**
 * CRC-32C of each `blockSize` block of the `length` bytes at `address` (this
 * process's memory), into `out` from index 0; the last block may be shorter.
 * `blockSize` and `length` must be multiples of 16. Returns the block count.
 */
export function crc32cBlocks(address: bigint, length: number, blockSize: number, out: Uint32Array): number {
  if (length % 16 !== 0 || blockSize % 16 !== 0 || blockSize <= 0) throw new RangeError(`crc32cBlocks: ${length} bytes in blocks of ${blockSize} (multiples of 16 only)`)
  const blocks = Math.ceil(length / blockSize)
  const fn = loadNative()
  if (!fn) {
    for (let i = 0; i < blocks; i++) out[i] = crc32cJs(view(address + BigInt(i * blockSize), Math.min(blockSize, length - i * blockSize)))
    return blocks
  }
  const four = new Uint32Array(4)
  const full = Math.floor(length / blockSize)
  let i = 0
  for (; i + 4 <= full; i += 4) {
    fn(address + BigInt(i * blockSize), BigInt(blockSize), BigInt(blockSize), four)
    out.set(four, i)
  }
  for (; i < blocks; i++) {
    fn(address + BigInt(i * blockSize), 0n, BigInt(Math.min(blockSize, length - i * blockSize)), four)
    out[i] = four[0]!
  }
  return blocks
}

/** CRC-32C of `bytes` (tests and small buffers). */
export function crc32c(bytes: Uint8Array): number {
  return crc32cJs(bytes)
}

/** Section types of a cxlfork checkpoint in the pool. */
export const Section = {
  /** The process state record (codec.ts). */
  processState: 1,
  /** The binary page map (page-map.ts). */
  pageMap: 2,
  /**
   * A process tree (checkpoint --tree): its members as JSON (src/checkpoint/tree.ts).
   * Then each live member has a processState and a pageMap section, in member order.
   */
  tree: 3,
  /**
   * CRC-32C of the page data, one per 64 KiB, addressed by pool offset: every
   * member's data in one section. Written and read by src/pool/page-checksums.ts
   * (PAGE_CHECKSUMS_SECTION, the same number: fsck checks it without images).
   * Checkpoints from before it have none and restore as before.
   */
  pageChecksums: 4,
  /**
   * Shared anonymous memory of the checkpoint's processes (shared-memory.ts):
   * each object once, whichever members map it. Absent when there is none.
   */
  sharedMemory: 5,
  /**
   * The access record of the pageMap section before it (access-record.ts): a
   * mutable section (bit 31, pool/descriptor.ts MUTABLE_SECTION), no CRC.
   */
  accessRecord: 0x80000001,
} as const

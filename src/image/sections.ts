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
   * The access record of the pageMap section before it (access-record.ts): a
   * mutable section (bit 31, pool/descriptor.ts MUTABLE_SECTION), no CRC.
   */
  accessRecord: 0x80000001,
} as const

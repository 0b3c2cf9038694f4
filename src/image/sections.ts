/** Section types of a cxlfork checkpoint in the pool. */
export const Section = {
  /** The process state record (codec.ts). */
  processState: 1,
  /** The binary page map (page-map.ts). */
  pageMap: 2,
} as const

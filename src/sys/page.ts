/** The base page size of x86_64 Linux: every address, length and page count in cxlfork is in these units. */
export const PAGE_SIZE = 4096

/** x86_64 system call numbers and constants used by checkpoint and restore (arch/x86/entry/syscalls/syscall_64.tbl). */
export const SYS = {
  read: 0, write: 1, open: 2, close: 3, lseek: 8, mmap: 9, mprotect: 10, munmap: 11, brk: 12,
  rt_sigaction: 13, rt_sigprocmask: 14, madvise: 28, dup2: 33, pause: 34, getpid: 39, clone: 56, exit: 60,
  kill: 62, fcntl: 72, chdir: 80, umask: 95, prctl: 157, arch_prctl: 158, chroot: 161, gettid: 186,
  set_tid_address: 218, exit_group: 231, tgkill: 234, openat: 257, rt_tgsigqueueinfo: 297,
  set_robust_list: 273, get_robust_list: 274, prlimit64: 302, dup3: 292, personality: 135,
  rt_sigqueueinfo: 129, mremap: 25, rseq: 334, close_range: 436, setsid: 112, getppid: 110, sigaltstack: 131,
} as const

export const PROT = {READ: 1, WRITE: 2, EXEC: 4} as const
export const MAP = {SHARED: 0x01, PRIVATE: 0x02, FIXED: 0x10, ANONYMOUS: 0x20, GROWSDOWN: 0x100, NORESERVE: 0x4000, FIXED_NOREPLACE: 0x100000} as const
export const MREMAP = {MAYMOVE: 1, FIXED: 2, DONTUNMAP: 4} as const
export const O = {RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, TRUNC: 0o1000, APPEND: 0o2000, CLOEXEC: 0o2000000, PATH: 0o10000000, DIRECTORY: 0o200000, NOFOLLOW: 0o400000, LARGEFILE: 0o100000} as const
export const PR = {SET_NAME: 15, GET_NAME: 16, SET_MM: 35, SET_MM_MAP: 14, SET_MM_MAP_SIZE: 15, GET_TID_ADDRESS: 40, SET_DUMPABLE: 4} as const
export const CLONE = {PARENT: 0x8000, VM: 0x100, UNTRACED: 0x800000} as const
export const SIG = {HUP: 1, INT: 2, KILL: 9, USR1: 10, SEGV: 11, USR2: 12, PIPE: 13, TERM: 15, CHLD: 17, CONT: 18, STOP: 19, TRAP: 5} as const
export const SA_RESTORER = 0x04000000n
/** Kernel-internal restart codes a stopped task may carry in rax (include/linux/errno.h). */
export const ERESTART = {SYS: 512, NOINTR: 513, NOHAND: 514, RESTARTBLOCK: 516} as const
export const EINTR = 4

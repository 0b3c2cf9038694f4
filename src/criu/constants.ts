/**
 * CRIU's numbers that cxlfork's CRIU-format images use (criu/include/image.h, pagemap.h,
 * magic.h, fdinfo.proto, and the kernel-object ids of a one-process dump).
 */
import type {UserRegName, VmaKind} from '../image/process-image.js'


/** inventory img_version: 1 = CRIU 1.0 images (no head magic), 2 = every image since (head magic pair). */
export const CRTOOLS_IMAGES_V1 = 1
export const CRTOOLS_IMAGES_V1_1 = 2

export const PE_PARENT = 1 << 0
export const PE_LAZY = 1 << 1
export const PE_PRESENT = 1 << 2

export const VMA_AREA_REGULAR = 1 << 0
export const VMA_AREA_STACK = 1 << 1
export const VMA_AREA_VSYSCALL = 1 << 2
export const VMA_AREA_VDSO = 1 << 3
export const VMA_AREA_HEAP = 1 << 5
export const VMA_FILE_PRIVATE = 1 << 6
export const VMA_FILE_SHARED = 1 << 7
export const VMA_ANON_SHARED = 1 << 8
export const VMA_ANON_PRIVATE = 1 << 9
export const VMA_AREA_SYSVIPC = 1 << 10
export const VMA_AREA_SOCKET = 1 << 11
export const VMA_AREA_VVAR = 1 << 12
export const VMA_AREA_AIORING = 1 << 13
export const VMA_AREA_MEMFD = 1 << 14
export const VMA_AREA_SHSTK = 1 << 15
export const VMA_AREA_GUARD = 1 << 16
export const VMA_AREA_UPROBES = 1 << 17
export const VMA_EXT_PLUGIN = 1 << 27
export const VMA_UNSUPP = 1 << 31

export const UNSUPPORTED_VMA_BITS: [number, string][] = [
  [VMA_AREA_SYSVIPC, 'VMA_AREA_SYSVIPC'], [VMA_AREA_SOCKET, 'VMA_AREA_SOCKET'],
  [VMA_AREA_AIORING, 'VMA_AREA_AIORING'], [VMA_AREA_MEMFD, 'VMA_AREA_MEMFD'], [VMA_AREA_SHSTK, 'VMA_AREA_SHSTK'],
  [VMA_AREA_GUARD, 'VMA_AREA_GUARD'], [VMA_AREA_UPROBES, 'VMA_AREA_UPROBES'], [VMA_EXT_PLUGIN, 'VMA_EXT_PLUGIN'], [VMA_UNSUPP, 'VMA_UNSUPP'],
]

export const FD_TYPE_REG = 1
export const FD_TYPE_PIPE = 2
export const FD_TYPE_FIFO = 3
export const FD_TYPE_INETSK = 4
export const FD_TYPE_UNIXSK = 5
export const FD_TYPE_EVENTFD = 6
export const FD_TYPE_EVENTPOLL = 7
export const FD_TYPE_INOTIFY = 8
export const FD_TYPE_SIGNALFD = 9
export const FD_TYPE_TIMERFD = 17
export const FD_TYPE_MEMFD = 18
export const FD_TYPE_NAMES: Record<number, string> = {
  0: 'UND', 1: 'REG', 2: 'PIPE', 3: 'FIFO', 4: 'INETSK', 5: 'UNIXSK', 6: 'EVENTFD', 7: 'EVENTPOLL', 8: 'INOTIFY', 9: 'SIGNALFD',
  10: 'PACKETSK', 11: 'TTY', 12: 'FANOTIFY', 13: 'NETLINKSK', 14: 'NS', 15: 'TUNF', 16: 'EXT', 17: 'TIMERFD', 18: 'MEMFD', 19: 'BPFMAP', 20: 'PIDFD',
}
export const FD_CLOEXEC = 1
export const SS_DISABLE = 2
export const TASK_ALIVE = 1
export const MARCH_X86_64 = 1
export const REGS_MODE_NATIVE = 1
/** CRIU keeps sigactions for signals 1..SIGMAX (64) except SIGKILL and SIGSTOP, positionally. */
export const SIGMAX = 64
export const RLIM_NLIMITS = 16
/** Words of saved auxv CRIU keeps on x86_64 (its AT_VECTOR_SIZE): it dumps at most these and refuses a longer mm_saved_auxv. */
export const AT_VECTOR_SIZE = 44
export const S_IFMT = 0o170000
export const S_IFDIR = 0o040000
export const S_IFCHR = 0o020000
export const S_IFIFO = 0o010000
export const S_IFREG = 0o100000
/**
 * Kernel-object ids (criu/kerndat kid tree) of a one-process dump, as CRIU numbers them:
 * the dumper's own vm/files/fs/sighand come first (1, inventory root_ids), the task's
 * objects next (2, ids-PID.img, fdinfo-2.img). CRIU's restore refuses a root task whose
 * files_id equals root_ids' ("Image corruption on kIDs data": it would share the
 * restorer's fd table).
 */
export const ROOT_KID = 1
export const KID = 2
export const PAGES_ID = 1
/** Task states of core_entry.tc.task_state CRIU writes: a zombie is TASK_DEAD, with its wait status in exit_code. */
export const TASK_DEAD = 2

/** CRIU's names for the user_regs_struct fields (same order as USER_REGS_NAMES). */
export const CRIU_REG_NAMES: Record<UserRegName, string> = {
  r15: 'r15', r14: 'r14', r13: 'r13', r12: 'r12', rbp: 'bp', rbx: 'bx', r11: 'r11', r10: 'r10', r9: 'r9', r8: 'r8',
  rax: 'ax', rcx: 'cx', rdx: 'dx', rsi: 'si', rdi: 'di', orig_rax: 'orig_ax', rip: 'ip', cs: 'cs', eflags: 'flags',
  rsp: 'sp', ss: 'ss', fs_base: 'fs_base', gs_base: 'gs_base', ds: 'ds', es: 'es', fs: 'fs', gs: 'gs',
}

/** VMAs the kernel provides: restore moves this host's, never fills them from pages. */
export const KERNEL_VMA_KINDS: ReadonlySet<VmaKind> = new Set(['vdso', 'vvar', 'vvar_vclock', 'vsyscall'])

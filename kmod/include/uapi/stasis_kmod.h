/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * stasis_kmod.h - the ioctl contract of /dev/stasis, the one file shared by
 * the kernel module (kmod/) and the userspace engine (engine/core).
 *
 * Every request names a stopped or frozen task and a file descriptor; the
 * module writes a stream of records to that descriptor and fills the
 * request's output fields. Every struct starts with its own size, which the
 * caller sets to sizeof(struct) and the module checks, and holds only
 * fixed-width fields with explicit padding (reserved fields must be zero).
 *
 * Record streams (all little-endian, host order on x86-64):
 *   STASIS_IOC_VMAS:    struct stasis_vma_rec, then path_len bytes of path
 *                       (no NUL), padded with zeros to 8 bytes; per VMA.
 *   STASIS_IOC_PAGES:   struct stasis_page_rec, then npages * 4096 bytes.
 *   STASIS_IOC_THREADS: struct stasis_thread_rec, then gpregs_len bytes of
 *                       struct user_regs_struct, then xstate_len bytes of
 *                       the NT_X86_XSTATE regset, then npending * 128 bytes
 *                       of siginfo; per thread. Then one record with tid 0
 *                       for the shared (process-wide) pending signals.
 *   STASIS_IOC_FILES:   struct stasis_file_rec, then path_len bytes of path
 *                       padded to 8; per open fd, in fd order.
 *   STASIS_IOC_TASKSTATE: struct stasis_taskstate_rec (process-wide: what
 *                       the userspace core otherwise reads by calls injected
 *                       into the process), then one struct
 *                       stasis_threadstate_rec per thread.
 */
#ifndef _UAPI_STASIS_KMOD_H
#define _UAPI_STASIS_KMOD_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define STASIS_KMOD_VERSION 1
#define STASIS_DEVICE_NAME "stasis"
#define STASIS_PAGE_SIZE 4096

/* Limits the module enforces; a larger request is refused with EINVAL. */
#define STASIS_MAX_PAGES_BYTES (1ULL << 30) /* per STASIS_IOC_PAGES call */
#define STASIS_MAX_PATH 4096

/* STASIS_IOC_VERSION: fills version and the struct sizes it knows. */
struct stasis_version {
	__u32 size;		/* in: sizeof(struct stasis_version) */
	__u32 version;		/* out: STASIS_KMOD_VERSION */
	__u32 task_req_size;	/* out: sizeof(struct stasis_task_req) */
	__u32 pages_req_size;	/* out: sizeof(struct stasis_pages_req) */
};

/* VMAS, THREADS and FILES: one task, one output fd. */
struct stasis_task_req {
	__u32 size;		/* in: sizeof(struct stasis_task_req) */
	__s32 pid;		/* in: thread group id, in the caller's pid ns */
	__s32 fd;		/* in: where the records go (opened for writing) */
	__u32 flags;		/* in: must be 0 */
	__u64 count;		/* out: records written */
	__u64 bytes;		/* out: bytes written */
	__u64 reserved[4];	/* in: must be 0 */
};

/* PAGES: the saved pages of [start, end), at most max_bytes of page data. */
struct stasis_pages_req {
	__u32 size;		/* in: sizeof(struct stasis_pages_req) */
	__s32 pid;
	__s32 fd;
	__u32 flags;		/* in: STASIS_PAGES_* */
	__u64 start;		/* in: page aligned, inside one VMA */
	__u64 end;		/* in: page aligned, <= that VMA's end */
	__u64 max_bytes;	/* in: page data limit, 4096..STASIS_MAX_PAGES_BYTES */
	__u64 next;		/* out: where to continue (== end when done) */
	__u64 pages;		/* out: pages written */
	__u64 zero_pages;	/* out: present pages skipped as all-zero */
	__u64 bytes;		/* out: bytes written (records and data) */
	__u64 reserved;		/* in: must be 0 */
};

/* Anonymous (copied-on-write) pages only, as for a private file mapping. */
#define STASIS_PAGES_ANON_ONLY (1U << 0)
/* Skip pages whose content is all zero. */
#define STASIS_PAGES_SKIP_ZERO (1U << 1)
#define STASIS_PAGES_FLAGS (STASIS_PAGES_ANON_ONLY | STASIS_PAGES_SKIP_ZERO)

/* VMA record flags (stasis_vma_rec.flags): VM_* bits as the kernel keeps them. */
#define STASIS_VM_READ		0x00000001ULL
#define STASIS_VM_WRITE		0x00000002ULL
#define STASIS_VM_EXEC		0x00000004ULL
#define STASIS_VM_SHARED	0x00000008ULL
#define STASIS_VM_MAYSHARE	0x00000080ULL
#define STASIS_VM_GROWSDOWN	0x00000100ULL
#define STASIS_VM_LOCKED	0x00002000ULL
#define STASIS_VM_DONTCOPY	0x00020000ULL
#define STASIS_VM_NORESERVE	0x00200000ULL
#define STASIS_VM_HUGETLB	0x00400000ULL
#define STASIS_VM_WIPEONFORK	0x02000000ULL
#define STASIS_VM_DONTDUMP	0x04000000ULL
#define STASIS_VM_MERGEABLE	0x80000000ULL
#define STASIS_VM_HUGEPAGE	0x20000000ULL
#define STASIS_VM_NOHUGEPAGE	0x40000000ULL

/* stasis_vma_rec.kind */
#define STASIS_VMA_ANON		0	/* no file */
#define STASIS_VMA_FILE		1	/* path is the file (d_path) */
#define STASIS_VMA_SPECIAL	2	/* path is "[vdso]", "[vvar]", ... */
#define STASIS_VMA_HEAP		3	/* "[heap]" */
#define STASIS_VMA_STACK	4	/* "[stack]" */

struct stasis_vma_rec {
	__u64 start;
	__u64 end;
	__u64 flags;		/* STASIS_VM_* (the raw vm_flags) */
	__u64 pgoff;		/* bytes */
	__u64 ino;
	__u32 dev_major;
	__u32 dev_minor;
	__u32 kind;		/* STASIS_VMA_* */
	__u32 path_len;
};

struct stasis_page_rec {
	__u64 start;
	__u64 npages;
};

struct stasis_thread_rec {
	__s32 tid;		/* 0: the shared pending record */
	__u32 state;		/* 1 stopped, 2 traced, 3 frozen (cgroup freezer) */
	__u64 blocked;		/* signal mask, bit n-1 = signal n */
	__u32 gpregs_len;
	__u32 xstate_len;
	__u32 npending;		/* siginfo records following, 128 bytes each */
	__u32 pad;
};

#define STASIS_SIGINFO_SIZE 128

struct stasis_file_rec {
	__s32 fd;
	__u32 fd_flags;		/* 1: close-on-exec */
	__u32 f_flags;		/* O_* of the open file description */
	__u32 mode;		/* st_mode */
	__u64 pos;
	__u64 dev;		/* st_dev, userspace encoding */
	__u64 ino;
	__u64 rdev;
	__u64 fsize;
	__s64 mtime_ns;
	__u32 nlink;
	__u32 path_len;
	__u64 file_id;		/* equal for fds sharing one open file description */
};

/* One signal's disposition, as rt_sigaction(2) reports it. */
struct stasis_sigaction {
	__u64 handler;
	__u64 flags;
	__u64 restorer;
	__u64 mask;
};

/* STASIS_TASKSTATE_* flags of stasis_taskstate_rec.flags */
#define STASIS_TASKSTATE_CPU_ITIMERS 1U	/* ITIMER_VIRTUAL/PROF armed: not reported */

struct stasis_taskstate_rec {
	__u64 brk;			/* mm->brk, what brk(0) returns */
	__u64 itimer_real_value_ns;	/* as getitimer(ITIMER_REAL) */
	__u64 itimer_real_interval_ns;
	__u64 timer_slack_ns;		/* of the thread group leader */
	__u32 pdeath_signal;		/* of the leader */
	__u32 child_subreaper;
	__u32 dumpable;
	__u32 flags;			/* STASIS_TASKSTATE_* */
	__u32 nthreads;			/* stasis_threadstate_rec records following */
	__u32 pad;
	struct stasis_sigaction action[64];	/* signal n at [n - 1] */
};

struct stasis_threadstate_rec {
	__s32 tid;
	__s32 altstack_flags;	/* as sigaltstack(2) reports them */
	__u64 altstack_sp;
	__u64 altstack_size;
	__u64 timer_slack_ns;	/* PR_GET_TIMERSLACK */
	__u64 clear_child_tid;	/* PR_GET_TID_ADDRESS */
	__u64 rseq;		/* as PTRACE_GET_RSEQ_CONFIGURATION reports it */
	__u32 rseq_len;
	__u32 rseq_sig;
};

#define STASIS_IOC_MAGIC 0xCE
#define STASIS_IOC_VERSION _IOWR(STASIS_IOC_MAGIC, 0, struct stasis_version)
#define STASIS_IOC_VMAS    _IOWR(STASIS_IOC_MAGIC, 1, struct stasis_task_req)
#define STASIS_IOC_PAGES   _IOWR(STASIS_IOC_MAGIC, 2, struct stasis_pages_req)
#define STASIS_IOC_THREADS _IOWR(STASIS_IOC_MAGIC, 3, struct stasis_task_req)
#define STASIS_IOC_FILES   _IOWR(STASIS_IOC_MAGIC, 4, struct stasis_task_req)
#define STASIS_IOC_TASKSTATE _IOWR(STASIS_IOC_MAGIC, 5, struct stasis_task_req)

#endif /* _UAPI_STASIS_KMOD_H */

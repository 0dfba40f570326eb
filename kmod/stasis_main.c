// SPDX-License-Identifier: GPL-2.0
/*
 * stasis.ko - ptrace-free capture of a stopped or frozen task.
 *
 * The module registers /dev/stasis (mode 0600). Each ioctl names a task
 * the caller may trace by the kernel's ptrace rule for the identity it acts
 * as (stasis_may_capture) whose every thread is stopped (group stop or
 * ptrace stop) or frozen, and a file descriptor; it writes what the kernel
 * knows of the task there as the records described in
 * include/uapi/stasis_kmod.h: the VMA list, the saved pages of one range,
 * the registers, masks and pending signals of every thread, and the open
 * file table. Restore stays in userspace (engine/core): a module on 6.1
 * cannot swap an mm nor set signal handlers.
 *
 * Only symbols the 6.1 kernel exports to modules are used: ptrace_may_access,
 * lock_task_sighand and wait_task_inactive are not, so the module has its
 * own equivalents (stasis_may_capture, stasis_lock_sighand and a bounded
 * wait for the threads to leave their CPUs).
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/delay.h>
#include <linux/elf.h>
#include <linux/fdtable.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/hrtimer.h>
#include <linux/kdev_t.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/pid.h>
#include <linux/regset.h>
#include <linux/sched.h>
#include <linux/sched/coredump.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/sched/task_stack.h>
#include <linux/signal.h>
#include <linux/version.h>
#include <linux/slab.h>
#include <linux/stat.h>
#include <linux/uaccess.h>
#include <linux/vmalloc.h>

#include "include/uapi/stasis_kmod.h"

/* Allocations, task and file references the module holds right now. */
static atomic_long_t stasis_live = ATOMIC_LONG_INIT(0);

static void *stasis_alloc(size_t n)
{
	void *p = kvzalloc(n, GFP_KERNEL_ACCOUNT);

	if (p)
		atomic_long_inc(&stasis_live);
	return p;
}

static void stasis_free(void *p)
{
	if (!p)
		return;
	kvfree(p);
	atomic_long_dec(&stasis_live);
}

/* --- output ------------------------------------------------------------- */

struct stasis_out {
	struct file *file;
	u64 count;
	u64 bytes;
};

static const struct file_operations stasis_fops;

static void stasis_out_close(struct stasis_out *out)
{
	if (out->file) {
		fput(out->file);
		atomic_long_dec(&stasis_live);
		out->file = NULL;
	}
}

static int stasis_write(struct stasis_out *out, const void *buf, size_t n)
{
	loff_t pos = out->file->f_pos;

	while (n > 0) {
		ssize_t w = kernel_write(out->file, buf, n, &pos);

		if (w < 0)
			return w;
		if (w == 0)
			return -EIO;
		buf += w;
		n -= w;
		out->bytes += w;
		if (fatal_signal_pending(current))
			return -EINTR;
	}
	out->file->f_pos = pos;
	return 0;
}

static int stasis_write_padded(struct stasis_out *out, const void *buf,
			       size_t n)
{
	static const char zeros[8];
	int err = stasis_write(out, buf, n);

	if (err || !(n & 7))
		return err;
	return stasis_write(out, zeros, 8 - (n & 7));
}

/* --- the task ------------------------------------------------------------ */

/*
 * Is the caller acting for someone else through its file identity? A root
 * tool or stasisd's worker takes a user's identity with setfsuid/setfsgid
 * (and setgroups) and keeps its capabilities, CAP_SYS_PTRACE included: the
 * kernel's rule with those capabilities would let it read anything, so
 * while it acts for a user it gets exactly what that user would get.
 */
static bool stasis_acting_for_user(const struct cred *cred)
{
	return !uid_eq(cred->fsuid, cred->euid) ||
	       !gid_eq(cred->fsgid, cred->egid);
}

/* ptrace_has_cap() for the identity the caller acts as. */
static bool stasis_ptrace_cap(struct user_namespace *ns, bool acting)
{
	return !acting && ns_capable(ns, CAP_SYS_PTRACE);
}

/*
 * May the caller read task (whose mm is mm)? The kernel's own rule, that
 * is __ptrace_may_access() plus commoncap's cap_ptrace_access_check() in
 * PTRACE_MODE_ATTACH_FSCREDS (what opening /proc/PID/mem checks), neither
 * of which is exported:
 *
 *  - the caller's fsuid equals the target's uid, euid and suid and its
 *    fsgid the target's gid, egid and sgid, or the caller has
 *    CAP_SYS_PTRACE in the target's user namespace;
 *  - the target is dumpable (SUID_DUMP_USER: not set-id, not made
 *    non-dumpable), or the caller has CAP_SYS_PTRACE in the user namespace
 *    the mm was created in;
 *  - the target is in the caller's user namespace and its permitted
 *    capabilities are a subset of the caller's effective ones (FSCREDS
 *    compares against the effective set), or the caller has CAP_SYS_PTRACE
 *    in the target's user namespace.
 *
 * Fs credentials, not real ones (ATTACH_REALCREDS, what the ptrace call
 * checks): stasisd's worker and root tools act for a user through
 * setfsuid/setfsgid, as file access does.
 *
 * A caller acting for a user (fsuid/fsgid other than its euid/egid) is
 * judged as that user, so none of its own capabilities count:
 *  - no CAP_SYS_PTRACE bypass in any namespace;
 *  - the subset test is against an empty set: the target may hold no
 *    permitted capability at all. The caller's effective set (root's minus
 *    what setfsuid drops, CAP_FS_MASK) would still hold CAP_SYS_ADMIN,
 *    CAP_NET_ADMIN etc., which the user it acts for does not have; the
 *    capabilities of that user's own processes are not known here (a
 *    socket peer gives uid, gid and groups), so the empty set is the only
 *    sound choice, and the stricter one;
 *  - for the same reason a target in another user namespace is refused,
 *    even one the user owns (the kernel would let the user in through the
 *    namespace's ownership; granting that here would need the caller's
 *    credentials recomputed for the user, and refusing is safe).
 *
 * Not applied: LSM hooks (security_ptrace_access_check is not exported:
 * Yama's ptrace_scope, AppArmor and SELinux ptrace rules), which only ever
 * refuse more. Opening /dev/stasis (0600, root) needs root's file rights in
 * the first place.
 */
static bool stasis_may_capture(struct task_struct *task, struct mm_struct *mm)
{
	const struct cred *cred = current_cred();
	const struct cred *tcred;
	bool acting = stasis_acting_for_user(cred);
	bool ok;

	rcu_read_lock();
	tcred = __task_cred(task);
	ok = (uid_eq(cred->fsuid, tcred->euid) &&
	      uid_eq(cred->fsuid, tcred->suid) &&
	      uid_eq(cred->fsuid, tcred->uid) &&
	      gid_eq(cred->fsgid, tcred->egid) &&
	      gid_eq(cred->fsgid, tcred->sgid) &&
	      gid_eq(cred->fsgid, tcred->gid)) ||
	     stasis_ptrace_cap(tcred->user_ns, acting);
	if (ok)
		ok = (cred->user_ns == tcred->user_ns &&
		      (acting ? cap_isclear(tcred->cap_permitted) :
				cap_issubset(tcred->cap_permitted,
					     cred->cap_effective))) ||
		     stasis_ptrace_cap(tcred->user_ns, acting);
	rcu_read_unlock();
	if (!ok)
		return false;
	/*
	 * Dumpability after the credentials, as __ptrace_may_access reads
	 * them: pairs with the write barrier in commit_creds(), so a task
	 * that dropped privileges and became non-dumpable is not seen with
	 * the new credentials and the old dumpability.
	 */
	smp_rmb();
	return get_dumpable(mm) == SUID_DUMP_USER ||
	       stasis_ptrace_cap(mm->user_ns, acting);
}

static bool stasis_thread_quiet(struct task_struct *t)
{
	if (t->flags & PF_EXITING)
		return true;	/* gone soon, captures nothing */
	/*
	 * Group stop or ptrace stop; the v1 freezer (TASK_FROZEN); the cgroup
	 * v2 freezer, which parks the task in its signal path (t->frozen, a
	 * bit-field set under siglock: a plain read, rechecked per request).
	 */
	return task_is_stopped_or_traced(t) ||
	       (READ_ONCE(t->__state) & TASK_FROZEN) || t->frozen;
}

struct stasis_task {
	struct task_struct *task;	/* the thread group leader */
	struct mm_struct *mm;
	struct task_struct **threads;	/* references, leader first */
	unsigned int nthreads;
};

static void stasis_task_put(struct stasis_task *st)
{
	unsigned int i;

	for (i = 0; i < st->nthreads; i++) {
		put_task_struct(st->threads[i]);
		atomic_long_dec(&stasis_live);
	}
	stasis_free(st->threads);
	if (st->mm) {
		mmput(st->mm);
		atomic_long_dec(&stasis_live);
	}
	if (st->task) {
		put_task_struct(st->task);
		atomic_long_dec(&stasis_live);
	}
	memset(st, 0, sizeof(*st));
}

/* Takes a reference to every thread; -EAGAIN if threads appeared meanwhile. */
static int stasis_collect_threads(struct stasis_task *st)
{
	struct task_struct *t;
	unsigned int cap = get_nr_threads(st->task) + 4;
	int err = 0;

	st->threads = stasis_alloc(cap * sizeof(*st->threads));
	if (!st->threads)
		return -ENOMEM;
	rcu_read_lock();
	for_each_thread(st->task, t) {
		if (st->nthreads == cap) {
			err = -EAGAIN;
			break;
		}
		get_task_struct(t);
		atomic_long_inc(&stasis_live);
		st->threads[st->nthreads++] = t;
	}
	rcu_read_unlock();
	return err;
}

/*
 * Finds the task, checks the caller may capture it and that every thread
 * is stopped or frozen and off its CPU (so its user registers and FPU state
 * are in memory).
 */
static int stasis_task_get(struct stasis_task *st, pid_t nr)
{
	struct pid *pid;
	unsigned int i;
	int err, tries;

	memset(st, 0, sizeof(*st));
	if (nr <= 0)
		return -EINVAL;
	pid = find_get_pid(nr);
	if (!pid)
		return -ESRCH;
	st->task = get_pid_task(pid, PIDTYPE_TGID);
	put_pid(pid);
	if (!st->task)
		return -ESRCH;
	atomic_long_inc(&stasis_live);
	st->mm = get_task_mm(st->task);
	if (!st->mm) {
		err = -ESRCH;	/* a zombie or a kernel thread */
		goto out_put;
	}
	atomic_long_inc(&stasis_live);
	if (!stasis_may_capture(st->task, st->mm)) {
		err = -EPERM;
		goto out_put;
	}
	err = stasis_collect_threads(st);
	if (err)
		goto out_put;
	for (i = 0; i < st->nthreads; i++) {
		struct task_struct *t = st->threads[i];

		if (!stasis_thread_quiet(t)) {
			err = -EBUSY;
			goto out_put;
		}
		/* A thread that just stopped may still be leaving its CPU. */
		for (tries = 0; READ_ONCE(t->on_cpu) && tries < 100; tries++)
			usleep_range(50, 100);
		if (READ_ONCE(t->on_cpu)) {
			err = -EBUSY;
			goto out_put;
		}
	}
	/*
	 * Checked again now that no thread runs: only a task changes its own
	 * credentials (commit_creds), so they and its mm stay as checked
	 * until the request ends. A task that was still running at the first
	 * check may have exec'd a set-id program meanwhile.
	 */
	if (READ_ONCE(st->task->mm) != st->mm ||
	    !stasis_may_capture(st->task, st->mm)) {
		err = -EPERM;
		goto out_put;
	}
	return 0;

out_put:
	stasis_task_put(st);
	return err;
}

/* lock_task_sighand() is not exported: the same loop over RCU. */
static struct sighand_struct *stasis_lock_sighand(struct task_struct *t,
						  unsigned long *flags)
{
	struct sighand_struct *sh;

	for (;;) {
		rcu_read_lock();
		sh = rcu_dereference(t->sighand);
		if (!sh) {
			rcu_read_unlock();
			return NULL;
		}
		spin_lock_irqsave(&sh->siglock, *flags);
		if (likely(sh == rcu_access_pointer(t->sighand))) {
			rcu_read_unlock();
			return sh;
		}
		spin_unlock_irqrestore(&sh->siglock, *flags);
		rcu_read_unlock();
	}
}

/* --- request checks -------------------------------------------------------- */

static int stasis_out_open(struct stasis_out *out, int fd)
{
	struct file *file;

	memset(out, 0, sizeof(*out));
	if (fd < 0)
		return -EBADF;
	file = fget(fd);
	if (!file)
		return -EBADF;
	atomic_long_inc(&stasis_live);
	out->file = file;
	if (!(file->f_mode & FMODE_WRITE)) {
		stasis_out_close(out);
		return -EBADF;
	}
	if (file->f_op == &stasis_fops) {
		stasis_out_close(out);
		return -EINVAL;	/* not into /dev/stasis itself */
	}
	return 0;
}

static int stasis_get_task_req(struct stasis_task_req *req, void __user *arg)
{
	u32 size;
	unsigned int i;

	if (get_user(size, (u32 __user *)arg))
		return -EFAULT;
	if (size != sizeof(*req))
		return -EINVAL;
	if (copy_from_user(req, arg, sizeof(*req)))
		return -EFAULT;
	if (req->flags)
		return -EINVAL;
	for (i = 0; i < ARRAY_SIZE(req->reserved); i++)
		if (req->reserved[i])
			return -EINVAL;
	return 0;
}

/*
 * The start of every per-task ioctl: the request, the output file, the task
 * (checked: ours to read, stopped or frozen). On failure nothing is held.
 */
static long stasis_task_begin(void __user *arg, struct stasis_task_req *req,
			      struct stasis_out *out, struct stasis_task *st)
{
	long err;

	err = stasis_get_task_req(req, arg);
	if (err)
		return err;
	err = stasis_out_open(out, req->fd);
	if (err)
		return err;
	err = stasis_task_get(st, req->pid);
	if (err)
		stasis_out_close(out);
	return err;
}

/* --- VMAS ------------------------------------------------------------------ */

struct stasis_buf {
	char *data;
	size_t len;
	size_t cap;
};

#define STASIS_MAX_VMA_LIST (64UL << 20)

static int stasis_buf_add(struct stasis_buf *b, const void *p, size_t n)
{
	size_t padded = ALIGN(n, 8);

	if (b->len + padded > b->cap) {
		size_t cap = max_t(size_t, b->cap * 2, 64 << 10);
		char *d;

		while (cap < b->len + padded)
			cap *= 2;
		if (cap > STASIS_MAX_VMA_LIST)
			return -E2BIG;
		d = stasis_alloc(cap);
		if (!d)
			return -ENOMEM;
		if (b->len)
			memcpy(d, b->data, b->len);
		stasis_free(b->data);
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, p, n);
	memset(b->data + b->len + n, 0, padded - n);
	b->len += padded;
	return 0;
}

static int stasis_add_vma(struct stasis_buf *b, struct vm_area_struct *vma,
			  char *pathbuf)
{
	struct mm_struct *mm = vma->vm_mm;
	struct stasis_vma_rec rec = {};
	const char *name = NULL;
	int err;

	rec.start = vma->vm_start;
	rec.end = vma->vm_end;
	rec.flags = vma->vm_flags;
	rec.kind = STASIS_VMA_ANON;
	if (vma->vm_file) {
		struct inode *inode = file_inode(vma->vm_file);

		rec.kind = STASIS_VMA_FILE;
		rec.pgoff = (u64)vma->vm_pgoff << PAGE_SHIFT;
		rec.ino = inode->i_ino;
		rec.dev_major = MAJOR(inode->i_sb->s_dev);
		rec.dev_minor = MINOR(inode->i_sb->s_dev);
		name = d_path(&vma->vm_file->f_path, pathbuf, STASIS_MAX_PATH);
		if (IS_ERR(name))
			return PTR_ERR(name);
	} else if (vma->vm_ops && vma->vm_ops->name) {
		name = vma->vm_ops->name(vma);
		rec.kind = STASIS_VMA_SPECIAL;
	}
	if (!name && !vma->vm_file) {
		if (vma->vm_start <= mm->brk && vma->vm_end >= mm->start_brk) {
			name = "[heap]";
			rec.kind = STASIS_VMA_HEAP;
		} else if (vma->vm_start <= mm->start_stack &&
			   vma->vm_end >= mm->start_stack) {
			name = "[stack]";
			rec.kind = STASIS_VMA_STACK;
		}
	}
	rec.path_len = name ? strlen(name) : 0;
	err = stasis_buf_add(b, &rec, sizeof(rec));
	if (!err && rec.path_len)
		err = stasis_buf_add(b, name, rec.path_len);
	return err;
}

static long stasis_ioc_vmas(void __user *arg)
{
	struct stasis_task_req req;
	struct stasis_buf b = {};
	struct stasis_task st;
	struct stasis_out out;
	struct vm_area_struct *vma;
	char *pathbuf;
	long err;

	err = stasis_task_begin(arg, &req, &out, &st);
	if (err)
		return err;
	pathbuf = stasis_alloc(STASIS_MAX_PATH);
	if (!pathbuf) {
		err = -ENOMEM;
		goto out_task;
	}
	err = mmap_read_lock_killable(st.mm);
	if (err)
		goto out_path;
	{
		VMA_ITERATOR(vmi, st.mm, 0);

		for_each_vma(vmi, vma) {
			err = stasis_add_vma(&b, vma, pathbuf);
			if (err)
				break;
			req.count++;
		}
	}
	mmap_read_unlock(st.mm);
	/* Written after the lock is dropped: the fd may block (a pipe). */
	if (!err && b.len)
		err = stasis_write(&out, b.data, b.len);
	req.bytes = out.bytes;
	if (!err && copy_to_user(arg, &req, sizeof(req)))
		err = -EFAULT;
	stasis_free(b.data);
out_path:
	stasis_free(pathbuf);
out_task:
	stasis_task_put(&st);
	stasis_out_close(&out);
	return err;
}

/* --- PAGES ----------------------------------------------------------------- */

#define STASIS_PAGE_BATCH 64

static bool stasis_page_is_zero(struct page *page)
{
	const u64 *w = kmap_local_page(page);
	bool zero = !memchr_inv(w, 0, PAGE_SIZE);

	kunmap_local(w);
	return zero;
}

/* Is a pte present at addr (no fault, no allocation)? Caller holds mmap_lock. */
static bool stasis_pte_present(struct mm_struct *mm, unsigned long addr)
{
	spinlock_t *ptl;
	pte_t *ptep;

	if (follow_pte(mm, addr, &ptep, &ptl))
		return false;
	pte_unmap_unlock(ptep, ptl);
	return true;
}

struct stasis_pages {
	struct page *page[STASIS_PAGE_BATCH];
	unsigned long addr[STASIS_PAGE_BATCH];
	unsigned int n;
	struct page *got[STASIS_PAGE_BATCH];	/* one gup call's pages */
};

/* Keeps a pinned page in the batch, or drops it (file page, zero page). */
static void stasis_keep_page(struct stasis_pages *pg, struct page *page,
			     unsigned long addr, u32 flags, u64 *zero_pages)
{
	if (((flags & STASIS_PAGES_ANON_ONLY) && !PageAnon(page)) ||
	    ((flags & STASIS_PAGES_SKIP_ZERO) && stasis_page_is_zero(page))) {
		if (PageAnon(page))
			(*zero_pages)++;
		put_page(page);
		return;
	}
	pg->page[pg->n] = page;
	pg->addr[pg->n] = addr;
	pg->n++;
}

/*
 * Fills up to `want` saved pages of [addr, end) into pg; returns where the
 * scan stopped. FOLL_DUMP makes holes and the zero page fail instead of
 * being faulted in; FOLL_FORCE reads PROT_NONE and read-only mappings.
 */
static long stasis_grab_pages(struct stasis_task *st, unsigned long addr,
			      unsigned long end, unsigned int want, u32 flags,
			      struct stasis_pages *pg, u64 *zero_pages,
			      unsigned long *next)
{
	struct vm_area_struct *vma;
	bool per_page;
	long err;

	err = mmap_read_lock_killable(st->mm);
	if (err)
		return err;
	vma = find_vma(st->mm, addr);
	if (!vma || vma->vm_start > addr || vma->vm_end < end) {
		err = -EINVAL;	/* the range is not inside one VMA */
		goto out;
	}
	if (vma->vm_flags & (VM_IO | VM_PFNMAP)) {
		err = -EINVAL;
		goto out;
	}
	/* File mappings: one page at a time, only where a pte is present. */
	per_page = (flags & STASIS_PAGES_ANON_ONLY) && vma->vm_file;

	while (addr < end && pg->n < want) {
		unsigned long nr = per_page ? 1 :
			min_t(unsigned long, (end - addr) >> PAGE_SHIFT,
			      want - pg->n);
		long got, i;

		if (per_page && !stasis_pte_present(st->mm, addr)) {
			addr += PAGE_SIZE;	/* would come from the file */
			continue;
		}
		/* Stops at the first hole: a partial count, or -EFAULT. */
		got = get_user_pages_remote(st->mm, addr, nr,
					    FOLL_FORCE | FOLL_DUMP, pg->got,
					    NULL, NULL);
		if (got == -EFAULT || got == 0) {
			addr += PAGE_SIZE;	/* a hole or the zero page */
		} else if (got < 0) {
			err = got;
			break;
		} else {
			for (i = 0; i < got; i++)
				stasis_keep_page(pg, pg->got[i],
						 addr + i * PAGE_SIZE, flags,
						 zero_pages);
			addr += got * PAGE_SIZE;
		}
		if (fatal_signal_pending(current)) {
			err = -EINTR;
			break;
		}
	}
out:
	mmap_read_unlock(st->mm);
	*next = addr;
	return err;
}

static void stasis_put_pages(struct stasis_pages *pg)
{
	unsigned int i;

	for (i = 0; i < pg->n; i++)
		put_page(pg->page[i]);
	pg->n = 0;
}

static int stasis_write_pages(struct stasis_out *out, struct stasis_pages *pg)
{
	unsigned int i = 0, j, k;
	void *v;
	int err = 0;

	while (i < pg->n && !err) {
		struct stasis_page_rec rec;

		for (j = i + 1; j < pg->n &&
		     pg->addr[j] == pg->addr[j - 1] + PAGE_SIZE; j++)
			;
		rec.start = pg->addr[i];
		rec.npages = j - i;
		err = stasis_write(out, &rec, sizeof(rec));
		/* A run mapped contiguously goes out in one write. */
		v = err || j - i == 1 ? NULL :
		    vmap(&pg->page[i], j - i, VM_MAP, PAGE_KERNEL_RO);
		if (v) {
			err = stasis_write(out, v, (j - i) * PAGE_SIZE);
			vunmap(v);
		}
		for (k = i; k < j && !err && !v; k++) {
			void *p = kmap_local_page(pg->page[k]);

			err = stasis_write(out, p, PAGE_SIZE);
			kunmap_local(p);
		}
		out->count++;
		i = j;
	}
	stasis_put_pages(pg);
	return err;
}

static long stasis_ioc_pages(void __user *arg)
{
	struct stasis_pages_req req;
	struct stasis_pages *pg;
	struct stasis_task st;
	struct stasis_out out;
	unsigned long addr, next;
	u64 budget;
	u32 size;
	long err;

	if (get_user(size, (u32 __user *)arg))
		return -EFAULT;
	if (size != sizeof(req))
		return -EINVAL;
	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	if ((req.flags & ~STASIS_PAGES_FLAGS) || req.reserved)
		return -EINVAL;
	if (!PAGE_ALIGNED(req.start) || !PAGE_ALIGNED(req.end) ||
	    req.start >= req.end || req.end > TASK_SIZE_MAX)
		return -EINVAL;
	if (req.max_bytes < PAGE_SIZE || req.max_bytes > STASIS_MAX_PAGES_BYTES)
		return -EINVAL;
	err = stasis_out_open(&out, req.fd);
	if (err)
		return err;
	err = stasis_task_get(&st, req.pid);
	if (err)
		goto out_close;
	pg = stasis_alloc(sizeof(*pg));
	if (!pg) {
		err = -ENOMEM;
		goto out_task;
	}
	req.pages = 0;
	req.zero_pages = 0;
	addr = req.start;
	budget = req.max_bytes >> PAGE_SHIFT;
	while (addr < req.end && budget > 0) {
		unsigned int want = min_t(u64, budget, STASIS_PAGE_BATCH);

		err = stasis_grab_pages(&st, addr, req.end, want, req.flags,
					pg, &req.zero_pages, &next);
		req.pages += pg->n;
		budget -= pg->n;
		/* Page data is written with the mmap lock dropped. */
		if (!err)
			err = stasis_write_pages(&out, pg);
		else
			stasis_put_pages(pg);
		if (err)
			break;
		addr = next;
		cond_resched();
	}
	req.next = addr;
	req.bytes = out.bytes;
	if (!err && copy_to_user(arg, &req, sizeof(req)))
		err = -EFAULT;
	stasis_free(pg);
out_task:
	stasis_task_put(&st);
out_close:
	stasis_out_close(&out);
	return err;
}

/* --- THREADS --------------------------------------------------------------- */

static const struct user_regset *stasis_find_regset(
	const struct user_regset_view *view, unsigned int note)
{
	unsigned int i;

	for (i = 0; i < view->n; i++)
		if (view->regsets[i].core_note_type == note)
			return &view->regsets[i];
	return NULL;
}

/*
 * Copies the siginfo of a pending list into buf (npending * 128 bytes, the
 * layout PTRACE_PEEKSIGINFO gives); -EAGAIN if the list grew past room.
 */
static int stasis_copy_pending(struct task_struct *t, bool shared, u8 *buf,
			       unsigned int room, unsigned int *n)
{
	struct sighand_struct *sh;
	struct sigpending *pending;
	struct sigqueue *q;
	unsigned long flags;
	int err = 0;

	*n = 0;
	sh = stasis_lock_sighand(t, &flags);
	if (!sh)
		return -ESRCH;
	pending = shared ? &t->signal->shared_pending : &t->pending;
	list_for_each_entry(q, &pending->list, list) {
		if (*n == room) {
			err = -EAGAIN;
			break;
		}
		if (buf) {
			memset(buf + *n * STASIS_SIGINFO_SIZE, 0,
			       STASIS_SIGINFO_SIZE);
			memcpy(buf + *n * STASIS_SIGINFO_SIZE, &q->info,
			       sizeof(q->info));
		}
		(*n)++;
	}
	spin_unlock_irqrestore(&sh->siglock, flags);
	return err;
}

static int stasis_write_pending(struct stasis_out *out, struct task_struct *t,
				bool shared, struct stasis_thread_rec *rec,
				const void *regs, const void *xstate)
{
	unsigned int room, n;
	u8 *buf = NULL;
	int err;

	/* Count, allocate, copy; the list may change in between: retry. */
	for (;;) {
		err = stasis_copy_pending(t, shared, NULL, UINT_MAX, &room);
		if (err)
			return err;
		room += 8;
		buf = stasis_alloc((size_t)room * STASIS_SIGINFO_SIZE);
		if (!buf)
			return -ENOMEM;
		err = stasis_copy_pending(t, shared, buf, room, &n);
		if (err != -EAGAIN)
			break;
		stasis_free(buf);
	}
	if (err)
		goto out;
	rec->npending = n;
	err = stasis_write(out, rec, sizeof(*rec));
	if (!err && rec->gpregs_len)
		err = stasis_write(out, regs, rec->gpregs_len);
	if (!err && rec->xstate_len)
		err = stasis_write(out, xstate, rec->xstate_len);
	if (!err && n)
		err = stasis_write(out, buf, (size_t)n * STASIS_SIGINFO_SIZE);
	out->count++;
out:
	stasis_free(buf);
	return err;
}

static long stasis_ioc_threads(void __user *arg)
{
	const struct user_regset *gp, *xs;
	const struct user_regset_view *view;
	struct stasis_task_req req;
	struct stasis_task st;
	struct stasis_out out;
	unsigned int gp_size, xs_size = 0, i;
	void *regs = NULL, *xstate = NULL;
	long err;

	err = stasis_task_begin(arg, &req, &out, &st);
	if (err)
		return err;
	view = task_user_regset_view(st.task);
	if (view->e_machine != EM_X86_64) {
		err = -EOPNOTSUPP;	/* 32-bit tasks */
		goto out_task;
	}
	gp = stasis_find_regset(view, NT_PRSTATUS);
	xs = stasis_find_regset(view, NT_X86_XSTATE);
	if (!gp || !gp->regset_get) {
		err = -EOPNOTSUPP;
		goto out_task;
	}
	gp_size = gp->n * gp->size;
	if (xs && xs->regset_get)
		xs_size = xs->n * xs->size;
	regs = stasis_alloc(gp_size);
	xstate = xs_size ? stasis_alloc(xs_size) : NULL;
	if (!regs || (xs_size && !xstate)) {
		err = -ENOMEM;
		goto out_free;
	}
	for (i = 0; i < st.nthreads; i++) {
		struct task_struct *t = st.threads[i];
		struct stasis_thread_rec rec = {};
		int n;

		if (t->flags & PF_EXITING)
			continue;
		rec.tid = task_pid_vnr(t);
		rec.state = task_is_traced(t) ? 2 : task_is_stopped(t) ? 1 : 3;
		rec.blocked = t->blocked.sig[0];
		n = regset_get(t, gp, gp_size, regs);
		if (n < 0) {
			err = n;
			break;
		}
		rec.gpregs_len = n;
		if (xs_size) {
			n = regset_get(t, xs, xs_size, xstate);
			if (n < 0) {
				err = n;
				break;
			}
			rec.xstate_len = n;
		}
		err = stasis_write_pending(&out, t, false, &rec, regs, xstate);
		if (err)
			break;
	}
	if (!err) {
		struct stasis_thread_rec rec = {};

		err = stasis_write_pending(&out, st.task, true, &rec, NULL,
					   NULL);
	}
	req.count = out.count;
	req.bytes = out.bytes;
	if (!err && copy_to_user(arg, &req, sizeof(req)))
		err = -EFAULT;
out_free:
	stasis_free(regs);
	stasis_free(xstate);
out_task:
	stasis_task_put(&st);
	stasis_out_close(&out);
	return err;
}

/* --- FILES ----------------------------------------------------------------- */

#define STASIS_FD_BATCH 64

struct stasis_fd_batch {
	struct file *file[STASIS_FD_BATCH];
	int fd[STASIS_FD_BATCH];
	bool cloexec[STASIS_FD_BATCH];
	unsigned int n;
	struct files_struct *files;
};

/* Runs under files->file_lock (iterate_fd): no sleeping here. */
static int stasis_fd_cb(const void *arg, struct file *file, unsigned int fd)
{
	struct stasis_fd_batch *b = (struct stasis_fd_batch *)arg;

	if (b->n == STASIS_FD_BATCH)
		return 1;	/* full: the caller resumes at this fd */
	get_file(file);
	atomic_long_inc(&stasis_live);
	b->file[b->n] = file;
	b->fd[b->n] = fd;
	b->cloexec[b->n] = close_on_exec(fd, files_fdtable(b->files));
	b->n++;
	return 0;
}

/*
 * The open file descriptions seen so far, for stasis_file_rec.file_id; each
 * holds a reference until the request ends, so no pointer is reused.
 */
struct stasis_seen {
	struct file **file;
	unsigned int n, cap;
};

static void stasis_seen_put(struct stasis_seen *seen)
{
	unsigned int i;

	for (i = 0; i < seen->n; i++) {
		fput(seen->file[i]);
		atomic_long_dec(&stasis_live);
	}
	stasis_free(seen->file);
}

static u64 stasis_file_id(struct stasis_seen *seen, struct file *file)
{
	unsigned int i;

	for (i = 0; i < seen->n; i++)
		if (seen->file[i] == file)
			return i + 1;
	if (seen->n == seen->cap) {
		unsigned int cap = seen->cap ? seen->cap * 2 : 64;
		struct file **f = stasis_alloc(cap * sizeof(*f));

		if (!f)
			return 0;
		if (seen->n)
			memcpy(f, seen->file, seen->n * sizeof(*f));
		stasis_free(seen->file);
		seen->file = f;
		seen->cap = cap;
	}
	get_file(file);
	atomic_long_inc(&stasis_live);
	seen->file[seen->n++] = file;
	return seen->n;
}

static int stasis_write_file(struct stasis_out *out, int fd, bool cloexec,
			     struct file *file, u64 file_id, char *pathbuf)
{
	struct stasis_file_rec rec = {};
	struct kstat stat;
	const char *path;
	int err;

	err = vfs_getattr(&file->f_path, &stat, STATX_BASIC_STATS,
			  AT_STATX_SYNC_AS_STAT);
	if (err)
		return err;
	path = d_path(&file->f_path, pathbuf, STASIS_MAX_PATH);
	if (IS_ERR(path))
		return PTR_ERR(path);
	rec.fd = fd;
	rec.fd_flags = cloexec ? 1 : 0;
	rec.f_flags = file->f_flags;
	rec.mode = stat.mode;
	rec.pos = file->f_pos;
	rec.dev = new_encode_dev(stat.dev);
	rec.ino = stat.ino;
	rec.rdev = new_encode_dev(stat.rdev);
	rec.fsize = stat.size;
	rec.mtime_ns = timespec64_to_ns(&stat.mtime);
	rec.nlink = stat.nlink;
	rec.path_len = strlen(path);
	rec.file_id = file_id;
	err = stasis_write(out, &rec, sizeof(rec));
	if (!err)
		err = stasis_write_padded(out, path, rec.path_len);
	out->count++;
	return err;
}

static long stasis_ioc_files(void __user *arg)
{
	struct stasis_fd_batch *b;
	struct stasis_seen seen = {};
	struct stasis_task_req req;
	struct stasis_task st;
	struct stasis_out out;
	char *pathbuf;
	unsigned int i, next_fd = 0;
	long err;

	err = stasis_task_begin(arg, &req, &out, &st);
	if (err)
		return err;
	b = stasis_alloc(sizeof(*b));
	pathbuf = stasis_alloc(STASIS_MAX_PATH);
	if (!b || !pathbuf) {
		err = -ENOMEM;
		goto out_free;
	}
	for (;;) {
		b->n = 0;
		/* task->files is stable under task_lock (exit_files takes it). */
		task_lock(st.task);
		b->files = st.task->files;
		if (b->files)
			iterate_fd(b->files, next_fd, stasis_fd_cb, b);
		task_unlock(st.task);
		if (!b->files) {
			err = -ESRCH;
			break;
		}
		for (i = 0; i < b->n && !err; i++) {
			u64 id = stasis_file_id(&seen, b->file[i]);

			if (!id)
				err = -ENOMEM;
			else
				err = stasis_write_file(&out, b->fd[i],
							b->cloexec[i],
							b->file[i], id,
							pathbuf);
		}
		if (b->n)
			next_fd = b->fd[b->n - 1] + 1;
		for (i = 0; i < b->n; i++) {
			fput(b->file[i]);
			atomic_long_dec(&stasis_live);
		}
		if (err || b->n < STASIS_FD_BATCH)
			break;
	}
	req.count = out.count;
	req.bytes = out.bytes;
	if (!err && copy_to_user(arg, &req, sizeof(req)))
		err = -EFAULT;
out_free:
	stasis_free(pathbuf);
	stasis_free(b);
	stasis_seen_put(&seen);
	stasis_task_put(&st);
	stasis_out_close(&out);
	return err;
}

/* --- TASKSTATE ------------------------------------------------------------- */

/*
 * What the userspace core otherwise reads by calls injected into the
 * process: handlers (do_sigaction is not exported, but sighand->action is
 * a field, read under siglock), brk, the real itimer, prctl values, and
 * each thread's altstack as sigaltstack(2) would report it.
 */
static long stasis_ioc_taskstate(void __user *arg)
{
	struct stasis_taskstate_rec *rec;
	struct stasis_task_req req;
	struct stasis_task st;
	struct stasis_out out;
	struct sighand_struct *sh;
	struct signal_struct *sig;
	unsigned long flags;
	unsigned int i;
	long err;

	err = stasis_task_begin(arg, &req, &out, &st);
	if (err)
		return err;
	rec = stasis_alloc(sizeof(*rec));
	if (!rec) {
		err = -ENOMEM;
		goto out_task;
	}
	memset(rec, 0, sizeof(*rec));
	rec->brk = READ_ONCE(st.mm->brk);
	rec->timer_slack_ns = st.task->timer_slack_ns;
	rec->pdeath_signal = st.task->pdeath_signal;
	rec->dumpable = get_dumpable(st.mm);
	sh = stasis_lock_sighand(st.task, &flags);
	if (!sh) {
		err = -ESRCH;
		goto out_free;
	}
	sig = st.task->signal;
	for (i = 0; i < 64; i++) {
		const struct sigaction *sa = &sh->action[i].sa;

		if (i + 1 == SIGKILL || i + 1 == SIGSTOP)
			continue;	/* the core records them empty */
		rec->action[i].handler = (u64)(unsigned long)sa->sa_handler;
		rec->action[i].flags = sa->sa_flags & UAPI_SA_FLAGS;
		rec->action[i].restorer = (u64)(unsigned long)sa->sa_restorer;
		rec->action[i].mask = sa->sa_mask.sig[0];
	}
	rec->child_subreaper = sig->is_child_subreaper;
	/* getitimer(ITIMER_REAL): what is left (at least 1 us while armed). */
	if (hrtimer_active(&sig->real_timer)) {
		ktime_t rem = hrtimer_expires_remaining(&sig->real_timer);

		rec->itimer_real_value_ns = rem <= 0 ? NSEC_PER_USEC : (u64)rem;
	}
	rec->itimer_real_interval_ns = (u64)sig->it_real_incr;
	/* The CPU itimers' remaining time needs an unexported sample. */
	if (sig->it[0].expires || sig->it[1].expires)
		rec->flags |= STASIS_TASKSTATE_CPU_ITIMERS;
	spin_unlock_irqrestore(&sh->siglock, flags);
	rec->nthreads = st.nthreads;
	err = stasis_write(&out, rec, sizeof(*rec));
	for (i = 0; !err && i < st.nthreads; i++) {
		struct task_struct *t = st.threads[i];
		struct stasis_threadstate_rec tr = {};
		unsigned long sp = user_stack_pointer(task_pt_regs(t));

		tr.tid = task_pid_vnr(t);
		tr.altstack_sp = t->sas_ss_sp;
		tr.altstack_size = t->sas_ss_size;
		/* sas_ss_flags(sp) | (flags & SS_FLAG_BITS), for thread t. */
		if (!t->sas_ss_size)
			tr.altstack_flags = SS_DISABLE;
		else if (!(t->sas_ss_flags & SS_AUTODISARM) &&
			 sp > t->sas_ss_sp && sp - t->sas_ss_sp <= t->sas_ss_size)
			tr.altstack_flags = SS_ONSTACK;
		tr.altstack_flags |= t->sas_ss_flags & SS_FLAG_BITS;
		tr.timer_slack_ns = t->timer_slack_ns;
		tr.clear_child_tid = (u64)(unsigned long)t->clear_child_tid;
#ifdef CONFIG_RSEQ
		tr.rseq = (u64)(unsigned long)t->rseq;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
		tr.rseq_len = t->rseq_len;
#else
		tr.rseq_len = sizeof(*t->rseq);	/* what ptrace reports on 6.1 */
#endif
		tr.rseq_sig = t->rseq_sig;
#endif
		err = stasis_write(&out, &tr, sizeof(tr));
	}
	req.count = 1 + st.nthreads;
	req.bytes = out.bytes;
	if (!err && copy_to_user(arg, &req, sizeof(req)))
		err = -EFAULT;
out_free:
	stasis_free(rec);
out_task:
	stasis_task_put(&st);
	stasis_out_close(&out);
	return err;
}

/* --- device ---------------------------------------------------------------- */

static long stasis_ioc_version(void __user *arg)
{
	struct stasis_version v;

	if (get_user(v.size, (u32 __user *)arg))
		return -EFAULT;
	if (v.size != sizeof(v))
		return -EINVAL;
	v.version = STASIS_KMOD_VERSION;
	v.task_req_size = sizeof(struct stasis_task_req);
	v.pages_req_size = sizeof(struct stasis_pages_req);
	return copy_to_user(arg, &v, sizeof(v)) ? -EFAULT : 0;
}

static long stasis_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case STASIS_IOC_VERSION:
		return stasis_ioc_version(uarg);
	case STASIS_IOC_VMAS:
		return stasis_ioc_vmas(uarg);
	case STASIS_IOC_PAGES:
		return stasis_ioc_pages(uarg);
	case STASIS_IOC_THREADS:
		return stasis_ioc_threads(uarg);
	case STASIS_IOC_FILES:
		return stasis_ioc_files(uarg);
	case STASIS_IOC_TASKSTATE:
		return stasis_ioc_taskstate(uarg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations stasis_fops = {
	.owner = THIS_MODULE,
	.unlocked_ioctl = stasis_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice stasis_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = STASIS_DEVICE_NAME,
	.fops = &stasis_fops,
	.mode = 0600,
};

static int __init stasis_init(void)
{
	/* The uapi names vm_flags bits; they must be the kernel's. */
	BUILD_BUG_ON(STASIS_VM_SHARED != VM_SHARED);
	BUILD_BUG_ON(STASIS_VM_GROWSDOWN != VM_GROWSDOWN);
	BUILD_BUG_ON(STASIS_VM_LOCKED != VM_LOCKED);
	BUILD_BUG_ON(STASIS_VM_DONTCOPY != VM_DONTCOPY);
	BUILD_BUG_ON(STASIS_VM_NORESERVE != VM_NORESERVE);
	BUILD_BUG_ON(STASIS_VM_HUGETLB != VM_HUGETLB);
	BUILD_BUG_ON(STASIS_VM_WIPEONFORK != VM_WIPEONFORK);
	BUILD_BUG_ON(STASIS_VM_DONTDUMP != VM_DONTDUMP);
	BUILD_BUG_ON(STASIS_VM_MERGEABLE != VM_MERGEABLE);
	BUILD_BUG_ON(STASIS_VM_HUGEPAGE != VM_HUGEPAGE);
	BUILD_BUG_ON(STASIS_VM_NOHUGEPAGE != VM_NOHUGEPAGE);
	BUILD_BUG_ON(STASIS_VM_MAYSHARE != VM_MAYSHARE);
	BUILD_BUG_ON(sizeof(struct stasis_task_req) % 8);
	BUILD_BUG_ON(sizeof(struct stasis_pages_req) % 8);
	BUILD_BUG_ON(sizeof(struct stasis_vma_rec) % 8);
	BUILD_BUG_ON(sizeof(struct stasis_thread_rec) % 8);
	BUILD_BUG_ON(sizeof(struct stasis_file_rec) % 8);
	BUILD_BUG_ON(sizeof(kernel_siginfo_t) > STASIS_SIGINFO_SIZE);
	return misc_register(&stasis_misc);
}

static void __exit stasis_exit(void)
{
	misc_deregister(&stasis_misc);
	/* Every allocation and reference is dropped before an ioctl returns. */
	WARN_ON_ONCE(atomic_long_read(&stasis_live) != 0);
}

module_init(stasis_init);
module_exit(stasis_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("stasis: ptrace-free capture of stopped tasks");
MODULE_VERSION("0.1.0");

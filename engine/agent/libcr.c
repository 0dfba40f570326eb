/*
 * libcr: BLCR's application API on top of the stasis engine, and the
 * in-process agent that cr_run preloads.
 *
 * Written in C, not C++: it is loaded into every task of a job (bash, perl,
 * python, Fortran codes), so it must not drag libstdc++ or static
 * constructors into them. While no checkpoint runs it costs nothing: no
 * wrapped system calls, no timers; a process that never calls cr_init()
 * does not even get the agent block. See agent_abi.h for the handshake with
 * the engine and docs/libcr.md for the API as stasis implements it.
 *
 * Threads and contexts:
 * - cr_init() creates, once per process, the agent block (a memfd, see
 *   agent_abi.h) and the agent thread, which sleeps in FUTEX_WAIT on the
 *   block's `cmd` word and runs the thread-context callbacks when a
 *   checkpointer posts a request.
 * - Signal-context callbacks belong to the thread that registered them;
 *   once every thread-context callback is inside cr_checkpoint(), the agent
 *   thread sends each such thread the agent signal and its handler runs them.
 * - Callbacks nest: cr_checkpoint() called by callback k runs callbacks
 *   k+1..n, and the innermost call waits for the checkpointer's verdict, so
 *   the code after cr_checkpoint() runs in reverse order, like atexit().
 */
#define _GNU_SOURCE
#include "libcr.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine/agent/agent_abi.h"
#include "engine/agent/stasis_agent.h"

#define EXPORT __attribute__((visibility("default")))

#ifndef STASIS_INSTALL_BINDIR
#define STASIS_INSTALL_BINDIR "/usr/local/bin"
#endif
#ifndef STASIS_REL_LIB_TO_BIN
#define STASIS_REL_LIB_TO_BIN "../bin"
#endif

/* ---------------------------------------------------------------- futex */

static long futex_wait(volatile uint32_t *addr, uint32_t val, const struct timespec *rel) {
  return syscall(SYS_futex, addr, FUTEX_WAIT, val, rel, NULL, 0);
}

static void futex_wake(volatile uint32_t *addr) {
  syscall(SYS_futex, addr, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

static uint32_t load32(volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store32(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static pid_t my_tid(void) { return (pid_t)syscall(SYS_gettid); }

/* ---------------------------------------------------------------- state */

struct cb {
  cr_callback_t func;
  void *arg;
  int flags;
};

/* One thread that called cr_init(). */
struct cr_thread {
  pid_t tid;
  int id;
  struct cb *sig_cbs; /* signal-context callbacks, in registration order */
  int nsig, capsig;
  int cs_depth;
  int persist;
  struct cr_thread *next;
};

/* A group of callbacks run one inside the other (see the top comment). */
struct chain {
  int is_thread;  /* thread-context group (else signal-context) */
  struct cb *cbs; /* in registration order; run last to first */
  int *ids;       /* their registration ids, for cr_replace_self */
  int n, pos;
  int result;
};

/* The callback running in this thread. */
struct frame {
  struct chain *c;
  int k; /* index into c->cbs */
  int called;
  struct frame *prev;
};

#define CS_PENDING 0x80000000u
#define CS_COUNT 0x7fffffffu
#define SIGNAL_ID_BASE 0x1000000

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_key_t g_key;
static pthread_once_t g_key_once = PTHREAD_ONCE_INIT;
static struct cr_thread *g_threads;
static struct cb *g_thread_cbs;
static int g_nthread_cbs, g_capthread_cbs;
static struct stasis_agent_block *g_blk;
static int g_blk_fd = -1;
static int g_agent_running;
static pid_t g_agent_tid;
static int g_signum;
static int g_handler_installed;
static volatile uint32_t g_cs; /* CS_PENDING | count: a futex word */
static atomic_int g_status = CR_STATE_IDLE;
static atomic_int g_next_id = 1;
static cr_hook_fn_t g_hooks[CR_NUM_HOOKS];
static int g_hold_flags[3] = {CR_HOLD_DFLT, CR_HOLD_NONE, CR_HOLD_NONE};

/* The request being handled (valid while g_status != IDLE). */
static atomic_int g_ready, g_expected, g_active;
static atomic_int g_abort_code; /* positive code of a local TEMP/PERM failure */
static atomic_int g_omitted;
static atomic_int g_outcome;     /* 0 continue, 1 restart, -1 failed */
static atomic_int g_sig_purpose; /* 1: run signal chains, 2: run a hook */
static atomic_int g_hook_event;

static __thread struct cr_thread *tls_self;
static __thread struct frame *tls_frame;
static __thread struct cr_checkpoint_info tls_ckpt_info;
static __thread struct cr_restart_info tls_rstrt_info;

/* libcr's own checkpoint request (cr_request_checkpoint). */
static struct {
  int active;
  unsigned long handle;
  pid_t helper;
  int helper_reaped;
} g_req;
static unsigned long g_req_seq;

static void do_hook(cr_hook_event_t ev) {
  cr_hook_fn_t fn = g_hooks[ev];
  if (fn) fn(ev);
}

/* ------------------------------------------------------------ the block */

static int high_fd_base(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 3;
  if (rl.rlim_cur > 1024) return 1000;
  if (rl.rlim_cur > 64) return (int)rl.rlim_cur - 24;
  return 3;
}

/* Creates this process's agent block (or a fresh one after fork). */
static int block_create(uint32_t flags) {
  int fd = (int)syscall(SYS_memfd_create, STASIS_AGENT_MEMFD_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  /* Sealed at its size: a checkpointer maps the block only when it cannot
   * shrink under its mapping (agent_abi.h). */
  if (ftruncate(fd, STASIS_AGENT_BLOCK_SIZE) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    close(fd);
    return -1;
  }
  void *p = mmap(NULL, STASIS_AGENT_BLOCK_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    close(fd);
    return -1;
  }
  int hi = fcntl(fd, F_DUPFD_CLOEXEC, high_fd_base());
  if (hi >= 0) {
    close(fd);
    fd = hi;
  }
  struct stasis_agent_block *b = p;
  b->magic = STASIS_AGENT_MAGIC;
  b->version = STASIS_AGENT_VERSION;
  b->size = STASIS_AGENT_BLOCK_SIZE;
  b->pid = getpid();
  b->flags = flags;
  b->signum = (uint32_t)g_signum;
  b->environ_addr = (uint64_t)(uintptr_t)&environ;
  if (g_blk) munmap(g_blk, STASIS_AGENT_BLOCK_SIZE);
  if (g_blk_fd >= 0 && g_blk_fd != fd) {
    /* Keep the old number so the layout of fds stays the same. */
    if (dup3(fd, g_blk_fd, O_CLOEXEC) >= 0) {
      close(fd);
      fd = g_blk_fd;
    }
  }
  g_blk = b;
  g_blk_fd = fd;
  return 0;
}

static int choose_signal(void) {
  const char *s = getenv("STASIS_AGENT_SIGNAL");
  if (s && *s) {
    int v = atoi(s);
    if (v >= SIGRTMIN && v <= SIGRTMAX) return v;
  }
  return SIGRTMAX - 2;
}

static int ensure_block(void) {
  if (g_blk) return 0;
  if (!g_signum) g_signum = choose_signal();
  return block_create(0);
}

/* ------------------------------------------------------------- threads */

static void thread_gone(void *p) {
  struct cr_thread *t = p;
  if (t->persist > 0) {
    pthread_setspecific(g_key, t); /* BLCR: kept while persisted */
    return;
  }
  pthread_mutex_lock(&g_lock);
  for (struct cr_thread **pp = &g_threads; *pp; pp = &(*pp)->next) {
    if (*pp == t) {
      *pp = t->next;
      break;
    }
  }
  pthread_mutex_unlock(&g_lock);
  free(t->sig_cbs);
  free(t);
}

static void make_key(void) { pthread_key_create(&g_key, thread_gone); }

static int checkpointer_gone(void) {
  /* The checkpointer holds flock(LOCK_EX) on its own open of the block;
   * the kernel drops it when that process dies. */
  if (flock(g_blk_fd, LOCK_SH | LOCK_NB) == 0) {
    flock(g_blk_fd, LOCK_UN);
    return 1;
  }
  return 0;
}

static void publish_state(uint32_t st) {
  store32(&g_blk->state, st);
  futex_wake(&g_blk->state);
}

static void note_ready(void) {
  if (atomic_fetch_add(&g_ready, 1) + 1 == atomic_load(&g_expected) && !atomic_load(&g_omitted) &&
      !atomic_load(&g_abort_code))
    publish_state(STASIS_AGENT_ST_READY);
}

static void expect_less(void) {
  if (atomic_fetch_sub(&g_expected, 1) - 1 == atomic_load(&g_ready) && !atomic_load(&g_omitted) &&
      !atomic_load(&g_abort_code))
    publish_state(STASIS_AGENT_ST_READY);
}

/* Waits for the checkpointer's verdict; returns what cr_checkpoint returns. */
static int wait_outcome(void) {
  struct stasis_agent_block *b = g_blk;
  for (;;) {
    uint32_t c = load32(&b->cmd);
    if (atomic_load(&g_omitted) && c != STASIS_AGENT_CMD_REQUEST) {
      /* Left out: whatever became of the checkpoint, we just continue. */
      atomic_store(&g_outcome, 0);
      return -CR_EOMITTED;
    }
    if (c == STASIS_AGENT_CMD_CONTINUE) {
      atomic_store(&g_outcome, 0);
      return 0;
    }
    if (c == STASIS_AGENT_CMD_RESTART) {
      atomic_store(&g_outcome, 1);
      return 1;
    }
    if (c == STASIS_AGENT_CMD_ABORT) {
      atomic_store(&g_outcome, -1);
      return -(b->cmd_code > 0 ? b->cmd_code : CR_ETEMPFAIL);
    }
    int code = atomic_load(&g_abort_code);
    if (code) {
      atomic_store(&g_outcome, -1);
      return -code;
    }
    struct timespec one = {1, 0};
    if (futex_wait(&b->cmd, c, &one) != 0 && errno == ETIMEDOUT && load32(&b->cmd) == c &&
        checkpointer_gone()) {
      atomic_store(&g_outcome, -1);
      return -CR_ETEMPFAIL;
    }
  }
}

/* The last group to unwind ends the request, once the checkpointer has
 * seen the outcome (a failure is reported before the checkpointer answers:
 * FAILED must stay visible until it does). */
static void chain_finished(void) {
  if (atomic_fetch_sub(&g_active, 1) != 1) return;
  for (;;) {
    uint32_t c = load32(&g_blk->cmd);
    if (c != STASIS_AGENT_CMD_REQUEST) break;
    struct timespec one = {1, 0};
    if (futex_wait(&g_blk->cmd, c, &one) != 0 && errno == ETIMEDOUT && checkpointer_gone()) break;
  }
  atomic_store(&g_status, CR_STATE_IDLE);
  __atomic_fetch_and(&g_cs, ~CS_PENDING, __ATOMIC_ACQ_REL);
  futex_wake(&g_cs);
  publish_state(STASIS_AGENT_ST_IDLE);
}

static int chain_run(struct chain *c);

static int innermost(struct chain *c) {
  if (c->is_thread) {
    /* Every thread-context callback is inside cr_checkpoint(): now the
     * signal-context ones, each in its own thread. */
    pthread_mutex_lock(&g_lock);
    int n = 0;
    for (struct cr_thread *t = g_threads; t; t = t->next) n += t->nsig > 0;
    pid_t tids[n > 0 ? n : 1];
    n = 0;
    for (struct cr_thread *t = g_threads; t; t = t->next)
      if (t->nsig > 0) tids[n++] = t->tid;
    pthread_mutex_unlock(&g_lock);
    atomic_fetch_add(&g_expected, n);
    atomic_store(&g_sig_purpose, 1);
    for (int i = 0; i < n; ++i) {
      atomic_fetch_add(&g_active, 1);
      if (syscall(SYS_tgkill, getpid(), tids[i], g_signum) != 0) {
        atomic_fetch_sub(&g_active, 1);
        expect_less();
      }
    }
  }
  note_ready();
  return wait_outcome();
}

static int chain_run(struct chain *c) {
  while (c->pos < c->n) {
    int k = c->n - 1 - c->pos++;
    if (!c->cbs[k].func) continue;
    struct frame fr = {c, k, 0, tls_frame};
    tls_frame = &fr;
    (void)c->cbs[k].func(c->cbs[k].arg);
    tls_frame = fr.prev;
    if (fr.called) return c->result;
    /* Returned without cr_checkpoint(): go on with the next one. */
  }
  c->result = innermost(c);
  return c->result;
}

static void local_failure(int code, int perm) {
  int expected = 0;
  if (atomic_compare_exchange_strong(&g_abort_code, &expected, code)) {
    g_blk->state_code = code;
    g_blk->state_perm = (uint32_t)perm;
    publish_state(STASIS_AGENT_ST_FAILED);
  }
  futex_wake(&g_blk->cmd); /* other groups waiting in wait_outcome() */
}

static void signal_handler(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)uc;
  if (si->si_code != SI_TKILL || si->si_pid != getpid()) return;
  int saved = errno;
  struct cr_thread *t = tls_self;
  int purpose = atomic_load(&g_sig_purpose);
  if (purpose == 1 && t && t->nsig > 0 && !tls_frame) {
    struct chain c = {0, t->sig_cbs, NULL, t->nsig, 0, 0};
    int r = chain_run(&c);
    (void)r;
    int restarted = atomic_load(&g_outcome) == 1;
    do_hook(restarted ? CR_HOOK_RSTRT_SIGNAL_CONTEXT : CR_HOOK_CONT_SIGNAL_CONTEXT);
    chain_finished();
  } else if (purpose == 2) {
    do_hook((cr_hook_event_t)atomic_load(&g_hook_event));
  }
  errno = saved;
}

static void install_handler(void) {
  if (g_handler_installed) return;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = signal_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigfillset(&sa.sa_mask);
  if (sigaction(g_signum, &sa, NULL) == 0) g_handler_installed = 1;
}

/* Runs CR_HOOK_*_NO_CALLBACKS in every thread that took no part. */
static void hooks_for_other_threads(int restarted) {
  cr_hook_event_t ev = restarted ? CR_HOOK_RSTRT_NO_CALLBACKS : CR_HOOK_CONT_NO_CALLBACKS;
  if (!g_hooks[ev]) return;
  DIR *d = opendir("/proc/self/task");
  if (!d) return;
  atomic_store(&g_hook_event, ev);
  atomic_store(&g_sig_purpose, 2);
  struct dirent *e;
  while ((e = readdir(d))) {
    pid_t tid = atoi(e->d_name);
    if (tid <= 0 || tid == my_tid()) continue;
    int skip = 0;
    pthread_mutex_lock(&g_lock);
    for (struct cr_thread *t = g_threads; t; t = t->next) skip |= t->tid == tid && t->nsig > 0;
    pthread_mutex_unlock(&g_lock);
    if (!skip) syscall(SYS_tgkill, getpid(), tid, g_signum);
  }
  closedir(d);
}

static void handle_request(void) {
  struct stasis_agent_block *b = g_blk;
  atomic_store(&g_status, CR_STATE_PENDING);
  atomic_store(&g_ready, 0);
  atomic_store(&g_expected, 1);
  atomic_store(&g_active, 1);
  atomic_store(&g_abort_code, 0);
  atomic_store(&g_omitted, 0);
  atomic_store(&g_outcome, 0);
  b->nforward = 0;
  publish_state(STASIS_AGENT_ST_RUNNING);

  /* Critical sections defer the checkpoint: wait until none is held. */
  __atomic_fetch_or(&g_cs, CS_PENDING, __ATOMIC_ACQ_REL);
  for (;;) {
    uint32_t v = load32(&g_cs);
    if (!(v & CS_COUNT)) break;
    futex_wait(&g_cs, v, NULL);
  }
  atomic_store(&g_status, CR_STATE_ACTIVE);

  pthread_mutex_lock(&g_lock);
  int n = g_nthread_cbs;
  struct cb *cbs = malloc(sizeof(struct cb) * (size_t)(n ? n : 1));
  if (cbs && n) memcpy(cbs, g_thread_cbs, sizeof(struct cb) * (size_t)n);
  pthread_mutex_unlock(&g_lock);
  if (!cbs) n = 0;
  struct chain c = {1, cbs, NULL, n, 0, 0};
  int r = chain_run(&c);
  (void)r;
  free(cbs);
  int restarted = atomic_load(&g_outcome) == 1;
  do_hook(restarted ? CR_HOOK_RSTRT_THREAD_CONTEXT : CR_HOOK_CONT_THREAD_CONTEXT);
  chain_finished();
  /* Wait for the signal-context groups before the other threads' hooks. */
  while (load32(&b->state) != STASIS_AGENT_ST_IDLE) {
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  hooks_for_other_threads(restarted);
}

static void *agent_main(void *unused) {
  (void)unused;
  g_agent_tid = my_tid();
  prctl(PR_SET_NAME, "stasis-agent", 0, 0, 0);
  /* Every block starts at seq 0, and this thread may start after a
   * checkpointer already posted its request (cr_request_checkpoint right
   * after cr_init, a loaded machine): that request is ours to answer. One
   * whose checkpointer is gone (it holds flock(LOCK_EX) while it waits) is
   * stale and only marked as seen. */
  uint64_t handled = 0;
  for (;;) {
    struct stasis_agent_block *b = g_blk;
    uint32_t c = load32(&b->cmd);
    uint64_t seq = __atomic_load_n(&b->seq, __ATOMIC_ACQUIRE);
    if (c == STASIS_AGENT_CMD_REQUEST && seq != handled) {
      handled = seq;
      if (!checkpointer_gone()) handle_request();
      continue;
    }
    futex_wait(&b->cmd, c, NULL);
  }
  return NULL;
}

static int start_agent_thread(void) {
  if (g_agent_running) return 0;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 256 * 1024);
  pthread_t th;
  int rc = pthread_create(&th, &attr, agent_main, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  g_agent_running = 1;
  g_blk->flags |= STASIS_AGENT_F_ACTIVE;
  return 0;
}

/* ---------------------------------------------------------------- fork */

static void atfork_prepare(void) { pthread_mutex_lock(&g_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&g_lock); }
static void atfork_child(void) {
  pthread_mutex_init(&g_lock, NULL);
  if (!g_blk) return;
  /* The parent's block is shared memory: give the child its own. */
  uint32_t flags = g_blk->flags & (STASIS_AGENT_F_OMIT | STASIS_AGENT_F_OMIT_UNLESS_TARGET);
  int had_agent = g_agent_running;
  g_agent_running = 0;
  if (block_create(flags) != 0) {
    munmap(g_blk, STASIS_AGENT_BLOCK_SIZE);
    g_blk = NULL;
    return;
  }
  /* Only the forking thread exists in the child. */
  struct cr_thread *self = tls_self;
  g_threads = self;
  if (self) {
    self->next = NULL;
    self->tid = my_tid();
  }
  store32(&g_cs, self ? (uint32_t)self->cs_depth : 0);
  atomic_store(&g_status, CR_STATE_IDLE);
  g_req.active = 0;
  /* A fork from inside a callback starts the agent at the next libcr call. */
  if (had_agent && !tls_frame) start_agent_thread();
}

static void ensure_agent(void) {
  if (!g_agent_running && g_blk && tls_self) start_agent_thread();
}

__attribute__((constructor)) static void libcr_load(void) {
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
  const char *omit = getenv("STASIS_OMIT");
  if (omit && *omit && strcmp(omit, "0") != 0) {
    g_signum = choose_signal();
    block_create(STASIS_AGENT_F_OMIT);
  }
}

EXPORT unsigned stasis_agent_request_flags(void) {
  return g_blk ? __atomic_load_n(&g_blk->request_flags, __ATOMIC_ACQUIRE) : 0;
}

EXPORT int stasis_agent_set_omit(unsigned flags) {
  if (ensure_block() != 0) return -1;
  g_blk->flags = (g_blk->flags & ~(STASIS_AGENT_F_OMIT | STASIS_AGENT_F_OMIT_UNLESS_TARGET)) |
                 (flags & (STASIS_AGENT_F_OMIT | STASIS_AGENT_F_OMIT_UNLESS_TARGET));
  return 0;
}

/* ----------------------------------------------------------------- API */

EXPORT cr_client_id_t cr_init(void) {
  pthread_once(&g_key_once, make_key);
  pthread_mutex_lock(&g_lock);
  int rc = ensure_block();
  pthread_mutex_unlock(&g_lock);
  if (rc != 0) return -1;
  if (!tls_self) {
    struct cr_thread *t = calloc(1, sizeof *t);
    if (!t) {
      errno = ENOMEM;
      return -1;
    }
    t->tid = my_tid();
    t->id = atomic_fetch_add(&g_next_id, 1);
    pthread_mutex_lock(&g_lock);
    t->next = g_threads;
    g_threads = t;
    pthread_mutex_unlock(&g_lock);
    tls_self = t;
    pthread_setspecific(g_key, t);
  }
  install_handler();
  if (!g_agent_running && start_agent_thread() != 0) return -1;
  return tls_self->id;
}

static int check_init(void) {
  if (!tls_self || !g_blk) {
    errno = CR_ENOINIT;
    return -1;
  }
  ensure_agent();
  return 0;
}

static int context_of(int flags) {
  int ctx = flags & (CR_THREAD_CONTEXT | CR_SIGNAL_CONTEXT);
  if (ctx != CR_THREAD_CONTEXT && ctx != CR_SIGNAL_CONTEXT) return -1;
  if (flags & ~(CR_THREAD_CONTEXT | CR_SIGNAL_CONTEXT)) return -1;
  return ctx;
}

EXPORT cr_callback_id_t cr_register_callback(cr_callback_t func, void *arg, int flags) {
  if (check_init() != 0) return -1;
  if (tls_frame) {
    errno = EBUSY;
    return -1;
  }
  int ctx = context_of(flags);
  if (ctx < 0) {
    errno = EINVAL;
    return -1;
  }
  struct cb entry = {func, arg, flags};
  if (ctx == CR_THREAD_CONTEXT) {
    pthread_mutex_lock(&g_lock);
    if (g_nthread_cbs >= SIGNAL_ID_BASE) {
      pthread_mutex_unlock(&g_lock);
      errno = ENOSPC;
      return -1;
    }
    if (g_nthread_cbs == g_capthread_cbs) {
      int cap = g_capthread_cbs ? 2 * g_capthread_cbs : 8;
      struct cb *p = realloc(g_thread_cbs, sizeof(struct cb) * (size_t)cap);
      if (!p) {
        pthread_mutex_unlock(&g_lock);
        errno = ENOMEM;
        return -1;
      }
      g_thread_cbs = p;
      g_capthread_cbs = cap;
    }
    int id = g_nthread_cbs;
    g_thread_cbs[g_nthread_cbs++] = entry;
    pthread_mutex_unlock(&g_lock);
    return id;
  }
  struct cr_thread *t = tls_self;
  if (t->nsig >= CR_MAX_CALLBACKS - SIGNAL_ID_BASE) {
    errno = ENOSPC;
    return -1;
  }
  /* The agent signal must not find the array half-grown. */
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, g_signum);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  int id = -1;
  if (t->nsig == t->capsig) {
    int cap = t->capsig ? 2 * t->capsig : 4;
    struct cb *p = realloc(t->sig_cbs, sizeof(struct cb) * (size_t)cap);
    if (p) {
      t->sig_cbs = p;
      t->capsig = cap;
    }
  }
  if (t->nsig < t->capsig) {
    id = SIGNAL_ID_BASE + t->nsig;
    t->sig_cbs[t->nsig] = entry;
    pthread_mutex_lock(&g_lock);
    t->nsig++;
    pthread_mutex_unlock(&g_lock);
  } else {
    errno = ENOMEM;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return id;
}

EXPORT int cr_replace_callback(cr_callback_id_t id, cr_callback_t func, void *arg, int flags) {
  if (check_init() != 0) return -1;
  if (tls_frame) {
    errno = EBUSY;
    return -1;
  }
  int ctx = context_of(flags);
  if (ctx < 0 || id < 0) {
    errno = EINVAL;
    return -1;
  }
  struct cb entry = {func, arg, flags};
  if (ctx == CR_THREAD_CONTEXT) {
    pthread_mutex_lock(&g_lock);
    int ok = id < g_nthread_cbs;
    if (ok) g_thread_cbs[id] = entry;
    pthread_mutex_unlock(&g_lock);
    if (!ok) errno = EINVAL;
    return ok ? 0 : -1;
  }
  struct cr_thread *t = tls_self;
  if (id < SIGNAL_ID_BASE || id - SIGNAL_ID_BASE >= t->nsig) {
    errno = EINVAL;
    return -1;
  }
  t->sig_cbs[id - SIGNAL_ID_BASE] = entry;
  return 0;
}

EXPORT int cr_replace_self(cr_callback_t func, void *arg, int flags) {
  struct frame *fr = tls_frame;
  if (!fr) {
    errno = CR_ENOTCB;
    return -1;
  }
  int ctx = context_of(flags);
  int mine = fr->c->is_thread ? CR_THREAD_CONTEXT : CR_SIGNAL_CONTEXT;
  if (ctx != mine) {
    errno = EINVAL;
    return -1;
  }
  struct cb entry = {func, arg, flags};
  if (fr->c->is_thread) {
    /* The running group is a snapshot: change both. */
    pthread_mutex_lock(&g_lock);
    if (fr->k < g_nthread_cbs) g_thread_cbs[fr->k] = entry;
    pthread_mutex_unlock(&g_lock);
  }
  fr->c->cbs[fr->k] = entry;
  return 0;
}

EXPORT int cr_checkpoint(int flags) {
  struct frame *fr = tls_frame;
  if (!fr || fr->called || !g_blk) return -CR_ENOTCB;
  fr->called = 1;
  struct chain *c = fr->c;
  int kind = flags & 0xffff;
  int code = (int)((unsigned)flags >> 16);
  if (kind & (CR_CHECKPOINT_PERM_FAILURE | CR_CHECKPOINT_TEMP_FAILURE)) {
    int perm = (kind & CR_CHECKPOINT_PERM_FAILURE) != 0;
    if (!code) code = perm ? CR_EPERMFAIL : CR_ETEMPFAIL;
    local_failure(code, perm);
    c->pos = c->n;
    c->result = -code;
    atomic_store(&g_outcome, -1);
    return c->result;
  }
  if (kind & CR_CHECKPOINT_OMIT) {
    c->pos = c->n;
    if (!atomic_exchange(&g_omitted, 1)) publish_state(STASIS_AGENT_ST_OMIT);
    c->result = wait_outcome();
    if (c->result == 0) c->result = -CR_EOMITTED;
    return c->result;
  }
  if (kind != CR_CHECKPOINT_READY) {
    fr->called = 0;
    return -EINVAL;
  }
  return chain_run(c);
}

EXPORT int cr_enter_cs(cr_client_id_t id) {
  if (id == CR_ID_CALLBACK && tls_frame) return 0;
  if (check_init() != 0) return -1;
  if (id != tls_self->id) {
    errno = EINVAL;
    return -1;
  }
  for (;;) {
    uint32_t v = load32(&g_cs);
    if (v & CS_PENDING) {
      futex_wait(&g_cs, v, NULL);
      continue;
    }
    if (__atomic_compare_exchange_n(&g_cs, &v, v + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
  }
  tls_self->cs_depth++;
  return 0;
}

EXPORT int cr_tryenter_cs(cr_client_id_t id) {
  if (id == CR_ID_CALLBACK && tls_frame) return 0;
  if (check_init() != 0) return -1;
  if (id != tls_self->id) {
    errno = EINVAL;
    return -1;
  }
  for (;;) {
    uint32_t v = load32(&g_cs);
    if (v & CS_PENDING) return 1;
    if (__atomic_compare_exchange_n(&g_cs, &v, v + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
  }
  tls_self->cs_depth++;
  return 0;
}

EXPORT int cr_leave_cs(cr_client_id_t id) {
  if (id == CR_ID_CALLBACK && tls_frame) return 0;
  if (check_init() != 0) return -1;
  if (id != tls_self->id || tls_self->cs_depth <= 0) {
    errno = EINVAL;
    return -1;
  }
  tls_self->cs_depth--;
  uint32_t v = __atomic_sub_fetch(&g_cs, 1, __ATOMIC_ACQ_REL);
  if ((v & CS_PENDING) && !(v & CS_COUNT)) {
    /* The last critical section is left: the deferred checkpoint is taken
     * before we return. */
    futex_wake(&g_cs);
    while ((v = load32(&g_cs)) & CS_PENDING) futex_wait(&g_cs, v, NULL);
  }
  return 0;
}

EXPORT int cr_status(void) {
  if (check_init() != 0) return -1;
  return atomic_load(&g_status);
}

static int scope_ok(int scope) { return scope >= CR_SCOPE_PROC && scope <= CR_SCOPE_TREE; }

static int target_exists(int scope, pid_t target) {
  if (target <= 0) return 0;
  int rc;
  if (scope == CR_SCOPE_PGRP)
    rc = kill(-target, 0);
  else if (scope == CR_SCOPE_SESS)
    rc = getsid(target) == target ? 0 : -1;
  else
    rc = kill(target, 0);
  return rc == 0 || errno == EPERM;
}

EXPORT int cr_forward_checkpoint(cr_scope_t scope, pid_t target) {
  struct frame *fr = tls_frame;
  if (!fr || fr->called) {
    errno = CR_ENOTCB;
    return -1;
  }
  if (!scope_ok((int)scope)) {
    errno = EINVAL;
    return -1;
  }
  if (!target_exists((int)scope, target)) {
    errno = ESRCH;
    return -1;
  }
  uint32_t i = __atomic_fetch_add(&g_blk->nforward, 1, __ATOMIC_ACQ_REL);
  if (i >= STASIS_AGENT_MAX_FORWARD) {
    __atomic_fetch_sub(&g_blk->nforward, 1, __ATOMIC_ACQ_REL);
    errno = ENOSPC;
    return -1;
  }
  g_blk->forward[i].scope = (int32_t)scope;
  g_blk->forward[i].target = target;
  return 0;
}

EXPORT const struct cr_checkpoint_info *cr_get_checkpoint_info(void) {
  struct frame *fr = tls_frame;
  if (!fr || fr->called || !g_blk) return NULL;
  tls_ckpt_info.signal = g_blk->signal;
  tls_ckpt_info.dest = g_blk->dest;
  tls_ckpt_info.requester = g_blk->requester;
  tls_ckpt_info.target = g_blk->target;
  tls_ckpt_info.scope = (cr_scope_t)g_blk->scope;
  return &tls_ckpt_info;
}

EXPORT const struct cr_restart_info *cr_get_restart_info(void) {
  struct frame *fr = tls_frame;
  if (!fr || !fr->called || !g_blk || atomic_load(&g_outcome) != 1) return NULL;
  tls_rstrt_info.requester = g_blk->restart_requester;
  tls_rstrt_info.src = g_blk->restart_src;
  return &tls_rstrt_info;
}

EXPORT cr_hook_fn_t cr_register_hook(cr_hook_event_t event, cr_hook_fn_t hook_fn) {
  if (check_init() != 0) return CR_HOOK_FN_ERROR;
  if ((int)event < 0 || event >= CR_NUM_HOOKS || hook_fn == CR_HOOK_FN_ERROR) {
    errno = EINVAL;
    return CR_HOOK_FN_ERROR;
  }
  pthread_mutex_lock(&g_lock);
  cr_hook_fn_t old = g_hooks[event];
  g_hooks[event] = hook_fn;
  pthread_mutex_unlock(&g_lock);
  return old;
}

/* stasis never holds threads at a barrier after the callbacks: threads
 * without callbacks run again as soon as the context is written. Only that
 * behaviour (CR_HOLD_NONE) can be chosen; anything else is ENOTSUP. */
EXPORT int cr_hold_ctrl(int scope, int flags) {
  if (scope == CR_HOLD_SCOPE_THREAD && check_init() != 0) return -1;
  if (scope < CR_HOLD_SCOPE_THREAD || scope > CR_HOLD_SCOPE_UNINIT) {
    errno = EINVAL;
    return -1;
  }
  int old = g_hold_flags[scope];
  if (old == CR_HOLD_DFLT) old = CR_HOLD_NONE;
  if (flags == CR_HOLD_READ) return old;
  if (flags == CR_HOLD_NONE || (flags == CR_HOLD_DFLT && scope == CR_HOLD_SCOPE_THREAD)) {
    g_hold_flags[scope] = flags;
    return old;
  }
  if (flags < 0 || flags > CR_HOLD_DFLT) {
    errno = EINVAL;
    return -1;
  }
  errno = ENOTSUP;
  return -1;
}

EXPORT int cr_inc_persist(void) {
  if (check_init() != 0) return -1;
  return ++tls_self->persist;
}

EXPORT int cr_dec_persist(void) {
  if (check_init() != 0) return -1;
  if (tls_self->persist <= 0) {
    errno = EINVAL;
    return -1;
  }
  return --tls_self->persist;
}

EXPORT void cr_spinlock_init(cr_spinlock_t *l) { __atomic_store_n(l, 0u, __ATOMIC_RELEASE); }
EXPORT void cr_spinlock_lock(cr_spinlock_t *l) {
  while (__atomic_exchange_n(l, 1u, __ATOMIC_ACQUIRE)) sched_yield();
}
EXPORT void cr_spinlock_unlock(cr_spinlock_t *l) { __atomic_store_n(l, 0u, __ATOMIC_RELEASE); }
EXPORT int cr_spinlock_trylock(cr_spinlock_t *l) {
  return __atomic_exchange_n(l, 1u, __ATOMIC_ACQUIRE) == 0;
}

EXPORT const char *cr_strerror(int errnum) {
  switch (errnum) {
    case CR_ETEMPFAIL:
      return "Temporary error: checkpoint cancelled";
    case CR_EPERMFAIL:
      return "Permanent failure: checkpoint cancelled and job killed";
    case CR_ENOSUPPORT:
      return "Checkpoint support not linked into one or more processes";
    case CR_EVERSION:
      return "Requested interface version is not supported";
    case CR_EOMITTED:
      return "Process omitted from checkpoint at a callback's request";
    case CR_EBADARCH:
      return "Context file does not match this architecture";
    case CR_EPTRACED:
      return "One or more target processes is being ptraced";
    case CR_EPTRACER:
      return "One or more target processes has ptrace children";
    case CR_ERSTRTABRT:
      return "Restart aborted: restart cancelled and job killed";
    case CR_ERESTARTED:
      return "Request is invalid across a restart";
    case CR_ENOTCB:
      return "Call is only valid from a checkpoint callback";
    case CR_ENOINIT:
      return "Calling thread has not called cr_init()";
    default:
      return strerror(errnum);
  }
}

/* ------------------------------------------------------------ requests */

/* Shared by both cri_init_*_args_t: version check, zeroing. */
static int init_args(cr_version_t version, cr_version_t supported, void *args, size_t size) {
  if (version != supported) {
    errno = CR_EVERSION;
    return -1;
  }
  if (!args) {
    errno = EINVAL;
    return -1;
  }
  memset(args, 0, size);
  return 0;
}

EXPORT int cri_init_checkpoint_args_t(cr_version_t version, cr_checkpoint_args_t *args) {
  if (init_args(version, CR_CHECKPOINT_ARGS_VERSION, args, sizeof *args) != 0) return -1;
  args->cr_version = version;
  args->cr_scope = CR_SCOPE_PROC;
  args->cr_target = 0;
  args->cr_fd = -1;
  return 0;
}

/* Where cr_checkpoint is: $STASIS_CR_CHECKPOINT, the one installed with
 * this library (bindir relative to libdir, so a moved prefix still works),
 * the build tree's (../cli), or the configured bindir. */
static int find_helper(char *out, size_t n) {
  const char *env = getenv("STASIS_CR_CHECKPOINT");
  if (env && *env) {
    snprintf(out, n, "%s", env);
    return access(out, X_OK) == 0 ? 0 : -1;
  }
  Dl_info info;
  if (dladdr((void *)&find_helper, &info) && info.dli_fname) {
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", info.dli_fname);
    char *dir = dirname(self);
    const char *rel[] = {"/" STASIS_REL_LIB_TO_BIN "/cr_checkpoint", "/../cli/cr_checkpoint"};
    for (size_t i = 0; i < 2; ++i) {
      snprintf(out, n, "%s%s", dir, rel[i]);
      if (access(out, X_OK) == 0) return 0;
    }
  }
  snprintf(out, n, "%s/cr_checkpoint", STASIS_INSTALL_BINDIR);
  return access(out, X_OK) == 0 ? 0 : -1;
}

struct spawn {
  const char *path;
  char **argv;
  int ctx_fd;
  int blk_fd;
};

static int spawn_main(void *p) {
  struct spawn *s = p;
  /* fds 3 and 4 of the helper: the context destination and our block. */
  int ctx = s->ctx_fd >= 0 ? fcntl(s->ctx_fd, F_DUPFD, 10) : -1;
  int blk = fcntl(s->blk_fd, F_DUPFD, 10);
  if (blk < 0 || (s->ctx_fd >= 0 && ctx < 0)) _exit(126);
  if (ctx >= 0 && dup2(ctx, 3) < 0) _exit(126);
  if (dup2(blk, 4) < 0) _exit(126);
  execv(s->path, s->argv);
  _exit(127);
}

EXPORT int cr_request_checkpoint(cr_checkpoint_args_t *args, cr_checkpoint_handle_t *handle) {
  if (!args || !handle || args->cr_version != CR_CHECKPOINT_ARGS_VERSION ||
      !scope_ok((int)args->cr_scope) || args->cr_target < 0 || args->cr_signal < 0 ||
      args->cr_signal >= NSIG) {
    errno = EINVAL;
    return -1;
  }
  pid_t target = args->cr_target;
  if (target == 0) {
    if (args->cr_scope == CR_SCOPE_PGRP)
      target = getpgrp();
    else if (args->cr_scope == CR_SCOPE_SESS)
      target = getsid(0);
    else
      target = getpid();
  }
  if (!target_exists((int)args->cr_scope, target)) {
    errno = ESRCH;
    return -1;
  }
  if (args->cr_fd != CR_DEST_CWD) {
    int fl = fcntl(args->cr_fd, F_GETFL);
    if (fl < 0 || (fl & O_ACCMODE) == O_RDONLY) {
      errno = EBADF;
      return -1;
    }
  }
  if ((args->cr_flags & CR_CHKPT_PROHIBIT_SELF) &&
      ((args->cr_scope == CR_SCOPE_PROC && target == getpid()) ||
       (args->cr_scope == CR_SCOPE_TREE && target == getpid()) ||
       (args->cr_scope == CR_SCOPE_PGRP && target == getpgrp()) ||
       (args->cr_scope == CR_SCOPE_SESS && target == getsid(0)))) {
    errno = EDEADLK;
    return -1;
  }
  pthread_mutex_lock(&g_lock);
  if (g_req.active) {
    pthread_mutex_unlock(&g_lock);
    errno = EBUSY;
    return -1;
  }
  if (ensure_block() != 0) {
    pthread_mutex_unlock(&g_lock);
    return -1;
  }
  g_req.active = 1;
  pthread_mutex_unlock(&g_lock);

  char path[PATH_MAX];
  if (find_helper(path, sizeof path) != 0) {
    g_req.active = 0;
    errno = ENOENT;
    return -1;
  }
  char scope_opt[16], target_s[24], sig_s[24], req_s[24], time_s[24], file_s[64];
  static const char *scopes[] = {"--pid", "--pgid", "--sid", "--tree"};
  snprintf(scope_opt, sizeof scope_opt, "%s", scopes[args->cr_scope]);
  snprintf(target_s, sizeof target_s, "%d", (int)target);
  snprintf(sig_s, sizeof sig_s, "%d", args->cr_signal);
  snprintf(req_s, sizeof req_s, "%d", (int)getpid());
  snprintf(time_s, sizeof time_s, "%u", args->cr_timeout);
  snprintf(file_s, sizeof file_s, "context.%d", (int)target);
  char *argv[24];
  int a = 0;
  argv[a++] = "cr_checkpoint";
  argv[a++] = "--libcr-request";
  argv[a++] = "--requester";
  argv[a++] = req_s;
  if (args->cr_fd == CR_DEST_CWD) {
    argv[a++] = "-f";
    argv[a++] = file_s;
  } else {
    argv[a++] = "--fd";
    argv[a++] = "3";
  }
  if (args->cr_signal) {
    argv[a++] = "--signal";
    argv[a++] = sig_s;
  }
  if (args->cr_timeout) {
    argv[a++] = "--time";
    argv[a++] = time_s;
  }
  if (args->cr_flags & CR_CHKPT_DUMP_EXEC) argv[a++] = "--save-exe";
  if (args->cr_flags & CR_CHKPT_DUMP_PRIVATE) argv[a++] = "--save-private";
  if (args->cr_flags & CR_CHKPT_DUMP_SHARED) argv[a++] = "--save-shared";
  argv[a++] = scope_opt;
  argv[a++] = target_s;
  argv[a] = NULL;

  g_blk->req_result = 0;
  g_blk->req_msg[0] = 0;
  store32(&g_blk->req_state, STASIS_AGENT_REQ_PENDING);
  struct spawn s = {path, argv, args->cr_fd == CR_DEST_CWD ? -1 : args->cr_fd, g_blk_fd};
  size_t stack_size = 64 * 1024;
  void *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (stack == MAP_FAILED) {
    g_req.active = 0;
    store32(&g_blk->req_state, STASIS_AGENT_REQ_NONE);
    return -1;
  }
  /* A child that sends no SIGCHLD: the program's own wait(-1) or SIGCHLD
   * handler never sees it; we reap it with __WALL. */
  pid_t pid = clone(spawn_main, (char *)stack + stack_size, CLONE_VM | CLONE_VFORK, &s);
  int saved = errno;
  munmap(stack, stack_size);
  if (pid < 0) {
    g_req.active = 0;
    store32(&g_blk->req_state, STASIS_AGENT_REQ_NONE);
    errno = saved;
    return -1;
  }
  g_req.helper = pid;
  g_req.helper_reaped = 0;
  g_blk->req_helper = pid;
  g_req.handle = ++g_req_seq;
  *handle = g_req.handle;
  return 0;
}

static int valid_handle(cr_checkpoint_handle_t *handle) {
  return handle && g_blk && g_req.active && *handle == g_req.handle;
}

static void reap_helper(int block) {
  if (g_req.helper_reaped || load32(&g_blk->req_state) == STASIS_AGENT_REQ_RESTARTED) return;
  int st;
  pid_t r = waitpid(g_req.helper, &st, __WALL | (block ? 0 : WNOHANG));
  if (r == g_req.helper || (r < 0 && errno == ECHILD)) {
    g_req.helper_reaped = 1;
    if (load32(&g_blk->req_state) == STASIS_AGENT_REQ_PENDING) {
      /* The helper died without reporting. */
      g_blk->req_result = (r > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 127) ? ENOENT : EIO;
      snprintf(g_blk->req_msg, sizeof g_blk->req_msg,
               "cr_checkpoint helper ended without a result");
      store32(&g_blk->req_state, STASIS_AGENT_REQ_DONE);
    }
  }
}

EXPORT int cr_wait_checkpoint(cr_checkpoint_handle_t *handle, struct timeval *timeout) {
  if (!valid_handle(handle)) {
    errno = EINVAL;
    return -1;
  }
  struct timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  long long limit_ns = timeout ? timeout->tv_sec * 1000000000LL + timeout->tv_usec * 1000LL : -1;
  int done = 0;
  for (;;) {
    uint32_t st = load32(&g_blk->req_state);
    if (st == STASIS_AGENT_REQ_DONE || st == STASIS_AGENT_REQ_RESTARTED) {
      done = 1;
      break;
    }
    reap_helper(0);
    if (load32(&g_blk->req_state) != st) continue;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long spent = (now.tv_sec - start.tv_sec) * 1000000000LL + (now.tv_nsec - start.tv_nsec);
    if (limit_ns >= 0 && spent >= limit_ns) break;
    long long slice = 200000000LL;
    if (limit_ns >= 0 && limit_ns - spent < slice) slice = limit_ns - spent;
    struct timespec ts = {(time_t)(slice / 1000000000LL), (long)(slice % 1000000000LL)};
    futex_wait(&g_blk->req_state, st, &ts);
  }
  /* Like BLCR's hold barrier for the requesting thread: it goes on only
   * once this process's callbacks have finished their continue or restart
   * work (unless it is itself one of those callbacks). */
  if (done && !tls_frame) {
    while (atomic_load(&g_status) != CR_STATE_IDLE) {
      struct timespec ms = {0, 1000000};
      nanosleep(&ms, NULL);
    }
  }
  if (timeout) {
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long spent = (now.tv_sec - start.tv_sec) * 1000000000LL + (now.tv_nsec - start.tv_nsec);
    long long left = limit_ns - spent;
    if (left < 0) left = 0;
    timeout->tv_sec = (time_t)(left / 1000000000LL);
    timeout->tv_usec = (suseconds_t)((left % 1000000000LL) / 1000);
  }
  return done;
}

EXPORT int cr_log_checkpoint(cr_checkpoint_handle_t *handle, unsigned int len, char *msg) {
  if (!valid_handle(handle)) {
    errno = EINVAL;
    return -1;
  }
  size_t need = strnlen(g_blk->req_msg, sizeof g_blk->req_msg);
  if (need == 0) return 0;
  if (len && msg) {
    size_t n = need < len - 1 ? need : len - 1;
    memcpy(msg, g_blk->req_msg, n);
    msg[n] = 0;
  }
  return (int)need + 1;
}

EXPORT int cr_reap_checkpoint(cr_checkpoint_handle_t *handle) {
  if (!valid_handle(handle)) {
    errno = EINVAL;
    return -1;
  }
  uint32_t st = load32(&g_blk->req_state);
  if (st == STASIS_AGENT_REQ_PENDING) {
    reap_helper(0);
    st = load32(&g_blk->req_state);
    if (st == STASIS_AGENT_REQ_PENDING) {
      errno = EAGAIN;
      return -1;
    }
  }
  g_req.active = 0;
  if (st == STASIS_AGENT_REQ_RESTARTED) {
    store32(&g_blk->req_state, STASIS_AGENT_REQ_NONE);
    errno = CR_ERESTARTED;
    return -1;
  }
  reap_helper(1);
  int result = g_blk->req_result;
  store32(&g_blk->req_state, STASIS_AGENT_REQ_NONE);
  if (result) {
    errno = result;
    return -1;
  }
  return 1;
}

EXPORT int cr_poll_checkpoint_msg(cr_checkpoint_handle_t *handle, struct timeval *timeout,
                                  char **msg_p) {
  int rc = cr_wait_checkpoint(handle, timeout);
  if (rc == 0) return 0;
  if (rc < 0) return CR_POLL_CHKPT_ERR_PRE;
  if (msg_p) {
    int len = cr_log_checkpoint(handle, 0, NULL);
    if (len < 0) return CR_POLL_CHKPT_ERR_LOG;
    *msg_p = malloc((size_t)(len > 0 ? len : 1));
    if (!*msg_p) return CR_POLL_CHKPT_ERR_LOG;
    (*msg_p)[0] = 0;
    if (len > 0 && cr_log_checkpoint(handle, (unsigned)len, *msg_p) < 0)
      return CR_POLL_CHKPT_ERR_LOG;
  }
  if (cr_reap_checkpoint(handle) < 0) return CR_POLL_CHKPT_ERR_POST;
  return 1;
}

EXPORT int cr_poll_checkpoint(cr_checkpoint_handle_t *handle, struct timeval *timeout) {
  return cr_poll_checkpoint_msg(handle, timeout, NULL);
}

/* Restart through the library is not provided: cr_restart(1) stays the
 * parent of what it restores, which a library call cannot be. */
EXPORT int cri_init_restart_args_t(cr_version_t version, cr_restart_args_t *args) {
  if (init_args(version, CR_RESTART_ARGS_VERSION, args, sizeof *args) != 0) return -1;
  args->cr_version = version;
  args->cr_fd = -1;
  return 0;
}
EXPORT int cr_request_restart(cr_restart_args_t *args, cr_restart_handle_t *handle) {
  (void)args;
  (void)handle;
  errno = ENOSYS;
  return -1;
}
EXPORT int cr_wait_restart(cr_restart_handle_t *handle, struct timeval *timeout) {
  (void)handle;
  (void)timeout;
  errno = EINVAL;
  return -1;
}
EXPORT int cr_log_restart(cr_restart_handle_t *handle, unsigned int len, char *msg) {
  (void)handle;
  (void)len;
  (void)msg;
  errno = EINVAL;
  return -1;
}
EXPORT int cr_reap_restart(cr_restart_handle_t *handle) {
  (void)handle;
  errno = EINVAL;
  return -1;
}
EXPORT int cr_poll_restart_msg(cr_restart_handle_t *handle, struct timeval *timeout, char **msg_p) {
  (void)handle;
  (void)timeout;
  (void)msg_p;
  errno = EINVAL;
  return CR_POLL_RSTRT_ERR_PRE;
}
EXPORT int cr_poll_restart(cr_restart_handle_t *handle, struct timeval *timeout) {
  return cr_poll_restart_msg(handle, timeout, NULL);
}

/*
 * libcr_api: programs that use BLCR's API (through stasis's libcr) and check
 * its documented behaviour themselves. Each mode prints "OK ..." lines and
 * exits 0, or prints "FAIL ..." and exits 1. run_libcr.py drives them
 * (checkpoints, restarts, context inspection).
 *
 *   order FILE        callback order and contexts, info calls, hooks; checkpoints
 *                     itself into FILE; the restart of FILE checks the other half
 *   cs FILE N         critical sections racing N checkpoint requests
 *   omit FILE         a child that opts out; a request whose only target opts out
 *   fail FILE         TEMP failure then success; the process is unharmed
 *   extfail CODE      waits; each checkpoint fails with TEMP code CODE (or PERM if
 *                     CODE is "perm")
 *   request FILE      checkpoint of a child, then of the own process group
 *   forward PID       waits; callbacks forward the checkpoint to PID
 *   forkexec FILE     fork() and exec() from continue and restart callbacks
 *   replace FILE      cr_replace_callback/cr_replace_self; wait, log, reap one by one
 *   badinput          calls with bad input fail with BLCR's error codes
 *   wait [SECONDS]    cr_init + a callback, then waits (for external checkpoints)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libcr.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;
#define CHECK(cond, ...)                          \
  do {                                            \
    if (!(cond)) {                                \
      printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      printf(__VA_ARGS__);                        \
      printf("\n");                               \
      fflush(stdout);                             \
      failures++;                                 \
    }                                             \
  } while (0)
#define OK(...)          \
  do {                   \
    printf("OK ");       \
    printf(__VA_ARGS__); \
    printf("\n");        \
    fflush(stdout);      \
  } while (0)

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Checkpoints scope/target into path through cr_request_checkpoint.
 * Returns 0 continuing, 1 restarted, or -errno of the failed request. */
static int checkpoint_to(const char *path, cr_scope_t scope, pid_t target) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  cr_checkpoint_args_t args;
  if (cr_initialize_checkpoint_args_t(&args) != 0) return -errno;
  args.cr_scope = scope;
  args.cr_target = target;
  args.cr_fd = fd;
  cr_checkpoint_handle_t h;
  if (cr_request_checkpoint(&args, &h) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  int rc;
  do {
    rc = cr_poll_checkpoint(&h, NULL);
  } while (rc == CR_POLL_CHKPT_ERR_PRE && errno == EINTR);
  int e = errno;
  close(fd);
  if (rc > 0) return 0;
  if (rc == CR_POLL_CHKPT_ERR_POST && e == CR_ERESTARTED) return 1;
  return -e;
}

/* A pattern in memory, checked after a restart. */
static unsigned char *pattern;
static void fill_pattern(void) {
  pattern = malloc(1 << 20);
  for (int i = 0; i < 1 << 20; ++i) pattern[i] = (unsigned char)(i * 7 + 3);
}
static int pattern_ok(void) {
  for (int i = 0; i < 1 << 20; ++i)
    if (pattern[i] != (unsigned char)(i * 7 + 3)) return 0;
  return 1;
}

/* ------------------------------------------------------------- order */

#define LOG_MAX 64
static char log_ev[LOG_MAX][8];
static pid_t log_tid[LOG_MAX];
static atomic_int log_n;
static void log_event(const char *name) {
  int i = atomic_fetch_add(&log_n, 1);
  if (i < LOG_MAX) {
    snprintf(log_ev[i], sizeof log_ev[i], "%s", name);
    log_tid[i] = gettid_();
  }
}
static pid_t main_tid, worker_tid, plain_tid;
static const char *order_file;
static atomic_int hook_count[CR_NUM_HOOKS];
static struct cr_checkpoint_info info_seen;
static char dest_seen[4096];
static int restart_info_ok = -1;
static atomic_int worker_go = 1;

static void hook(cr_hook_event_t ev) { atomic_fetch_add(&hook_count[ev], 1); }

static int cb_named(void *arg) {
  const char *name = arg;
  char pre[8], post[8];
  snprintf(pre, sizeof pre, "%s<", name);
  snprintf(post, sizeof post, "%s>", name);
  log_event(pre);
  if (strcmp(name, "T2") == 0) {
    const struct cr_checkpoint_info *ci = cr_get_checkpoint_info();
    if (ci) {
      info_seen = *ci;
      snprintf(dest_seen, sizeof dest_seen, "%s", ci->dest ? ci->dest : "");
    }
  }
  int rc = cr_checkpoint(CR_CHECKPOINT_READY);
  if (strcmp(name, "T2") == 0 && rc > 0) {
    const struct cr_restart_info *ri = cr_get_restart_info();
    restart_info_ok = ri && ri->requester > 0 && ri->src && strcmp(ri->src, order_file) == 0;
  }
  log_event(post);
  return 0;
}

static void *worker_main(void *unused) {
  (void)unused;
  worker_tid = gettid_();
  if (cr_init() < 0) return NULL;
  cr_register_callback(cb_named, "W1", CR_SIGNAL_CONTEXT);
  while (atomic_load(&worker_go)) sleep_ms(5);
  return NULL;
}

static void *plain_main(void *unused) {
  (void)unused;
  plain_tid = gettid_();
  while (atomic_load(&worker_go)) sleep_ms(5);
  return NULL;
}

/* Events of one group, in log order. */
static void group(const char *prefix, char *out, size_t n) {
  out[0] = 0;
  int count = atomic_load(&log_n);
  for (int i = 0; i < count && i < LOG_MAX; ++i)
    if (strncmp(log_ev[i], prefix, 1) == 0) {
      strncat(out, log_ev[i], n - strlen(out) - 1);
      strncat(out, " ", n - strlen(out) - 1);
    }
}

static int mode_order(const char *file) {
  order_file = file;
  main_tid = gettid_();
  fill_pattern();
  CHECK(cr_init() >= 0, "cr_init: %s", cr_strerror(errno));
  for (int ev = 0; ev < CR_NUM_HOOKS; ++ev)
    CHECK(cr_register_hook((cr_hook_event_t)ev, hook) == NULL, "cr_register_hook %d", ev);
  CHECK(cr_register_callback(cb_named, "T1", CR_THREAD_CONTEXT) >= 0, "register T1");
  CHECK(cr_register_callback(cb_named, "T2", CR_THREAD_CONTEXT) >= 0, "register T2");
  CHECK(cr_register_callback(cb_named, "S1", CR_SIGNAL_CONTEXT) >= 0, "register S1");
  CHECK(cr_register_callback(cb_named, "S2", CR_SIGNAL_CONTEXT) >= 0, "register S2");
  CHECK(cr_register_callback(cb_named, "S3", CR_SIGNAL_CONTEXT) >= 0, "register S3");
  pthread_t w, pl;
  pthread_create(&w, NULL, worker_main, NULL);
  pthread_create(&pl, NULL, plain_main, NULL);
  while (!worker_tid || !plain_tid) sleep_ms(1);
  sleep_ms(50);
  int r = checkpoint_to(file, CR_SCOPE_PROC, 0);
  CHECK(r == 0 || r == 1, "checkpoint request: %s", r < 0 ? cr_strerror(-r) : "");
  /* Hooks run as each group unwinds; the NO_CALLBACKS ones last. */
  cr_hook_event_t last = r == 1 ? CR_HOOK_RSTRT_NO_CALLBACKS : CR_HOOK_CONT_NO_CALLBACKS;
  for (int i = 0; i < 400 && atomic_load(&hook_count[last]) < 1; ++i) sleep_ms(5);
  char t[256], s[256], wk[256];
  group("T", t, sizeof t);
  group("S", s, sizeof s);
  group("W", wk, sizeof wk);
  CHECK(strcmp(t, "T2< T1< T1> T2> ") == 0, "thread-context group ran as '%s'", t);
  CHECK(strcmp(s, "S3< S2< S1< S1> S2> S3> ") == 0, "signal-context group (LIFO) ran as '%s'", s);
  CHECK(strcmp(wk, "W1< W1> ") == 0, "worker's signal-context group ran as '%s'", wk);
  /* Thread-context callbacks all reach cr_checkpoint() before any
   * signal-context one runs; every '<' precedes every '>'. */
  int count = atomic_load(&log_n), first_sig = LOG_MAX, last_thread_pre = -1, first_post = LOG_MAX,
      last_pre = -1;
  for (int i = 0; i < count; ++i) {
    int pre = strchr(log_ev[i], '<') != NULL;
    if (log_ev[i][0] == 'T' && pre) last_thread_pre = i;
    if (log_ev[i][0] != 'T' && first_sig == LOG_MAX) first_sig = i;
    if (pre) last_pre = i;
    if (!pre && first_post == LOG_MAX) first_post = i;
    /* Contexts: T* in libcr's thread, S* in main, W* in the worker. */
    if (log_ev[i][0] == 'T')
      CHECK(log_tid[i] != main_tid && log_tid[i] != worker_tid && log_tid[i] != plain_tid,
            "thread-context callback %s ran in an application thread", log_ev[i]);
    if (log_ev[i][0] == 'S')
      CHECK(log_tid[i] == main_tid, "%s ran in tid %d, not in main", log_ev[i], log_tid[i]);
    if (log_ev[i][0] == 'W')
      CHECK(log_tid[i] == worker_tid, "%s ran in tid %d, not in the worker", log_ev[i], log_tid[i]);
  }
  CHECK(last_thread_pre < first_sig,
        "a signal-context callback ran before the thread-context ones reached cr_checkpoint");
  CHECK(last_pre < first_post,
        "a callback continued before every callback had reached cr_checkpoint");
  if (r == 0) {
    CHECK(info_seen.requester == getpid(), "info.requester %d, expected %d", info_seen.requester,
          getpid());
    CHECK(info_seen.target == getpid(), "info.target %d", info_seen.target);
    CHECK(info_seen.scope == CR_SCOPE_PROC, "info.scope %d", info_seen.scope);
    CHECK(info_seen.signal == 0, "info.signal %d", info_seen.signal);
    CHECK(strcmp(dest_seen, file) == 0, "info.dest '%s', expected '%s'", dest_seen, file);
    CHECK(atomic_load(&hook_count[CR_HOOK_CONT_THREAD_CONTEXT]) == 1,
          "CONT_THREAD hook ran %d times", hook_count[CR_HOOK_CONT_THREAD_CONTEXT]);
    CHECK(atomic_load(&hook_count[CR_HOOK_CONT_SIGNAL_CONTEXT]) == 2,
          "CONT_SIGNAL hook ran %d times", hook_count[CR_HOOK_CONT_SIGNAL_CONTEXT]);
    CHECK(atomic_load(&hook_count[CR_HOOK_CONT_NO_CALLBACKS]) >= 1,
          "CONT_NO_CALLBACKS hook did not run");
    CHECK(atomic_load(&hook_count[CR_HOOK_RSTRT_THREAD_CONTEXT]) == 0,
          "a restart hook ran on continue");
    if (!failures) OK("continue: order, contexts, checkpoint info, hooks");
  } else {
    CHECK(restart_info_ok == 1, "cr_get_restart_info wrong after restart");
    CHECK(atomic_load(&hook_count[CR_HOOK_RSTRT_THREAD_CONTEXT]) == 1,
          "RSTRT_THREAD hook ran %d times", hook_count[CR_HOOK_RSTRT_THREAD_CONTEXT]);
    CHECK(atomic_load(&hook_count[CR_HOOK_RSTRT_SIGNAL_CONTEXT]) == 2,
          "RSTRT_SIGNAL hook ran %d times", hook_count[CR_HOOK_RSTRT_SIGNAL_CONTEXT]);
    CHECK(atomic_load(&hook_count[CR_HOOK_RSTRT_NO_CALLBACKS]) >= 1,
          "RSTRT_NO_CALLBACKS hook did not run");
    CHECK(atomic_load(&hook_count[CR_HOOK_CONT_THREAD_CONTEXT]) == 0,
          "a continue hook ran on restart");
    CHECK(pattern_ok(), "memory pattern damaged");
    if (!failures) OK("restart: order, contexts, restart info, hooks, memory");
  }
  atomic_store(&worker_go, 0);
  pthread_join(w, NULL);
  pthread_join(pl, NULL);
  return failures ? 1 : 0;
}

/* ---------------------------------------------------------------- cs */

/* Each worker's pair of counters is only ever seen equal outside its
 * critical sections (critical sections are not mutual exclusion: several
 * threads may be inside at once). */
static volatile long cs_a[3], cs_b[3];
static atomic_int cs_violations, cs_callbacks, cs_stop;
static int cs_try_id;
static atomic_int try_request, try_result = -100;

static int cs_callback(void *arg) {
  (void)arg;
  atomic_fetch_add(&cs_callbacks, 1);
  for (int i = 0; i < 3; ++i)
    if (cs_a[i] != cs_b[i]) atomic_fetch_add(&cs_violations, 1);
  if (atomic_load(&try_request) == 1) {
    atomic_store(&try_request, 2);
    while (atomic_load(&try_request) != 3) sleep_ms(1);
  }
  cr_checkpoint(0);
  return 0;
}

static void *cs_worker(void *arg) {
  int w = (int)(long)arg;
  int id = cr_init();
  while (!atomic_load(&cs_stop)) {
    cr_enter_cs(id);
    cs_a[w]++;
    for (volatile int i = 0; i < 200; ++i) {
    }
    cs_b[w]++;
    cr_leave_cs(id);
  }
  return NULL;
}

static void *cs_trier(void *arg) {
  (void)arg;
  cs_try_id = cr_init();
  while (!atomic_load(&cs_stop)) {
    if (atomic_load(&try_request) == 2) {
      int r = cr_tryenter_cs(cs_try_id);
      if (r == 0) cr_leave_cs(cs_try_id);
      atomic_store(&try_result, r);
      atomic_store(&try_request, 3);
    }
    sleep_ms(1);
  }
  return NULL;
}

static int mode_cs(const char *file, int n) {
  int id = cr_init();
  CHECK(id >= 0, "cr_init");
  cr_register_callback(cs_callback, NULL, CR_THREAD_CONTEXT);
  pthread_t th[4];
  for (int i = 0; i < 3; ++i) pthread_create(&th[i], NULL, cs_worker, (void *)(long)i);
  pthread_create(&th[3], NULL, cs_trier, NULL);
  int restarted = 0;
  for (int i = 0; i < n && !restarted; ++i) {
    if (i == 1) atomic_store(&try_request, 1); /* one round checks tryenter */
    int r = checkpoint_to(file, CR_SCOPE_PROC, 0);
    CHECK(r >= 0, "checkpoint %d: %s", i, cr_strerror(-r));
    if (r == 1) restarted = 1;
  }
  if (!restarted) {
    CHECK(atomic_load(&try_result) == 1,
          "cr_tryenter_cs during a pending checkpoint returned %d, expected 1",
          atomic_load(&try_result));
    CHECK(atomic_load(&cs_callbacks) == n, "%d callbacks for %d checkpoints",
          atomic_load(&cs_callbacks), n);
    /* A checkpoint requested inside a critical section waits for its end. */
    CHECK(cr_enter_cs(id) == 0, "cr_enter_cs");
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_checkpoint_args_t args;
    cr_initialize_checkpoint_args_t(&args);
    args.cr_fd = fd;
    cr_checkpoint_handle_t h;
    CHECK(cr_request_checkpoint(&args, &h) == 0, "request: %s", cr_strerror(errno));
    int before = atomic_load(&cs_callbacks);
    struct timeval tv = {0, 300000};
    int pr = cr_poll_checkpoint(&h, &tv);
    CHECK(pr == 0, "a checkpoint completed while a critical section was held (poll %d)", pr);
    CHECK(cr_status() == CR_STATE_PENDING, "cr_status %d, expected CR_STATE_PENDING", cr_status());
    CHECK(atomic_load(&cs_callbacks) == before, "a callback ran inside a critical section");
    CHECK(cr_leave_cs(id) == 0, "cr_leave_cs");
    CHECK(atomic_load(&cs_callbacks) == before + 1,
          "cr_leave_cs returned before the deferred checkpoint was taken");
    pr = cr_poll_checkpoint(&h, NULL);
    int e = errno;
    close(fd);
    if (pr == CR_POLL_CHKPT_ERR_POST && e == CR_ERESTARTED) {
      restarted = 1;
    } else {
      CHECK(pr > 0, "deferred checkpoint: %s", cr_strerror(e));
      CHECK(cr_status() == CR_STATE_IDLE, "cr_status %d after the checkpoint", cr_status());
    }
  }
  sleep_ms(100);
  atomic_store(&cs_stop, 1);
  for (int i = 0; i < 4; ++i) pthread_join(th[i], NULL);
  CHECK(atomic_load(&cs_violations) == 0, "%d callbacks saw a critical section half done",
        atomic_load(&cs_violations));
  for (int i = 0; i < 3; ++i)
    CHECK(cs_a[i] == cs_b[i] && cs_a[i] > 0, "worker %d counters %ld/%ld", i, cs_a[i], cs_b[i]);
  if (!failures)
    OK("%s: critical sections held across %d checkpoints", restarted ? "restart" : "continue",
       atomic_load(&cs_callbacks));
  return failures ? 1 : 0;
}

/* -------------------------------------------------------------- omit */

static int omit_callback(void *arg) {
  int *result = arg;
  *result = cr_checkpoint(CR_CHECKPOINT_OMIT);
  return 0;
}
static int ready_callback(void *arg) {
  int *result = arg;
  *result = cr_checkpoint(CR_CHECKPOINT_READY);
  return 0;
}

static int mode_omit(const char *file) {
  fill_pattern();
  int *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  shared[0] = 12345; /* child's cr_checkpoint result */
  shared[1] = 0;     /* child ready */
  static int parent_rc = 12345;
  CHECK(cr_init() >= 0, "cr_init");
  cr_register_callback(ready_callback, &parent_rc, CR_THREAD_CONTEXT);
  pid_t child = fork();
  if (child == 0) {
    static int rc = 12345;
    cr_init();
    cr_register_callback(omit_callback, &rc, CR_THREAD_CONTEXT);
    shared[1] = 1;
    while (rc == 12345) sleep_ms(5);
    shared[0] = rc;
    for (;;) sleep_ms(100);
  }
  while (!shared[1]) sleep_ms(1);
  int r = checkpoint_to(file, CR_SCOPE_TREE, 0);
  if (r == 1) {
    CHECK(pattern_ok(), "memory pattern damaged");
    CHECK(parent_rc > 0, "parent's callback got %d on restart", parent_rc);
    CHECK(waitpid(child, NULL, WNOHANG) == -1 && errno == ECHILD,
          "the omitted child came back with the tree");
    if (!failures) OK("restart: the tree came back without the omitted child");
    return failures ? 1 : 0;
  }
  CHECK(r == 0, "tree checkpoint: %s", cr_strerror(-r));
  for (int i = 0; i < 400 && shared[0] == 12345; ++i) sleep_ms(5);
  CHECK(shared[0] == -CR_EOMITTED, "the omitted child's cr_checkpoint returned %d, expected %d",
        shared[0], -CR_EOMITTED);
  CHECK(kill(child, 0) == 0, "the omitted child is not running");
  CHECK(parent_rc == 0, "parent's callback got %d", parent_rc);
  printf("CHILD %d\n", child);
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  /* A request whose every target opts out fails with ESRCH. */
  cr_register_callback(omit_callback, &parent_rc, CR_THREAD_CONTEXT);
  char other[4200];
  snprintf(other, sizeof other, "%s.all", file);
  r = checkpoint_to(other, CR_SCOPE_PROC, 0);
  CHECK(r == -ESRCH, "a checkpoint of only omitted processes gave %d (%s), expected ESRCH", r,
        cr_strerror(-r));
  CHECK(parent_rc == -CR_EOMITTED, "omitting callback got %d", parent_rc);
  unlink(other);
  if (!failures) OK("continue: child omitted and running, all-omitted request fails with ESRCH");
  return failures ? 1 : 0;
}

/* -------------------------------------------------------------- fail */

static atomic_int fail_mode; /* 0 ready, 1 temp(77), 2 perm */
static atomic_int fail_rc = 12345;
static int fail_callback(void *arg) {
  (void)arg;
  int m = atomic_load(&fail_mode);
  int flags = m == 1   ? CR_CHECKPOINT_TEMP_FAILURE_CODE(77)
              : m == 3 ? CR_CHECKPOINT_TEMP_FAILURE
              : m == 2 ? CR_CHECKPOINT_PERM_FAILURE
                       : CR_CHECKPOINT_READY;
  atomic_store(&fail_rc, cr_checkpoint(flags));
  return 0;
}
static int never_callback(void *arg) {
  (void)arg;
  atomic_store(&fail_rc, 999);
  return 0;
}

static int mode_fail(const char *file) {
  fill_pattern();
  CHECK(cr_init() >= 0, "cr_init");
  /* Registered first, so it would run after fail_callback (LIFO): a failing
   * callback skips the rest of its group. */
  cr_register_callback(never_callback, NULL, CR_THREAD_CONTEXT);
  cr_register_callback(fail_callback, NULL, CR_THREAD_CONTEXT);
  atomic_store(&fail_mode, 1);
  int r = checkpoint_to(file, CR_SCOPE_PROC, 0);
  CHECK(r == -77, "TEMP_FAILURE_CODE(77) gave %d, expected -77", r);
  CHECK(atomic_load(&fail_rc) == -77, "failing callback's cr_checkpoint returned %d",
        atomic_load(&fail_rc));
  atomic_store(&fail_mode, 3);
  r = checkpoint_to(file, CR_SCOPE_PROC, 0);
  CHECK(r == -CR_ETEMPFAIL, "TEMP_FAILURE gave %d, expected -CR_ETEMPFAIL", r);
  CHECK(pattern_ok(), "memory damaged by a cancelled checkpoint");
  atomic_store(&fail_mode, 0);
  r = checkpoint_to(file, CR_SCOPE_PROC, 0);
  CHECK(r == 0 || r == 1, "checkpoint after the failures: %s", r < 0 ? cr_strerror(-r) : "");
  CHECK(atomic_load(&fail_rc) == r, "callback got %d", atomic_load(&fail_rc));
  CHECK(pattern_ok(), "memory pattern damaged");
  if (!failures)
    OK("%s: temporary failures cancelled two checkpoints, the third was taken",
       r == 1 ? "restart" : "continue");
  return failures ? 1 : 0;
}

static int ext_code;
static int ext_callback(void *arg) {
  (void)arg;
  cr_checkpoint(ext_code < 0 ? CR_CHECKPOINT_PERM_FAILURE
                             : CR_CHECKPOINT_TEMP_FAILURE_CODE(ext_code));
  return 0;
}

static int mode_extfail(const char *code) {
  ext_code = strcmp(code, "perm") == 0 ? -1 : atoi(code);
  cr_init();
  cr_register_callback(ext_callback, NULL, CR_THREAD_CONTEXT);
  printf("READY %d\n", getpid());
  fflush(stdout);
  for (int i = 0; i < 600; ++i) sleep_ms(100);
  return 0;
}

/* ----------------------------------------------------------- request */

static int mode_request(const char *file) {
  char stop_file[4200];
  snprintf(stop_file, sizeof stop_file, "%s.stop", file);
  fill_pattern();
  CHECK(cr_init() >= 0, "cr_init");
  volatile long *counter =
      mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  pid_t child = fork();
  if (child == 0) {
    /* The child counts; after its own restart it checks it goes on. */
    long last = 0;
    for (;;) {
      long v = ++counter[1];
      if (v != last + 1) _exit(3);
      last = v;
      sleep_ms(2);
      if (counter[2] || access(stop_file, F_OK) == 0) { /* told to finish */
        printf("OK child counted to %ld and finished\n", v);
        fflush(stdout);
        _exit(0);
      }
    }
  }
  while (counter[1] < 5) sleep_ms(1);
  char childfile[4200];
  snprintf(childfile, sizeof childfile, "%s.child", file);
  int r = checkpoint_to(childfile, CR_SCOPE_TREE, child);
  CHECK(r == 0, "checkpoint of the child: %s", r < 0 ? cr_strerror(-r) : "restarted?");
  CHECK(kill(child, 0) == 0, "child not running after its checkpoint");
  struct stat st;
  CHECK(stat(childfile, &st) == 0 && st.st_size > 4096, "child context not written");
  long c1 = counter[1];
  sleep_ms(50);
  CHECK(counter[1] > c1, "child stopped counting after its checkpoint");
  /* Our process group: us and the child. */
  r = checkpoint_to(file, CR_SCOPE_PGRP, 0);
  CHECK(r == 0 || r == 1, "process group checkpoint: %s", r < 0 ? cr_strerror(-r) : "");
  CHECK(pattern_ok(), "memory pattern damaged");
  long c2 = counter[1];
  sleep_ms(50);
  CHECK(counter[1] > c2, "child not counting after the group's %s", r ? "restart" : "checkpoint");
  counter[2] = 1;
  int status = 0;
  CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "child ended badly (status %#x)", status);
  if (!failures)
    OK("%s: checkpoints of a child and of the own process group", r ? "restart" : "continue");
  return failures ? 1 : 0;
}

/* ----------------------------------------------------------- forward */

static pid_t forward_to;
static atomic_int forward_rc = 12345;
static struct cr_checkpoint_info forward_info;
static int forward_callback(void *arg) {
  (void)arg;
  const struct cr_checkpoint_info *ci = cr_get_checkpoint_info();
  if (ci) forward_info = *ci;
  atomic_store(&forward_rc, cr_forward_checkpoint(CR_SCOPE_PROC, forward_to));
  cr_checkpoint(0);
  return 0;
}

static int mode_forward(const char *pid) {
  forward_to = atoi(pid);
  cr_init();
  cr_register_callback(forward_callback, NULL, CR_THREAD_CONTEXT);
  printf("READY %d\n", getpid());
  fflush(stdout);
  for (int i = 0; i < 600 && atomic_load(&forward_rc) == 12345; ++i) sleep_ms(100);
  sleep_ms(200);
  CHECK(atomic_load(&forward_rc) == 0, "cr_forward_checkpoint returned %d",
        atomic_load(&forward_rc));
  printf("INFO requester=%d target=%d scope=%d signal=%d\n", forward_info.requester,
         forward_info.target, (int)forward_info.scope, forward_info.signal);
  if (!failures) OK("forwarded the checkpoint to %d", forward_to);
  return failures ? 1 : 0;
}

/* ---------------------------------------------------------- forkexec */

static atomic_int forkexec_status[2] = {-1, -1};
static const char *forkexec_file;
static int forkexec_callback(void *arg) {
  (void)arg;
  int rc = cr_checkpoint(0);
  if (rc < 0) return 0;
  char marker[4200];
  snprintf(marker, sizeof marker, "%s.%s", forkexec_file, rc > 0 ? "restart" : "continue");
  pid_t p = fork();
  if (p == 0) {
    execl("/bin/sh", "sh", "-c", "echo forked-from-callback > \"$0\"", marker, (char *)NULL);
    _exit(127);
  }
  int st = -1;
  if (p < 0 || waitpid(p, &st, 0) != p) st = -errno;
  atomic_store(&forkexec_status[rc > 0], st);
  return 0;
}

static int mode_forkexec(const char *file) {
  forkexec_file = file;
  fill_pattern();
  cr_init();
  cr_register_callback(forkexec_callback, NULL, CR_THREAD_CONTEXT);
  int r = checkpoint_to(file, CR_SCOPE_PROC, 0);
  CHECK(r == 0 || r == 1, "checkpoint: %s", r < 0 ? cr_strerror(-r) : "");
  CHECK(atomic_load(&forkexec_status[r]) == 0, "fork+exec from the %s callback: status %d",
        r ? "restart" : "continue", atomic_load(&forkexec_status[r]));
  char marker[4200], buf[64] = {0};
  snprintf(marker, sizeof marker, "%s.%s", file, r ? "restart" : "continue");
  FILE *f = fopen(marker, "r");
  CHECK(f && fgets(buf, sizeof buf, f) && strcmp(buf, "forked-from-callback\n") == 0, "marker %s",
        marker);
  if (f) fclose(f);
  CHECK(pattern_ok(), "memory pattern damaged");
  if (!failures) OK("%s: fork and exec from a callback", r ? "restart" : "continue");
  return failures ? 1 : 0;
}

/* ----------------------------------------------------------- replace */

static atomic_int ran_a, ran_b, ran_c, ran_d;
static atomic_int replace_fail = 0;
static int cb_d(void *arg) {
  (void)arg;
  atomic_fetch_add(&ran_d, 1);
  cr_checkpoint(0);
  return 0;
}
static int cb_c(void *arg) {
  (void)arg;
  atomic_fetch_add(&ran_c, 1);
  /* From now on D runs in this place. */
  if (cr_replace_self(cb_d, NULL, CR_THREAD_CONTEXT) != 0) atomic_store(&replace_fail, 1);
  if (cr_replace_self(cb_d, NULL, CR_SIGNAL_CONTEXT) != -1 || errno != EINVAL)
    atomic_store(&replace_fail, 2);
  cr_checkpoint(0);
  return 0;
}
static int cb_a(void *arg) {
  (void)arg;
  atomic_fetch_add(&ran_a, 1);
  cr_checkpoint(0);
  return 0;
}
static int cb_b(void *arg) {
  (void)arg;
  atomic_fetch_add(&ran_b, 1);
  cr_checkpoint(atomic_load(&fail_mode) ? CR_CHECKPOINT_TEMP_FAILURE_CODE(99) : 0);
  return 0;
}

/* cr_replace_callback, cr_replace_self, and the request calls one by one:
 * cr_wait_checkpoint with a timeout, cr_log_checkpoint, cr_reap_checkpoint. */
static int mode_replace(const char *file) {
  CHECK(cr_init() >= 0, "cr_init");
  cr_callback_id_t a = cr_register_callback(cb_a, NULL, CR_THREAD_CONTEXT);
  cr_callback_id_t b = cr_register_callback(cb_b, NULL, CR_THREAD_CONTEXT);
  CHECK(cr_replace_callback(a, cb_c, NULL, CR_THREAD_CONTEXT) == 0, "replace a with c");
  int r = checkpoint_to(file, CR_SCOPE_PROC, 0);
  CHECK(r == 0, "first checkpoint: %d", r);
  CHECK(ran_a == 0 && ran_c == 1 && ran_b == 1 && ran_d == 0, "after replace: a%d b%d c%d d%d",
        ran_a, ran_b, ran_c, ran_d);
  CHECK(replace_fail == 0, "cr_replace_self failed (%d)", replace_fail);
  CHECK(cr_replace_callback(b, NULL, NULL, CR_THREAD_CONTEXT) == 0, "disable b");
  r = checkpoint_to(file, CR_SCOPE_PROC, 0);
  CHECK(r == 0, "second checkpoint: %d", r);
  CHECK(ran_c == 1 && ran_d == 1 && ran_b == 1, "after replace_self and disabling: b%d c%d d%d",
        ran_b, ran_c, ran_d);
  /* The request calls one by one, on a checkpoint a callback cancels. */
  CHECK(cr_replace_callback(b, cb_b, NULL, CR_THREAD_CONTEXT) == 0, "enable b");
  atomic_store(&fail_mode, 1);
  int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  cr_checkpoint_args_t args;
  cr_initialize_checkpoint_args_t(&args);
  args.cr_fd = fd;
  cr_checkpoint_handle_t h;
  CHECK(cr_request_checkpoint(&args, &h) == 0, "request");
  struct timeval tv = {30, 0};
  CHECK(cr_wait_checkpoint(&h, &tv) == 1, "cr_wait_checkpoint");
  CHECK(tv.tv_sec < 30, "cr_wait_checkpoint did not write back the time left");
  int len = cr_log_checkpoint(&h, 0, NULL);
  char msg[2048] = {0};
  CHECK(len > 1 && cr_log_checkpoint(&h, sizeof msg, msg) == len && strstr(msg, "cancelled"),
        "cr_log_checkpoint gave %d '%s'", len, msg);
  errno = 0;
  CHECK(cr_reap_checkpoint(&h) == -1 && errno == 99, "cr_reap_checkpoint: errno %d, expected 99",
        errno);
  CHECK(cr_reap_checkpoint(&h) == -1 && errno == EINVAL, "a reaped handle is invalid");
  close(fd);
  if (!failures) OK("replace_callback, replace_self, wait/log/reap");
  return failures ? 1 : 0;
}

/* ---------------------------------------------------------- badinput */

static int noop_cb(void *arg) {
  (void)arg;
  return 0;
}

static void *uninit_thread(void *arg) {
  (void)arg;
  errno = 0;
  CHECK(cr_register_callback(noop_cb, NULL, CR_THREAD_CONTEXT) == -1 && errno == CR_ENOINIT,
        "register without cr_init in a thread: errno %d", errno);
  errno = 0;
  CHECK(cr_enter_cs(1) == -1 && errno == CR_ENOINIT, "cr_enter_cs without cr_init: errno %d",
        errno);
  return NULL;
}

static int mode_badinput(void) {
  /* Before cr_init. */
  errno = 0;
  CHECK(cr_register_callback(noop_cb, NULL, CR_THREAD_CONTEXT) == -1 && errno == CR_ENOINIT,
        "cr_register_callback before cr_init: errno %d", errno);
  CHECK(cr_status() == -1 && errno == CR_ENOINIT, "cr_status before cr_init");
  CHECK(
      cr_register_hook(CR_HOOK_CONT_NO_CALLBACKS, NULL) == CR_HOOK_FN_ERROR && errno == CR_ENOINIT,
      "cr_register_hook before cr_init");
  CHECK(cr_checkpoint(0) == -CR_ENOTCB, "cr_checkpoint outside a callback");
  int id = cr_init();
  CHECK(id >= 0, "cr_init");
  pthread_t t;
  pthread_create(&t, NULL, uninit_thread, NULL);
  pthread_join(t, NULL);
  /* Wrong context or flags. */
  CHECK(cr_checkpoint(0) == -CR_ENOTCB, "cr_checkpoint outside a callback after cr_init");
  errno = 0;
  CHECK(cr_replace_self(noop_cb, NULL, CR_THREAD_CONTEXT) == -1 && errno == CR_ENOTCB,
        "cr_replace_self outside a callback");
  CHECK(cr_forward_checkpoint(CR_SCOPE_PROC, getpid()) == -1 && errno == CR_ENOTCB,
        "cr_forward_checkpoint outside a callback");
  CHECK(cr_get_checkpoint_info() == NULL, "cr_get_checkpoint_info outside a callback");
  CHECK(cr_get_restart_info() == NULL, "cr_get_restart_info outside a callback");
  CHECK(cr_register_callback(noop_cb, NULL, 0) == -1 && errno == EINVAL,
        "register with no context");
  CHECK(cr_register_callback(noop_cb, NULL, CR_THREAD_CONTEXT | CR_SIGNAL_CONTEXT) == -1 &&
            errno == EINVAL,
        "register with both contexts");
  cr_callback_id_t cb = cr_register_callback(noop_cb, NULL, CR_THREAD_CONTEXT);
  CHECK(cb >= 0, "register");
  CHECK(cr_replace_callback(cb, NULL, NULL, CR_THREAD_CONTEXT) == 0,
        "replace (disable) a callback");
  CHECK(cr_replace_callback(cb + 1000, noop_cb, NULL, CR_THREAD_CONTEXT) == -1 && errno == EINVAL,
        "replace with a bad id");
  CHECK(cr_replace_callback(cb, noop_cb, NULL, CR_SIGNAL_CONTEXT) == -1 && errno == EINVAL,
        "replace changing the context");
  CHECK(cr_enter_cs(id + 77) == -1 && errno == EINVAL, "cr_enter_cs with another id");
  CHECK(cr_leave_cs(id) == -1 && errno == EINVAL, "cr_leave_cs without enter");
  CHECK(cr_register_hook(CR_NUM_HOOKS, NULL) == CR_HOOK_FN_ERROR && errno == EINVAL,
        "hook with a bad event");
  CHECK(cr_hold_ctrl(CR_HOLD_SCOPE_INIT, CR_HOLD_BOTH) == -1 && errno == ENOTSUP,
        "cr_hold_ctrl(BOTH) not refused");
  CHECK(cr_hold_ctrl(CR_HOLD_SCOPE_INIT, CR_HOLD_READ) == CR_HOLD_NONE, "cr_hold_ctrl(READ)");
  /* Requests. */
  cr_checkpoint_args_t args;
  CHECK(cri_init_checkpoint_args_t(99, &args) == -1 && errno == CR_EVERSION,
        "args of an unknown version");
  cr_initialize_checkpoint_args_t(&args);
  cr_checkpoint_handle_t h = 0;
  args.cr_fd = -1;
  CHECK(cr_request_checkpoint(&args, &h) == -1 && errno == EBADF, "request with a bad fd: errno %d",
        errno);
  int ro = open("/dev/null", O_RDONLY);
  args.cr_fd = ro;
  CHECK(cr_request_checkpoint(&args, &h) == -1 && errno == EBADF, "request to a read-only fd");
  args.cr_fd = open("/dev/null", O_WRONLY);
  args.cr_scope = (cr_scope_t)9;
  CHECK(cr_request_checkpoint(&args, &h) == -1 && errno == EINVAL, "request with a bad scope");
  args.cr_scope = CR_SCOPE_PROC;
  args.cr_target = 0x3ffffff0;
  CHECK(cr_request_checkpoint(&args, &h) == -1 && errno == ESRCH,
        "request of a process that does not exist");
  args.cr_target = 0;
  args.cr_flags = CR_CHKPT_PROHIBIT_SELF;
  CHECK(cr_request_checkpoint(&args, &h) == -1 && errno == EDEADLK, "CR_CHKPT_PROHIBIT_SELF");
  h = 4242;
  CHECK(cr_poll_checkpoint(&h, NULL) == CR_POLL_CHKPT_ERR_PRE && errno == EINVAL,
        "poll with a bad handle");
  CHECK(cr_reap_checkpoint(&h) == -1 && errno == EINVAL, "reap with a bad handle");
  cr_restart_args_t rargs;
  cr_initialize_restart_args_t(&rargs);
  cr_restart_handle_t rh;
  CHECK(cr_request_restart(&rargs, &rh) == -1 && errno == ENOSYS,
        "cr_request_restart is not provided: ENOSYS");
  CHECK(strcmp(cr_strerror(CR_ENOTCB), "Call is only valid from a checkpoint callback") == 0,
        "cr_strerror");
  CHECK(strcmp(cr_strerror(ENOENT), strerror(ENOENT)) == 0, "cr_strerror of errno values");
  if (!failures) OK("bad input refused with BLCR's error codes");
  return failures ? 1 : 0;
}

static int wait_cb(void *arg) {
  (void)arg;
  cr_checkpoint(0);
  return 0;
}

/* Lives SECONDS (counted in 10 ms steps, so a restart continues the
 * count), checking a memory pattern, then exits 0. */
static int mode_wait(int seconds) {
  fill_pattern();
  cr_init();
  cr_register_callback(wait_cb, NULL, CR_THREAD_CONTEXT);
  printf("READY %d\n", getpid());
  fflush(stdout);
  for (int i = 0; i < seconds * 100; ++i) sleep_ms(10);
  CHECK(pattern_ok(), "memory pattern damaged");
  if (!failures) OK("waited %d s", seconds);
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) return 2;
  const char *m = argv[1];
  if (!strcmp(m, "order") && argc > 2) return mode_order(argv[2]);
  if (!strcmp(m, "cs") && argc > 3) return mode_cs(argv[2], atoi(argv[3]));
  if (!strcmp(m, "omit") && argc > 2) return mode_omit(argv[2]);
  if (!strcmp(m, "fail") && argc > 2) return mode_fail(argv[2]);
  if (!strcmp(m, "extfail") && argc > 2) return mode_extfail(argv[2]);
  if (!strcmp(m, "request") && argc > 2) return mode_request(argv[2]);
  if (!strcmp(m, "forward") && argc > 2) return mode_forward(argv[2]);
  if (!strcmp(m, "forkexec") && argc > 2) return mode_forkexec(argv[2]);
  if (!strcmp(m, "badinput")) return mode_badinput();
  if (!strcmp(m, "replace") && argc > 2) return mode_replace(argv[2]);
  if (!strcmp(m, "wait")) return mode_wait(argc > 2 ? atoi(argv[2]) : 60);
  fprintf(stderr, "usage: libcr_api MODE ARGS\n");
  return 2;
}

/* signals: handlers, masks, pending signals and alternate stacks, per process
 * and per thread.
 *
 * Dispositions: SIGUSR1 SA_SIGINFO (mask {SIGUSR2}); SIGUSR2
 * SA_SIGINFO|SA_RESTART|SA_ONSTACK (mask {SIGINT}); SIGWINCH
 * SA_RESTART|SA_ONSTACK, a plain handler; SIGRTMIN+1 SA_SIGINFO; SIGRTMIN+2
 * SA_SIGINFO|SA_RESTART; SIGPIPE ignored; SIGHUP, SIGTERM, SIGCHLD default.
 * Threads: main M, T1, T2; all block SIGUSR1, SIGRTMIN+1, SIGRTMIN+2; M also
 * blocks SIGWINCH, T1 SIGUSR2, T2 SIGINT. Alternate stacks: M and T1 each
 * their own, T2 none.
 * Pending before READY: for the process SIGUSR1 (sigqueue, value 0x1234) and
 * SIGRTMIN+1 three times (values 11, 22, 33); for T1 SIGRTMIN+2 twice (44,
 * 55, pthread_sigqueue) and SIGUSR2 (tgkill); for M SIGWINCH (raise). T2 is
 * blocked in read() on a pipe.
 *
 * Check: every disposition (handler, flags, mask); every thread's mask,
 * altstack and pending set; M takes SIGUSR1 with its value, code SI_QUEUE and
 * our pid, then exactly three SIGRTMIN+1 in order with their values; M
 * unblocks SIGWINCH and its handler runs once, on M's altstack; T1 takes its
 * two SIGRTMIN+2 and, unblocking SIGUSR2, runs the handler on its own
 * altstack; a SIGUSR2 sent to T2 runs the handler (not on an altstack) and
 * T2's read goes on (SA_RESTART) and returns the byte written after; a write
 * to a broken pipe fails with EPIPE instead of killing (SIGPIPE ignored). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum { kAltSize = 65536 };
#define RT1 (SIGRTMIN + 1)
#define RT2 (SIGRTMIN + 2)
static const int kFlagMask = SA_SIGINFO | SA_RESTART | SA_ONSTACK | SA_NODEFER | SA_RESETHAND;

struct HandlerLog { /* per thread */
  int count[65];
  int last_code[65];
  int last_pid[65];
  int on_altstack[65];
  uintptr_t frame[65];
};
static __thread struct HandlerLog hlog;
static char *alt_m, *alt_t1;
static pthread_t t1, t2;
static pid_t tid_t2;
static int t2_pipe[2], go_t1[2];
static atomic_int t2_handled, t2_ready, t1_ready;

static void Record(int sig, const siginfo_t *si) {
  stack_t ss;
  int local;
  hlog.count[sig]++;
  hlog.last_code[sig] = si ? si->si_code : 0;
  hlog.last_pid[sig] = si ? si->si_pid : 0;
  hlog.on_altstack[sig] = sigaltstack(NULL, &ss) == 0 && (ss.ss_flags & SS_ONSTACK);
  hlog.frame[sig] = (uintptr_t)&local;
  if (pthread_equal(pthread_self(), t2) && sig == SIGUSR2) atomic_store(&t2_handled, 1);
}
static void HInfo(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  Record(sig, si);
}
static void HPlain(int sig) { Record(sig, NULL); }

struct Disp {
  int sig;
  const char *name;
  int kind; /* 0 HInfo, 1 HPlain, 2 SIG_IGN, 3 SIG_DFL */
  int flags;
  int mask_sig; /* 0: empty mask */
};
static struct Disp disps[] = {
    {SIGUSR1, "SIGUSR1", 0, SA_SIGINFO, SIGUSR2},
    {SIGUSR2, "SIGUSR2", 0, SA_SIGINFO | SA_RESTART | SA_ONSTACK, SIGINT},
    {SIGWINCH, "SIGWINCH", 1, SA_RESTART | SA_ONSTACK, 0},
    {0, "SIGRTMIN+1", 0, SA_SIGINFO, 0},
    {0, "SIGRTMIN+2", 0, SA_SIGINFO | SA_RESTART, 0},
    {SIGPIPE, "SIGPIPE", 2, 0, 0},
    {SIGHUP, "SIGHUP", 3, 0, 0},
    {SIGTERM, "SIGTERM", 3, 0, 0},
    {SIGCHLD, "SIGCHLD", 3, 0, 0},
};
enum { kDisps = sizeof(disps) / sizeof(disps[0]) };

static void SetDispositions(void) {
  disps[3].sig = RT1;
  disps[4].sig = RT2;
  for (int i = 0; i < kDisps; i++) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    if (disps[i].mask_sig) sigaddset(&sa.sa_mask, disps[i].mask_sig);
    sa.sa_flags = disps[i].flags;
    if (disps[i].kind == 0)
      sa.sa_sigaction = HInfo;
    else if (disps[i].kind == 1)
      sa.sa_handler = HPlain;
    else
      sa.sa_handler = disps[i].kind == 2 ? SIG_IGN : SIG_DFL;
    if (sigaction(disps[i].sig, &sa, NULL) != 0)
      zdtm_die("sigaction %s: %s", disps[i].name, strerror(errno));
  }
}

static void CheckDispositions(void) {
  for (int i = 0; i < kDisps; i++) {
    const struct Disp *d = &disps[i];
    struct sigaction sa;
    if (sigaction(d->sig, NULL, &sa) != 0) {
      zdtm_fail_note("sigaction %s: %s", d->name, strerror(errno));
      continue;
    }
    void *want = d->kind == 0   ? (void *)HInfo
                 : d->kind == 1 ? (void *)HPlain
                 : d->kind == 2 ? (void *)SIG_IGN
                                : (void *)SIG_DFL;
    if ((void *)sa.sa_handler != want)
      zdtm_fail_note("%s: handler %p, want %p", d->name, (void *)sa.sa_handler, want);
    if (d->kind >= 2) continue;
    if ((sa.sa_flags & kFlagMask) != d->flags)
      zdtm_fail_note("%s: flags %#x, want %#x", d->name, sa.sa_flags & kFlagMask, d->flags);
    for (int s = 1; s < 65; s++) {
      int want_in = s == d->mask_sig;
      if (sigismember(&sa.sa_mask, s) != want_in)
        zdtm_fail_note("%s: signal %d is %sin sa_mask", d->name, s, want_in ? "not " : "");
    }
  }
}

/* The set made of the listed signals (0-terminated). */
static sigset_t Set(int first, ...) {
  sigset_t set;
  sigemptyset(&set);
  va_list ap;
  va_start(ap, first);
  for (int s = first; s; s = va_arg(ap, int)) sigaddset(&set, s);
  va_end(ap);
  return set;
}

static void ExpectSet(const char *what, const sigset_t *have, const sigset_t *want) {
  for (int s = 1; s < 65; s++) {
    int h = sigismember(have, s), w = sigismember(want, s);
    if (h != w) zdtm_fail_note("%s: signal %d is %s", what, s, h ? "in it, want not" : "missing");
  }
}

static void ExpectThread(const char *who, const sigset_t *mask, const sigset_t *pending,
                         const char *alt) {
  sigset_t have;
  char what[64];
  pthread_sigmask(SIG_BLOCK, NULL, &have);
  snprintf(what, sizeof(what), "%s: blocked mask", who);
  ExpectSet(what, &have, mask);
  sigpending(&have);
  snprintf(what, sizeof(what), "%s: pending", who);
  ExpectSet(what, &have, pending);
  stack_t ss;
  if (sigaltstack(NULL, &ss) != 0) {
    zdtm_fail_note("%s: sigaltstack: %s", who, strerror(errno));
  } else if (alt) {
    if (ss.ss_sp != alt || ss.ss_size != kAltSize || ss.ss_flags != 0)
      zdtm_fail_note("%s: altstack %p size %zu flags %#x, want %p size %d flags 0", who, ss.ss_sp,
                     ss.ss_size, ss.ss_flags, (void *)alt, kAltSize);
  } else if (ss.ss_flags != SS_DISABLE) {
    zdtm_fail_note("%s: altstack %p flags %#x, want SS_DISABLE", who, ss.ss_sp, ss.ss_flags);
  }
}

/* Takes one queued `sig` without waiting; checks its value and code. */
static void Take(const char *who, int sig, const char *name, int value, int code) {
  sigset_t set = Set(sig, 0);
  siginfo_t si;
  struct timespec zero = {0, 0};
  int r = sigtimedwait(&set, &si, &zero);
  if (r != sig) {
    zdtm_fail_note("%s: %s with value %d is not pending (%s)", who, name, value,
                   r < 0 ? strerror(errno) : "other signal");
    return;
  }
  if (si.si_value.sival_int != value || si.si_code != code || si.si_pid != getpid())
    zdtm_fail_note("%s: %s: value %d code %d pid %d, want %d, %d, %d", who, name,
                   si.si_value.sival_int, si.si_code, si.si_pid, value, code, getpid());
}

static void ExpectNone(const char *who, int sig, const char *name) {
  sigset_t set = Set(sig, 0);
  struct timespec zero = {0, 0};
  if (sigtimedwait(&set, NULL, &zero) == sig) zdtm_fail_note("%s: one %s too many", who, name);
}

static void SetAltStack(char *sp) {
  stack_t ss = {.ss_sp = sp, .ss_size = kAltSize, .ss_flags = 0};
  if (sigaltstack(&ss, NULL) != 0) zdtm_die("sigaltstack: %s", strerror(errno));
}

static void ExpectHandled(const char *who, int sig, const char *name, int code, const char *alt) {
  if (hlog.count[sig] != 1) {
    zdtm_fail_note("%s: the %s handler ran %d times, want once", who, name, hlog.count[sig]);
    return;
  }
  if (code >= -100 && hlog.last_code[sig] != code)
    zdtm_fail_note("%s: %s handler: si_code %d, want %d", who, name, hlog.last_code[sig], code);
  if (code >= -100 && hlog.last_pid[sig] != getpid())
    zdtm_fail_note("%s: %s handler: si_pid %d, want %d", who, name, hlog.last_pid[sig], getpid());
  int on = alt && hlog.frame[sig] >= (uintptr_t)alt && hlog.frame[sig] < (uintptr_t)alt + kAltSize;
  if (!!hlog.on_altstack[sig] != !!alt || on != !!alt)
    zdtm_fail_note("%s: the %s handler ran %s the altstack", who, name, alt ? "off" : "on");
}

static void *RunT1(void *arg) {
  (void)arg;
  SetAltStack(alt_t1);
  sigset_t mask = Set(SIGUSR1, RT1, RT2, SIGUSR2, 0);
  pthread_sigmask(SIG_SETMASK, &mask, NULL);
  atomic_store(&t1_ready, 1); /* M sends T1's signals only once they are blocked */
  char c;
  if (zdtm_read_full(go_t1[0], &c, 1, 600000) != 1) {
    zdtm_fail_note("T1: no go");
    return NULL;
  }
  sigset_t pending = Set(RT2, SIGUSR2, 0);
  ExpectThread("T1", &mask, &pending, alt_t1);
  Take("T1", RT2, "SIGRTMIN+2", 44, SI_QUEUE);
  Take("T1", RT2, "SIGRTMIN+2", 55, SI_QUEUE);
  ExpectNone("T1", RT2, "SIGRTMIN+2");
  sigset_t usr2 = Set(SIGUSR2, 0);
  pthread_sigmask(SIG_UNBLOCK, &usr2, NULL);
  ExpectHandled("T1", SIGUSR2, "SIGUSR2", SI_TKILL, alt_t1);
  return NULL;
}

static void *RunT2(void *arg) {
  (void)arg;
  sigset_t mask = Set(SIGUSR1, RT1, RT2, SIGINT, 0);
  pthread_sigmask(SIG_SETMASK, &mask, NULL);
  tid_t2 = gettid();
  atomic_store(&t2_ready, 1);
  char c = 0;
  ssize_t n = read(t2_pipe[0], &c, 1); /* SA_RESTART: a SIGUSR2 must not end it */
  if (n != 1 || c != 'x')
    zdtm_fail_note("T2: read returned %zd (%s)", n, n < 0 ? strerror(errno) : "no byte");
  sigset_t none;
  sigemptyset(&none);
  ExpectThread("T2", &mask, &none, NULL);
  ExpectHandled("T2", SIGUSR2, "SIGUSR2", SI_TKILL, NULL);
  return NULL;
}

int main(void) {
  zdtm_init("signals");
  alt_m = malloc(kAltSize);
  alt_t1 = malloc(kAltSize);
  SetDispositions();
  sigset_t mask_m = Set(SIGUSR1, RT1, RT2, SIGWINCH, 0);
  pthread_sigmask(SIG_SETMASK, &mask_m, NULL);
  SetAltStack(alt_m);
  if (pipe(t2_pipe) != 0 || pipe(go_t1) != 0) zdtm_die("pipe: %s", strerror(errno));
  if (pthread_create(&t1, NULL, RunT1, NULL) || pthread_create(&t2, NULL, RunT2, NULL))
    zdtm_die("pthread_create failed");
  while (!atomic_load(&t2_ready) || !atomic_load(&t1_ready)) zdtm_sleep_ms(1);

  union sigval v;
  v.sival_int = 0x1234;
  if (sigqueue(getpid(), SIGUSR1, v) != 0) zdtm_die("sigqueue: %s", strerror(errno));
  for (int i = 1; i <= 3; i++) {
    v.sival_int = 11 * i;
    if (sigqueue(getpid(), RT1, v) != 0) zdtm_die("sigqueue: %s", strerror(errno));
  }
  v.sival_int = 44;
  if (pthread_sigqueue(t1, RT2, v) != 0) zdtm_die("pthread_sigqueue failed");
  v.sival_int = 55;
  if (pthread_sigqueue(t1, RT2, v) != 0) zdtm_die("pthread_sigqueue failed");
  if (pthread_kill(t1, SIGUSR2) != 0 || raise(SIGWINCH) != 0) zdtm_die("pthread_kill failed");
  zdtm_sleep_ms(50); /* T2 sleeps in read */
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) {
    sigset_t rt1 = Set(RT1, 0);
    struct timespec zero = {0, 0};
    sigtimedwait(&rt1, NULL, &zero);
  }
  CheckDispositions();
  sigset_t pending = Set(SIGUSR1, RT1, SIGWINCH, 0);
  ExpectThread("M", &mask_m, &pending, alt_m);
  Take("M", SIGUSR1, "SIGUSR1", 0x1234, SI_QUEUE);
  ExpectNone("M", SIGUSR1, "SIGUSR1");
  for (int i = 1; i <= 3; i++) Take("M", RT1, "SIGRTMIN+1", 11 * i, SI_QUEUE);
  ExpectNone("M", RT1, "SIGRTMIN+1");
  sigset_t winch = Set(SIGWINCH, 0);
  pthread_sigmask(SIG_UNBLOCK, &winch, NULL);
  ExpectHandled("M", SIGWINCH, "SIGWINCH", -1000, alt_m);
  pthread_sigmask(SIG_BLOCK, &winch, NULL);

  if (write(go_t1[1], "g", 1) != 1) zdtm_fail_note("write: %s", strerror(errno));
  pthread_join(t1, NULL);

  if (syscall(SYS_tgkill, getpid(), tid_t2, SIGUSR2) != 0)
    zdtm_fail_note("tgkill T2: %s", strerror(errno));
  for (int i = 0; !atomic_load(&t2_handled) && i < 500; i++) zdtm_sleep_ms(10);
  if (!atomic_load(&t2_handled)) zdtm_fail_note("T2: the SIGUSR2 handler did not run in 5 s");
  zdtm_sleep_ms(20); /* T2 is back in its read */
  if (write(t2_pipe[1], "x", 1) != 1) zdtm_fail_note("write: %s", strerror(errno));
  pthread_join(t2, NULL);

  int broken[2];
  if (pipe(broken) != 0) zdtm_die("pipe: %s", strerror(errno));
  close(broken[0]);
  if (write(broken[1], "x", 1) != -1 || errno != EPIPE)
    zdtm_fail_note("a write to a broken pipe did not fail with EPIPE");
  zdtm_finish();
}

/* posix_timer: POSIX timers (timer_create) across the checkpoint.
 *
 *   t1  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+3 value 0xabc, 300 s then
 *       every 200 s
 *   t2  CLOCK_REALTIME, SIGEV_NONE, 400 s one-shot
 *   t3  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+4 value 0x333, 20 ms then every
 *       50 ms; SIGRTMIN+4 is blocked, so one signal waits while it overruns
 *   (a timer created and deleted: its id stays unused)
 *   t4  CLOCK_MONOTONIC, SIGEV_THREAD (glibc: a kernel timer that signals
 *       glibc's helper thread), every 30 ms, counting its calls
 *
 * Check: timer_gettime of t1 and t2 (intervals exact, values above zero and at
 * most the value set); t3 still fires: the pending SIGRTMIN+4 comes with
 * SI_TIMER, its value and t3's id, and another one follows within 1 s; t1's
 * and t2's ids still name timers (a deleted or renumbered timer fails
 * timer_gettime with EINVAL); t4 keeps calling its function, and the
 * deleted timer's id names no timer. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define SIG1 (SIGRTMIN + 3)
#define SIG3 (SIGRTMIN + 4)

static timer_t Create(clockid_t clock, int notify, int sig, int value) {
  struct sigevent ev;
  memset(&ev, 0, sizeof(ev));
  ev.sigev_notify = notify;
  ev.sigev_signo = sig;
  ev.sigev_value.sival_int = value;
  timer_t t;
  if (timer_create(clock, &ev, &t) != 0) zdtm_die("timer_create: %s", strerror(errno));
  return t;
}

static void Arm(timer_t t, long value_ns, long interval_ns) {
  struct itimerspec its = {{interval_ns / 1000000000L, interval_ns % 1000000000L},
                           {value_ns / 1000000000L, value_ns % 1000000000L}};
  if (timer_settime(t, 0, &its, NULL) != 0) zdtm_die("timer_settime: %s", strerror(errno));
}

static atomic_int g_ticks;
static void Tick(union sigval v) {
  if (v.sival_int == 7) atomic_fetch_add(&g_ticks, 1);
}

static void Expect(const char *name, timer_t t, long value_s, long interval_s) {
  struct itimerspec its;
  if (timer_gettime(t, &its) != 0) {
    zdtm_fail_note("%s: timer_gettime: %s", name, strerror(errno));
    return;
  }
  if (its.it_interval.tv_sec != interval_s || its.it_interval.tv_nsec != 0)
    zdtm_fail_note("%s: interval %ld.%09ld s, want %ld s", name, (long)its.it_interval.tv_sec,
                   its.it_interval.tv_nsec, interval_s);
  long long ns = its.it_value.tv_sec * 1000000000LL + its.it_value.tv_nsec;
  if (ns <= 0 || ns > value_s * 1000000000LL)
    zdtm_fail_note("%s: %lld ns left, want 1..%ld s", name, ns, value_s);
}

static void Take(timer_t t, int timeout_ms, const char *what) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIG3);
  struct timespec ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
  siginfo_t si;
  int r;
  while ((r = sigtimedwait(&set, &si, &ts)) < 0 && errno == EINTR) {
  }
  if (r != SIG3) {
    zdtm_fail_note("t3: %s: no SIGRTMIN+4 within %d ms (%s)", what, timeout_ms, strerror(errno));
    return;
  }
  if (si.si_code != SI_TIMER || si.si_value.sival_int != 0x333 || si.si_timerid != (int)(intptr_t)t)
    zdtm_fail_note("t3: %s: si_code %d value %#x timer id %d, want SI_TIMER, 0x333, %d", what,
                   si.si_code, si.si_value.sival_int, si.si_timerid, (int)(intptr_t)t);
}

int main(void) {
  zdtm_init("posix_timer");
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, SIG1);
  sigaddset(&block, SIG3);
  sigprocmask(SIG_BLOCK, &block, NULL);
  timer_t t1 = Create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIG1, 0xabc);
  timer_t t2 = Create(CLOCK_REALTIME, SIGEV_NONE, 0, 0);
  timer_t t3 = Create(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIG3, 0x333);
  Arm(t1, 300000000000L, 200000000000L);
  Arm(t2, 400000000000L, 0);
  Arm(t3, 20000000L, 50000000L);
  timer_t gap = Create(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0);
  if (timer_delete(gap) != 0) zdtm_die("timer_delete: %s", strerror(errno));
  struct sigevent ev;
  memset(&ev, 0, sizeof(ev));
  ev.sigev_notify = SIGEV_THREAD;
  ev.sigev_notify_function = Tick;
  ev.sigev_value.sival_int = 7;
  timer_t t4;
  if (timer_create(CLOCK_MONOTONIC, &ev, &t4) != 0)
    zdtm_die("timer_create SIGEV_THREAD: %s", strerror(errno));
  Arm(t4, 30000000L, 30000000L);
  zdtm_sleep_ms(100); /* t3 has fired; its signal waits */
  printf("posix_timer: timer ids %d %d %d\n", (int)(intptr_t)t1, (int)(intptr_t)t2,
         (int)(intptr_t)t3);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) timer_delete(t2);
  Expect("t1", t1, 300, 200);
  Expect("t2", t2, 400, 0);
  Take(t3, 100, "the signal pending at the checkpoint");
  Take(t3, 1000, "the next expiry");
  if (timer_getoverrun(t3) < 0) zdtm_fail_note("t3: timer_getoverrun: %s", strerror(errno));
  int before = atomic_load(&g_ticks);
  zdtm_sleep_ms(400);
  int after = atomic_load(&g_ticks);
  if (after - before < 3)
    zdtm_fail_note("t4 (SIGEV_THREAD, 30 ms): %d calls in 400 ms", after - before);
  struct itimerspec its;
  if (timer_gettime(gap, &its) == 0)
    zdtm_fail_note("the deleted timer's id names a timer after the restart");
  sigset_t pend;
  sigpending(&pend);
  if (sigismember(&pend, SIG1)) zdtm_fail_note("t1 (300 s) fired early");
  zdtm_finish();
}

/* itimers: setitimer(ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF) armed with long
 * values and intervals in the root (REAL 500 s every 1000 s, VIRTUAL 600 s
 * every 700 s, PROF 800 s every 900 s), and a one-shot ITIMER_REAL of 400 s
 * in a forked child (its other two disarmed).
 *
 * Check (getitimer): every interval exactly as set; every armed value above
 * zero and at most the value set (CPU timers: + 50 ms, see Check); REAL not less than the value set
 * minus the monotonic time since it was set (plus 1 s); VIRTUAL and PROF within 10 s of the value
 * set (the program uses little CPU); the child's disarmed timers still zero. Handlers record any
 * expiry, which must not happen. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

struct Timer {
  int which;
  const char *name;
  long value, interval; /* seconds; value 0: disarmed */
};
static const struct Timer kRoot[] = {{ITIMER_REAL, "ITIMER_REAL", 500, 1000},
                                     {ITIMER_VIRTUAL, "ITIMER_VIRTUAL", 600, 700},
                                     {ITIMER_PROF, "ITIMER_PROF", 800, 900}};
static const struct Timer kChild[] = {{ITIMER_REAL, "ITIMER_REAL", 400, 0},
                                      {ITIMER_VIRTUAL, "ITIMER_VIRTUAL", 0, 0},
                                      {ITIMER_PROF, "ITIMER_PROF", 0, 0}};
static atomic_int fired;

static void OnTimer(int sig) { atomic_fetch_add(&fired, sig); }

static void Arm(const struct Timer *t, int n) {
  for (int i = 0; i < n; i++) {
    struct itimerval v = {{t[i].interval, 0}, {t[i].value, 0}};
    if (setitimer(t[i].which, &v, NULL) != 0)
      zdtm_die("setitimer %s: %s", t[i].name, strerror(errno));
  }
}

static void Check(const char *who, const struct Timer *t, int n, uint64_t armed_ms) {
  uint64_t elapsed_ms = zdtm_now_ms() - armed_ms;
  for (int i = 0; i < n; i++) {
    struct itimerval v;
    if (getitimer(t[i].which, &v) != 0) {
      zdtm_fail_note("%s: getitimer %s: %s", who, t[i].name, strerror(errno));
      continue;
    }
    long long value_us = v.it_value.tv_sec * 1000000LL + v.it_value.tv_usec;
    long long want_us = t[i].value * 1000000LL;
    if (v.it_interval.tv_sec != t[i].interval || v.it_interval.tv_usec != 0)
      zdtm_fail_note("%s: %s interval %ld.%06ld s, want %ld s", who, t[i].name,
                     (long)v.it_interval.tv_sec, (long)v.it_interval.tv_usec, t[i].interval);
    long long low = t[i].which == ITIMER_REAL ? want_us - (long long)(elapsed_ms + 1000) * 1000
                                              : want_us - 10000000LL;
    /* The kernel reads CPU timers back rounded up by a tick (set_cpu_itimer
     * adds TICK_NSEC), so one set to 600 s says 600.004 s at HZ=250: allow
     * 50 ms over (a few ticks at HZ=100, across two restores). */
    long long high = t[i].which == ITIMER_REAL ? want_us : want_us + 50000;
    if (t[i].value == 0 ? value_us != 0 : (value_us <= 0 || value_us > high || value_us < low))
      zdtm_fail_note("%s: %s has %lld us left, want %lld..%lld us", who, t[i].name, value_us,
                     t[i].value ? (low > 0 ? low : 1) : 0, t[i].value ? high : 0);
  }
  if (atomic_load(&fired)) zdtm_fail_note("%s: a timer expired (signal sum %d)", who, fired);
}

int main(void) {
  zdtm_init("itimers");
  signal(SIGALRM, OnTimer);
  signal(SIGVTALRM, OnTimer);
  signal(SIGPROF, OnTimer);
  int verdict[2];
  if (pipe2(verdict, O_CLOEXEC) != 0) zdtm_die("pipe: %s", strerror(errno));
  pid_t kid = zdtm_fork();
  if (kid == 0) {
    close(verdict[0]);
    uint64_t armed = zdtm_now_ms();
    Arm(kChild, 3);
    zdtm_wait_check();
    Check("child", kChild, 3, armed);
    zdtm_kid_finish(verdict[1]);
  }
  close(verdict[1]);
  uint64_t armed = zdtm_now_ms();
  Arm(kRoot, 3);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) {
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);
  }
  Check("root", kRoot, 3, armed);
  zdtm_kid_collect(verdict[0], "child", 10000);
  zdtm_kid_reap(kid, "child", 5000);
  zdtm_finish();
}

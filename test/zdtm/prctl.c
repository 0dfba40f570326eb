/* prctl: per-process and per-thread attributes set with prctl() and
 * personality().
 *
 * Root R: name "zdtm-prctl-root", PR_SET_DUMPABLE 0, PR_SET_NO_NEW_PRIVS 1,
 * timer slack 123456 ns, personality ADDR_NO_RANDOMIZE|UNAME26; threads
 * "zdtm-thr-one" (slack 7777 ns) and "zdtm-thr-two" (slack 999999 ns).
 * Child K (forked after that): name "zdtm-prctl-kid", dumpable again,
 * PR_SET_PDEATHSIG SIGUSR2 (default action). Grandchild G: name
 * "zdtm-prctl-gkid", PR_SET_PDEATHSIG SIGUSR1 with a handler.
 *
 * Check: every value read back with PR_GET_* (names of every thread,
 * per-thread timer slack, dumpable, no_new_privs, pdeathsig) and
 * personality(0xffffffff); uname() says 2.6.x (UNAME26 works); K then exits
 * and G must receive its parent-death signal within 5 s. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

static const unsigned long kPersonality = ADDR_NO_RANDOMIZE | UNAME26;
static atomic_int got_pdeathsig;
static pthread_barrier_t started;

struct Thread {
  const char *name;
  unsigned long slack;
  pthread_t thread;
};
static struct Thread threads[2] = {{"zdtm-thr-one", 7777, 0}, {"zdtm-thr-two", 999999, 0}};

static void ExpectName(const char *who, const char *want) {
  char name[32] = "";
  if (prctl(PR_GET_NAME, name) != 0 || strcmp(name, want) != 0)
    zdtm_fail_note("%s: name '%s', want '%s'", who, name, want);
}

static void ExpectSlack(const char *who, unsigned long want) {
  long slack = prctl(PR_GET_TIMERSLACK);
  if (slack != (long)want) zdtm_fail_note("%s: timer slack %ld ns, want %lu", who, slack, want);
}

static void ExpectPdeathsig(const char *who, int want) {
  int sig = -1;
  if (prctl(PR_GET_PDEATHSIG, &sig) != 0 || sig != want)
    zdtm_fail_note("%s: pdeathsig %d, want %d", who, sig, want);
}

static void ExpectCommon(const char *who, int dumpable) {
  int d = prctl(PR_GET_DUMPABLE);
  if (d != dumpable) zdtm_fail_note("%s: dumpable %d, want %d", who, d, dumpable);
  int nnp = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0);
  if (nnp != 1) zdtm_fail_note("%s: no_new_privs %d, want 1", who, nnp);
  int pers = personality(0xffffffff);
  if (pers != (int)kPersonality)
    zdtm_fail_note("%s: personality %#x, want %#lx", who, pers, kPersonality);
  struct utsname u;
  if (uname(&u) != 0 || strncmp(u.release, "2.6.", 4) != 0)
    zdtm_fail_note("%s: uname release '%s' under UNAME26, want 2.6.x", who, u.release);
}

static void *Run(void *arg) {
  struct Thread *t = arg;
  if (prctl(PR_SET_NAME, t->name) != 0 || prctl(PR_SET_TIMERSLACK, t->slack) != 0)
    zdtm_die("prctl in a thread: %s", strerror(errno));
  pthread_barrier_wait(&started);
  zdtm_wait_check();
  ExpectName(t->name, t->name);
  ExpectSlack(t->name, t->slack);
  return NULL;
}

static void OnPdeathsig(int sig) { atomic_store(&got_pdeathsig, sig); }

int main(void) {
  zdtm_init("prctl");
  if (prctl(PR_SET_NAME, "zdtm-prctl-root") != 0 || prctl(PR_SET_DUMPABLE, 0) != 0 ||
      prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_TIMERSLACK, 123456UL) != 0)
    zdtm_die("prctl: %s", strerror(errno));
  if (personality(kPersonality) < 0) zdtm_die("personality: %s", strerror(errno));
  int verdict_k[2], verdict_g[2], g_ready[2];
  if (pipe2(verdict_k, O_CLOEXEC) != 0 || pipe2(verdict_g, O_CLOEXEC) != 0 ||
      pipe2(g_ready, O_CLOEXEC) != 0)
    zdtm_die("pipe: %s", strerror(errno));

  pid_t k = zdtm_fork();
  if (k == 0) {
    close(verdict_k[0]);
    close(verdict_g[0]);
    close(g_ready[0]);
    if (prctl(PR_SET_NAME, "zdtm-prctl-kid") != 0 || prctl(PR_SET_DUMPABLE, 1) != 0 ||
        prctl(PR_SET_PDEATHSIG, SIGUSR2) != 0)
      _exit(3);
    pid_t g = zdtm_fork();
    if (g == 0) {
      close(verdict_k[1]);
      signal(SIGUSR1, OnPdeathsig);
      if (prctl(PR_SET_NAME, "zdtm-prctl-gkid") != 0 || prctl(PR_SET_PDEATHSIG, SIGUSR1) != 0)
        _exit(3);
      if (write(g_ready[1], "g", 1) != 1) _exit(3);
      close(g_ready[1]);
      zdtm_wait_check();
      ExpectName("G", "zdtm-prctl-gkid");
      ExpectPdeathsig("G", SIGUSR1);
      ExpectCommon("G", 1);
      uint64_t deadline = zdtm_now_ms() + 5000;
      while (!atomic_load(&got_pdeathsig) && zdtm_now_ms() < deadline) zdtm_sleep_ms(5);
      if (atomic_load(&got_pdeathsig) != SIGUSR1)
        zdtm_fail_note("G: no SIGUSR1 within 5 s of its parent's exit");
      zdtm_kid_finish(verdict_g[1]);
    }
    close(verdict_g[1]);
    close(g_ready[1]);
    zdtm_wait_check();
    ExpectName("K", "zdtm-prctl-kid");
    ExpectPdeathsig("K", SIGUSR2);
    ExpectCommon("K", 1);
    zdtm_kid_finish(verdict_k[1]); /* exits, so G gets its SIGUSR1 */
  }
  close(verdict_k[1]);
  close(verdict_g[1]);
  close(g_ready[1]);
  char c;
  if (zdtm_read_full(g_ready[0], &c, 1, 10000) != 1) zdtm_die("the grandchild did not start");
  close(g_ready[0]);
  pthread_barrier_init(&started, NULL, 3);
  for (int i = 0; i < 2; i++)
    if (pthread_create(&threads[i].thread, NULL, Run, &threads[i]) != 0)
      zdtm_die("pthread_create failed");
  pthread_barrier_wait(&started);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) prctl(PR_SET_TIMERSLACK, 50000UL);
  ExpectName("R", "zdtm-prctl-root");
  ExpectSlack("R", 123456);
  ExpectPdeathsig("R", 0);
  ExpectCommon("R", 0);
  for (int i = 0; i < 2; i++) pthread_join(threads[i].thread, NULL);
  zdtm_kid_collect(verdict_k[0], "K", 10000);
  zdtm_kid_reap(k, "K", 5000);
  zdtm_kid_collect(verdict_g[0], "G", 10000);
  zdtm_finish();
}

/* stopped: a child stopped by SIGSTOP stays stopped across the restart.
 *
 * Child K has two threads that keep incrementing counters in MAP_SHARED
 * memory. The root stops K with SIGSTOP, waits for the stop report
 * (waitpid WUNTRACED) and notes the counters. The harness's /proc comparison
 * (Prog states=True) requires K in state T after each restore, untraced.
 *
 * Check: /proc/K/stat says T; the counters have not moved since the stop,
 * nor during another 200 ms; SIGCONT brings a WIFCONTINUED report and both
 * counters move again within 2 s; then K is told to end and exits 0. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

struct Shared {
  atomic_ulong count[2];
  atomic_int stop;
};
static struct Shared *sh;

static void *Spin(void *arg) {
  atomic_ulong *c = arg;
  while (!atomic_load(&sh->stop)) {
    atomic_fetch_add(c, 1);
    zdtm_sleep_ms(1);
  }
  return NULL;
}

static char State(pid_t pid) {
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE *f = fopen(path, "re");
  if (!f) return '?';
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  return p && p[1] == ' ' ? p[2] : '?';
}

static bool Moved(const unsigned long *before) {
  return atomic_load(&sh->count[0]) != before[0] && atomic_load(&sh->count[1]) != before[1];
}

int main(void) {
  zdtm_init("stopped");
  sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) zdtm_die("mmap: %s", strerror(errno));
  pid_t k = zdtm_fork();
  if (k == 0) {
    pthread_t t;
    if (pthread_create(&t, NULL, Spin, &sh->count[1]) != 0) _exit(3);
    Spin(&sh->count[0]);
    pthread_join(t, NULL);
    _exit(0);
  }
  while (atomic_load(&sh->count[0]) < 5 || atomic_load(&sh->count[1]) < 5) zdtm_sleep_ms(1);
  if (kill(k, SIGSTOP) != 0) zdtm_die("kill SIGSTOP: %s", strerror(errno));
  int status;
  if (waitpid(k, &status, WUNTRACED) != k || !WIFSTOPPED(status) || WSTOPSIG(status) != SIGSTOP)
    zdtm_die("waitpid WUNTRACED: no stop report (status %#x)", status);
  zdtm_sleep_ms(20);
  unsigned long at_stop[2] = {atomic_load(&sh->count[0]), atomic_load(&sh->count[1])};
  printf("stopped: child %d stopped at counts %lu, %lu\n", k, at_stop[0], at_stop[1]);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) {
    kill(k, SIGCONT);
    zdtm_sleep_ms(50);
  }
  char st = State(k);
  if (st != 'T') zdtm_fail_note("child %d is in state %c, want T (stopped)", k, st);
  zdtm_sleep_ms(200);
  unsigned long now[2] = {atomic_load(&sh->count[0]), atomic_load(&sh->count[1])};
  if (now[0] != at_stop[0] || now[1] != at_stop[1])
    zdtm_fail_note("the stopped child ran: counts %lu, %lu, were %lu, %lu at the stop", now[0],
                   now[1], at_stop[0], at_stop[1]);
  if (kill(k, SIGCONT) != 0) zdtm_fail_note("kill SIGCONT: %s", strerror(errno));
  if (!zdtm_corrupt_requested()) {
    pid_t r = waitpid(k, &status, WCONTINUED);
    if (r != k || !WIFCONTINUED(status))
      zdtm_fail_note("waitpid WCONTINUED returned %d, status %#x (%s)", r, status,
                     r < 0 ? strerror(errno) : "not continued");
  }
  uint64_t deadline = zdtm_now_ms() + 2000;
  while (!Moved(now) && zdtm_now_ms() < deadline) zdtm_sleep_ms(5);
  if (!Moved(now)) zdtm_fail_note("the child's two threads did not run within 2 s of SIGCONT");
  atomic_store(&sh->stop, 1);
  zdtm_kid_reap(k, "child", 5000);
  zdtm_finish();
}

/* zombie: unreaped children and an orphan inside the tree.
 *
 * The root is a child subreaper (PR_SET_CHILD_SUBREAPER). Before READY:
 *   Z1  exits with status 42, not reaped
 *   Z2  dies of SIGTERM, not reaped
 *   M   forks G and exits; the root reaps M, so G (an orphan) is reparented
 *       to the root
 * The harness's /proc comparison (Prog states=True) requires Z1 and Z2 in
 * state Z after each restore, and G's parent to be the root.
 *
 * Check: /proc shows Z1 and Z2 as zombies; waitpid(Z1) gives exit status 42
 * and waitpid(Z2) death by SIGTERM; G finds getppid() is the root, reports
 * over a pipe and exits 0, and the root reaps it; the root is still a
 * subreaper. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

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

/* Waits until pid has exited, without reaping it. */
static void WaitExited(pid_t pid) {
  siginfo_t si;
  memset(&si, 0, sizeof(si));
  if (waitid(P_PID, pid, &si, WEXITED | WNOWAIT) != 0)
    zdtm_die("waitid %d: %s", pid, strerror(errno));
}

static void Reap(const char *what, pid_t pid, int want_code, int want_sig) {
  char st = State(pid);
  if (st != 'Z') zdtm_fail_note("%s (%d): state %c, want Z", what, pid, st);
  int status = 0;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r != pid) {
    zdtm_fail_note("%s (%d): waitpid returned %d (%s)", what, pid, r,
                   r < 0 ? strerror(errno) : "not a zombie");
    return;
  }
  if (want_sig ? !(WIFSIGNALED(status) && WTERMSIG(status) == want_sig)
               : !(WIFEXITED(status) && WEXITSTATUS(status) == want_code))
    zdtm_fail_note("%s (%d): status %#x, want %s %d", what, pid, status,
                   want_sig ? "killed by signal" : "exit code", want_sig ? want_sig : want_code);
}

int main(void) {
  zdtm_init("zombie");
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
    zdtm_die("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
  pid_t root = getpid();
  int g_pid[2], verdict[2];
  if (pipe2(g_pid, O_CLOEXEC) != 0 || pipe2(verdict, O_CLOEXEC) != 0)
    zdtm_die("pipe: %s", strerror(errno));

  pid_t z1 = zdtm_fork();
  if (z1 == 0) _exit(42);
  pid_t z2 = zdtm_fork();
  if (z2 == 0) {
    signal(SIGTERM, SIG_DFL);
    raise(SIGTERM);
    _exit(3);
  }
  pid_t m = zdtm_fork();
  if (m == 0) {
    close(g_pid[0]);
    close(verdict[0]);
    pid_t g = zdtm_fork();
    if (g == 0) {
      while (getppid() != root) zdtm_sleep_ms(1); /* M has exited and been reaped */
      pid_t me = getpid();
      if (write(g_pid[1], &me, sizeof(me)) != sizeof(me)) _exit(3);
      close(g_pid[1]);
      zdtm_wait_check();
      if (getppid() != root) zdtm_fail_note("G: parent %d, want the root %d", getppid(), root);
      zdtm_kid_finish(verdict[1]);
    }
    _exit(0);
  }
  close(g_pid[1]);
  close(verdict[1]);
  WaitExited(z1);
  WaitExited(z2);
  int status;
  if (waitpid(m, &status, 0) != m || status != 0) zdtm_die("M ended with status %#x", status);
  pid_t g;
  if (zdtm_read_full(g_pid[0], &g, sizeof(g), 10000) != sizeof(g)) zdtm_die("no word from G");
  close(g_pid[0]);
  printf("zombie: Z1 %d, Z2 %d, orphan G %d\n", z1, z2, g);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) waitpid(z1, &status, 0);
  int sub = 0;
  if (prctl(PR_GET_CHILD_SUBREAPER, &sub) != 0 || sub != 1)
    zdtm_fail_note("the root is not a child subreaper any more (%d)", sub);
  Reap("Z1", z1, 42, 0);
  Reap("Z2", z2, 0, SIGTERM);
  zdtm_kid_collect(verdict[0], "G", 10000);
  zdtm_kid_reap(g, "G", 5000);
  zdtm_finish();
}

/* tree3: a process tree three levels deep with its own process group and
 * session inside it.
 *
 *   R (root, session and group leader: the harness starts it with setsid)
 *   +-- A   own process group (setpgid)
 *   |   +-- A1   in A's group
 *   |   +-- A2   in A's group
 *   +-- B   in R's group
 *       +-- B1   own session (setsid)
 *
 * Before READY every process sends its pid, ppid, pgid and sid to R through a
 * pipe; R checks the shape and saves them. Each process keeps its own saved
 * copy, polls $ZDTM_CHECK, and at the check compares getpid/getppid/getpgid/
 * getsid with it, reaps its children with waitpid (which only works if they
 * are still its children) and writes its verdict to a second pipe shared by
 * the whole tree; its exit status says the same. R collects every verdict and
 * reports. R's own parent is not checked: after a restart it is cr_restart. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "zdtm.h"

struct Ids {
  char name[4];
  int32_t pid, ppid, pgid, sid;
};
struct Verdict {
  char name[4];
  int32_t ok;
  char msg[240];
};
enum { kMembers = 5 }; /* A, A1, A2, B, B1 */

static int ids_pipe[2], verdict_pipe[2];

static struct Ids Current(const char *name) {
  struct Ids ids = {.pid = getpid(), .ppid = getppid(), .pgid = getpgid(0), .sid = getsid(0)};
  snprintf(ids.name, sizeof(ids.name), "%s", name);
  return ids;
}

static void Append(char *msg, size_t size, const char *fmt, int have, int want, const char *what) {
  size_t len = strlen(msg);
  if (have != want) snprintf(msg + len, size - len, fmt, len ? ", " : "", what, have, want);
}

/* Compares `now` with `saved`; appends differences to msg. */
static void Compare(const struct Ids *saved, const struct Ids *now, bool check_ppid, char *msg,
                    size_t size) {
  const char *fmt = "%s%s %d, want %d";
  Append(msg, size, fmt, now->pid, saved->pid, "pid");
  if (check_ppid) Append(msg, size, fmt, now->ppid, saved->ppid, "ppid");
  Append(msg, size, fmt, now->pgid, saved->pgid, "pgid");
  Append(msg, size, fmt, now->sid, saved->sid, "sid");
}

/* Reaps `child` and appends a note to msg unless it exited 0. */
static void Reap(pid_t child, char *msg, size_t size) {
  int status;
  pid_t r;
  while ((r = waitpid(child, &status, 0)) < 0 && errno == EINTR) {
  }
  size_t len = strlen(msg);
  if (r != child)
    snprintf(msg + len, size - len, "%swaitpid(%d): %s", len ? ", " : "", child,
             r < 0 ? strerror(errno) : "wrong pid");
  else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    snprintf(msg + len, size - len, "%schild %d ended with status %#x", len ? ", " : "", child,
             status);
}

/* The life of every process but the root after it has built its part. */
static _Noreturn void Member(const char *name, const pid_t *children, int nchildren,
                             bool corrupt_here) {
  struct Ids saved = Current(name);
  if (write(ids_pipe[1], &saved, sizeof(saved)) != sizeof(saved)) _exit(3);
  zdtm_wait_check();
  if (corrupt_here && zdtm_corrupt_requested()) setpgid(0, 0); /* selftest: leave the group */

  struct Verdict v = {.ok = 1};
  snprintf(v.name, sizeof(v.name), "%s", name);
  struct Ids now = Current(name);
  Compare(&saved, &now, true, v.msg, sizeof(v.msg));
  for (int i = 0; i < nchildren; i++) Reap(children[i], v.msg, sizeof(v.msg));
  v.ok = v.msg[0] == 0;
  if (write(verdict_pipe[1], &v, sizeof(v)) != sizeof(v)) _exit(3);
  _exit(v.ok ? 0 : 1);
}

static pid_t Fork(void) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) zdtm_die("fork: %s", strerror(errno));
  return pid;
}

/* Reads one fixed-size record from fd within timeout_ms. */
static bool ReadRecord(int fd, void *rec, size_t size, int timeout_ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  int r;
  while ((r = poll(&p, 1, timeout_ms)) < 0 && errno == EINTR) {
  }
  if (r != 1) return false;
  ssize_t n;
  while ((n = read(fd, rec, size)) < 0 && errno == EINTR) {
  }
  return n == (ssize_t)size;
}

static const struct Ids *Find(const struct Ids *all, const char *name) {
  for (int i = 0; i < kMembers; i++)
    if (strcmp(all[i].name, name) == 0) return &all[i];
  zdtm_die("no ids from %s", name);
}

int main(void) {
  zdtm_init("tree3");
  if (pipe(ids_pipe) != 0 || pipe(verdict_pipe) != 0) zdtm_die("pipe: %s", strerror(errno));

  pid_t a = Fork();
  if (a == 0) {
    if (setpgid(0, 0) != 0) _exit(3);
    pid_t kids[2];
    if ((kids[0] = Fork()) == 0) Member("A1", NULL, 0, false);
    if ((kids[1] = Fork()) == 0) Member("A2", NULL, 0, true);
    Member("A", kids, 2, false);
  }
  setpgid(a, a); /* also from the parent, so the group exists whoever runs first */
  pid_t b = Fork();
  if (b == 0) {
    pid_t kid = Fork();
    if (kid == 0) {
      if (setsid() < 0) _exit(3);
      Member("B1", NULL, 0, false);
    }
    Member("B", &kid, 1, false);
  }

  struct Ids all[kMembers];
  for (int i = 0; i < kMembers; i++)
    if (!ReadRecord(ids_pipe[0], &all[i], sizeof(all[i]), 10000))
      zdtm_die("only %d of %d processes reported their ids", i, kMembers);
  const struct Ids root = Current("R");
  const struct Ids *pa = Find(all, "A"), *pa1 = Find(all, "A1"), *pa2 = Find(all, "A2");
  const struct Ids *pb = Find(all, "B"), *pb1 = Find(all, "B1");
  if (root.pgid != root.pid || root.sid != root.pid)
    zdtm_die("the root must lead its own session (start it with setsid)");
  if (pa->pid != a || pa->ppid != root.pid || pa->pgid != a || pa1->ppid != a || pa2->ppid != a ||
      pa1->pgid != a || pa2->pgid != a || pb->pid != b || pb->ppid != root.pid ||
      pb->pgid != root.pgid || pb1->ppid != b || pb1->sid != pb1->pid || pb1->pgid != pb1->pid)
    zdtm_die("the tree did not come out as designed");
  printf("tree3: R %d; A %d (pgid %d): A1 %d, A2 %d; B %d: B1 %d (sid %d)\n", root.pid, pa->pid,
         pa->pgid, pa1->pid, pa2->pid, pb->pid, pb1->pid, pb1->sid);
  zdtm_ready();

  zdtm_wait_check();
  for (int i = 0; i < kMembers; i++) {
    struct Verdict v;
    if (!ReadRecord(verdict_pipe[0], &v, sizeof(v), 20000)) {
      zdtm_fail_note("only %d of %d processes gave a verdict within 20 s", i, kMembers);
      break;
    }
    v.name[sizeof(v.name) - 1] = 0;
    v.msg[sizeof(v.msg) - 1] = 0;
    if (!v.ok) zdtm_fail_note("%s: %s", v.name, v.msg);
  }
  char msg[240] = "";
  struct Ids now = Current("R");
  Compare(&root, &now, false, msg, sizeof(msg));
  Reap(a, msg, sizeof(msg));
  Reap(b, msg, sizeof(msg));
  if (msg[0]) zdtm_fail_note("R: %s", msg);
  zdtm_finish();
}

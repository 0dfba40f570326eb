/* pipes_half_closed: pipes of which only one end is still open, in the tree.
 *
 *   A  500 bytes inside, then the write end closed: the root holds only the
 *      read end, and a child holds a dup of it
 *   B  the read end closed: the root holds only the write end (SIGPIPE is
 *      ignored)
 *
 * Check: both fds are still pipes (the harness compares /proc fd targets too:
 * such a pipe must not come back as /dev/null or the restorer's stdio); A
 * gives its 500 bytes and then EOF, and the child's fd is the same pipe (it
 * sees EOF too, without the bytes the root took); a write to B fails with
 * EPIPE. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum { kASize = 500 };
static const uint64_t kSeedA = 0xa0a0;

static void ExpectPipe(const char *what, int fd) {
  struct stat st;
  char link[64], target[64] = "";
  snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, target, sizeof(target) - 1);
  if (n > 0) target[n] = 0;
  if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode) || strncmp(target, "pipe:[", 6) != 0)
    zdtm_fail_note("%s: fd %d is '%s', not a pipe", what, fd, target);
}

int main(void) {
  zdtm_init("pipes_half_closed");
  signal(SIGPIPE, SIG_IGN);
  int a[2], b[2], verdict[2], go[2];
  if (pipe(a) != 0 || pipe(b) != 0 || pipe2(verdict, O_CLOEXEC) != 0 || pipe2(go, O_CLOEXEC) != 0)
    zdtm_die("pipe: %s", strerror(errno));
  char buf[kASize + 1];
  zdtm_pattern_fill(buf, kASize, kSeedA, 0);
  if (!zdtm_write_full(a[1], buf, kASize)) zdtm_die("write: %s", strerror(errno));
  close(a[1]);
  close(b[0]);
  pid_t kid = zdtm_fork();
  if (kid == 0) {
    close(b[1]);
    close(verdict[0]);
    close(go[1]);
    zdtm_wait_check();
    ExpectPipe("child: A", a[0]);
    char c;
    if (zdtm_read_full(go[0], &c, 1, 10000) != 1) zdtm_fail_note("child: no go");
    ssize_t n = read(a[0], buf, sizeof(buf));
    if (n != 0) zdtm_fail_note("child: A read %zd, want EOF after the root drained it", n);
    zdtm_kid_finish(verdict[1]);
  }
  close(verdict[1]);
  close(go[0]);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested() && read(a[0], buf, 1) != 1) zdtm_die("read: %s", strerror(errno));
  ExpectPipe("A", a[0]);
  ExpectPipe("B", b[1]);
  size_t got = zdtm_read_full(a[0], buf, kASize + 1, 5000);
  if (got != kASize)
    zdtm_fail_note("A: read %zu bytes before EOF, want %d", got, kASize);
  else
    zdtm_pattern_check("A", buf, kASize, kSeedA, 0);
  ssize_t n = write(b[1], "x", 1);
  if (n != -1 || errno != EPIPE)
    zdtm_fail_note("B: write returned %zd (%s), want EPIPE", n, n < 0 ? strerror(errno) : "ok");
  if (write(go[1], "g", 1) != 1) zdtm_fail_note("write go: %s", strerror(errno));
  zdtm_kid_collect(verdict[0], "child", 10000);
  zdtm_kid_reap(kid, "child", 5000);
  zdtm_finish();
}

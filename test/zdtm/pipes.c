/* pipes: pipes whose both ends are in the tree, with data inside them.
 *
 *   A  root writes 3000 bytes; child K1 holds the only read end and reads
 *      nothing before the check
 *   B  F_SETPIPE_SZ 1 MiB, 300000 bytes inside; root holds both ends; thread
 *      T1 reads it after the check
 *   C  pipe2(O_NONBLOCK), 10 bytes inside
 *   D  50 pipes, pipe i holds 7*(i+1) bytes
 *   E  child K2 is blocked writing 200000 bytes into a 64 KiB pipe whose
 *      reader, thread T2, starts only after the check
 *   F  thread T3 is blocked in read() on a pipe that child K3 writes to after
 *      the check
 *
 * Check: every byte in order, FIONREAD counts, pipe sizes (F_GETPIPE_SZ),
 * O_NONBLOCK (EAGAIN on an empty pipe), EOF once the only writer closes (no
 * stray write ends), K2's and K3's verdicts. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum {
  kASize = 3000,
  kAMore = 1000,
  kBSize = 300000,
  kBPipe = 1 << 20,
  kCSize = 10,
  kDPipes = 50,
  kESize = 200000,
  kFSize = 123
};
static const uint64_t kSeedA = 0xa1, kSeedB = 0xb2, kSeedC = 0xc3, kSeedD = 0xd400, kSeedE = 0xe5,
                      kSeedF = 0xf6;

static int a[2], b[2], c[2], d[kDPipes][2], e[2], f[2], verdict_k1[2], verdict_k2[2], verdict_k3[2],
    go_b[2];

static void Drain(int fd, size_t size, uint64_t seed, const char *what) {
  char *buf = malloc(size);
  size_t got = zdtm_read_full(fd, buf, size, 10000);
  if (got != size)
    zdtm_fail_note("%s: read %zu of %zu bytes (%s)", what, got, size,
                   errno ? strerror(errno) : "EOF");
  else
    zdtm_pattern_check(what, buf, size, seed, 0);
  free(buf);
}

static void *ReadB(void *arg) {
  (void)arg;
  char g;
  if (zdtm_read_full(go_b[0], &g, 1, 60000) != 1) {
    zdtm_fail_note("pipe B reader: no go");
    return NULL;
  }
  int n = -1;
  if (ioctl(b[0], FIONREAD, &n) != 0 || n != kBSize)
    zdtm_fail_note("pipe B: FIONREAD says %d bytes, want %d", n, kBSize);
  Drain(b[0], kBSize, kSeedB, "pipe B (1 MiB)");
  return NULL;
}

static void *ReadE(void *arg) {
  (void)arg;
  zdtm_wait_check();
  Drain(e[0], kESize, kSeedE, "pipe E (writer blocked in the child)");
  return NULL;
}

static void *ReadF(void *arg) {
  (void)arg;
  char buf[kFSize];
  ssize_t n;
  while ((n = read(f[0], buf, sizeof(buf))) < 0 && errno == EINTR) {
  }
  if (n < 0) {
    zdtm_fail_note("pipe F: blocked read failed: %s", strerror(errno));
    return NULL;
  }
  size_t got = (size_t)n + (n > 0 ? zdtm_read_full(f[0], buf + n, kFSize - (size_t)n, 10000) : 0);
  if (got != kFSize)
    zdtm_fail_note("pipe F: %zu of %d bytes", got, kFSize);
  else
    zdtm_pattern_check("pipe F (reader blocked in a thread)", buf, kFSize, kSeedF, 0);
  return NULL;
}

/* In a child: closes every fd above 2 but the n listed. */
static void KeepOnly(const int *keep, int n) {
  for (int fd = 3; fd < 1024; fd++) {
    int k = 0;
    while (k < n && keep[k] != fd) k++;
    if (k == n) close(fd);
  }
}

static void Pipe(int p[2], int flags) {
  if (pipe2(p, flags) != 0) zdtm_die("pipe2: %s", strerror(errno));
}

int main(void) {
  zdtm_init("pipes");
  char *buf = malloc(kBSize);
  Pipe(a, 0);
  Pipe(b, 0);
  Pipe(c, O_NONBLOCK);
  for (int i = 0; i < kDPipes; i++) Pipe(d[i], 0);
  Pipe(e, 0);
  Pipe(f, 0);
  Pipe(verdict_k1, O_CLOEXEC);
  Pipe(verdict_k2, O_CLOEXEC);
  Pipe(verdict_k3, O_CLOEXEC);
  Pipe(go_b, 0);
  if (fcntl(b[1], F_SETPIPE_SZ, kBPipe) < kBPipe) zdtm_die("F_SETPIPE_SZ: %s", strerror(errno));

  pid_t k1 = zdtm_fork();
  if (k1 == 0) { /* reads A after the check */
    KeepOnly((int[]){a[0], verdict_k1[1]}, 2);
    zdtm_wait_check();
    Drain(a[0], kASize, kSeedA, "pipe A in K1");
    Drain(a[0], kAMore, kSeedA + 1, "pipe A in K1, written after the check");
    char x;
    ssize_t n = read(a[0], &x, 1);
    if (n != 0) zdtm_fail_note("pipe A in K1: no EOF after the root closed it (read %zd)", n);
    zdtm_kid_finish(verdict_k1[1]);
  }
  close(a[0]);
  pid_t k2 = zdtm_fork();
  if (k2 == 0) { /* blocks writing E */
    KeepOnly((int[]){e[1], verdict_k2[1]}, 2);
    zdtm_pattern_fill(buf, kESize, kSeedE, 0);
    if (!zdtm_write_full(e[1], buf, kESize)) zdtm_fail_note("pipe E: write: %s", strerror(errno));
    zdtm_kid_finish(verdict_k2[1]);
  }
  close(e[1]);
  pid_t k3 = zdtm_fork();
  if (k3 == 0) { /* writes F after the check */
    KeepOnly((int[]){f[1], verdict_k3[1]}, 2);
    zdtm_wait_check();
    zdtm_pattern_fill(buf, kFSize, kSeedF, 0);
    if (!zdtm_write_full(f[1], buf, kFSize)) zdtm_fail_note("pipe F: write: %s", strerror(errno));
    zdtm_kid_finish(verdict_k3[1]);
  }
  close(f[1]);

  zdtm_pattern_fill(buf, kASize, kSeedA, 0);
  if (!zdtm_write_full(a[1], buf, kASize)) zdtm_die("write A: %s", strerror(errno));
  zdtm_pattern_fill(buf, kBSize, kSeedB, 0);
  if (!zdtm_write_full(b[1], buf, kBSize)) zdtm_die("write B: %s", strerror(errno));
  zdtm_pattern_fill(buf, kCSize, kSeedC, 0);
  if (!zdtm_write_full(c[1], buf, kCSize)) zdtm_die("write C: %s", strerror(errno));
  for (int i = 0; i < kDPipes; i++) {
    zdtm_pattern_fill(buf, 7 * (i + 1), kSeedD + i, 0);
    if (!zdtm_write_full(d[i][1], buf, 7 * (i + 1))) zdtm_die("write D: %s", strerror(errno));
  }
  pthread_t t1, t2, t3;
  if (pthread_create(&t1, NULL, ReadB, NULL) || pthread_create(&t2, NULL, ReadE, NULL) ||
      pthread_create(&t3, NULL, ReadF, NULL))
    zdtm_die("pthread_create failed");
  /* Wait until K2 has filled pipe E and sleeps in write. */
  for (int i = 0;; i++) {
    int n = 0;
    if (ioctl(e[0], FIONREAD, &n) == 0 && n == 65536) break;
    if (i == 500) zdtm_die("pipe E holds %d bytes after 5 s, want 65536", n);
    zdtm_sleep_ms(10);
  }
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested() && read(d[7][0], buf, 1) != 1) zdtm_die("read: %s", strerror(errno));

  if (write(go_b[1], "g", 1) != 1) zdtm_fail_note("write go_b: %s", strerror(errno));
  int sz = fcntl(b[0], F_GETPIPE_SZ);
  if (sz != kBPipe) zdtm_fail_note("pipe B: F_GETPIPE_SZ %d, want %d", sz, kBPipe);
  sz = fcntl(a[1], F_GETPIPE_SZ);
  if (sz != 65536) zdtm_fail_note("pipe A: F_GETPIPE_SZ %d, want 65536", sz);

  /* C: non-blocking on both ends. */
  for (int i = 0; i < 2; i++) {
    int fl = fcntl(c[i], F_GETFL);
    if (fl < 0 || !(fl & O_NONBLOCK))
      zdtm_fail_note("pipe C end %d: flags %#o lack O_NONBLOCK", i, fl);
  }
  ssize_t n = read(c[0], buf, 100);
  if (n != kCSize)
    zdtm_fail_note("pipe C: read %zd bytes, want %d", n, kCSize);
  else
    zdtm_pattern_check("pipe C", buf, kCSize, kSeedC, 0);
  n = read(c[0], buf, 1);
  if (n != -1 || errno != EAGAIN)
    zdtm_fail_note("pipe C: read of the empty non-blocking pipe returned %zd (%s), want EAGAIN", n,
                   n < 0 ? strerror(errno) : "data");

  /* D: 50 pipes, each with its own bytes. */
  for (int i = 0; i < kDPipes; i++) {
    int want = 7 * (i + 1), have = -1;
    char what[32];
    snprintf(what, sizeof(what), "pipe D[%d]", i);
    if (ioctl(d[i][0], FIONREAD, &have) != 0 || have != want) {
      zdtm_fail_note("%s: FIONREAD says %d bytes, want %d", what, have, want);
      continue;
    }
    if (read(d[i][0], buf, (size_t)want) != want)
      zdtm_fail_note("%s: short read", what);
    else
      zdtm_pattern_check(what, buf, (size_t)want, kSeedD + (uint64_t)i, 0);
  }

  /* A: more data, then EOF for K1. */
  zdtm_pattern_fill(buf, kAMore, kSeedA + 1, 0);
  if (!zdtm_write_full(a[1], buf, kAMore)) zdtm_fail_note("write A: %s", strerror(errno));
  close(a[1]);

  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  pthread_join(t3, NULL);
  zdtm_kid_collect(verdict_k1[0], "K1 (pipe A reader)", 10000);
  zdtm_kid_collect(verdict_k2[0], "K2 (pipe E writer)", 10000);
  zdtm_kid_collect(verdict_k3[0], "K3 (pipe F writer)", 10000);
  zdtm_kid_reap(k1, "K1", 5000);
  zdtm_kid_reap(k2, "K2", 5000);
  zdtm_kid_reap(k3, "K3", 5000);
  free(buf);
  zdtm_finish();
}

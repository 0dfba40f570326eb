/* mixed: threads, forked children, pipes, shared memory and an unlinked file
 * in one tree.
 *
 *   R   root: thread T1 blocked in read() on pipe P2, thread T2 counting in
 *       shared memory every millisecond; holds the write ends of P1 and P3
 *   K1  child: 2000 bytes wait for it in pipe P1; its thread K1T is blocked
 *       in read() on pipe P3
 *   K2  child: writes into P2 after the check; has forked
 *   G   grandchild (K2's child)
 * All share S (MAP_SHARED|MAP_ANONYMOUS, 64 KiB, page 0 filled by R) and one
 * open file description of U, an 8 KiB file unlinked after opening.
 *
 * Check: every process verifies S page 0 and U's bytes and that U is still
 * unlinked; K1 reads P1's bytes; R writes P3 and K1T must read it; K2 writes
 * P2 and T1 must read it; K1 writes S page 1 and G writes U at 8192 (through
 * the shared offset, after R moved it there), and R must see both; T2's
 * counter keeps going after the restart; every process reports a verdict. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum {
  kPage = 4096,
  kShared = 16 * kPage,
  kUSize = 8192,
  kP1 = 2000,
  kP2 = 1500,
  kP3 = 10,
  kLate = 500
};
static const uint64_t kSeedS = 0x5, kSeedU = 0x75, kSeedP1 = 0x91, kSeedP2 = 0x92, kSeedP3 = 0x93,
                      kSeedK1 = 0x4b31, kSeedG = 0x47;

struct Shared {
  uint8_t page0[kPage];
  uint8_t page1[kPage];
  atomic_ulong counter;
  atomic_int stop;
};
static struct Shared *S;
static int u, p1[2], p2[2], p3[2], v_k1[2], v_k2[2], v_g[2], g_go[2];

static void Common(const char *who) {
  char what[64];
  snprintf(what, sizeof(what), "%s: shared page 0", who);
  zdtm_pattern_check(what, S->page0, kPage, kSeedS, 0);
  uint8_t buf[kUSize];
  struct stat st;
  if (fstat(u, &st) != 0 || st.st_nlink != 0)
    zdtm_fail_note("%s: U has st_nlink %ju, want 0 (%s)", who, (uintmax_t)st.st_nlink,
                   strerror(errno));
  if (pread(u, buf, kUSize, 0) != kUSize) {
    zdtm_fail_note("%s: pread U: %s", who, strerror(errno));
  } else {
    snprintf(what, sizeof(what), "%s: U", who);
    zdtm_pattern_check(what, buf, kUSize, kSeedU, 0);
  }
}

static void Drain(int fd, size_t n, uint64_t seed, const char *what) {
  uint8_t buf[kP1];
  size_t got = zdtm_read_full(fd, buf, n, 10000);
  if (got != n)
    zdtm_fail_note("%s: %zu of %zu bytes", what, got, n);
  else
    zdtm_pattern_check(what, buf, n, seed, 0);
}

static void Fill(int fd, size_t n, uint64_t seed, const char *what) {
  uint8_t buf[kP1];
  zdtm_pattern_fill(buf, n, seed, 0);
  if (!zdtm_write_full(fd, buf, n)) zdtm_fail_note("%s: write: %s", what, strerror(errno));
}

static void *K1T(void *arg) {
  (void)arg;
  uint8_t buf[kP3];
  ssize_t n;
  while ((n = read(p3[0], buf, kP3)) < 0 && errno == EINTR) {
  }
  if (n != kP3)
    zdtm_fail_note("K1T: blocked read returned %zd", n);
  else
    zdtm_pattern_check("K1T: P3", buf, kP3, kSeedP3, 0);
  return NULL;
}

static void *T1(void *arg) {
  (void)arg;
  uint8_t buf[kP2];
  ssize_t n;
  while ((n = read(p2[0], buf, kP2)) < 0 && errno == EINTR) {
  }
  size_t got = n > 0 ? (size_t)n + zdtm_read_full(p2[0], buf + n, kP2 - (size_t)n, 10000) : 0;
  if (got != kP2)
    zdtm_fail_note("T1: %zu of %d bytes from P2", got, kP2);
  else
    zdtm_pattern_check("T1: P2", buf, kP2, kSeedP2, 0);
  return NULL;
}

static void *T2(void *arg) {
  (void)arg;
  while (!atomic_load(&S->stop)) {
    atomic_fetch_add(&S->counter, 1);
    zdtm_sleep_ms(1);
  }
  return NULL;
}

static void KeepOnly(const int *keep, int n) {
  for (int fd = 3; fd < 1024; fd++) {
    int k = 0;
    while (k < n && keep[k] != fd) k++;
    if (k == n) close(fd);
  }
}

int main(void) {
  zdtm_init("mixed");
  S = mmap(NULL, kShared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (S == MAP_FAILED) zdtm_die("mmap: %s", strerror(errno));
  zdtm_pattern_fill(S->page0, kPage, kSeedS, 0);
  u = open("U", O_RDWR | O_CREAT | O_TRUNC, 0600);
  uint8_t buf[kUSize];
  zdtm_pattern_fill(buf, kUSize, kSeedU, 0);
  if (u < 0 || !zdtm_write_full(u, buf, kUSize) || unlink("U") != 0)
    zdtm_die("U: %s", strerror(errno));
  if (pipe(p1) || pipe(p2) || pipe(p3) || pipe2(v_k1, O_CLOEXEC) || pipe2(v_k2, O_CLOEXEC) ||
      pipe2(v_g, O_CLOEXEC) || pipe(g_go))
    zdtm_die("pipe: %s", strerror(errno));

  pid_t k1 = zdtm_fork();
  if (k1 == 0) {
    KeepOnly((int[]){u, p1[0], p3[0], v_k1[1]}, 4);
    pthread_t t;
    if (pthread_create(&t, NULL, K1T, NULL) != 0) _exit(3);
    zdtm_wait_check();
    Common("K1");
    Drain(p1[0], kP1, kSeedP1, "K1: P1");
    pthread_join(t, NULL);
    zdtm_pattern_fill(S->page1, kPage, kSeedK1, 0);
    zdtm_kid_finish(v_k1[1]);
  }
  pid_t k2 = zdtm_fork();
  if (k2 == 0) {
    KeepOnly((int[]){u, p2[1], v_k2[1], v_g[1], g_go[0]}, 5);
    pid_t g = zdtm_fork();
    if (g == 0) {
      KeepOnly((int[]){u, v_g[1], g_go[0]}, 3);
      zdtm_wait_check();
      Common("G");
      char c;
      if (zdtm_read_full(g_go[0], &c, 1, 10000) != 1) { /* R has moved U's offset to 8192 */
        zdtm_fail_note("G: no go");
      } else {
        off_t pos = lseek(u, 0, SEEK_CUR);
        if (pos != kUSize)
          zdtm_fail_note("G: U's shared offset is %jd, want %d", (intmax_t)pos, kUSize);
        Fill(u, kLate, kSeedG, "G: U");
      }
      zdtm_kid_finish(v_g[1]);
    }
    close(v_g[1]);
    close(g_go[0]);
    zdtm_wait_check();
    Common("K2");
    Fill(p2[1], kP2, kSeedP2, "K2: P2");
    zdtm_kid_reap(g, "K2: G", 15000);
    zdtm_kid_finish(v_k2[1]);
  }
  close(p1[0]);
  close(p2[1]);
  close(p3[0]);
  close(v_k1[1]);
  close(v_k2[1]);
  close(v_g[1]);
  close(g_go[0]);
  Fill(p1[1], kP1, kSeedP1, "P1");
  pthread_t t1, t2;
  if (pthread_create(&t1, NULL, T1, NULL) || pthread_create(&t2, NULL, T2, NULL))
    zdtm_die("pthread_create failed");
  if (lseek(u, 100, SEEK_SET) != 100) zdtm_die("lseek: %s", strerror(errno));
  zdtm_sleep_ms(50);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) S->page0[10] ^= 1;
  Common("R");
  unsigned long c0 = atomic_load(&S->counter);
  off_t pos = lseek(u, 0, SEEK_CUR);
  if (pos != 100) zdtm_fail_note("R: U's offset %jd, want 100", (intmax_t)pos);
  if (lseek(u, kUSize, SEEK_SET) != kUSize || write(g_go[1], "g", 1) != 1)
    zdtm_fail_note("R: lseek U / write g_go: %s", strerror(errno));
  Fill(p3[1], kP3, kSeedP3, "P3");
  pthread_join(t1, NULL);
  zdtm_kid_collect(v_k1[0], "K1", 15000);
  zdtm_kid_collect(v_g[0], "G", 15000);
  zdtm_kid_collect(v_k2[0], "K2", 15000);
  zdtm_kid_reap(k1, "K1", 5000);
  zdtm_kid_reap(k2, "K2", 5000);
  zdtm_pattern_check("R: shared page 1, written by K1 after the restart", S->page1, kPage, kSeedK1,
                     0);
  uint8_t late[kLate];
  if (pread(u, late, kLate, kUSize) != kLate)
    zdtm_fail_note("R: pread U at 8192: %s", strerror(errno));
  else
    zdtm_pattern_check("R: U at 8192, written by G after the restart", late, kLate, kSeedG, 0);
  pos = lseek(u, 0, SEEK_CUR);
  if (pos != kUSize + kLate)
    zdtm_fail_note("R: U's offset %jd after G's write, want %d", (intmax_t)pos, kUSize + kLate);
  uint64_t deadline = zdtm_now_ms() + 2000;
  while (atomic_load(&S->counter) == c0 && zdtm_now_ms() < deadline) zdtm_sleep_ms(5);
  if (atomic_load(&S->counter) == c0) zdtm_fail_note("R: T2 does not count any more");
  atomic_store(&S->stop, 1);
  pthread_join(t2, NULL);
  zdtm_finish();
}

/* zdtm.c: the READY/CHECK protocol and PASS/FAIL reporting shared by the
 * ZDTM-style test programs (see zdtm.h and zdtm.py). */
#define _GNU_SOURCE
#include "zdtm.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *test_name = "unnamed";
static const char *ready_path;
static const char *check_path;
static bool corrupt;

static pthread_mutex_t notes_lock = PTHREAD_MUTEX_INITIALIZER;
static char notes[2048];
static size_t notes_len;
static unsigned notes_count;

void zdtm_init(const char *name) {
  test_name = name;
  setvbuf(stdout, NULL, _IOLBF, 0);
  ready_path = getenv("ZDTM_READY");
  check_path = getenv("ZDTM_CHECK");
  if (!ready_path || !*ready_path || !check_path || !*check_path)
    zdtm_die("ZDTM_READY and ZDTM_CHECK must name files (run through zdtm.py)");
  const char *c = getenv("ZDTM_SELFTEST_CORRUPT");
  corrupt = c && *c;
}

const char *zdtm_name(void) { return test_name; }

bool zdtm_corrupt_requested(void) { return corrupt; }

void zdtm_ready(void) {
  char tmp[4096];
  char line[64];
  int n = snprintf(tmp, sizeof(tmp), "%s.tmp.%d", ready_path, (int)getpid());
  if (n < 0 || (size_t)n >= sizeof(tmp)) zdtm_die("ZDTM_READY path too long");
  int len = snprintf(line, sizeof(line), "READY %d\n", (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) zdtm_die("open %s: %s", tmp, strerror(errno));
  if (write(fd, line, (size_t)len) != len) zdtm_die("write %s: %s", tmp, strerror(errno));
  if (close(fd) != 0) zdtm_die("close %s: %s", tmp, strerror(errno));
  if (rename(tmp, ready_path) != 0)
    zdtm_die("rename %s -> %s: %s", tmp, ready_path, strerror(errno));
}

bool zdtm_check_requested(void) { return access(check_path, F_OK) == 0; }

void zdtm_sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

void zdtm_wait_check(void) {
  while (!zdtm_check_requested()) zdtm_sleep_ms(20);
}

void zdtm_fail_note(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&notes_lock);
  notes_count++;
  size_t room = sizeof(notes) - notes_len;
  if (room > 1) {
    int n = snprintf(notes + notes_len, room, "%s%s", notes_len ? "; " : "", msg);
    if (n > 0) notes_len += (size_t)n < room ? (size_t)n : room - 1;
  }
  pthread_mutex_unlock(&notes_lock);
}

bool zdtm_failed(void) {
  pthread_mutex_lock(&notes_lock);
  bool failed = notes_count != 0;
  pthread_mutex_unlock(&notes_lock);
  return failed;
}

_Noreturn void zdtm_finish(void) {
  pthread_mutex_lock(&notes_lock);
  if (notes_count == 0) {
    printf("PASS %s\n", test_name);
    fflush(stdout);
    exit(0);
  }
  printf("FAIL %s: %s%s\n", test_name, notes, notes_len + 1 >= sizeof(notes) ? " ..." : "");
  fflush(stdout);
  exit(1);
}

_Noreturn void zdtm_die(const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  printf("FAIL %s: %s\n", test_name, msg);
  fflush(stdout);
  exit(1);
}

uint64_t zdtm_mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t zdtm_xorshift64(uint64_t *state) {
  uint64_t x = *state;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *state = x;
}

uint64_t zdtm_hash_words(const uint64_t *p, size_t nwords, uint64_t h) {
  for (size_t i = 0; i < nwords; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
    h ^= h >> 29;
  }
  return h;
}

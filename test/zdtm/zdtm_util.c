/* zdtm_util.c: see zdtm_util.h. */
#define _GNU_SOURCE
#include "zdtm_util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

uint8_t zdtm_pattern_byte(uint64_t seed, uint64_t off) {
  return (uint8_t)(zdtm_mix64(seed ^ ((off >> 3) * 0x9e3779b97f4a7c15ULL)) >> ((off & 7) * 8));
}

void zdtm_pattern_fill(void *buf, size_t n, uint64_t seed, uint64_t off) {
  uint8_t *p = buf;
  for (size_t i = 0; i < n; i++) p[i] = zdtm_pattern_byte(seed, off + i);
}

long zdtm_pattern_diff(const void *buf, size_t n, uint64_t seed, uint64_t off) {
  const uint8_t *p = buf;
  for (size_t i = 0; i < n; i++)
    if (p[i] != zdtm_pattern_byte(seed, off + i)) return (long)i;
  return -1;
}

bool zdtm_pattern_check(const char *what, const void *buf, size_t n, uint64_t seed, uint64_t off) {
  long i = zdtm_pattern_diff(buf, n, seed, off);
  if (i < 0) return true;
  zdtm_fail_note("%s: byte %ld of %zu is %#x, want %#x", what, i, n, ((const uint8_t *)buf)[i],
                 zdtm_pattern_byte(seed, off + (uint64_t)i));
  return false;
}

uint64_t zdtm_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

size_t zdtm_read_full(int fd, void *buf, size_t n, int timeout_ms) {
  uint64_t deadline = zdtm_now_ms() + (uint64_t)timeout_ms;
  size_t got = 0;
  while (got < n) {
    uint64_t now = zdtm_now_ms();
    if (now >= deadline) {
      errno = ETIMEDOUT;
      return got;
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)(deadline - now));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return got;
    if (r == 0) continue;
    ssize_t k = read(fd, (char *)buf + got, n - got);
    if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (k < 0) return got;
    if (k == 0) {
      errno = 0;
      return got;
    }
    got += (size_t)k;
  }
  return got;
}

bool zdtm_write_full(int fd, const void *buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t k = write(fd, (const char *)buf + done, n - done);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return false;
    done += (size_t)k;
  }
  return true;
}

pid_t zdtm_fork(void) {
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) zdtm_die("fork: %s", strerror(errno));
  return pid;
}

_Noreturn void zdtm_kid_finish(int fd) {
  fflush(stdout);
  if (dup2(fd, STDOUT_FILENO) < 0) _exit(3);
  zdtm_finish();
}

void zdtm_kid_collect(int fd, const char *who, int timeout_ms) {
  char line[4096];
  size_t len = 0;
  uint64_t deadline = zdtm_now_ms() + (uint64_t)timeout_ms;
  while (len < sizeof(line) - 1 && (len == 0 || line[len - 1] != '\n')) {
    uint64_t now = zdtm_now_ms();
    if (now >= deadline) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int r = poll(&p, 1, (int)(deadline - now));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    ssize_t k = read(fd, line + len, 1); /* byte by byte: stop at the line's end */
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    len += (size_t)k;
  }
  line[len] = 0;
  if (len && line[len - 1] == '\n') line[--len] = 0;
  if (strncmp(line, "PASS ", 5) == 0) return;
  if (strncmp(line, "FAIL ", 5) == 0) {
    const char *msg = strstr(line, ": ");
    msg = msg ? msg + 2 : line;
    size_t n = strlen(who);
    if (strncmp(msg, who, n) == 0 && strncmp(msg + n, ": ", 2) == 0)
      zdtm_fail_note("%s", msg); /* the child named itself already */
    else
      zdtm_fail_note("%s: %s", who, msg);
    return;
  }
  zdtm_fail_note("%s: no verdict within %d ms (got '%s')", who, timeout_ms, line);
}

void zdtm_kid_reap(pid_t pid, const char *who, int timeout_ms) {
  uint64_t deadline = zdtm_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    int status;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      zdtm_fail_note("%s: waitpid(%d): %s", who, (int)pid, strerror(errno));
      return;
    }
    if (r == pid) {
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        zdtm_fail_note("%s: pid %d ended with status %#x", who, (int)pid, status);
      return;
    }
    if (zdtm_now_ms() >= deadline) {
      zdtm_fail_note("%s: pid %d still runs %d ms after the check", who, (int)pid, timeout_ms);
      return;
    }
    zdtm_sleep_ms(5);
  }
}

void zdtm_link_open(struct zdtm_link *link) {
  if (pipe(link->to_kid) != 0 || pipe(link->to_parent) != 0 || pipe2(link->verdict, O_CLOEXEC) != 0)
    zdtm_die("pipe: %s", strerror(errno));
}

void zdtm_link_kid_side(struct zdtm_link *link) {
  close(link->to_kid[1]);
  close(link->to_parent[0]);
  close(link->verdict[0]);
}

void zdtm_link_parent_side(struct zdtm_link *link) {
  close(link->to_kid[0]);
  close(link->to_parent[1]);
  close(link->verdict[1]);
}

bool zdtm_link_tell_parent(struct zdtm_link *link, char message) {
  return write(link->to_parent[1], &message, 1) == 1;
}

bool zdtm_link_tell_kid(struct zdtm_link *link, char message) {
  return write(link->to_kid[1], &message, 1) == 1;
}

bool zdtm_link_hear_from_kid(struct zdtm_link *link, int timeout_ms) {
  char c;
  return zdtm_read_full(link->to_parent[0], &c, 1, timeout_ms) == 1;
}

bool zdtm_link_hear_from_parent(struct zdtm_link *link, int timeout_ms) {
  char c;
  return zdtm_read_full(link->to_kid[0], &c, 1, timeout_ms) == 1;
}

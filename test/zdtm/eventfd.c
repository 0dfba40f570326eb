/* eventfd: eventfd descriptors across the checkpoint.
 *
 *   plain   eventfd(7), then 3 written: counter 10, blocking
 *   sem     eventfd(3, EFD_SEMAPHORE | EFD_CLOEXEC)
 *   nb      eventfd(0, EFD_NONBLOCK): counter 0
 *   shared  eventfd(0, EFD_NONBLOCK) opened before fork, held by the root and
 *           its child; the child writes 11 into it before READY
 *   polled  eventfd(2, EFD_NONBLOCK) and idle eventfd(0, EFD_NONBLOCK), both
 *           in one epoll set (EPOLLIN, data kPolledData and kIdleData)
 *
 * Check: each counter (fdinfo eventfd-count) and flags (fdinfo flags:
 * O_RDWR, O_NONBLOCK, O_CLOEXEC; eventfd-semaphore where the kernel shows
 * it); plain reads 10 at once; sem reads 1 three times, then is not ready;
 * nb reads EAGAIN; shared shows 11 in both processes, the root reads the 11,
 * the child then sees 0 and writes 42, which the root reads (one object, not
 * two copies); the epoll set reports polled alone, with its data, until idle
 * is written to. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

static const uint64_t kPolledData = 0x5eed0000e7e7f00dULL, kIdleData = 0x1d1e;

/* One fdinfo field of fd: its text after the colon, or false if absent. */
static bool Fdinfo(int fd, const char *field, char *out, size_t size) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  FILE *f = fopen(path, "r");
  bool found = false;
  size_t len = strlen(field);
  while (f && !found && fgets(line, sizeof line, f)) {
    if (strncmp(line, field, len) != 0 || line[len] != ':') continue;
    const char *v = line + len + 1;
    while (*v == ' ' || *v == '\t') v++;
    snprintf(out, size, "%s", v);
    out[strcspn(out, "\n")] = '\0';
    found = true;
  }
  if (f) fclose(f);
  return found;
}

/* Counter, flags and (where fdinfo shows it) the semaphore mode of fd. */
static void CheckState(const char *who, const char *what, int fd, uint64_t count, int flags,
                       int semaphore) {
  char text[128];
  if (!Fdinfo(fd, "eventfd-count", text, sizeof text))
    zdtm_fail_note("%s: %s (fd %d): no eventfd-count in fdinfo (not an eventfd?)", who, what, fd);
  else if (strtoull(text, NULL, 16) != count)
    zdtm_fail_note("%s: %s: counter %llu, want %" PRIu64, who, what, strtoull(text, NULL, 16),
                   count);
  const int want = O_RDWR | flags;
  if (!Fdinfo(fd, "flags", text, sizeof text) || (int)strtol(text, NULL, 8) != want)
    zdtm_fail_note("%s: %s: fdinfo flags %s, want 0%o", who, what, text, want);
  if (Fdinfo(fd, "eventfd-semaphore", text, sizeof text) && atoi(text) != semaphore)
    zdtm_fail_note("%s: %s: eventfd-semaphore %s, want %d", who, what, text, semaphore);
}

static bool Ready(int fd) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static bool Write(int fd, uint64_t v) { return write(fd, &v, sizeof v) == sizeof v; }

/* Reads the counter of fd if it is readable now (a blocking eventfd whose
 * counter was lost must fail the test, not hang it); 0 if not. */
static uint64_t ReadNow(int fd) {
  uint64_t v = 0;
  if (!Ready(fd) || read(fd, &v, sizeof v) != sizeof v) return 0;
  return v;
}

static int Make(unsigned count, int flags) {
  int fd = eventfd(count, flags);
  if (fd < 0) zdtm_die("eventfd(%u, %#x): %s", count, flags, strerror(errno));
  return fd;
}

int main(void) {
  zdtm_init("eventfd");
  int plain = Make(7, 0);
  if (!Write(plain, 3)) zdtm_die("write plain: %s", strerror(errno));
  int sem = Make(3, EFD_SEMAPHORE | EFD_CLOEXEC);
  int nb = Make(0, EFD_NONBLOCK);
  int shared = Make(0, EFD_NONBLOCK);
  int polled = Make(2, EFD_NONBLOCK);
  int idle = Make(0, EFD_NONBLOCK);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = kPolledData};
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, polled, &ev) != 0)
    zdtm_die("epoll: %s", strerror(errno));
  ev.data.u64 = kIdleData;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, idle, &ev) != 0) zdtm_die("epoll: %s", strerror(errno));
  struct zdtm_link link;
  zdtm_link_open(&link);

  pid_t kid = zdtm_fork();
  if (kid == 0) {
    zdtm_link_kid_side(&link);
    if (!Write(shared, 11) || !zdtm_link_tell_parent(&link, 'w')) _exit(3);
    zdtm_wait_check();
    CheckState("child", "shared", shared, 11, O_NONBLOCK, 0);
    if (!zdtm_link_tell_parent(&link, 'c')) zdtm_fail_note("child: write: %s", strerror(errno));
    if (!zdtm_link_hear_from_parent(&link, 10000)) {
      zdtm_fail_note("child: no word from the parent");
      zdtm_kid_finish(link.verdict[1]);
    }
    /* The root has read the 11 through its own fd. */
    CheckState("child", "shared after the root's read", shared, 0, O_NONBLOCK, 0);
    if (!Write(shared, 42)) zdtm_fail_note("child: write shared: %s", strerror(errno));
    if (!zdtm_link_tell_parent(&link, 'd')) zdtm_fail_note("child: write: %s", strerror(errno));
    zdtm_kid_finish(link.verdict[1]);
  }
  zdtm_link_parent_side(&link);
  if (!zdtm_link_hear_from_kid(&link, 10000)) zdtm_die("the child did not write to shared");
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) Write(plain, 1);
  const char *me = "root";
  CheckState(me, "plain", plain, 10, 0, 0);
  CheckState(me, "sem", sem, 3, O_CLOEXEC, 1);
  CheckState(me, "nb", nb, 0, O_NONBLOCK, 0);
  CheckState(me, "polled", polled, 2, O_NONBLOCK, 0);
  CheckState(me, "idle", idle, 0, O_NONBLOCK, 0);
  if (!(fcntl(sem, F_GETFD) & FD_CLOEXEC)) zdtm_fail_note("sem lost FD_CLOEXEC");
  if (fcntl(plain, F_GETFD) & FD_CLOEXEC) zdtm_fail_note("plain gained FD_CLOEXEC");

  /* The epoll set: polled alone is ready, with its data. */
  struct epoll_event got[4];
  int n = epoll_wait(ep, got, 4, 0);
  if (n != 1 || got[0].data.u64 != kPolledData || !(got[0].events & EPOLLIN))
    zdtm_fail_note("epoll: %d events (first data %#" PRIx64 "), want polled alone (%#" PRIx64 ")",
                   n, n > 0 ? (uint64_t)got[0].data.u64 : 0, kPolledData);
  if (!Write(idle, 1)) zdtm_fail_note("write idle: %s", strerror(errno));
  n = epoll_wait(ep, got, 4, 0);
  bool saw_idle = false;
  for (int i = 0; i < n; i++) saw_idle |= got[i].data.u64 == kIdleData;
  if (n != 2 || !saw_idle)
    zdtm_fail_note("epoll after a write to idle: %d events%s, want polled and idle", n,
                   saw_idle ? "" : " without idle");

  uint64_t v = ReadNow(plain);
  if (v != 10) zdtm_fail_note("plain: read %" PRIu64 ", want 10", v);
  for (int i = 0; i < 3; i++) {
    v = ReadNow(sem);
    if (v != 1) zdtm_fail_note("sem: read %d gave %" PRIu64 ", want 1 (semaphore)", i + 1, v);
  }
  if (Ready(sem)) zdtm_fail_note("sem: still readable after three reads");
  if (read(nb, &v, sizeof v) != -1 || errno != EAGAIN)
    zdtm_fail_note("nb: a read of the empty counter did not give EAGAIN");
  if (!Write(nb, 5) || (v = ReadNow(nb)) != 5) zdtm_fail_note("nb: wrote 5, read back %" PRIu64, v);

  /* shared: one object in both processes. */
  CheckState(me, "shared", shared, 11, O_NONBLOCK, 0);
  if (!zdtm_link_hear_from_kid(&link, 10000)) zdtm_fail_note("the child did not check");
  v = ReadNow(shared);
  if (v != 11) zdtm_fail_note("shared: read %" PRIu64 ", want the child's 11", v);
  if (!zdtm_link_tell_kid(&link, 'r')) zdtm_fail_note("write: %s", strerror(errno));
  if (!zdtm_link_hear_from_kid(&link, 10000)) {
    zdtm_fail_note("no word from the child after its write");
  } else {
    v = ReadNow(shared);
    if (v != 42)
      zdtm_fail_note("shared: read %" PRIu64 " after the child wrote 42: not one object", v);
  }
  zdtm_kid_collect(link.verdict[0], "child", 15000);
  zdtm_kid_reap(kid, "child", 5000);
  zdtm_finish();
}

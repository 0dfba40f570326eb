/* fd_timers: signalfd and timerfd descriptors across the checkpoint.
 *
 *   sfd  signalfd for SIGUSR1 and SIGRTMIN+5 (both blocked), non-blocking;
 *        SIGUSR1 is pending (sigqueue, value 77) when the checkpoint is taken
 *   t1   timerfd CLOCK_MONOTONIC, 300 s one-shot, close-on-exec
 *   t2   timerfd CLOCK_MONOTONIC, every 20 ms, non-blocking, never read
 *        before the checkpoint: its expirations pile up
 *
 * Check: sfd still has its flags and mask (fdinfo), reading it gives the
 * pending SIGUSR1 with its value, then EAGAIN; t1 has 0 < left <= 300 s and
 * no interval; t2 reads at least the expirations it had at READY, and fires
 * again within 200 ms. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "zdtm.h"

static uint64_t FdinfoMask(int fd) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  FILE *f = fopen(path, "r");
  uint64_t mask = 0;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "sigmask:", 8) == 0) mask = strtoull(line + 8, NULL, 16);
  if (f) fclose(f);
  return mask;
}

int main(void) {
  zdtm_init("fd_timers");
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGRTMIN + 5);
  sigprocmask(SIG_BLOCK, &set, NULL);
  int sfd = signalfd(-1, &set, SFD_NONBLOCK);
  int t1 = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  int t2 = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
  if (sfd < 0 || t1 < 0 || t2 < 0) zdtm_die("signalfd/timerfd_create: %s", strerror(errno));
  struct itimerspec one = {{0, 0}, {300, 0}}, every = {{0, 20000000}, {0, 20000000}};
  if (timerfd_settime(t1, 0, &one, NULL) != 0 || timerfd_settime(t2, 0, &every, NULL) != 0)
    zdtm_die("timerfd_settime: %s", strerror(errno));
  union sigval v = {.sival_int = 77};
  if (sigqueue(getpid(), SIGUSR1, v) != 0) zdtm_die("sigqueue: %s", strerror(errno));
  const uint64_t want_mask = FdinfoMask(sfd);
  zdtm_sleep_ms(200); /* about ten expirations of t2 wait unread */
  zdtm_ready();

  zdtm_wait_check();
  if (fcntl(sfd, F_GETFL) < 0 || !(fcntl(sfd, F_GETFL) & O_NONBLOCK))
    zdtm_fail_note("sfd lost O_NONBLOCK");
  if (FdinfoMask(sfd) != want_mask || want_mask == 0)
    zdtm_fail_note("sfd: mask %#llx, want %#llx", (unsigned long long)FdinfoMask(sfd),
                   (unsigned long long)want_mask);
  struct signalfd_siginfo si;
  ssize_t n = read(sfd, &si, sizeof si);
  if (n != sizeof si || si.ssi_signo != SIGUSR1 || si.ssi_int != 77)
    zdtm_fail_note("sfd: read %zd bytes, signal %u value %d, want SIGUSR1 with 77", n,
                   n == sizeof si ? si.ssi_signo : 0, n == sizeof si ? si.ssi_int : 0);
  n = read(sfd, &si, sizeof si);
  if (n != -1 || errno != EAGAIN) zdtm_fail_note("sfd: a second read gave %zd, want EAGAIN", n);
  if (!(fcntl(t1, F_GETFD) & FD_CLOEXEC)) zdtm_fail_note("t1 lost FD_CLOEXEC");
  struct itimerspec cur;
  if (timerfd_gettime(t1, &cur) != 0) {
    zdtm_fail_note("t1: timerfd_gettime: %s", strerror(errno));
  } else {
    long long left = cur.it_value.tv_sec * 1000000000LL + cur.it_value.tv_nsec;
    if (left <= 0 || left > 300000000000LL || cur.it_interval.tv_sec || cur.it_interval.tv_nsec)
      zdtm_fail_note("t1: %lld ns left, interval %ld.%09ld: want 1..300 s, none", left,
                     (long)cur.it_interval.tv_sec, cur.it_interval.tv_nsec);
  }
  uint64_t ticks = 0;
  if (read(t2, &ticks, sizeof ticks) != sizeof ticks || ticks < 5)
    zdtm_fail_note("t2: %llu expirations read, want the ones piled up before the checkpoint (>= 5)",
                   (unsigned long long)ticks);
  struct pollfd p = {.fd = t2, .events = POLLIN};
  if (poll(&p, 1, 200) != 1) zdtm_fail_note("t2 did not fire again within 200 ms");
  zdtm_finish();
}

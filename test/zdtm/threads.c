/* threads N: N threads, each blocked in its own kind of system call across
 * the checkpoint, each with distinctive data on its stack and in TLS.
 *
 * Kinds (thread i gets kind i % 5): read on a pipe nobody writes until the
 * check; a nanosleep loop; pthread_cond_wait (futex wait); poll with a
 * timeout; epoll_wait with a timeout. Before READY each thread fills a stack
 * array and __thread variables from a seed and saves gettid() and
 * pthread_self(); main waits until every thread sleeps in the kernel. At the
 * check main wakes them (pipe writes, a cond broadcast, a stop flag); each
 * thread verifies its stack and TLS contents and addresses, its tid, and that
 * no system call failed with EINTR (a transparent restart never shows one to a
 * program without signal handlers). Main joins them with a timeout. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

enum Kind { kRead, kNanosleep, kCond, kPoll, kEpoll, kKinds };
static const char *const kKindNames[kKinds] = {"read", "nanosleep", "cond_wait", "poll",
                                               "epoll_wait"};
enum { kStackWords = 512, kTlsWords = 16, kMaxThreads = 256 };
static const uint64_t kSeed = 0x7468726561647321ULL;

struct Worker {
  int idx;
  enum Kind kind;
  pthread_t thread;
  int pipe_fds[2]; /* kRead, kPoll, kEpoll: main writes one byte at check */
  int epoll_fd;
  /* Saved by the thread before READY. */
  pid_t tid;
  pthread_t self;
  uint64_t *stack_data;
  uint64_t *tls_data;
  /* Results, written by the thread after it woke. */
  int eintr_count;
  int verified;
};

static struct Worker workers[kMaxThreads];
static int nthreads;
static pthread_barrier_t setup_done;
static atomic_int stop;
static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int cond_go;

static __thread uint64_t tls_words[kTlsWords];
static __thread int tls_idx = -1;

static uint64_t StackValue(int idx, int i) {
  return zdtm_mix64(kSeed ^ ((uint64_t)idx << 32) ^ (uint64_t)i);
}
static uint64_t TlsValue(int idx, int i) {
  return zdtm_mix64(~kSeed ^ ((uint64_t)idx << 40) ^ (uint64_t)i);
}

static void Block(struct Worker *w) {
  switch (w->kind) {
    case kRead: {
      char c = 0;
      ssize_t n;
      while ((n = read(w->pipe_fds[0], &c, 1)) < 0 && errno == EINTR) w->eintr_count++;
      if (n != 1 || c != 'w')
        zdtm_fail_note("thread %d (read): read returned %zd byte '%c' (%s)", w->idx, n, c,
                       n < 0 ? strerror(errno) : "-");
      break;
    }
    case kNanosleep:
      while (!atomic_load(&stop)) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        if (nanosleep(&ts, NULL) != 0 && errno == EINTR) w->eintr_count++;
      }
      break;
    case kCond:
      pthread_mutex_lock(&cond_lock);
      while (!cond_go) pthread_cond_wait(&cond, &cond_lock);
      pthread_mutex_unlock(&cond_lock);
      break;
    case kPoll:
      for (;;) {
        struct pollfd p = {.fd = w->pipe_fds[0], .events = POLLIN};
        int r = poll(&p, 1, 100);
        if (r < 0 && errno == EINTR) w->eintr_count++;
        if (r == 1) break;
        if (r < 0 && errno != EINTR) {
          zdtm_fail_note("thread %d (poll): %s", w->idx, strerror(errno));
          break;
        }
      }
      break;
    case kEpoll:
      for (;;) {
        struct epoll_event ev;
        int r = epoll_wait(w->epoll_fd, &ev, 1, 100);
        if (r < 0 && errno == EINTR) w->eintr_count++;
        if (r == 1) {
          if (ev.data.u64 != (uint64_t)w->idx)
            zdtm_fail_note("thread %d (epoll_wait): event data %" PRIu64 ", want %d", w->idx,
                           ev.data.u64, w->idx);
          break;
        }
        if (r < 0 && errno != EINTR) {
          zdtm_fail_note("thread %d (epoll_wait): %s", w->idx, strerror(errno));
          break;
        }
      }
      break;
    case kKinds:
      break;
  }
}

static void *Run(void *arg) {
  struct Worker *w = arg;
  uint64_t stack_data[kStackWords];
  for (int i = 0; i < kStackWords; i++) stack_data[i] = StackValue(w->idx, i);
  for (int i = 0; i < kTlsWords; i++) tls_words[i] = TlsValue(w->idx, i);
  tls_idx = w->idx;
  w->tid = gettid();
  w->self = pthread_self();
  w->stack_data = stack_data;
  w->tls_data = tls_words;
  pthread_barrier_wait(&setup_done);

  Block(w);

  const char *k = kKindNames[w->kind];
  if (gettid() != w->tid)
    zdtm_fail_note("thread %d (%s): tid %d, was %d", w->idx, k, gettid(), w->tid);
  if (!pthread_equal(pthread_self(), w->self))
    zdtm_fail_note("thread %d (%s): pthread_self changed", w->idx, k);
  if (tls_idx != w->idx) zdtm_fail_note("thread %d (%s): TLS index is %d", w->idx, k, tls_idx);
  if (tls_words != w->tls_data)
    zdtm_fail_note("thread %d (%s): TLS moved from %p to %p", w->idx, k, (void *)w->tls_data,
                   (void *)tls_words);
  if (stack_data != w->stack_data)
    zdtm_fail_note("thread %d (%s): stack moved from %p to %p", w->idx, k, (void *)w->stack_data,
                   (void *)stack_data);
  for (int i = 0; i < kTlsWords; i++) {
    if (tls_words[i] != TlsValue(w->idx, i)) {
      zdtm_fail_note("thread %d (%s): TLS word %d is %#" PRIx64 ", want %#" PRIx64, w->idx, k, i,
                     tls_words[i], TlsValue(w->idx, i));
      break;
    }
  }
  for (int i = 0; i < kStackWords; i++) {
    if (stack_data[i] != StackValue(w->idx, i)) {
      zdtm_fail_note("thread %d (%s): stack word %d is %#" PRIx64 ", want %#" PRIx64, w->idx, k, i,
                     stack_data[i], StackValue(w->idx, i));
      break;
    }
  }
  if (w->eintr_count)
    zdtm_fail_note("thread %d (%s): the call failed with EINTR %d times", w->idx, k,
                   w->eintr_count);
  w->verified = 1;
  return NULL;
}

/* True once /proc says the thread sleeps (state S) in the kernel. */
static int Sleeping(pid_t tid) {
  char path[64], buf[512];
  snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
  FILE *f = fopen(path, "re");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  const char *p = strrchr(buf, ')');
  return p && p[1] == ' ' && p[2] == 'S';
}

int main(int argc, char **argv) {
  nthreads = argc > 1 ? atoi(argv[1]) : 4;
  char name[32];
  snprintf(name, sizeof(name), "threads%d", nthreads);
  zdtm_init(name);
  if (nthreads < 1 || nthreads > kMaxThreads) zdtm_die("thread count must be 1..%d", kMaxThreads);

  pthread_barrier_init(&setup_done, NULL, (unsigned)nthreads + 1);
  for (int i = 0; i < nthreads; i++) {
    struct Worker *w = &workers[i];
    w->idx = i;
    w->kind = (enum Kind)(i % kKinds);
    w->pipe_fds[0] = w->pipe_fds[1] = w->epoll_fd = -1;
    if (w->kind == kRead || w->kind == kPoll || w->kind == kEpoll) {
      if (pipe2(w->pipe_fds, O_CLOEXEC) != 0) zdtm_die("pipe: %s", strerror(errno));
    }
    if (w->kind == kEpoll) {
      w->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
      struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
      if (w->epoll_fd < 0 || epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, w->pipe_fds[0], &ev) != 0)
        zdtm_die("epoll: %s", strerror(errno));
    }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int err = pthread_create(&w->thread, &attr, Run, w);
    pthread_attr_destroy(&attr);
    if (err) zdtm_die("pthread_create %d: %s", i, strerror(err));
  }
  pthread_barrier_wait(&setup_done);
  for (int i = 0; i < nthreads; i++) {
    int waited = 0;
    while (!Sleeping(workers[i].tid)) {
      if (++waited > 500)
        zdtm_die("thread %d never went to sleep in %s", i, kKindNames[workers[i].kind]);
      zdtm_sleep_ms(10);
    }
  }
  pid_t main_tid = gettid();
  zdtm_ready();

  if (zdtm_corrupt_requested()) {
    zdtm_sleep_ms(50);
    workers[nthreads - 1].stack_data[7] ^= 1; /* a flipped bit on a stack */
    workers[0].tls_data[3] ^= 1ULL << 40;     /* and in TLS */
  }
  zdtm_wait_check();

  if (gettid() != main_tid) zdtm_fail_note("main thread: tid %d, was %d", gettid(), main_tid);
  atomic_store(&stop, 1);
  pthread_mutex_lock(&cond_lock);
  cond_go = 1;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&cond_lock);
  for (int i = 0; i < nthreads; i++) {
    if (workers[i].pipe_fds[1] >= 0 && write(workers[i].pipe_fds[1], "w", 1) != 1)
      zdtm_fail_note("wake thread %d: write: %s", i, strerror(errno));
  }
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  for (int i = 0; i < nthreads; i++) {
    int err = pthread_timedjoin_np(workers[i].thread, NULL, &deadline);
    if (err) {
      zdtm_fail_note("thread %d (%s) did not finish within 10 s of the wake-up (%s)", i,
                     kKindNames[workers[i].kind], strerror(err));
      zdtm_finish();
    }
    if (!workers[i].verified) zdtm_fail_note("thread %d did not verify its state", i);
  }
  zdtm_finish();
}

/* robust_futex: robust futex lists survive the restart, so the kernel still
 * releases robust mutexes of a thread or process that dies holding them.
 *
 *   m1, m2  robust mutexes (process-private) locked by thread H; thread W is
 *           blocked in pthread_mutex_timedlock(m2) across the checkpoint
 *   m3      robust, process-shared, in MAP_SHARED memory, locked by child K
 *
 * Check: H and K find get_robust_list(0) as it was before READY; then H exits
 * and K _exits without unlocking. W's wait must end with EOWNERDEAD, and main
 * must get EOWNERDEAD from m1 and m3 (each within 3 s), and be able to make
 * them consistent and lock them again. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

static pthread_mutex_t m1, m2, *m3;
static pthread_barrier_t locked;
static atomic_int w_result = -1;

static void InitRobust(pthread_mutex_t *m, int pshared) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (pshared) pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (pthread_mutex_init(m, &a) != 0) zdtm_die("pthread_mutex_init failed");
  pthread_mutexattr_destroy(&a);
}

struct RobustList {
  void *head;
  size_t len;
};

static struct RobustList Current(void) {
  struct RobustList r = {0, 0};
  if (syscall(SYS_get_robust_list, 0, &r.head, &r.len) != 0) r.head = (void *)-1;
  return r;
}

static void ExpectList(const char *who, struct RobustList saved) {
  struct RobustList now = Current();
  if (now.head != saved.head || now.len != saved.len)
    zdtm_fail_note("%s: robust list %p (len %zu), was %p (len %zu)", who, now.head, now.len,
                   saved.head, saved.len);
}

/* In corrupt mode: forget the robust list, as a restore that lost it would. */
static void Corrupt(void) {
  static struct robust_list_head empty;
  empty.list.next = &empty.list;
  syscall(SYS_set_robust_list, &empty, sizeof(empty));
}

static struct timespec In(int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  return ts;
}

static void ExpectOwnerDead(const char *what, pthread_mutex_t *m, int r) {
  if (r != EOWNERDEAD) {
    zdtm_fail_note("%s: locking returned %s, want EOWNERDEAD", what,
                   r == 0 ? "0 (no owner died?)" : strerror(r));
    if (r == 0) pthread_mutex_unlock(m);
    return;
  }
  if (pthread_mutex_consistent(m) != 0) zdtm_fail_note("%s: pthread_mutex_consistent failed", what);
  if (pthread_mutex_unlock(m) != 0) zdtm_fail_note("%s: unlock failed", what);
  struct timespec t = In(1000);
  r = pthread_mutex_timedlock(m, &t);
  if (r != 0)
    zdtm_fail_note("%s: locking again: %s", what, strerror(r));
  else
    pthread_mutex_unlock(m);
}

static void *RunH(void *arg) {
  (void)arg;
  if (pthread_mutex_lock(&m1) != 0 || pthread_mutex_lock(&m2) != 0) zdtm_die("lock failed");
  struct RobustList saved = Current();
  pthread_barrier_wait(&locked);
  zdtm_wait_check();
  ExpectList("H", saved);
  if (zdtm_corrupt_requested()) Corrupt();
  return NULL; /* exits holding m1 and m2 */
}

static void *RunW(void *arg) {
  (void)arg;
  struct timespec t = In(120000);
  int r = pthread_mutex_timedlock(&m2, &t);
  if (r == EOWNERDEAD) {
    pthread_mutex_consistent(&m2);
    pthread_mutex_unlock(&m2);
  }
  atomic_store(&w_result, r);
  return NULL;
}

int main(void) {
  zdtm_init("robust_futex");
  m3 = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m3 == MAP_FAILED) zdtm_die("mmap: %s", strerror(errno));
  InitRobust(&m1, 0);
  InitRobust(&m2, 0);
  InitRobust(m3, 1);
  int verdict[2], k_locked[2];
  if (pipe2(verdict, O_CLOEXEC) != 0 || pipe2(k_locked, O_CLOEXEC) != 0)
    zdtm_die("pipe: %s", strerror(errno));

  pid_t k = zdtm_fork();
  if (k == 0) {
    close(verdict[0]);
    close(k_locked[0]);
    if (pthread_mutex_lock(m3) != 0) _exit(3);
    struct RobustList saved = Current();
    if (write(k_locked[1], "l", 1) != 1) _exit(3);
    zdtm_wait_check();
    ExpectList("K", saved);
    if (zdtm_corrupt_requested()) Corrupt();
    zdtm_kid_finish(verdict[1]); /* exits holding m3 */
  }
  close(verdict[1]);
  close(k_locked[1]);
  char c;
  if (zdtm_read_full(k_locked[0], &c, 1, 10000) != 1) zdtm_die("the child did not lock m3");

  pthread_t h, w;
  pthread_barrier_init(&locked, NULL, 2);
  if (pthread_create(&h, NULL, RunH, NULL) != 0) zdtm_die("pthread_create failed");
  pthread_barrier_wait(&locked);
  if (pthread_create(&w, NULL, RunW, NULL) != 0) zdtm_die("pthread_create failed");
  zdtm_sleep_ms(100); /* W sleeps in the kernel on m2 */
  zdtm_ready();

  zdtm_wait_check();
  pthread_join(h, NULL);
  struct timespec t = In(3000);
  ExpectOwnerDead("m1 (its owner thread exited)", &m1, pthread_mutex_timedlock(&m1, &t));
  for (int i = 0; atomic_load(&w_result) < 0 && i < 300; i++) zdtm_sleep_ms(10);
  int r = atomic_load(&w_result);
  if (r < 0)
    zdtm_fail_note("m2: the waiting thread is still blocked 3 s after the owner exited");
  else if (r != EOWNERDEAD)
    zdtm_fail_note("m2: the waiting thread got %s, want EOWNERDEAD", r ? strerror(r) : "0");
  else
    pthread_join(w, NULL);
  zdtm_kid_collect(verdict[0], "K", 10000);
  zdtm_kid_reap(k, "K", 5000);
  t = In(3000);
  ExpectOwnerDead("m3 (process-shared, its owner process exited)", m3,
                  pthread_mutex_timedlock(m3, &t));
  zdtm_finish();
}

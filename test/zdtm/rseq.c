/* rseq: glibc's rseq registration of every thread is still in force after a
 * restart.
 *
 * Three threads (main and two more) wait for the check; then each one:
 *   - asks the kernel to register its glibc rseq area again (same address,
 *     length and signature): EBUSY means it is registered exactly so; 0 means
 *     it was not registered at all, EINVAL elsewhere or with another length;
 *   - reads cpu_id of the area, sched_getcpu() and getcpu(2): they agree;
 *   - if it may run on two CPUs, pins itself to each in turn: the kernel must
 *     update cpu_id and cpu_id_start to that CPU (it only does so for a
 *     registered area); rseq_cs is 0 (no critical section in progress).
 * Without glibc rseq (__rseq_size 0) the program says SKIPPED and exits 77. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtm.h"

#ifndef RSEQ_SIG
#define RSEQ_SIG 0x53053053
#endif

static cpu_set_t allowed;
static int cpus[2], ncpus;

static struct rseq *Area(void) {
  return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

static void CheckCpu(const char *who) {
  volatile struct rseq *r = Area();
  unsigned cpu = 0;
  int id = (int)r->cpu_id, start = (int)r->cpu_id_start;
  if (syscall(SYS_getcpu, &cpu, NULL, NULL) != 0)
    zdtm_fail_note("%s: getcpu: %s", who, strerror(errno));
  int sched = sched_getcpu();
  if (id != (int)cpu || start != (int)cpu || sched != (int)cpu)
    zdtm_fail_note("%s: rseq cpu_id %d, cpu_id_start %d, sched_getcpu %d, getcpu %u", who, id,
                   start, sched, cpu);
  if (r->rseq_cs != 0)
    zdtm_fail_note("%s: rseq_cs is %#llx, want 0", who, (unsigned long long)r->rseq_cs);
}

static void Check(const char *who) {
  struct rseq *area = Area();
  long r = -1;
  int err = 0;
  unsigned lens[2] = {__rseq_size, 32};
  for (int i = 0; i < 2 && err != EBUSY; i++) {
    r = syscall(SYS_rseq, area, lens[i], 0, RSEQ_SIG);
    err = r == 0 ? 0 : errno;
    if (r == 0) break;
  }
  if (r == 0)
    zdtm_fail_note("%s: rseq area %p was not registered", who, (void *)area);
  else if (err != EBUSY)
    zdtm_fail_note("%s: re-registering rseq area %p: %s (registered elsewhere?)", who, (void *)area,
                   strerror(err));
  CheckCpu(who);
  for (int i = 0; i < ncpus; i++) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[i], &one);
    if (sched_setaffinity(0, sizeof(one), &one) != 0) {
      zdtm_fail_note("%s: sched_setaffinity: %s", who, strerror(errno));
      break;
    }
    sched_yield();
    unsigned cpu = 0;
    syscall(SYS_getcpu, &cpu, NULL, NULL);
    if ((int)cpu != cpus[i]) zdtm_fail_note("%s: pinned to CPU %d, runs on %u", who, cpus[i], cpu);
    char what[64];
    snprintf(what, sizeof(what), "%s on CPU %d", who, cpus[i]);
    CheckCpu(what);
  }
  sched_setaffinity(0, sizeof(allowed), &allowed);
}

static void *Run(void *arg) {
  zdtm_wait_check();
  Check(arg);
  return NULL;
}

int main(void) {
  zdtm_init("rseq");
  if (__rseq_size == 0) {
    printf("SKIPPED rseq: glibc did not register rseq (__rseq_size is 0; GLIBC_TUNABLES?)\n");
    return 77;
  }
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0)
    zdtm_die("sched_getaffinity: %s", strerror(errno));
  for (int c = 0; c < CPU_SETSIZE && ncpus < 2; c++)
    if (CPU_ISSET(c, &allowed)) cpus[ncpus++] = c;
  if (ncpus < 2) printf("rseq: one CPU only: cpu_id updates on migration are not checked\n");
  pthread_t t[2];
  if (pthread_create(&t[0], NULL, Run, "thread 1") || pthread_create(&t[1], NULL, Run, "thread 2"))
    zdtm_die("pthread_create failed");
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested() &&
      syscall(SYS_rseq, Area(), __rseq_size, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) != 0 &&
      syscall(SYS_rseq, Area(), 32, RSEQ_FLAG_UNREGISTER, RSEQ_SIG) != 0)
    zdtm_die("rseq unregister: %s", strerror(errno));
  Check("main");
  pthread_join(t[0], NULL);
  pthread_join(t[1], NULL);
  zdtm_finish();
}

/* A pair of tasks on one node that share state the way ranks of one node
 * do, for the cluster tests: run with 2 tasks per node (srun
 * --ntasks-per-node=2). Local task 0 (the writer) sends 1, 2, 3, ... through
 * a named FIFO in $TMPDIR to local task 1 (the reader) and publishes the
 * last number in POSIX shared memory that both mapped and that is then
 * unlinked (so only the context holds it); each task also keeps an unlinked
 * scratch file with a pattern of its own. Both print "rank R count N" for
 * every number. Each checks, at every number: the reader got exactly the
 * next number (pipe data neither lost nor repeated), the reader sees the
 * writer's shared counter move with the numbers (the memory is still
 * shared), and its scratch file still holds its pattern. On a failed check:
 * "rank R MEMORY BAD ..." and exit 3. Stops at the count in the file argv[2]
 * (read at every number); argv[1] is the period in ms. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct shared {
  volatile uint64_t written;
  volatile uint64_t read;
};

static unsigned long long rank;

static void bad(const char *what, unsigned long long n) {
  printf("rank %llu MEMORY BAD at %llu: %s\n", rank, n, what);
  exit(3);
}

static unsigned long long limit_of(const char *path) {
  unsigned long long limit = 0;
  FILE *f = path ? fopen(path, "r") : NULL;
  if (f) {
    if (fscanf(f, "%llu", &limit) != 1) limit = 0;
    fclose(f);
  }
  return limit;
}

int main(int argc, char **argv) {
  long ms = argc > 1 ? atol(argv[1]) : 100;
  const char *limit_file = argc > 2 ? argv[2] : NULL;
  const char *env_rank = getenv("SLURM_PROCID"), *env_local = getenv("SLURM_LOCALID");
  const char *job = getenv("SLURM_JOB_ID"), *node = getenv("SLURM_NODEID"), *tmp = getenv("TMPDIR");
  if (!env_rank || !env_local || !job || !node) return 2;
  rank = strtoull(env_rank, NULL, 10);
  int local = atoi(env_local);
  if (local > 1) return 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  char fifo[512], shm[128], scratch[512];
  snprintf(fifo, sizeof fifo, "%s/share-%s-%s.fifo", tmp ? tmp : "/tmp", job, node);
  snprintf(shm, sizeof shm, "/stasis-share-%s-%s", job, node);
  snprintf(scratch, sizeof scratch, "%s/share-%s-%llu.scratch", tmp ? tmp : "/tmp", job, rank);

  /* Both tasks meet: the writer creates the FIFO and the memory; opening
   * the FIFO blocks until both ends are open. */
  if (local == 0) {
    unlink(fifo);
    if (mkfifo(fifo, 0600) != 0) return 4;
  }
  int fd = -1;
  for (int i = 0; i < 500 && fd < 0; ++i) {
    fd = shm_open(shm, O_RDWR | (local == 0 ? O_CREAT : 0), 0600);
    if (fd < 0) usleep(10000);
  }
  if (fd < 0 || ftruncate(fd, 4096) != 0) return 5;
  struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (sh == MAP_FAILED) return 6;
  close(fd);
  int p = -1;
  for (int i = 0; i < 500 && p < 0; ++i) {
    p = open(fifo, local == 0 ? O_WRONLY : O_RDONLY);
    if (p < 0) usleep(10000);
  }
  if (p < 0) return 7;
  /* Both ends are open, so both mapped the memory: unlink both names. */
  if (local == 0) {
    shm_unlink(shm);
    unlink(fifo);
  }
  int s = open(scratch, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (s < 0) return 8;
  unlink(scratch);
  uint64_t pattern[512];
  for (int i = 0; i < 512; ++i) pattern[i] = rank * 0x9e3779b97f4a7c15ull + (uint64_t)i;
  if (write(s, pattern, sizeof pattern) != (ssize_t)sizeof pattern) return 9;

  for (unsigned long long n = 1;; ++n) {
    uint64_t back[512];
    if (pread(s, back, sizeof back, 0) != (ssize_t)sizeof back ||
        memcmp(back, pattern, sizeof back) != 0)
      bad("the unlinked scratch file lost its contents", n);
    if (local == 0) {
      uint64_t v = n;
      if (write(p, &v, sizeof v) != (ssize_t)sizeof v) bad("cannot write to the reader", n);
      sh->written = n;
      if (sh->read > n) bad("the reader is ahead of the writer", n);
    } else {
      uint64_t v = 0;
      ssize_t got;
      do got = read(p, &v, sizeof v);
      while (got < 0 && errno == EINTR);
      if (got != (ssize_t)sizeof v) {
        /* The writer ended (scancel kills tasks one by one): not a state
         * check; a restart that lost the pipe shows as counts that stop. */
        printf("rank %llu pipe closed at %llu\n", rank, n);
        return 4;
      }
      if (v != n) {
        printf("rank %llu MEMORY BAD at %llu: read %llu from the pipe\n", rank, n,
               (unsigned long long)v);
        return 3;
      }
      /* The writer stores n right after writing it: allow one behind. */
      for (int i = 0; i < 200 && sh->written + 1 < n; ++i) usleep(5000);
      if (sh->written + 1 < n) bad("the shared counter stopped: the memory is not shared", n);
      sh->read = n;
    }
    printf("rank %llu count %llu\n", rank, n);
    unsigned long long limit = limit_of(limit_file);
    if (limit && n >= limit) break;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    if (local == 0) nanosleep(&ts, NULL);
  }
  return 0;
}

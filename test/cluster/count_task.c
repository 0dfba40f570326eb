/* A task for the cluster tests' checkpoint/restart cases: counts from 1,
 * printing "rank R count N" every STEP_MS ms (argv[1], default 100), and
 * keeps 8 MiB of memory whose contents depend on the rank and the count.
 * Before each line it checks that memory and that its rank (taken once from
 * SLURM_PROCID at start) is unchanged, so a restart that lost or mixed up
 * state prints "rank R MEMORY BAD at N" and exits 3. Stops once it has
 * printed the count written in the file argv[2] (read at every count: a
 * test sets it after the checkpoint, since the restored task keeps the
 * arguments it started with). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORDS (8u << 20) / 8

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

int main(int argc, char **argv) {
  long step_ms = argc > 1 ? atol(argv[1]) : 100;
  const char *limit_file = argc > 2 ? argv[2] : NULL;
  const char *r = getenv("SLURM_PROCID");
  const uint64_t rank = r ? strtoull(r, NULL, 10) : 0;
  uint64_t *mem = malloc(WORDS * sizeof(uint64_t));
  if (!mem) return 2;
  for (uint64_t i = 0; i < WORDS; ++i) mem[i] = mix(rank * 1000003u + i);
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (uint64_t n = 1;; ++n) {
    /* Every word must hold mix(rank*1000003 + i) + (n - 1) * i. */
    for (uint64_t i = 0; i < WORDS; i += 4099) {
      if (mem[i] != mix(rank * 1000003u + i) + (n - 1) * i) {
        printf("rank %llu MEMORY BAD at %llu\n", (unsigned long long)rank, (unsigned long long)n);
        return 3;
      }
    }
    /* The job id as getenv sees it now: a restart must show the new job's. */
    const char *job = getenv("SLURM_JOB_ID");
    printf("rank %llu count %llu job %s\n", (unsigned long long)rank, (unsigned long long)n,
           job ? job : "?");
    if (limit_file) {
      FILE *f = fopen(limit_file, "r");
      unsigned long long limit = 0;
      if (f) {
        if (fscanf(f, "%llu", &limit) != 1) limit = 0;
        fclose(f);
      }
      if (limit && n >= limit) break;
    }
    for (uint64_t i = 0; i < WORDS; i += 4099) mem[i] += i;
    struct timespec ts = {step_ms / 1000, (step_ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
  }
  return 0;
}

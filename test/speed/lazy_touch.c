/* lazy_touch MIB DIR: the program of speed.lazy (cr_restart --lazy).
 *
 * Holds MIB MiB of private anonymous memory (word i of the big region is
 * mix64(i)) and a 16 MiB second region (word i is mix64(i) ^ 0x5a5a...), writes
 * DIR/ready ("READY pid"), then prints "tick N" every 5 ms until DIR/check
 * exists. The test checkpoints it, kills it and restarts it lazily: the
 * first "tick" after the restart says the program runs. Then it checks, with
 * pages arriving on first touch while the rest stream in:
 *   - a forked child reads a random half of the big region's pages, in
 *     random order (its memory is its parent's: the server must serve it);
 *   - madvise(MADV_DONTNEED) on the second region's first MiB: zeros there;
 *   - mremap of its next 4 MiB elsewhere: their contents moved with them;
 *   - every page of the big region, in random order, every word.
 * Prints "PASS lazy pages=N" or "FAIL ..." and exits 0 or 1. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "zdtm.h"

#define PAGE 4096
#define WORDS_PER_PAGE (PAGE / 8)
#define SMALL (16ul << 20)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* Checks page p of a region whose word i should be mix64(i) ^ salt. */
static int check_page(const uint64_t *base, size_t p, uint64_t salt, const char *what) {
  for (size_t w = 0; w < WORDS_PER_PAGE; ++w) {
    size_t i = p * WORDS_PER_PAGE + w;
    if (base[i] != (zdtm_mix64(i) ^ salt)) {
      printf("FAIL %s: page %zu word %zu is %#llx, want %#llx\n", what, p, w,
             (unsigned long long)base[i], (unsigned long long)(zdtm_mix64(i) ^ salt));
      return 0;
    }
  }
  return 1;
}

static void shuffle(size_t *v, size_t n) {
  for (size_t i = n - 1; i > 0; --i) {
    size_t j = next_rand() % (i + 1);
    size_t t = v[i];
    v[i] = v[j];
    v[j] = t;
  }
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: lazy_touch MIB DIR\n");
    return 2;
  }
  size_t bytes = strtoul(argv[1], NULL, 10) << 20;
  const char *dir = argv[2];
  size_t pages = bytes / PAGE;
  setvbuf(stdout, NULL, _IOLBF, 0);
  uint64_t *big = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t *small = mmap(NULL, SMALL, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (big == MAP_FAILED || small == MAP_FAILED) return 2;
  const uint64_t salt = 0x5a5a5a5a5a5a5a5aull;
  for (size_t i = 0; i < bytes / 8; ++i) big[i] = zdtm_mix64(i);
  for (size_t i = 0; i < SMALL / 8; ++i) small[i] = zdtm_mix64(i) ^ salt;
  char path[4096];
  snprintf(path, sizeof path, "%s/ready", dir);
  FILE *f = fopen(path, "w");
  if (!f) return 2;
  fprintf(f, "READY %d\n", getpid());
  fclose(f);
  snprintf(path, sizeof path, "%s/check", dir);
  for (unsigned long n = 1; access(path, F_OK) != 0; ++n) {
    printf("tick %lu\n", n);
    struct timespec ts = {0, 5000000};
    nanosleep(&ts, NULL);
  }

  size_t *order = malloc(pages * sizeof *order);
  if (!order) return 2;
  for (size_t i = 0; i < pages; ++i) order[i] = i;
  shuffle(order, pages);
  pid_t kid = fork();
  if (kid == 0) {
    for (size_t k = 0; k < pages / 2; ++k)
      if (!check_page(big, order[k], 0, "child")) _exit(1);
    _exit(0);
  }
  int ok = kid > 0;
  if (!ok) printf("FAIL fork\n");
  /* Dropped pages read zero. */
  if (madvise(small, 1 << 20, MADV_DONTNEED) != 0) {
    printf("FAIL madvise\n");
    ok = 0;
  }
  for (size_t i = 0; ok && i < (1 << 20) / 8; ++i)
    if (small[i] != 0) {
      printf("FAIL word %zu of a dropped MiB is %#llx, want 0\n", i, (unsigned long long)small[i]);
      ok = 0;
    }
  /* Moved pages keep their data. */
  char *moved = mmap(NULL, 4 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  uint64_t *from = small + (1 << 20) / 8;
  uint64_t *to = mremap(from, 4 << 20, 4 << 20, MREMAP_MAYMOVE | MREMAP_FIXED, moved);
  if (to == MAP_FAILED) {
    printf("FAIL mremap\n");
    ok = 0;
  }
  for (size_t p = 0; ok && p < (4u << 20) / PAGE; ++p) {
    size_t first = (1 << 20) / 8 + p * WORDS_PER_PAGE;
    for (size_t w = 0; w < WORDS_PER_PAGE; ++w)
      if (to[p * WORDS_PER_PAGE + w] != (zdtm_mix64(first + w) ^ salt)) {
        printf("FAIL moved page %zu word %zu\n", p, w);
        ok = 0;
        break;
      }
  }
  /* The rest of the second region, untouched so far. */
  for (size_t p = (5u << 20) / PAGE; ok && p < SMALL / PAGE; ++p)
    ok = check_page(small, p, salt, "second region");
  /* Every page of the big one, in random order. */
  shuffle(order, pages);
  for (size_t k = 0; ok && k < pages; ++k) ok = check_page(big, order[k], 0, "parent");
  int st = 0;
  if (kid > 0 && (waitpid(kid, &st, 0) != kid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)) {
    printf("FAIL the child's check (status %#x)\n", st);
    ok = 0;
  }
  if (ok) printf("PASS lazy pages=%zu\n", pages);
  return ok ? 0 : 1;
}

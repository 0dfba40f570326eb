/* A program that rewrites its memory without pause, so that a checkpoint
 * whose pages are written while it runs (copy-on-write snapshot) can be
 * shown to hold the memory as it was at the pause.
 *
 *   rewriter MIB DIR [dontfork]
 *
 * MIB pages are rewritten in passes: pass G writes generation G into every
 * page, in order, and `cursor` counts the pages of the current pass done.
 * gen and cursor live in the same memory, so any instant's memory obeys:
 *   page i < cursor holds generation gen, page i >= cursor holds gen - 1,
 * and every page's 4096 bytes are a function of (its generation, i).
 * Memory put together from two instants (a page written after the pause)
 * breaks it. After each pass the program prints "gen G" (stdout, flushed).
 * Every 64 pages it looks for DIR/check; then it checks every byte, prints
 * "PASS gen G cursor C" or "FAIL ..." and exits. DIR/ready is created once
 * the first pass is done. "dontfork": the buffer is MADV_DONTFORK (as RDMA
 * buffers are), which a snapshot cannot copy.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h" /* zdtm_mix64 only: this program speaks its own protocol */

enum { kPage = 4096, kWords = kPage / 8 };

static void Fill(uint64_t *page, uint64_t gen, uint64_t index) {
  page[0] = gen;
  page[1] = index;
  uint64_t x = zdtm_mix64(gen * 1000003 + index);
  for (int w = 2; w < kWords; ++w) page[w] = x = zdtm_mix64(x + (uint64_t)w);
}

static int Matches(const uint64_t *page, uint64_t gen, uint64_t index) {
  uint64_t want[kWords];
  if (gen == 0)
    memset(want, 0, sizeof want); /* never written yet */
  else
    Fill(want, gen, index);
  return memcmp(page, want, kPage) == 0;
}

/* The program's whole state: what a checkpoint must keep consistent. */
static struct {
  uint64_t gen;
  uint64_t cursor;
} state;

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: rewriter MIB DIR [dontfork]\n");
    return 2;
  }
  const uint64_t pages = strtoull(argv[1], NULL, 10) * 256;
  const char *dir = argv[2];
  char check[4096], ready[4096];
  snprintf(check, sizeof check, "%s/check", dir);
  snprintf(ready, sizeof ready, "%s/ready", dir);
  uint64_t *mem =
      mmap(NULL, pages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return perror("mmap"), 1;
  if (argc > 3 && strcmp(argv[3], "dontfork") == 0 &&
      madvise(mem, pages * kPage, MADV_DONTFORK) != 0)
    return perror("madvise"), 1;
  setvbuf(stdout, NULL, _IOLBF, 0);
  for (state.gen = 1;; ++state.gen) {
    for (state.cursor = 0; state.cursor < pages;) {
      Fill(mem + state.cursor * kWords, state.gen, state.cursor);
      ++state.cursor;
      if (state.cursor % 64 == 0) {
        struct stat st;
        if (stat(check, &st) == 0) goto verify;
      }
    }
    printf("gen %llu\n", (unsigned long long)state.gen);
    if (state.gen == 1) {
      int fd = open(ready, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
      if (fd >= 0) close(fd);
    }
  }
verify:;
  uint64_t bad = 0, first = 0;
  for (uint64_t i = 0; i < pages; ++i) {
    uint64_t want = i < state.cursor ? state.gen : state.gen - 1;
    if (!Matches(mem + i * kWords, want, i) && bad++ == 0) first = i;
  }
  if (bad) {
    printf(
        "FAIL gen %llu cursor %llu: %llu pages differ from that instant, first %llu (holds gen "
        "%llu)\n",
        (unsigned long long)state.gen, (unsigned long long)state.cursor, (unsigned long long)bad,
        (unsigned long long)first, (unsigned long long)mem[first * kWords]);
    return 1;
  }
  printf("PASS gen %llu cursor %llu\n", (unsigned long long)state.gen,
         (unsigned long long)state.cursor);
  return 0;
}

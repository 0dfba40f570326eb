/* mem SIZE [private]: a large private anonymous mapping (default 1G; SIZE
 * takes a K, M or G suffix) whose pages are a mix of random data (xorshift
 * from a seed per page), pages written with zeros, patterned pages and pages
 * never touched; the last 1 MiB region is made read-only, and a 1 MiB
 * MAP_SHARED anonymous mapping holds random data too (left out with
 * "private", for tests about something else than memory). The kind of every
 * page derives from the seed.
 *
 * Check: for every 1 MiB region, a checksum of what memory holds equals one
 * recomputed from the seed (never from anything stored before the
 * checkpoint); a mismatching region is searched for the first differing page
 * and word, so a FAIL line says exactly where the memory went wrong. */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtm.h"

enum Kind { kRandom, kZero, kPattern, kUntouched };
static const char *const kKindNames[] = {"random", "zero", "pattern", "untouched"};
enum { kPage = 4096, kWords = kPage / 8, kRegion = 1 << 20, kPagesPerRegion = kRegion / kPage };
static const uint64_t kSeed = 0x6d656d6f72793121ULL;
static const uint64_t kSharedSeed = 0x5348415245443a29ULL;

static enum Kind KindOf(uint64_t page) {
  uint64_t r = zdtm_mix64(kSeed ^ (page * 0x9e3779b97f4a7c15ULL)) % 10;
  if (r < 4) return kRandom;
  if (r < 6) return kZero;
  if (r < 8) return kPattern;
  return kUntouched;
}

/* The expected content of page number `page` of a mapping seeded `seed`. */
static void Expected(uint64_t seed, uint64_t page, enum Kind kind, uint64_t *out) {
  switch (kind) {
    case kRandom: {
      uint64_t s = zdtm_mix64(seed ^ page) | 1;
      for (int i = 0; i < kWords; i++) out[i] = zdtm_xorshift64(&s);
      break;
    }
    case kPattern:
      for (int i = 0; i < kWords; i++) out[i] = 0xa5a5000000000000ULL | (page << 12) | (uint64_t)i;
      break;
    case kZero:
    case kUntouched:
      memset(out, 0, kPage);
      break;
  }
}

static size_t ParseSize(const char *s) {
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  switch (*end) {
    case 'k':
    case 'K':
      v <<= 10;
      end++;
      break;
    case 'm':
    case 'M':
      v <<= 20;
      end++;
      break;
    case 'g':
    case 'G':
      v <<= 30;
      end++;
      break;
    default:
      break;
  }
  if (*end || v < kRegion) zdtm_die("bad size '%s' (want at least 1M, e.g. 64M or 1G)", s);
  return (size_t)(v / kRegion * kRegion);
}

/* Compares one mapping region by region; returns the number of bad regions. */
static unsigned Verify(const char *what, const uint8_t *base, size_t size, uint64_t seed,
                       int mixed_kinds) {
  static uint64_t want[kWords];
  unsigned bad = 0;
  for (size_t r = 0; r < size / kRegion; r++) {
    uint64_t h_have = 0x84222325cbf29ce4ULL, h_want = h_have;
    for (size_t p = r * kPagesPerRegion; p < (r + 1) * kPagesPerRegion; p++) {
      enum Kind kind = mixed_kinds ? KindOf(p) : kRandom;
      Expected(seed, p, kind, want);
      h_want = zdtm_hash_words(want, kWords, h_want);
      h_have = zdtm_hash_words((const uint64_t *)(base + p * kPage), kWords, h_have);
    }
    if (h_have == h_want) continue;
    if (++bad > 3) continue;
    for (size_t p = r * kPagesPerRegion; p < (r + 1) * kPagesPerRegion; p++) {
      enum Kind kind = mixed_kinds ? KindOf(p) : kRandom;
      const uint64_t *have = (const uint64_t *)(base + p * kPage);
      Expected(seed, p, kind, want);
      int w = 0;
      while (w < kWords && have[w] == want[w]) w++;
      if (w == kWords) continue;
      zdtm_fail_note("%s region %zu (offset %#zx): %s page %zu word %d is %#" PRIx64
                     ", want %#" PRIx64,
                     what, r, r * (size_t)kRegion, kKindNames[kind], p, w, have[w], want[w]);
      break;
    }
  }
  if (bad > 3) zdtm_fail_note("%s: %u regions of %zu differ in all", what, bad, size / kRegion);
  return bad;
}

int main(int argc, char **argv) {
  size_t size = ParseSize(argc > 1 ? argv[1] : "1G");
  char name[32];
  if (size % (1UL << 30) == 0)
    snprintf(name, sizeof(name), "mem%zug", size >> 30);
  else
    snprintf(name, sizeof(name), "mem%zum", size >> 20);
  zdtm_init(name);
  if (sysconf(_SC_PAGESIZE) != kPage) zdtm_die("page size is not 4096");

  uint8_t *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  int with_shared = !(argc > 2 && strcmp(argv[2], "private") == 0);
  uint8_t *shared =
      with_shared ? mmap(NULL, kRegion, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
                  : NULL;
  if (mem == MAP_FAILED || shared == MAP_FAILED) zdtm_die("mmap: %s", strerror(errno));

  size_t npages = size / kPage;
  for (size_t p = 0; p < npages; p++) {
    enum Kind kind = KindOf(p);
    if (kind != kUntouched) Expected(kSeed, p, kind, (uint64_t *)(mem + p * kPage));
  }
  for (size_t p = 0; with_shared && p < kPagesPerRegion; p++)
    Expected(kSharedSeed, p, kRandom, (uint64_t *)(shared + p * kPage));
  if (size > kRegion && mprotect(mem + size - kRegion, kRegion, PROT_READ) != 0)
    zdtm_die("mprotect: %s", strerror(errno));
  printf("%s: %zu MiB private mapping at %p, %s shared mapping at %p\n", name, size >> 20,
         (void *)mem, with_shared ? "1 MiB" : "no", (void *)shared);
  zdtm_ready();

  if (zdtm_corrupt_requested()) {
    zdtm_sleep_ms(50);
    /* Stay out of the read-only last region. */
    size_t writable = size > kRegion ? npages - kPagesPerRegion : npages;
    size_t p = writable / 2;
    while (p < writable && KindOf(p) != kRandom) p++;
    if (p < writable) mem[p * kPage + 100] ^= 0x10;
    p = writable * 3 / 4;
    while (p < writable && KindOf(p) != kUntouched) p++;
    if (p < writable) mem[p * kPage + 8] = 1;
  }
  zdtm_wait_check();

  Verify("private", mem, size, kSeed, 1);
  if (with_shared) Verify("shared", shared, kRegion, kSharedSeed, 0);
  zdtm_finish();
}

/* The benchmarks' workload: processes holding memory whose every byte can
 * be checked again after a restart, without keeping a copy.
 *
 *   bench_mem SIZE MIX PROCS SHARING DIR
 *
 * SIZE     bytes per process (K, M, G suffixes), or of the one shared area
 * MIX      random       every page random data
 *          halfzero     even pages random, odd pages written with zeros
 *          compressible every page a short repeated text naming the page
 * PROCS    number of processes (the first one forks the others)
 * SHARING  private (each process its own SIZE) or shared (one
 *          MAP_SHARED|MAP_ANONYMOUS area of SIZE, filled by the first
 *          process and mapped by all)
 * DIR      the files the bench driver talks through:
 *          DIR/ready  created once every process has filled its memory
 *          DIR/ping   when it appears, the first process creates DIR/pong
 *                     (polled every millisecond: "the program runs")
 *          DIR/mutate when it appears, the first process rewrites every
 *                     20th page of its memory (5%, another generation) and
 *                     creates DIR/mutated (incremental checkpoints)
 *          DIR/check  when it appears, every process checks every byte;
 *                     the first prints "PASS ..." or "FAIL ..." and exits
 *                     with 0 when all passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { kPage = 4096 };
enum Mix { kRandom, kHalfZero, kCompressible };

static uint64_t Mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

/* Page `index` of generation `seed`, written or compared. */
static int Page(char *page, uint64_t seed, uint64_t index, enum Mix mix, int check) {
  uint64_t words[kPage / 8];
  if (mix == kHalfZero && index % 2 == 1) {
    memset(words, 0, sizeof words);
  } else if (mix == kCompressible) {
    char line[64];
    int n = snprintf(line, sizeof line, "stasis bench page %llu seed %llu\n",
                     (unsigned long long)index, (unsigned long long)seed);
    char *w = (char *)words;
    for (int i = 0; i < kPage; i += n)
      memcpy(w + i, line, (size_t)(i + n <= kPage ? n : kPage - i));
  } else {
    uint64_t x = Mix64(seed * 0x9e3779b97f4a7c15ULL + index + 1);
    for (int i = 0; i < kPage / 8; ++i) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      words[i] = x;
    }
  }
  if (check) return memcmp(page, words, kPage) == 0;
  memcpy(page, words, kPage);
  return 1;
}

static int Exists(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  struct stat st;
  return stat(path, &st) == 0;
}

static void Create(const char *dir, const char *name) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) close(fd);
}

static uint64_t ParseSize(const char *s) {
  char *end;
  uint64_t v = strtoull(s, &end, 10);
  switch (*end) {
    case 'G':
    case 'g':
      v <<= 30;
      break;
    case 'M':
    case 'm':
      v <<= 20;
      break;
    case 'K':
    case 'k':
      v <<= 10;
      break;
    default:
      break;
  }
  return v / kPage * kPage;
}

static int mutated; /* every 20th page has generation seed + 1 */

/* Checks every page; returns the number of bad pages. */
static uint64_t Check(char *mem, uint64_t size, uint64_t seed, enum Mix mix) {
  uint64_t bad = 0;
  for (uint64_t i = 0; i < size / kPage; ++i)
    if (!Page(mem + i * kPage, seed + (mutated && i % 20 == 0), i, mix, 1)) ++bad;
  return bad;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr,
            "usage: bench_mem SIZE random|halfzero|compressible PROCS private|shared DIR\n");
    return 2;
  }
  uint64_t size = ParseSize(argv[1]);
  enum Mix mix = strcmp(argv[2], "halfzero") == 0       ? kHalfZero
                 : strcmp(argv[2], "compressible") == 0 ? kCompressible
                                                        : kRandom;
  int procs = atoi(argv[3]);
  int shared = strcmp(argv[4], "shared") == 0;
  const char *dir = argv[5];
  if (size == 0 || procs < 1) {
    fprintf(stderr, "bench_mem: bad size or process count\n");
    return 2;
  }
  char *area = NULL;
  if (shared) {
    area = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED) return perror("mmap"), 1;
    for (uint64_t i = 0; i < size / kPage; ++i) Page(area + i * kPage, 7, i, mix, 0);
  }
  int ready[2];
  if (pipe(ready) != 0) return perror("pipe"), 1;
  pid_t kids[256];
  int nkids = 0;
  int rank = 0;
  for (int r = 1; r < procs && r < 256; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      rank = r;
      nkids = 0;
      break;
    }
    kids[nkids++] = pid;
  }
  uint64_t seed = shared ? 7 : 1000 + (uint64_t)rank;
  char *mem = area;
  if (!shared) {
    mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return perror("mmap"), 1;
    for (uint64_t i = 0; i < size / kPage; ++i) Page(mem + i * kPage, seed, i, mix, 0);
  }
  if (rank > 0) {
    close(ready[0]);
    if (write(ready[1], "r", 1) != 1) return 1;
    while (!Exists(dir, "check")) usleep(2000);
    uint64_t bad = Check(mem, size, seed, mix);
    if (bad) fprintf(stderr, "bench_mem: rank %d: %llu bad pages\n", rank, (unsigned long long)bad);
    return bad ? 1 : 0;
  }
  close(ready[1]);
  for (int k = 0; k < nkids; ++k) {
    char c;
    if (read(ready[0], &c, 1) != 1) return fprintf(stderr, "bench_mem: a child died\n"), 1;
  }
  Create(dir, "ready");
  int ponged = 0;
  while (!Exists(dir, "check")) {
    if (!ponged && Exists(dir, "ping")) {
      Create(dir, "pong");
      ponged = 1;
    }
    if (ponged && !Exists(dir, "ping")) ponged = 0;
    if (!mutated && !shared && Exists(dir, "mutate")) {
      for (uint64_t i = 0; i < size / kPage; i += 20) Page(mem + i * kPage, seed + 1, i, mix, 0);
      mutated = 1;
      Create(dir, "mutated");
    }
    usleep(1000);
  }
  uint64_t bad = Check(mem, size, seed, mix);
  int failed = bad != 0;
  for (int k = 0; k < nkids; ++k) {
    int st;
    if (waitpid(kids[k], &st, 0) != kids[k] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) failed = 1;
  }
  if (failed) {
    printf("FAIL %llu bad pages in rank 0, or a rank failed\n", (unsigned long long)bad);
    return 1;
  }
  printf("PASS %d processes, %llu MiB each (%s, %s)\n", procs, (unsigned long long)(size >> 20),
         argv[2], argv[4]);
  return 0;
}

// A program for incremental checkpoints (run_speed.py incr): it changes its
// memory one step at a time when asked and checks all of it when asked, so
// that a restart from any epoch of a chain shows whether every page came
// back as it was at that epoch.
//
//   incr DIR      polls DIR every 10 ms:
//     DIR/step    holds N: run steps up to N, then write DIR/done.N
//     DIR/verify  check everything, write DIR/verify.out ("PASS step N" or
//                 "FAIL ..."), exit 0 or 1
// At step 2 it forks a child that does the same with the prefix "c." (its
// own steps from 3 on, its own DIR/c.verify). A second thread keeps a
// buffer of its own that it rewrites at every step.
//
// Memory: A (32 MiB, page i holds (i, gen[i]) in every word, or zeros when
// gen[i] is 0) where every step rewrites a random 5% and drops 0.5%
// (MADV_DONTNEED); B (2 MiB, mapped at step 1, its upper half unmapped at
// step 3); C (1 MiB, moved with mremap at step 2); 1 MiB of brk (step 1);
// the thread's 1 MiB.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096
#define A_PAGES 8192
#define B_PAGES 512
#define C_PAGES 256
#define T_BYTES (1 << 20)
#define BRK_BYTES (1 << 20)

static const char* dir;
static const char* prefix = "";
static int step_done;
static uint32_t* gen;  // per page of A, on the heap
static char* A;
static char* B;
static size_t b_pages;
static char* C;
static char* brk_area;
static int is_child;
static int cmd[2], ack[2];
static unsigned char* tbuf;
static volatile int tval;

static void fill(char* p, uint64_t a, uint64_t b) {
  uint64_t v = (a << 32) | b, *w = (uint64_t*)p;
  for (int i = 0; i < PAGE / 8; ++i) w[i] = v;
}

static int check(const char* p, uint64_t a, uint64_t b) {
  uint64_t v = (a << 32) | b;
  const uint64_t* w = (const uint64_t*)p;
  for (int i = 0; i < PAGE / 8; ++i)
    if (w[i] != v) return 0;
  return 1;
}

static char* path(const char* name) {
  static char buf[4096];
  snprintf(buf, sizeof buf, "%s/%s%s", dir, prefix, name);
  return buf;
}

static void put(const char* name, const char* text) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp", path(name));
  FILE* f = fopen(tmp, "w");
  if (!f) exit(3);
  fputs(text, f);
  fclose(f);
  rename(tmp, path(name));
}

static uint64_t rng;
static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void* thread_main(void* arg) {
  (void)arg;
  int v;
  while (read(cmd[0], &v, sizeof v) == sizeof v) {
    memset(tbuf, v & 0xff, T_BYTES);
    tval = v;
    if (write(ack[1], &v, sizeof v) != sizeof v) break;
  }
  return NULL;
}

static void run_step(int k) {
  rng = 0x9e3779b97f4a7c15ull * (uint64_t)(k + (is_child ? 1000 : 0));
  for (int n = 0; n < A_PAGES / 20; ++n) {
    uint32_t i = (uint32_t)(next_rand() % A_PAGES);
    gen[i] = (uint32_t)(k + 1 + (is_child ? 1000 : 0));
    fill(A + (size_t)i * PAGE, i, gen[i]);
  }
  for (int n = 0; n < A_PAGES / 200; ++n) {
    uint32_t i = (uint32_t)(next_rand() % A_PAGES);
    madvise(A + (size_t)i * PAGE, PAGE, MADV_DONTNEED);
    gen[i] = 0;
  }
  if (k == 1) {
    B = mmap(NULL, B_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    b_pages = B_PAGES;
    for (size_t i = 0; i < b_pages; ++i) fill(B + i * PAGE, i, 77);
    brk_area = sbrk(BRK_BYTES);
    for (size_t i = 0; i < BRK_BYTES / PAGE; ++i) fill(brk_area + i * PAGE, i, 88);
  }
  if (k == 2 && !is_child) {
    char* to = mmap(NULL, C_PAGES * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    C = mremap(C, C_PAGES * PAGE, C_PAGES * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    if (C == MAP_FAILED) exit(4);
  }
  if (k == 3) {
    munmap(B + B_PAGES / 2 * PAGE, B_PAGES / 2 * PAGE);
    b_pages = B_PAGES / 2;
  }
  if (!is_child) {
    int v = k, got;
    if (write(cmd[1], &v, sizeof v) != sizeof v || read(ack[0], &got, sizeof got) != sizeof got)
      exit(5);
  }
  step_done = k;
}

static void verify(void) {
  char out[256];
  const char* bad = NULL;
  size_t where = 0;
  for (size_t i = 0; i < A_PAGES && !bad; ++i)
    if (!check(A + i * PAGE, gen[i] ? i : 0, gen[i])) bad = "A", where = i;
  for (size_t i = 0; B && i < b_pages && !bad; ++i)
    if (!check(B + i * PAGE, i, 77)) bad = "B", where = i;
  for (size_t i = 0; i < C_PAGES && !bad; ++i)
    if (!check(C + i * PAGE, i, 99)) bad = "C", where = i;
  for (size_t i = 0; brk_area && i < BRK_BYTES / PAGE && !bad; ++i)
    if (!check(brk_area + i * PAGE, i, 88)) bad = "brk", where = i;
  if (!is_child)
    for (size_t i = 0; i < T_BYTES && !bad; ++i)
      if (tbuf[i] != (unsigned char)(tval & 0xff)) bad = "thread buffer", where = i;
  if (bad)
    snprintf(out, sizeof out, "FAIL step %d: %s page %zu\n", step_done, bad, where);
  else
    snprintf(out, sizeof out, "PASS step %d\n", step_done);
  put("verify.out", out);
  exit(bad ? 1 : 0);
}

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  dir = argv[1];
  A = mmap(NULL, (size_t)A_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
           0);
  C = mmap(NULL, C_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  gen = calloc(A_PAGES, sizeof *gen);
  tbuf = malloc(T_BYTES);
  if (A == MAP_FAILED || C == MAP_FAILED || !gen || !tbuf) return 3;
  for (size_t i = 0; i < A_PAGES; ++i) {
    gen[i] = 1;
    fill(A + i * PAGE, i, 1);
  }
  for (size_t i = 0; i < C_PAGES; ++i) fill(C + i * PAGE, i, 99);
  memset(tbuf, 0, T_BYTES);
  pthread_t t;
  if (pipe(cmd) || pipe(ack) || pthread_create(&t, NULL, thread_main, NULL)) return 3;
  put("ready", "");
  for (;;) {
    struct stat st;
    if (stat(path("verify"), &st) == 0) verify();
    FILE* f = fopen(path("step"), "r");
    int want = 0;
    if (f) {
      if (fscanf(f, "%d", &want) != 1) want = 0;
      fclose(f);
    }
    while (step_done < want) {
      int k = step_done + 1;
      if (k == 2 && !is_child) {
        pid_t pid = fork();
        if (pid == 0) {
          is_child = 1;
          prefix = "c.";
          step_done = 2;  // the child's own steps start at 3
          put("ready", "");
          break;
        }
      }
      run_step(k);
      char name[32];
      snprintf(name, sizeof name, "done.%d", k);
      put(name, "");
    }
    usleep(10000);
  }
}

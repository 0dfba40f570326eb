/* hugetlb: anonymous MAP_HUGETLB memory, private and shared (2 MiB pages).
 *
 *   priv    one huge page, MAP_PRIVATE, the parent's only (the child unmaps
 *           its copy right after fork)
 *   shared  one huge page, MAP_SHARED, in the parent and a forked child; the
 *           parent fills the first half, the child the second
 *
 * Check: contents; both mappings are still backed by huge pages (smaps
 * KernelPageSize); after the restart the parent writes into shared and the
 * child must see it, and the other way round. Without huge pages (the
 * harness tries to reserve 4 first) the program says SKIPPED and exits 77. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum { kHuge = 2 << 20, kHalf = kHuge / 2, kLateParent = 12345, kLateChild = 1500000 };
static const uint64_t kSeedPriv = 0x4e9, kSeedShared = 0x4e95, kSeedLateP = 0x1a7e1,
                      kSeedLateC = 0x1a7e2;

static uint8_t *priv, *shared;

/* KernelPageSize of the mapping that starts at addr, in kB (-1 if none). */
static long PageKb(const void *addr) {
  FILE *f = fopen("/proc/self/smaps", "re");
  if (!f) return -1;
  char line[512];
  int in = 0;
  long kb = -1;
  while (fgets(line, sizeof(line), f)) {
    unsigned long start, end;
    if (sscanf(line, "%lx-%lx ", &start, &end) == 2) { /* a mapping's first line */
      in = start == (unsigned long)addr;
      continue;
    }
    if (in && sscanf(line, "KernelPageSize: %ld kB", &kb) == 1) break;
  }
  fclose(f);
  return kb;
}

static void CheckHuge(const char *who, const char *what, const void *addr) {
  long kb = PageKb(addr);
  if (kb != kHuge / 1024)
    zdtm_fail_note("%s: %s at %p: KernelPageSize %ld kB, want %d", who, what, addr, kb,
                   kHuge / 1024);
}

int main(void) {
  zdtm_init("hugetlb");
  priv =
      mmap(NULL, kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  shared =
      mmap(NULL, kHuge, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
  if (priv == MAP_FAILED || shared == MAP_FAILED) {
    printf("SKIPPED hugetlb: mmap MAP_HUGETLB of 2 MiB: %s (see /proc/sys/vm/nr_hugepages)\n",
           strerror(errno));
    exit(77);
  }
  zdtm_pattern_fill(priv, kHuge, kSeedPriv, 0);
  zdtm_pattern_fill(shared, kHalf, kSeedShared, 0);
  struct zdtm_link link;
  zdtm_link_open(&link);

  pid_t kid = zdtm_fork();
  if (kid == 0) {
    munmap(priv, kHuge);
    zdtm_link_kid_side(&link);
    zdtm_pattern_fill(shared + kHalf, kHalf, kSeedShared, kHalf);
    if (!zdtm_link_tell_parent(&link, 'f')) _exit(3);
    zdtm_wait_check();
    CheckHuge("child", "shared", shared);
    zdtm_pattern_check("child: shared", shared, kHuge, kSeedShared, 0);
    if (!zdtm_link_tell_parent(&link, 'c')) zdtm_fail_note("child: write: %s", strerror(errno));
    if (!zdtm_link_hear_from_parent(&link, 10000)) {
      zdtm_fail_note("child: no word from the parent");
    } else {
      zdtm_pattern_check("child: the parent's write after the restart", shared + kLateParent, 100,
                         kSeedLateP, 0);
      zdtm_pattern_fill(shared + kLateChild, 100, kSeedLateC, 0);
    }
    if (!zdtm_link_tell_parent(&link, 'd')) zdtm_fail_note("child: write: %s", strerror(errno));
    zdtm_kid_finish(link.verdict[1]);
  }
  zdtm_link_parent_side(&link);
  if (!zdtm_link_hear_from_kid(&link, 10000)) zdtm_die("the child did not fill its half");
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) priv[kHuge - 1] ^= 1;
  CheckHuge("parent", "private", priv);
  CheckHuge("parent", "shared", shared);
  zdtm_pattern_check("private", priv, kHuge, kSeedPriv, 0);
  zdtm_pattern_check("shared", shared, kHuge, kSeedShared, 0);
  if (!zdtm_link_hear_from_kid(&link, 10000)) /* the child has checked too */
    zdtm_fail_note("the child did not check");
  zdtm_pattern_fill(shared + kLateParent, 100, kSeedLateP, 0);
  if (!zdtm_link_tell_kid(&link, 'g')) zdtm_fail_note("write: %s", strerror(errno));
  if (!zdtm_link_hear_from_kid(&link, 10000))
    zdtm_fail_note("no word from the child");
  else
    zdtm_pattern_check("the child's write after the restart", shared + kLateChild, 100, kSeedLateC,
                       0);
  zdtm_kid_collect(link.verdict[0], "child", 15000);
  zdtm_kid_reap(kid, "child", 5000);
  zdtm_finish();
}

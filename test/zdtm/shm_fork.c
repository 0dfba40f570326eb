/* shm_fork: shared memory between a parent and a forked child.
 *
 *   anon   1 MiB MAP_SHARED|MAP_ANONYMOUS
 *   memfd  1 MiB memfd_create("zdtm-shm"), mapped MAP_SHARED, the fd kept
 *          open in both processes
 *
 * Before READY the parent fills the first half of each and the child the
 * second half. After the check both verify all of it (each sees the other's
 * writes); then, in turn over a pipe, the parent writes a page of anon and the
 * child must see it, the child writes a page of memfd and the parent must
 * see it through the mapping and through the fd (pread); both see the same
 * memfd size. So the two processes still share one object per region. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum { kPage = 4096, kSize = 1 << 20, kHalf = kSize / 2, kAnonPage = 100, kMemfdPage = 200 };
static const uint64_t kSeedAnon = 0xa409, kSeedMemfd = 0x3e3fd, kSeedLateAnon = 0x1a7ea,
                      kSeedLateMemfd = 0x1a7e3;

static uint8_t *anon, *mem;
static int memfd;

static void CheckAll(const char *who) {
  char what[80];
  snprintf(what, sizeof(what), "%s: anon", who);
  zdtm_pattern_check(what, anon, kSize, kSeedAnon, 0);
  snprintf(what, sizeof(what), "%s: memfd mapping", who);
  zdtm_pattern_check(what, mem, kSize, kSeedMemfd, 0);
  struct stat st;
  if (fstat(memfd, &st) != 0 || st.st_size != kSize)
    zdtm_fail_note("%s: memfd size %jd, want %d", who, (intmax_t)st.st_size, kSize);
}

int main(void) {
  zdtm_init("shm_fork");
  anon = mmap(NULL, kSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  memfd = memfd_create("zdtm-shm", 0);
  if (anon == MAP_FAILED || memfd < 0 || ftruncate(memfd, kSize) != 0)
    zdtm_die("mmap/memfd: %s", strerror(errno));
  mem = mmap(NULL, kSize, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
  if (mem == MAP_FAILED) zdtm_die("mmap memfd: %s", strerror(errno));
  struct zdtm_link link;
  zdtm_link_open(&link);
  zdtm_pattern_fill(anon, kHalf, kSeedAnon, 0);
  zdtm_pattern_fill(mem, kHalf, kSeedMemfd, 0);

  pid_t kid = zdtm_fork();
  if (kid == 0) {
    zdtm_link_kid_side(&link);
    zdtm_pattern_fill(anon + kHalf, kHalf, kSeedAnon, kHalf);
    zdtm_pattern_fill(mem + kHalf, kHalf, kSeedMemfd, kHalf);
    if (!zdtm_link_tell_parent(&link, 'f')) _exit(3);
    zdtm_wait_check();
    CheckAll("child");
    if (!zdtm_link_tell_parent(&link, 'c')) zdtm_fail_note("child: write: %s", strerror(errno));
    if (!zdtm_link_hear_from_parent(&link, 10000)) {
      zdtm_fail_note("child: no word from the parent");
      zdtm_kid_finish(link.verdict[1]);
    }
    zdtm_pattern_check("child: the parent's write to anon after the restart",
                       anon + kAnonPage * kPage, kPage, kSeedLateAnon, 0);
    zdtm_pattern_fill(mem + kMemfdPage * kPage, kPage, kSeedLateMemfd, 0);
    if (!zdtm_link_tell_parent(&link, 'd')) zdtm_fail_note("child: write: %s", strerror(errno));
    zdtm_kid_finish(link.verdict[1]);
  }
  zdtm_link_parent_side(&link);
  if (!zdtm_link_hear_from_kid(&link, 10000)) zdtm_die("the child did not fill its half");
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) anon[12345] ^= 1;
  CheckAll("parent");
  if (!zdtm_link_hear_from_kid(&link, 10000)) /* the child has checked too */
    zdtm_fail_note("the child did not check");
  zdtm_pattern_fill(anon + kAnonPage * kPage, kPage, kSeedLateAnon, 0);
  if (!zdtm_link_tell_kid(&link, 'g')) zdtm_fail_note("write: %s", strerror(errno));
  if (!zdtm_link_hear_from_kid(&link, 10000)) {
    zdtm_fail_note("no word from the child");
  } else {
    zdtm_pattern_check("the child's write to memfd after the restart", mem + kMemfdPage * kPage,
                       kPage, kSeedLateMemfd, 0);
    static uint8_t page[kPage];
    if (pread(memfd, page, kPage, kMemfdPage * kPage) != kPage)
      zdtm_fail_note("pread memfd: %s", strerror(errno));
    else
      zdtm_pattern_check("the child's write to memfd, read through the fd", page, kPage,
                         kSeedLateMemfd, 0);
  }
  zdtm_kid_collect(link.verdict[0], "child", 15000);
  zdtm_kid_reap(kid, "child", 5000);
  zdtm_finish();
}

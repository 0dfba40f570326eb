/* posix_shm: POSIX shared memory (shm_open, in /dev/shm) in a parent and a
 * forked child.
 *
 *   obj1  /zdtm-pshm-<inode of the test folder>, 256 KiB, mapped MAP_SHARED
 *         and its fd kept open (both inherited by the child); the parent
 *         fills the first half, the child the rest
 *   obj2  /zdtm-pshm-<inode>-gone, 64 KiB, mapped MAP_SHARED, fd closed,
 *         then shm_unlink'ed: only the mappings keep it
 *
 * Check (both processes): contents; obj1's fd is the object at its name
 * (shm_open again: same inode), and a new mapping of it shows the same bytes
 * and a write through it shows in the old mapping; obj2 has st_nlink 0
 * (through /proc/self/map_files) and its name is gone; after the restart the
 * parent writes obj1 and the child must see it, the child writes obj2 and
 * the parent must see it. The harness removes the names if the test dies. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum {
  kPage = 4096,
  kSize1 = 256 * 1024,
  kHalf1 = kSize1 / 2,
  kSize2 = 65536,
  kLate1 = 5,
  kLate2 = 7,
  kViaNew = 9
};
static const uint64_t kSeed1 = 0x9051, kSeed2 = 0x9052, kSeedLate1 = 0x1a7e1, kSeedLate2 = 0x1a7e2,
                      kSeedNew = 0x3e3;

static char name1[64], name2[64];
static int fd1;
static uint8_t *obj1, *obj2;

static void CheckAll(const char *who) {
  char what[80];
  snprintf(what, sizeof(what), "%s: obj1", who);
  zdtm_pattern_check(what, obj1, kSize1, kSeed1, 0);
  snprintf(what, sizeof(what), "%s: obj2", who);
  zdtm_pattern_check(what, obj2, kSize2, kSeed2, 0);

  struct stat a, b;
  int again = shm_open(name1, O_RDWR | O_CLOEXEC, 0);
  if (again < 0) {
    zdtm_fail_note("%s: shm_open %s: %s", who, name1, strerror(errno));
  } else {
    if (fstat(fd1, &a) != 0 || fstat(again, &b) != 0 || a.st_ino != b.st_ino ||
        a.st_dev != b.st_dev)
      zdtm_fail_note("%s: obj1's fd is not the object named %s", who, name1);
    if (fstat(fd1, &a) == 0 && a.st_size != kSize1)
      zdtm_fail_note("%s: obj1 size %jd, want %d", who, (intmax_t)a.st_size, kSize1);
    uint8_t *m = mmap(NULL, kSize1, PROT_READ | PROT_WRITE, MAP_SHARED, again, 0);
    if (m == MAP_FAILED) {
      zdtm_fail_note("%s: mmap %s again: %s", who, name1, strerror(errno));
    } else {
      snprintf(what, sizeof(what), "%s: obj1 mapped again", who);
      zdtm_pattern_check(what, m, kSize1, kSeed1, 0);
      munmap(m, kSize1);
    }
    close(again);
  }
  char mf[80];
  snprintf(mf, sizeof(mf), "/proc/self/map_files/%lx-%lx", (unsigned long)obj2,
           (unsigned long)(obj2 + kSize2));
  int f2 = open(mf, O_RDONLY | O_CLOEXEC);
  if (f2 < 0 || fstat(f2, &a) != 0)
    zdtm_fail_note("%s: obj2: %s: %s", who, mf, strerror(errno));
  else if (a.st_nlink != 0)
    zdtm_fail_note("%s: obj2 has st_nlink %ju, want 0", who, (uintmax_t)a.st_nlink);
  if (f2 >= 0) close(f2);
  int gone = shm_open(name2, O_RDONLY | O_CLOEXEC, 0);
  if (gone >= 0) {
    zdtm_fail_note("%s: %s exists again", who, name2);
    close(gone);
  }
}

int main(void) {
  zdtm_init("posix_shm");
  struct stat here;
  if (stat(".", &here) != 0) zdtm_die("stat .: %s", strerror(errno));
  snprintf(name1, sizeof(name1), "/zdtm-pshm-%ju", (uintmax_t)here.st_ino);
  snprintf(name2, sizeof(name2), "/zdtm-pshm-%ju-gone", (uintmax_t)here.st_ino);
  fd1 = shm_open(name1, O_RDWR | O_CREAT | O_EXCL, 0600);
  int fd2 = shm_open(name2, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd1 < 0 || fd2 < 0 || ftruncate(fd1, kSize1) != 0 || ftruncate(fd2, kSize2) != 0)
    zdtm_die("shm_open: %s", strerror(errno));
  obj1 = mmap(NULL, kSize1, PROT_READ | PROT_WRITE, MAP_SHARED, fd1, 0);
  obj2 = mmap(NULL, kSize2, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 0);
  if (obj1 == MAP_FAILED || obj2 == MAP_FAILED) zdtm_die("mmap: %s", strerror(errno));
  close(fd2);
  if (shm_unlink(name2) != 0) zdtm_die("shm_unlink: %s", strerror(errno));
  zdtm_pattern_fill(obj1, kHalf1, kSeed1, 0);
  zdtm_pattern_fill(obj2, kSize2, kSeed2, 0);
  struct zdtm_link link;
  zdtm_link_open(&link);

  pid_t kid = zdtm_fork();
  if (kid == 0) {
    zdtm_link_kid_side(&link);
    zdtm_pattern_fill(obj1 + kHalf1, kSize1 - kHalf1, kSeed1, kHalf1);
    if (!zdtm_link_tell_parent(&link, 'f')) _exit(3);
    zdtm_wait_check();
    if (!zdtm_link_hear_from_parent(&link, 10000)) { /* the parent checks first */
      zdtm_fail_note("child: no word from the parent");
      zdtm_kid_finish(link.verdict[1]);
    }
    zdtm_pattern_check("child: the parent's write to obj1 after the restart", obj1 + kLate1 * kPage,
                       kPage, kSeedLate1, 0);
    zdtm_pattern_check("child: the parent's write to obj1 through a new mapping",
                       obj1 + kViaNew * kPage, kPage, kSeedNew, 0);
    zdtm_pattern_fill(obj1 + kLate1 * kPage, kPage, kSeed1, kLate1 * kPage);
    zdtm_pattern_fill(obj1 + kViaNew * kPage, kPage, kSeed1, kViaNew * kPage);
    CheckAll("child");
    zdtm_pattern_fill(obj2 + kLate2 * kPage, kPage, kSeedLate2, 0);
    if (!zdtm_link_tell_parent(&link, 'd')) zdtm_fail_note("child: write: %s", strerror(errno));
    zdtm_kid_finish(link.verdict[1]);
  }
  zdtm_link_parent_side(&link);
  if (!zdtm_link_hear_from_kid(&link, 10000)) zdtm_die("the child did not fill its half");
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) obj2[4321] ^= 2;
  CheckAll("parent");
  zdtm_pattern_fill(obj1 + kLate1 * kPage, kPage, kSeedLate1, 0);
  int again = shm_open(name1, O_RDWR | O_CLOEXEC, 0);
  uint8_t *m =
      again < 0 ? MAP_FAILED : mmap(NULL, kSize1, PROT_READ | PROT_WRITE, MAP_SHARED, again, 0);
  if (m == MAP_FAILED) {
    zdtm_fail_note("map %s again: %s", name1, strerror(errno));
  } else {
    zdtm_pattern_fill(m + kViaNew * kPage, kPage, kSeedNew, 0);
    zdtm_pattern_check("obj1: a write through a new mapping, seen in the old one",
                       obj1 + kViaNew * kPage, kPage, kSeedNew, 0);
    munmap(m, kSize1);
  }
  if (again >= 0) close(again);
  if (!zdtm_link_tell_kid(&link, 'g')) zdtm_fail_note("write: %s", strerror(errno));
  if (!zdtm_link_hear_from_kid(&link, 10000))
    zdtm_fail_note("no word from the child");
  else
    zdtm_pattern_check("the child's write to obj2 after the restart", obj2 + kLate2 * kPage, kPage,
                       kSeedLate2, 0);
  zdtm_kid_collect(link.verdict[0], "child", 15000);
  zdtm_kid_reap(kid, "child", 5000);
  shm_unlink(name1);
  zdtm_finish();
}

/* sysv_shm: SysV shared memory attached in a parent and a forked child.
 *
 *   seg1  key ftok(".", 'Z'), 1 MiB + 100 bytes, mode 0640, attached once in
 *         each process; the parent fills its first half, the child the rest
 *   seg2  IPC_PRIVATE, 64 KiB, attached twice in each process (read-write and
 *         SHM_RDONLY), then IPC_RMID: it lives as long as it is attached
 *
 * Check (both processes): the contents; IPC_STAT by the saved ids gives the
 * key, size, mode (seg2 with SHM_DEST) and attach counts (2 and 4); after the
 * restart the parent writes a page of seg1 and the child must see it, the
 * child writes a page of seg2 and the parent must see it through both of its
 * attachments. The harness removes seg1 if the test dies before it does. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/shm.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum {
  kPage = 4096,
  kSize1 = (1 << 20) + 100,
  kHalf1 = kSize1 / 2,
  kSize2 = 65536,
  kLatePage1 = 3,
  kLatePage2 = 2
};
static const uint64_t kSeed1 = 0x5e91, kSeed2 = 0x5e92, kSeedLate1 = 0x1a7e1, kSeedLate2 = 0x1a7e2;

static key_t key;
static int id1, id2;
static uint8_t *seg1, *seg2, *seg2_ro;

static void Stat(const char *who, const char *what, int id, key_t want_key, size_t want_size,
                 unsigned want_mode, unsigned long want_nattch) {
  struct shmid_ds ds;
  if (shmctl(id, IPC_STAT, &ds) != 0) {
    zdtm_fail_note("%s: %s: shmctl(%d, IPC_STAT): %s", who, what, id, strerror(errno));
    return;
  }
  if (ds.shm_perm.__key != want_key)
    zdtm_fail_note("%s: %s: key %#x, want %#x", who, what, ds.shm_perm.__key, want_key);
  if (ds.shm_segsz != want_size)
    zdtm_fail_note("%s: %s: size %zu, want %zu", who, what, ds.shm_segsz, want_size);
  if ((ds.shm_perm.mode & 01777) != want_mode)
    zdtm_fail_note("%s: %s: mode %#o, want %#o", who, what, ds.shm_perm.mode & 01777, want_mode);
  if (ds.shm_nattch != want_nattch)
    zdtm_fail_note("%s: %s: %lu attaches, want %lu", who, what, (unsigned long)ds.shm_nattch,
                   want_nattch);
}

static void CheckAll(const char *who) {
  char what[64];
  snprintf(what, sizeof(what), "%s: seg1", who);
  zdtm_pattern_check(what, seg1, kSize1, kSeed1, 0);
  snprintf(what, sizeof(what), "%s: seg2", who);
  zdtm_pattern_check(what, seg2, kSize2, kSeed2, 0);
  if (memcmp(seg2, seg2_ro, kSize2) != 0)
    zdtm_fail_note("%s: seg2's read-only attachment differs from the read-write one", who);
  Stat(who, "seg1", id1, key, kSize1, 0640, 2);
  Stat(who, "seg2", id2, IPC_PRIVATE, kSize2, 0600 | SHM_DEST, 4);
}

int main(void) {
  zdtm_init("sysv_shm");
  key = ftok(".", 'Z');
  if (key == -1) zdtm_die("ftok: %s", strerror(errno));
  id1 = shmget(key, kSize1, IPC_CREAT | IPC_EXCL | 0640);
  if (id1 < 0) zdtm_die("shmget key %#x: %s", key, strerror(errno));
  id2 = shmget(IPC_PRIVATE, kSize2, IPC_CREAT | 0600);
  if (id2 < 0) {
    shmctl(id1, IPC_RMID, NULL);
    zdtm_die("shmget: %s", strerror(errno));
  }
  seg1 = shmat(id1, NULL, 0);
  seg2 = shmat(id2, NULL, 0);
  seg2_ro = shmat(id2, NULL, SHM_RDONLY);
  if (seg1 == (void *)-1 || seg2 == (void *)-1 || seg2_ro == (void *)-1 ||
      shmctl(id2, IPC_RMID, NULL) != 0) {
    shmctl(id1, IPC_RMID, NULL);
    shmctl(id2, IPC_RMID, NULL);
    zdtm_die("shmat: %s", strerror(errno));
  }
  zdtm_pattern_fill(seg1, kHalf1, kSeed1, 0);
  zdtm_pattern_fill(seg2, kSize2, kSeed2, 0);
  struct zdtm_link link;
  zdtm_link_open(&link);

  pid_t kid = zdtm_fork();
  if (kid == 0) {
    zdtm_link_kid_side(&link);
    zdtm_pattern_fill(seg1 + kHalf1, kSize1 - kHalf1, kSeed1, kHalf1);
    if (!zdtm_link_tell_parent(&link, 'f')) _exit(3);
    zdtm_wait_check();
    CheckAll("child");
    if (!zdtm_link_tell_parent(&link, 'c')) zdtm_fail_note("child: write: %s", strerror(errno));
    if (!zdtm_link_hear_from_parent(&link, 10000)) {
      zdtm_fail_note("child: no word from the parent");
    } else {
      zdtm_pattern_check("child: the parent's write to seg1 after the restart",
                         seg1 + kLatePage1 * kPage, kPage, kSeedLate1, 0);
      zdtm_pattern_fill(seg2 + kLatePage2 * kPage, kPage, kSeedLate2, 0);
    }
    shmdt(seg1);
    shmdt(seg2);
    shmdt(seg2_ro);
    if (!zdtm_link_tell_parent(&link, 'd')) zdtm_fail_note("child: write: %s", strerror(errno));
    zdtm_kid_finish(link.verdict[1]);
  }
  zdtm_link_parent_side(&link);
  if (!zdtm_link_hear_from_kid(&link, 10000)) zdtm_die("the child did not fill its half");
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) seg2[777] ^= 4;
  CheckAll("parent");
  if (!zdtm_link_hear_from_kid(&link, 10000)) /* the child has checked too */
    zdtm_fail_note("the child did not check");
  zdtm_pattern_fill(seg1 + kLatePage1 * kPage, kPage, kSeedLate1, 0);
  if (!zdtm_link_tell_kid(&link, 'g')) zdtm_fail_note("write: %s", strerror(errno));
  if (!zdtm_link_hear_from_kid(&link, 10000)) {
    zdtm_fail_note("no word from the child");
  } else {
    zdtm_pattern_check("the child's write to seg2 after the restart", seg2 + kLatePage2 * kPage,
                       kPage, kSeedLate2, 0);
    zdtm_pattern_check("the child's write to seg2, read-only attachment",
                       seg2_ro + kLatePage2 * kPage, kPage, kSeedLate2, 0);
  }
  zdtm_kid_collect(link.verdict[0], "child", 15000);
  zdtm_kid_reap(kid, "child", 5000);
  shmdt(seg1);
  shmdt(seg2);
  shmdt(seg2_ro);
  if (shmctl(id1, IPC_RMID, NULL) != 0) zdtm_fail_note("seg1: IPC_RMID: %s", strerror(errno));
  zdtm_finish();
}

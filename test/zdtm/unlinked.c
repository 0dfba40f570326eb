/* unlinked: files that were unlinked while open or mapped.
 *
 *   unl-a   opened O_RDWR, 3*4096+123 bytes, offset 5000, then unlinked
 *   unl-m   16 pages, mapped MAP_SHARED and MAP_PRIVATE, fd closed, unlinked;
 *           pages 0-3 written through the shared mapping, pages 2-5 through
 *           the private one (copy-on-write)
 *   unl-s   opened O_RDWR, unlinked, then shared with a forked child (one open
 *           file description, one offset)
 *
 * Check: unl-a's fd has st_nlink 0, its size, offset and bytes, and the name
 * does not exist again; a write+read through it works. unl-m, reached through
 * /proc/self/map_files, has st_nlink 0; the shared mapping shows pages 0-3
 * written and the rest as created, the private one its own pages 2-5 and the
 * file's for the others (so 0-1 show the shared writes); a write through the
 * shared mapping after the restart shows in the private mapping's untouched
 * page 10 (one file under both). unl-s: parent and child fds are one open
 * file (kcmp) of st_nlink 0; the parent writes, the child sees the bytes and
 * the moved offset, writes in turn, and the parent sees that. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kcmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum {
  kPage = 4096,
  kASize = 3 * kPage + 123,
  kAPos = 5000,
  kMPages = 16,
  kSSize = 10000,
  kSPos = 2000,
  kMsg = 300
};
static const uint64_t kSeedA = 0x756e6c2d61ULL, kSeedM = 0x756e6c2d6dULL,
                      kSeedShared = 0x534841524544ULL, kSeedPrivate = 0x5052495641ULL,
                      kSeedS = 0x756e6c2d73ULL, kSeedParent = 0x706172656e74ULL,
                      kSeedChild = 0x6368696c64ULL, kSeedLate = 0x6c617465ULL;

static int CreateFile(const char *path, size_t size, uint64_t seed) {
  char *buf = malloc(size);
  zdtm_pattern_fill(buf, size, seed, 0);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || !zdtm_write_full(fd, buf, size)) zdtm_die("write %s: %s", path, strerror(errno));
  free(buf);
  return fd;
}

static void ExpectUnlinked(const char *what, int fd, const char *name, off_t size) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    zdtm_fail_note("%s: fstat: %s", what, strerror(errno));
    return;
  }
  if (st.st_nlink != 0) zdtm_fail_note("%s: st_nlink %ju, want 0", what, (uintmax_t)st.st_nlink);
  if (!S_ISREG(st.st_mode)) zdtm_fail_note("%s: not a regular file (mode %#o)", what, st.st_mode);
  if (size >= 0 && st.st_size != size)
    zdtm_fail_note("%s: size %jd, want %jd", what, (intmax_t)st.st_size, (intmax_t)size);
  if (access(name, F_OK) == 0) zdtm_fail_note("%s: the name %s exists again", what, name);
}

static void Child(int fd, int go, int done, int verdict) {
  char buf[kMsg];
  zdtm_wait_check();
  char c;
  if (zdtm_read_full(go, &c, 1, 10000) != 1) {
    zdtm_fail_note("no word from the parent");
    zdtm_kid_finish(verdict);
  }
  ExpectUnlinked("unl-s in the child", fd, "unl-s", -1);
  off_t pos = lseek(fd, 0, SEEK_CUR);
  if (pos != kSPos + kMsg)
    zdtm_fail_note("unl-s in the child: offset %jd after the parent's write, want %d",
                   (intmax_t)pos, kSPos + kMsg);
  if (pread(fd, buf, kMsg, kSPos) != kMsg)
    zdtm_fail_note("unl-s in the child: pread: %s", strerror(errno));
  else
    zdtm_pattern_check("unl-s in the child: the parent's write", buf, kMsg, kSeedParent, 0);
  zdtm_pattern_fill(buf, kMsg, kSeedChild, 0);
  if (!zdtm_write_full(fd, buf, kMsg))
    zdtm_fail_note("unl-s in the child: write: %s", strerror(errno));
  if (write(done, "c", 1) != 1) zdtm_fail_note("write to the parent: %s", strerror(errno));
  zdtm_kid_finish(verdict);
}

int main(void) {
  zdtm_init("unlinked");
  char *buf = malloc(kMPages * kPage);

  /* unl-a */
  int fa = CreateFile("unl-a", kASize, kSeedA);
  if (lseek(fa, kAPos, SEEK_SET) != kAPos || unlink("unl-a") != 0)
    zdtm_die("unl-a: %s", strerror(errno));

  /* unl-m */
  int fm = CreateFile("unl-m", kMPages * kPage, kSeedM);
  uint8_t *shared = mmap(NULL, kMPages * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fm, 0);
  uint8_t *priv = mmap(NULL, kMPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE, fm, 0);
  if (shared == MAP_FAILED || priv == MAP_FAILED) zdtm_die("mmap unl-m: %s", strerror(errno));
  close(fm);
  if (unlink("unl-m") != 0) zdtm_die("unlink unl-m: %s", strerror(errno));
  zdtm_pattern_fill(shared, 4 * kPage, kSeedShared, 0);
  zdtm_pattern_fill(priv + 2 * kPage, 4 * kPage, kSeedPrivate, 2 * kPage);
  volatile uint8_t sink = 0;
  for (int p = 6; p < kMPages; p += 2) sink += priv[p * kPage]; /* read faults only */
  (void)sink;

  /* unl-s, shared with a child */
  int fs = CreateFile("unl-s", kSSize, kSeedS);
  if (lseek(fs, kSPos, SEEK_SET) != kSPos || unlink("unl-s") != 0)
    zdtm_die("unl-s: %s", strerror(errno));
  int go[2], done[2], verdict[2];
  if (pipe(go) != 0 || pipe(done) != 0 || pipe(verdict) != 0) zdtm_die("pipe: %s", strerror(errno));
  pid_t kid = zdtm_fork();
  if (kid == 0) {
    close(go[1]);
    close(done[0]);
    close(verdict[0]);
    close(fa);
    Child(fs, go[0], done[1], verdict[1]);
  }
  close(go[0]);
  close(done[1]);
  close(verdict[1]);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested() && pwrite(fa, "X", 1, 100) != 1)
    zdtm_die("pwrite: %s", strerror(errno));

  /* unl-a */
  ExpectUnlinked("unl-a", fa, "unl-a", kASize);
  off_t pos = lseek(fa, 0, SEEK_CUR);
  if (pos != kAPos) zdtm_fail_note("unl-a: offset %jd, want %d", (intmax_t)pos, kAPos);
  if (pread(fa, buf, kASize, 0) != kASize)
    zdtm_fail_note("unl-a: pread: %s", strerror(errno));
  else
    zdtm_pattern_check("unl-a", buf, kASize, kSeedA, 0);
  zdtm_pattern_fill(buf, 100, kSeedLate, 0);
  if (lseek(fa, kAPos, SEEK_SET) != kAPos || !zdtm_write_full(fa, buf, 100) ||
      pread(fa, buf, 100, kAPos) != 100)
    zdtm_fail_note("unl-a: write and read back: %s", strerror(errno));
  else
    zdtm_pattern_check("unl-a: written after the restart", buf, 100, kSeedLate, 0);

  /* unl-m */
  char mf[64];
  snprintf(mf, sizeof(mf), "/proc/self/map_files/%lx-%lx", (unsigned long)shared,
           (unsigned long)(shared + kMPages * kPage));
  int fm2 = open(mf, O_RDONLY | O_CLOEXEC);
  if (fm2 < 0) {
    zdtm_fail_note("unl-m: open %s: %s", mf, strerror(errno));
  } else {
    ExpectUnlinked("unl-m (shared mapping)", fm2, "unl-m", kMPages * kPage);
    if (pread(fm2, buf, kMPages * kPage, 0) != kMPages * kPage) {
      zdtm_fail_note("unl-m: pread: %s", strerror(errno));
    } else {
      zdtm_pattern_check("unl-m file pages 0-3", buf, 4 * kPage, kSeedShared, 0);
      zdtm_pattern_check("unl-m file pages 4-15", buf + 4 * kPage, 12 * kPage, kSeedM, 4 * kPage);
    }
    close(fm2);
  }
  zdtm_pattern_check("unl-m shared mapping pages 0-3", shared, 4 * kPage, kSeedShared, 0);
  zdtm_pattern_check("unl-m shared mapping pages 4-15", shared + 4 * kPage, 12 * kPage, kSeedM,
                     4 * kPage);
  zdtm_pattern_check("unl-m private mapping pages 0-1 (the file's)", priv, 2 * kPage, kSeedShared,
                     0);
  zdtm_pattern_check("unl-m private mapping pages 2-5 (its own)", priv + 2 * kPage, 4 * kPage,
                     kSeedPrivate, 2 * kPage);
  zdtm_pattern_check("unl-m private mapping pages 6-15 (the file's)", priv + 6 * kPage, 10 * kPage,
                     kSeedM, 6 * kPage);
  zdtm_pattern_fill(shared + 10 * kPage, kPage, kSeedLate, 10 * kPage);
  zdtm_pattern_check("unl-m private mapping page 10 after a write through the shared one",
                     priv + 10 * kPage, kPage, kSeedLate, 10 * kPage);

  /* unl-s: the child's fd is the same open file. */
  ExpectUnlinked("unl-s", fs, "unl-s", kSSize);
  long same = syscall(SYS_kcmp, getpid(), kid, KCMP_FILE, fs, fs);
  if (same != 0)
    zdtm_fail_note("unl-s: kcmp says parent and child fds are %s",
                   same < 0 ? strerror(errno) : "different files");
  zdtm_pattern_fill(buf, kMsg, kSeedParent, 0);
  if (!zdtm_write_full(fs, buf, kMsg)) zdtm_fail_note("unl-s: write: %s", strerror(errno));
  if (write(go[1], "g", 1) != 1) zdtm_fail_note("write to the child: %s", strerror(errno));
  char c;
  if (zdtm_read_full(done[0], &c, 1, 10000) != 1) {
    zdtm_fail_note("unl-s: no word from the child");
  } else {
    pos = lseek(fs, 0, SEEK_CUR);
    if (pos != kSPos + 2 * kMsg)
      zdtm_fail_note("unl-s: offset %jd after the child's write, want %d", (intmax_t)pos,
                     kSPos + 2 * kMsg);
    if (pread(fs, buf, kMsg, kSPos + kMsg) != kMsg)
      zdtm_fail_note("unl-s: pread: %s", strerror(errno));
    else
      zdtm_pattern_check("unl-s: the child's write", buf, kMsg, kSeedChild, 0);
  }
  zdtm_kid_collect(verdict[0], "child", 10000);
  zdtm_kid_reap(kid, "child", 5000);
  free(buf);
  zdtm_finish();
}

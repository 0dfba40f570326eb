/* files: regular files in every access mode, at known offsets, with status
 * flags and FD_CLOEXEC; dup'ed fds that share one offset; a directory stream
 * read halfway; /dev/null, /dev/zero, /dev/full and /dev/urandom.
 *
 * Files (in the test's folder, contents from a seed per file):
 *   ro.dat  O_RDONLY at offset 12345
 *   wo.dat  O_WRONLY|O_CLOEXEC at 3000 (5000 bytes written)
 *   rw.dat  O_RDWR|O_NONBLOCK|O_NOATIME at 4096, dup()ed (same offset, no
 *           FD_CLOEXEC) and F_DUPFD_CLOEXEC'ed to fd 40 (same offset, FD_CLOEXEC);
 *           opened a second time O_RDONLY at 100 (its own offset)
 *   ap.dat  O_WRONLY|O_APPEND at offset 10 with 777 bytes
 *   dir/    3000 entries; a DIR stream has returned half of them
 *
 * Check: offsets; flags (F_GETFL, F_GETFD); each fd is the same inode as its
 * path; reading at the offset gives the seed's bytes; a write through the dup
 * moves the offset seen through rw.dat and fd 40 but not the second open;
 * wo.dat takes a write at 3000 and cannot be read; O_APPEND writes land at
 * the end; the directory stream returns exactly the entries it had not
 * returned yet; the devices behave; /proc/self/fd lists exactly our fds. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum {
  kRoSize = 65536,
  kRoPos = 12345,
  kWoSize = 5000,
  kWoPos = 3000,
  kRwSize = 8192,
  kRwPos = 4096,
  kRw2Pos = 100,
  kApSize = 777,
  kApPos = 10,
  kDupFd = 40,
  kDirEntries = 3000
};
static const uint64_t kSeedRo = 0x726f2e646174ULL, kSeedWo = 0x776f2e646174ULL,
                      kSeedRw = 0x72772e646174ULL, kSeedAp = 0x61702e646174ULL,
                      kSeedLate = 0x6c617465ULL;

struct Fd {
  const char *what;
  const char *path; /* NULL: no path to compare */
  int fd;
  int flags;   /* expected F_GETFL & kFlagMask */
  int cloexec; /* expected FD_CLOEXEC */
};
static const int kFlagMask = O_ACCMODE | O_APPEND | O_NONBLOCK | O_NOATIME | O_DIRECTORY;

static struct Fd fds[16];
static int nfds;
static unsigned char seen[kDirEntries];
static int seen_dots;

static int Open(const char *what, const char *path, int flags, int cloexec_expected,
                int flags_expected) {
  int fd = open(path, flags, 0644);
  if (fd < 0) zdtm_die("open %s: %s", path, strerror(errno));
  fds[nfds++] = (struct Fd){what, path, fd, flags_expected, cloexec_expected};
  return fd;
}

static void WriteFile(const char *path, size_t size, uint64_t seed) {
  char *buf = malloc(size);
  zdtm_pattern_fill(buf, size, seed, 0);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || !zdtm_write_full(fd, buf, size) || close(fd) != 0)
    zdtm_die("write %s: %s", path, strerror(errno));
  free(buf);
}

static void DirName(int i, char *out, size_t size) {
  snprintf(out, size, "entry-%05d-padding-to-make-names-long-enough", i);
}

/* Reads entries of d; each one named like DirName marks seen[]. Stops after
 * `limit` entries (or at the end). Returns the number read. */
static int ReadDir(DIR *d, int limit) {
  int n = 0;
  struct dirent *e;
  while (n < limit && (errno = 0, e = readdir(d)) != NULL) {
    n++;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
      seen_dots++;
      continue;
    }
    int i;
    if (sscanf(e->d_name, "entry-%05d-", &i) != 1 || i < 0 || i >= kDirEntries) {
      zdtm_fail_note("dir: unexpected entry '%s'", e->d_name);
      continue;
    }
    if (seen[i]++) zdtm_fail_note("dir: entry %d returned twice", i);
  }
  if (!e && errno) zdtm_fail_note("dir: readdir: %s", strerror(errno));
  return n;
}

static off_t Pos(int fd) { return lseek(fd, 0, SEEK_CUR); }

static void ExpectPos(const char *what, int fd, off_t want) {
  off_t pos = Pos(fd);
  if (pos != want)
    zdtm_fail_note("%s: offset %jd, want %jd%s%s", what, (intmax_t)pos, (intmax_t)want,
                   pos < 0 ? ": " : "", pos < 0 ? strerror(errno) : "");
}

static void CheckFlagsAndIdentity(void) {
  for (int i = 0; i < nfds; i++) {
    const struct Fd *f = &fds[i];
    int fl = fcntl(f->fd, F_GETFL), fdfl = fcntl(f->fd, F_GETFD);
    if (fl < 0 || fdfl < 0) {
      zdtm_fail_note("%s: fd %d: fcntl: %s", f->what, f->fd, strerror(errno));
      continue;
    }
    if ((fl & kFlagMask) != f->flags)
      zdtm_fail_note("%s: fd %d: status flags %#o, want %#o", f->what, f->fd, fl & kFlagMask,
                     f->flags);
    if (!!(fdfl & FD_CLOEXEC) != f->cloexec)
      zdtm_fail_note("%s: fd %d: FD_CLOEXEC is %d, want %d", f->what, f->fd, !!(fdfl & FD_CLOEXEC),
                     f->cloexec);
    if (!f->path) continue;
    struct stat a, b;
    if (fstat(f->fd, &a) != 0 || stat(f->path, &b) != 0) {
      zdtm_fail_note("%s: stat: %s", f->what, strerror(errno));
      continue;
    }
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino || a.st_rdev != b.st_rdev)
      zdtm_fail_note("%s: fd %d is not %s (inode %ju, path has %ju)", f->what, f->fd, f->path,
                     (uintmax_t)a.st_ino, (uintmax_t)b.st_ino);
  }
}

/* /proc/self/fd must list exactly our fds (and the one reading it). */
static void CheckFdList(int dir_fd) {
  char want[1024] = {0};
  want[0] = want[1] = want[2] = 1;
  want[dir_fd] = 1;
  for (int i = 0; i < nfds; i++) want[fds[i].fd] = 1;
  DIR *d = opendir("/proc/self/fd");
  if (!d) {
    zdtm_fail_note("opendir /proc/self/fd: %s", strerror(errno));
    return;
  }
  char have[1024] = {0};
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    int fd = atoi(e->d_name);
    if (fd == dirfd(d)) continue;
    if (fd < 0 || fd >= 1024 || !want[fd]) {
      char target[256] = "?";
      char link[300];
      snprintf(link, sizeof(link), "/proc/self/fd/%s", e->d_name);
      ssize_t n = readlink(link, target, sizeof(target) - 1);
      if (n > 0) target[n] = 0;
      zdtm_fail_note("extra fd %s -> %s", e->d_name, target);
      continue;
    }
    have[fd] = 1;
  }
  closedir(d);
  for (int fd = 0; fd < 1024; fd++)
    if (want[fd] && !have[fd]) zdtm_fail_note("fd %d is missing", fd);
}

int main(void) {
  zdtm_init("files");
  WriteFile("ro.dat", kRoSize, kSeedRo);
  WriteFile("rw.dat", kRwSize, kSeedRw);

  int ro = Open("ro.dat", "ro.dat", O_RDONLY, 0, O_RDONLY);
  int wo = Open("wo.dat", "wo.dat", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 1, O_WRONLY);
  int rw =
      Open("rw.dat", "rw.dat", O_RDWR | O_NONBLOCK | O_NOATIME, 0, O_RDWR | O_NONBLOCK | O_NOATIME);
  int rw2 = Open("rw.dat second open", "rw.dat", O_RDONLY | O_CLOEXEC, 1, O_RDONLY);
  int ap =
      Open("ap.dat", "ap.dat", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0, O_WRONLY | O_APPEND);
  int dup_fd = dup(rw);
  int dup40 = fcntl(rw, F_DUPFD_CLOEXEC, kDupFd);
  if (dup_fd < 0 || dup40 != kDupFd) zdtm_die("dup: %s", strerror(errno));
  fds[nfds++] = (struct Fd){"rw.dat dup", "rw.dat", dup_fd, O_RDWR | O_NONBLOCK | O_NOATIME, 0};
  fds[nfds++] = (struct Fd){"rw.dat fd 40", "rw.dat", dup40, O_RDWR | O_NONBLOCK | O_NOATIME, 1};
  int dnull = Open("/dev/null", "/dev/null", O_RDWR, 0, O_RDWR);
  int dzero = Open("/dev/zero", "/dev/zero", O_RDONLY, 0, O_RDONLY);
  int dfull = Open("/dev/full", "/dev/full", O_WRONLY | O_CLOEXEC, 1, O_WRONLY);
  int drand = Open("/dev/urandom", "/dev/urandom", O_RDONLY | O_NONBLOCK, 0, O_RDONLY | O_NONBLOCK);

  char *buf = malloc(kRoSize);
  zdtm_pattern_fill(buf, kWoSize, kSeedWo, 0);
  if (!zdtm_write_full(wo, buf, kWoSize)) zdtm_die("write wo.dat: %s", strerror(errno));
  zdtm_pattern_fill(buf, kApSize, kSeedAp, 0);
  if (!zdtm_write_full(ap, buf, kApSize)) zdtm_die("write ap.dat: %s", strerror(errno));
  if (lseek(ro, kRoPos, SEEK_SET) != kRoPos || lseek(wo, kWoPos, SEEK_SET) != kWoPos ||
      lseek(dup_fd, kRwPos, SEEK_SET) != kRwPos || lseek(rw2, kRw2Pos, SEEK_SET) != kRw2Pos ||
      lseek(ap, kApPos, SEEK_SET) != kApPos)
    zdtm_die("lseek: %s", strerror(errno));

  if (mkdir("dir", 0755) != 0) zdtm_die("mkdir dir: %s", strerror(errno));
  for (int i = 0; i < kDirEntries; i++) {
    char name[128], path[160];
    DirName(i, name, sizeof(name));
    snprintf(path, sizeof(path), "dir/%s", name);
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) zdtm_die("create %s: %s", path, strerror(errno));
    close(fd);
  }
  DIR *dir = opendir("dir");
  if (!dir) zdtm_die("opendir dir: %s", strerror(errno));
  int dir_fd = dirfd(dir);
  fds[nfds++] = (struct Fd){"dir stream", "dir", dir_fd, O_RDONLY | O_NONBLOCK | O_DIRECTORY, 1};
  int first_half = ReadDir(dir, (kDirEntries + 2) / 2);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) lseek(ro, 1, SEEK_CUR);

  CheckFlagsAndIdentity();

  /* ro.dat: at its offset, the seed's bytes follow. */
  ExpectPos("ro.dat", ro, kRoPos);
  ssize_t n = read(ro, buf, 1000);
  if (n != 1000)
    zdtm_fail_note("ro.dat: read returned %zd (%s)", n, n < 0 ? strerror(errno) : "short");
  else
    zdtm_pattern_check("ro.dat at 12345", buf, 1000, kSeedRo, kRoPos);
  if (write(ro, "x", 1) != -1 || errno != EBADF)
    zdtm_fail_note("ro.dat: a write did not fail with EBADF");

  /* wo.dat: write-only, a write lands at 3000. */
  ExpectPos("wo.dat", wo, kWoPos);
  if (read(wo, buf, 1) != -1 || errno != EBADF)
    zdtm_fail_note("wo.dat: a read did not fail with EBADF");
  zdtm_pattern_fill(buf, 100, kSeedLate, 0);
  if (!zdtm_write_full(wo, buf, 100)) zdtm_fail_note("wo.dat: write: %s", strerror(errno));
  int check = open("wo.dat", O_RDONLY | O_CLOEXEC);
  if (check < 0 || pread(check, buf, kWoSize, 0) != kWoSize) {
    zdtm_fail_note("wo.dat: read back: %s", strerror(errno));
  } else {
    zdtm_pattern_check("wo.dat before 3000", buf, kWoPos, kSeedWo, 0);
    zdtm_pattern_check("wo.dat write at 3000", buf + kWoPos, 100, kSeedLate, 0);
    zdtm_pattern_check("wo.dat after 3100", buf + kWoPos + 100, kWoSize - kWoPos - 100, kSeedWo,
                       kWoPos + 100);
  }
  if (check >= 0) close(check);

  /* rw.dat: three fds share one offset, the second open has its own. */
  ExpectPos("rw.dat", rw, kRwPos);
  ExpectPos("rw.dat dup", dup_fd, kRwPos);
  ExpectPos("rw.dat fd 40", dup40, kRwPos);
  ExpectPos("rw.dat second open", rw2, kRw2Pos);
  zdtm_pattern_fill(buf, 100, kSeedLate, 1);
  if (!zdtm_write_full(dup_fd, buf, 100)) zdtm_fail_note("rw.dat dup: write: %s", strerror(errno));
  ExpectPos("rw.dat after 100 bytes written through the dup", rw, kRwPos + 100);
  if (lseek(dup40, -100, SEEK_CUR) != kRwPos)
    zdtm_fail_note("rw.dat fd 40: lseek back did not reach %d", kRwPos);
  n = read(rw, buf, 200);
  if (n != 200) {
    zdtm_fail_note("rw.dat: read returned %zd (%s)", n, n < 0 ? strerror(errno) : "short");
  } else {
    zdtm_pattern_check("rw.dat: the dup's write read through rw", buf, 100, kSeedLate, 1);
    zdtm_pattern_check("rw.dat after the write", buf + 100, 100, kSeedRw, kRwPos + 100);
  }
  ExpectPos("rw.dat second open after the others moved", rw2, kRw2Pos);
  n = read(rw2, buf, 50);
  if (n != 50)
    zdtm_fail_note("rw.dat second open: read returned %zd", n);
  else
    zdtm_pattern_check("rw.dat second open at 100", buf, 50, kSeedRw, kRw2Pos);

  /* ap.dat: offset 10, but O_APPEND writes go to the end. */
  ExpectPos("ap.dat", ap, kApPos);
  zdtm_pattern_fill(buf, 23, kSeedLate, 2);
  if (!zdtm_write_full(ap, buf, 23)) zdtm_fail_note("ap.dat: write: %s", strerror(errno));
  ExpectPos("ap.dat after an append", ap, kApSize + 23);
  struct stat st;
  if (stat("ap.dat", &st) != 0 || st.st_size != kApSize + 23)
    zdtm_fail_note("ap.dat: size %jd, want %d", (intmax_t)st.st_size, kApSize + 23);
  check = open("ap.dat", O_RDONLY | O_CLOEXEC);
  if (check < 0 || pread(check, buf, kApSize + 23, 0) != kApSize + 23) {
    zdtm_fail_note("ap.dat: read back: %s", strerror(errno));
  } else {
    zdtm_pattern_check("ap.dat", buf, kApSize, kSeedAp, 0);
    zdtm_pattern_check("ap.dat appended", buf + kApSize, 23, kSeedLate, 2);
  }
  if (check >= 0) close(check);

  /* The directory stream goes on where it stopped. */
  int second_half = ReadDir(dir, kDirEntries + 10);
  if (first_half + second_half != kDirEntries + 2)
    zdtm_fail_note("dir: %d + %d entries read, want %d", first_half, second_half, kDirEntries + 2);
  if (seen_dots != 2) zdtm_fail_note("dir: '.' and '..' came %d times, want 2", seen_dots);
  int missing = 0;
  for (int i = 0; i < kDirEntries; i++) missing += !seen[i];
  if (missing) zdtm_fail_note("dir: %d entries never returned", missing);

  /* Devices. */
  struct {
    const char *what;
    int fd;
    unsigned minor;
  } devs[] = {{"/dev/null", dnull, 3},
              {"/dev/zero", dzero, 5},
              {"/dev/full", dfull, 7},
              {"/dev/urandom", drand, 9}};
  for (size_t i = 0; i < sizeof(devs) / sizeof(devs[0]); i++) {
    if (fstat(devs[i].fd, &st) != 0 || !S_ISCHR(st.st_mode) || major(st.st_rdev) != 1 ||
        minor(st.st_rdev) != devs[i].minor)
      zdtm_fail_note("%s: fd %d is not the character device 1:%u", devs[i].what, devs[i].fd,
                     devs[i].minor);
  }
  if (write(dnull, buf, 10) != 10) zdtm_fail_note("/dev/null: write failed");
  if (read(dnull, buf, 10) != 0) zdtm_fail_note("/dev/null: read did not return 0");
  memset(buf, 0x5a, 4096);
  if (read(dzero, buf, 4096) != 4096) zdtm_fail_note("/dev/zero: read failed");
  for (int i = 0; i < 4096; i++) {
    if (buf[i] != 0) {
      zdtm_fail_note("/dev/zero: byte %d is %#x", i, buf[i]);
      break;
    }
  }
  if (write(dfull, buf, 1) != -1 || errno != ENOSPC)
    zdtm_fail_note("/dev/full: write did not fail with ENOSPC");
  uint64_t r1[4] = {0}, r2[4] = {0};
  if (read(drand, r1, sizeof(r1)) != sizeof(r1) || read(drand, r2, sizeof(r2)) != sizeof(r2))
    zdtm_fail_note("/dev/urandom: read: %s", strerror(errno));
  else if (memcmp(r1, r2, sizeof(r1)) == 0 || (r1[0] | r1[1] | r1[2] | r1[3]) == 0)
    zdtm_fail_note("/dev/urandom: two reads gave the same or zero bytes");

  CheckFdList(dir_fd);
  closedir(dir);
  free(buf);
  zdtm_finish();
}

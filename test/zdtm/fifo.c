/* fifo: named FIFOs (mkfifo) open in the tree, with data inside.
 *
 *   fifo1  root holds the write end, child K the read end (opened
 *          O_NONBLOCK, then made blocking); 5000 bytes inside
 *   fifo3  root holds it open O_RDWR, 100 bytes inside
 *   fifo2  root holds both ends, 777 bytes inside, then the FIFO is unlinked
 *
 * Check: every fd is still a FIFO, fifo1 and fifo3 the very one at their path
 * (same inode as stat(path)), fifo2 unlinked (st_nlink 0, no name);
 * the data in order, then data written after the restart; K sees EOF once
 * the root closes the only write end; the read end's flags. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum { k1Size = 5000, k1More = 300, k2Size = 777, k3Size = 100 };
static const uint64_t kSeed1 = 0xf1f0, kSeed2 = 0xf2f0, kSeed3 = 0xf3f0, kSeedLate = 0x1a7e;

static void Drain(int fd, size_t size, uint64_t seed, const char *what) {
  char buf[k1Size];
  size_t got = zdtm_read_full(fd, buf, size, 10000);
  if (got != size)
    zdtm_fail_note("%s: read %zu of %zu bytes (%s)", what, got, size,
                   errno ? strerror(errno) : "EOF");
  else
    zdtm_pattern_check(what, buf, size, seed, 0);
}

static void Fill(int fd, size_t size, uint64_t seed, const char *what) {
  char buf[k1Size];
  zdtm_pattern_fill(buf, size, seed, 0);
  if (!zdtm_write_full(fd, buf, size)) zdtm_fail_note("%s: write: %s", what, strerror(errno));
}

/* fd is a FIFO; if path, the FIFO at path; else an unlinked one. */
static void ExpectFifo(const char *what, int fd, const char *path, const char *name) {
  struct stat a, b;
  if (fstat(fd, &a) != 0) {
    zdtm_fail_note("%s: fstat: %s", what, strerror(errno));
    return;
  }
  if (!S_ISFIFO(a.st_mode))
    zdtm_fail_note("%s: fd %d is not a FIFO (mode %#o)", what, fd, a.st_mode);
  if (path) {
    if (stat(path, &b) != 0)
      zdtm_fail_note("%s: stat %s: %s", what, path, strerror(errno));
    else if (a.st_dev != b.st_dev || a.st_ino != b.st_ino)
      zdtm_fail_note("%s: fd %d is inode %ju, %s is %ju", what, fd, (uintmax_t)a.st_ino, path,
                     (uintmax_t)b.st_ino);
  } else {
    if (a.st_nlink != 0) zdtm_fail_note("%s: st_nlink %ju, want 0", what, (uintmax_t)a.st_nlink);
    if (access(name, F_OK) == 0) zdtm_fail_note("%s: the name %s exists again", what, name);
  }
}

static int Open(const char *path, int flags) {
  int fd = open(path, flags);
  if (fd < 0) zdtm_die("open %s: %s", path, strerror(errno));
  return fd;
}

int main(void) {
  zdtm_init("fifo");
  if (mkfifo("fifo1", 0600) != 0 || mkfifo("fifo2", 0600) != 0 || mkfifo("fifo3", 0600) != 0)
    zdtm_die("mkfifo: %s", strerror(errno));
  int r1 = Open("fifo1", O_RDONLY | O_NONBLOCK);
  int w1 = Open("fifo1", O_WRONLY);
  if (fcntl(r1, F_SETFL, 0) != 0) zdtm_die("fcntl: %s", strerror(errno));
  int r2 = Open("fifo2", O_RDONLY | O_NONBLOCK);
  int w2 = Open("fifo2", O_WRONLY | O_CLOEXEC);
  int rw3 = Open("fifo3", O_RDWR);
  Fill(w1, k1Size, kSeed1, "fifo1");
  Fill(w2, k2Size, kSeed2, "fifo2");
  Fill(rw3, k3Size, kSeed3, "fifo3");
  if (unlink("fifo2") != 0) zdtm_die("unlink fifo2: %s", strerror(errno));
  int verdict[2];
  if (pipe2(verdict, O_CLOEXEC) != 0) zdtm_die("pipe: %s", strerror(errno));
  if (zdtm_failed()) zdtm_finish();

  pid_t kid = zdtm_fork();
  if (kid == 0) {
    close(w1);
    close(r2);
    close(w2);
    close(rw3);
    close(verdict[0]);
    zdtm_wait_check();
    ExpectFifo("fifo1 read end in the child", r1, "fifo1", NULL);
    int fl = fcntl(r1, F_GETFL);
    if ((fl & (O_ACCMODE | O_NONBLOCK)) != O_RDONLY)
      zdtm_fail_note("fifo1 read end: flags %#o, want O_RDONLY without O_NONBLOCK", fl);
    Drain(r1, k1Size, kSeed1, "fifo1 in the child");
    Drain(r1, k1More, kSeedLate, "fifo1 in the child, written after the restart");
    char x;
    ssize_t n = read(r1, &x, 1);
    if (n != 0) zdtm_fail_note("fifo1 in the child: no EOF after the root closed it (read %zd)", n);
    zdtm_kid_finish(verdict[1]);
  }
  close(r1);
  close(verdict[1]);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) {
    char x;
    if (read(r2, &x, 1) != 1) zdtm_die("read: %s", strerror(errno));
  }
  ExpectFifo("fifo1 write end", w1, "fifo1", NULL);
  ExpectFifo("fifo3", rw3, "fifo3", NULL);
  ExpectFifo("fifo2 read end", r2, NULL, "fifo2");
  ExpectFifo("fifo2 write end", w2, NULL, "fifo2");
  struct stat a, b;
  if (fstat(r2, &a) == 0 && fstat(w2, &b) == 0 && (a.st_ino != b.st_ino || a.st_dev != b.st_dev))
    zdtm_fail_note("fifo2: the read end and the write end are different FIFOs");
  int fl = fcntl(r2, F_GETFL);
  if ((fl & (O_ACCMODE | O_NONBLOCK)) != (O_RDONLY | O_NONBLOCK))
    zdtm_fail_note("fifo2 read end: flags %#o, want O_RDONLY|O_NONBLOCK", fl);
  fl = fcntl(rw3, F_GETFL);
  if ((fl & O_ACCMODE) != O_RDWR) zdtm_fail_note("fifo3: flags %#o, want O_RDWR", fl);

  int n = -1;
  if (ioctl(r2, FIONREAD, &n) != 0 || n != k2Size)
    zdtm_fail_note("fifo2: FIONREAD says %d bytes, want %d", n, k2Size);
  Drain(r2, k2Size, kSeed2, "fifo2 (unlinked)");
  Fill(w2, 50, kSeedLate, "fifo2");
  Drain(r2, 50, kSeedLate, "fifo2 (unlinked), written after the restart");
  Drain(rw3, k3Size, kSeed3, "fifo3 (O_RDWR)");
  Fill(rw3, 60, kSeedLate, "fifo3");
  Drain(rw3, 60, kSeedLate, "fifo3 (O_RDWR), written after the restart");

  Fill(w1, k1More, kSeedLate, "fifo1");
  close(w1);
  zdtm_kid_collect(verdict[0], "child (fifo1 reader)", 10000);
  zdtm_kid_reap(kid, "child", 5000);
  zdtm_finish();
}

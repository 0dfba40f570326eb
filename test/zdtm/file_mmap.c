/* file_mmap: files mapped MAP_SHARED and MAP_PRIVATE (fds closed).
 *
 *   shared.dat   32 pages, mapped MAP_SHARED read-write; pages 4-7 written
 *                through the mapping before READY
 *   private.dat  32 pages, mapped MAP_PRIVATE read-write; pages 8-11 written
 *                (copied on write), pages 0-3 only read, the rest untouched
 *
 * Check: shared.dat on disk (pread through a new fd) holds the writes to
 * pages 4-7 and the mapping agrees; a write through the mapping after the
 * restart reaches the file. The private mapping shows its own pages 8-11 and
 * the file's bytes elsewhere, and private.dat is unchanged; a pwrite to the
 * file at the untouched page 20 shows in the private mapping (pages never
 * written still come from the file) while page 9 keeps its private bytes. */
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

enum { kPage = 4096, kPages = 32, kSize = kPages * kPage };
static const uint64_t kSeedShared = 0x5a5ed, kSeedPrivate = 0x9a1f, kSeedW = 0x3a1e,
                      kSeedQ = 0xc0c0, kSeedLate = 0x1a7e, kSeedLateFile = 0x1a7ef;

static uint8_t *MapFile(const char *path, uint64_t seed, int flags) {
  uint8_t *buf = malloc(kSize);
  zdtm_pattern_fill(buf, kSize, seed, 0);
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0 || !zdtm_write_full(fd, buf, kSize)) zdtm_die("write %s: %s", path, strerror(errno));
  uint8_t *m = mmap(NULL, kSize, PROT_READ | PROT_WRITE, flags, fd, 0);
  if (m == MAP_FAILED) zdtm_die("mmap %s: %s", path, strerror(errno));
  close(fd);
  free(buf);
  return m;
}

static void ReadFile(const char *path, uint8_t *buf) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || pread(fd, buf, kSize, 0) != kSize) {
    zdtm_fail_note("read %s: %s", path, strerror(errno));
    memset(buf, 0, kSize);
  }
  if (fd >= 0) close(fd);
}

int main(void) {
  zdtm_init("file_mmap");
  uint8_t *shared = MapFile("shared.dat", kSeedShared, MAP_SHARED);
  uint8_t *priv = MapFile("private.dat", kSeedPrivate, MAP_PRIVATE);
  zdtm_pattern_fill(shared + 4 * kPage, 4 * kPage, kSeedW, 4 * kPage);
  zdtm_pattern_fill(priv + 8 * kPage, 4 * kPage, kSeedQ, 8 * kPage);
  volatile uint8_t sink = 0;
  for (int p = 0; p < 4; p++) sink += priv[p * kPage + 7];
  (void)sink;
  uint8_t *file = malloc(kSize);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) {
    int fd = open("private.dat", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || pwrite(fd, "X", 1, 9 * kPage) != 1) zdtm_die("corrupt: %s", strerror(errno));
    close(fd);
  }

  ReadFile("shared.dat", file);
  zdtm_pattern_check("shared.dat pages 0-3", file, 4 * kPage, kSeedShared, 0);
  zdtm_pattern_check("shared.dat pages 4-7 (written through the mapping)", file + 4 * kPage,
                     4 * kPage, kSeedW, 4 * kPage);
  zdtm_pattern_check("shared.dat pages 8-31", file + 8 * kPage, 24 * kPage, kSeedShared, 8 * kPage);
  if (memcmp(file, shared, kSize) != 0)
    zdtm_fail_note("the MAP_SHARED mapping differs from shared.dat");
  zdtm_pattern_fill(shared + 20 * kPage, kPage, kSeedLate, 0);
  ReadFile("shared.dat", file);
  zdtm_pattern_check("shared.dat page 20 after a write through the mapping", file + 20 * kPage,
                     kPage, kSeedLate, 0);

  zdtm_pattern_check("private mapping pages 0-7", priv, 8 * kPage, kSeedPrivate, 0);
  zdtm_pattern_check("private mapping pages 8-11 (its own)", priv + 8 * kPage, 4 * kPage, kSeedQ,
                     8 * kPage);
  zdtm_pattern_check("private mapping pages 12-31", priv + 12 * kPage, 20 * kPage, kSeedPrivate,
                     12 * kPage);
  ReadFile("private.dat", file);
  zdtm_pattern_check("private.dat (unchanged by the private writes)", file, kSize, kSeedPrivate, 0);
  zdtm_pattern_fill(file, kPage, kSeedLateFile, 0);
  int fd = open("private.dat", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || pwrite(fd, file, kPage, 20 * kPage) != kPage ||
      pwrite(fd, file, kPage, 9 * kPage) != kPage)
    zdtm_fail_note("pwrite private.dat: %s", strerror(errno));
  if (fd >= 0) close(fd);
  zdtm_pattern_check("private mapping page 20 (untouched) after a write to the file",
                     priv + 20 * kPage, kPage, kSeedLateFile, 0);
  zdtm_pattern_check("private mapping page 9 (its own) after a write to the file", priv + 9 * kPage,
                     kPage, kSeedQ, 9 * kPage);
  free(file);
  zdtm_finish();
}

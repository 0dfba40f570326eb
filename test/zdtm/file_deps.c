/* file_deps DIR: files a restart depends on, for the tests of changed,
 * vanished and moved files (zdtm.py file_deps).
 *
 * In DIR it opens "data" read-only and reads 3 bytes of it (offset
 * 3), maps "mapped" MAP_PRIVATE read-only, and changes into "sub". Check:
 * the next 3 bytes read are "def", the mapping starts with "MAPPED", and the
 * working directory is a folder named "sub" holding the marker "here". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "zdtm.h"

int main(int argc, char **argv) {
  zdtm_init("file_deps");
  if (argc < 2 || chdir(argv[1]) != 0) zdtm_die("usage: file_deps DIR");
  int fd = open("data", O_RDONLY);
  char buf[8] = {0};
  if (fd < 0 || read(fd, buf, 3) != 3 || memcmp(buf, "abc", 3) != 0)
    zdtm_die("data: %s", strerror(errno));
  int mfd = open("mapped", O_RDONLY);
  char *map = mfd >= 0 ? mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, mfd, 0) : MAP_FAILED;
  if (map == MAP_FAILED) zdtm_die("mapped: %s", strerror(errno));
  close(mfd);
  if (chdir("sub") != 0) zdtm_die("chdir sub: %s", strerror(errno));
  zdtm_ready();

  zdtm_wait_check();
  memset(buf, 0, sizeof buf);
  if (read(fd, buf, 3) != 3 || memcmp(buf, "def", 3) != 0)
    zdtm_fail_note("data: read '%s' at offset 3, want 'def'", buf);
  if (memcmp(map, "MAPPED", 6) != 0)
    zdtm_fail_note("the mapping starts with '%.6s', want 'MAPPED'", map);
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd) || strcmp(strrchr(cwd, '/'), "/sub") != 0 ||
      access("here", F_OK) != 0)
    zdtm_fail_note("working directory '%s' is not the sub folder", cwd);
  zdtm_finish();
}

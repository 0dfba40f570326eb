/* shm_kinds: one small segment of each shared memory kind a context holds,
 * for test/golden (make_golden.sh builds and checkpoints it; it never
 * checks anything itself). The parent maps, and a forked child shares:
 *   anon   2 pages MAP_SHARED|MAP_ANONYMOUS, page 0 filled with 'a'
 *   memfd  memfd_create("golden-memfd"), 3 pages, page 1 filled with 'm'
 *   sysv   a private SysV segment of 1 page, filled with 's'
 *   file   a 5000-byte file, mapped shared and unlinked: saved by value
 * then writes "READY <pid>" to $ZDTM_READY and sleeps. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

static void die(const char *what) {
  perror(what);
  exit(1);
}

int main(void) {
  const long page = 4096;
  char *anon = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (anon == MAP_FAILED) die("anon");
  memset(anon, 'a', page);
  int mfd = memfd_create("golden-memfd", 0);
  if (mfd < 0 || ftruncate(mfd, 3 * page) != 0) die("memfd");
  char *mem = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  if (mem == MAP_FAILED) die("memfd mmap");
  memset(mem + page, 'm', page);
  int id = shmget(IPC_PRIVATE, page, IPC_CREAT | 0600);
  char *sysv = id < 0 ? (char *)-1 : shmat(id, NULL, 0);
  if (sysv == (char *)-1) die("shm");
  memset(sysv, 's', page);
  shmctl(id, IPC_RMID, NULL);
  int ffd = open("unlinked", O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (ffd < 0 || ftruncate(ffd, 5000) != 0) die("file");
  char *file = mmap(NULL, 5000, PROT_READ | PROT_WRITE, MAP_SHARED, ffd, 0);
  if (file == MAP_FAILED) die("file mmap");
  memset(file, 'f', 5000);
  unlink("unlinked");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    for (;;) pause();
  }
  const char *ready = getenv("ZDTM_READY");
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", ready);
  FILE *f = fopen(tmp, "w");
  if (!f) die("ready");
  fprintf(f, "READY %d\n", (int)getpid());
  fclose(f);
  if (rename(tmp, ready) != 0) die("rename");
  for (;;) pause();
}

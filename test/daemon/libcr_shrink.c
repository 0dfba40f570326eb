/*
 * A libcr program whose checkpoint callback truncates its own agent block
 * (the memfd "stasis-agent") while the checkpointer waits for it (issue 23,
 * finding 8): libcr seals the block, so the truncation must fail and the
 * checkpoint go on normally.
 *
 *   libcr_shrink LOG
 *
 * Appends "ready PID", then per checkpoint "shrink: ..." and "continue RC"
 * to LOG. Runs until killed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "libcr.h"

static const char *g_log;

static void note(const char *what, long n) {
  FILE *f = fopen(g_log, "a");
  if (!f) return;
  fprintf(f, "%s %ld\n", what, n);
  fclose(f);
}

static int agent_fd(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  struct dirent *e;
  int found = -1;
  while ((e = readdir(d)) != NULL) {
    char path[300], link[256];
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0) continue;
    link[n] = '\0';
    if (strcmp(link, "/memfd:stasis-agent (deleted)") == 0) found = atoi(e->d_name);
  }
  closedir(d);
  return found;
}

static int callback(void *arg) {
  (void)arg;
  int fd = agent_fd();
  if (fd >= 0 && ftruncate(fd, 0) == 0) {
    note("shrink: done", 0);
  } else {
    note(fd < 0           ? "shrink: no block"
         : errno == EPERM ? "shrink: refused EPERM"
                          : "shrink: failed",
         errno);
  }
  int rc = cr_checkpoint(CR_CHECKPOINT_READY);
  note("continue", rc);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) return 2;
  g_log = argv[1];
  if (cr_init() < 0) return 1;
  if (cr_register_callback(callback, NULL, CR_THREAD_CONTEXT) < 0) return 1;
  note("ready", (long)getpid());
  for (;;) pause();
}

/* A BLCR program for the install tier: built against an installed prefix's
 * libcr.h and libcr.pc (pkg-config), run under that prefix's cr_run,
 * checkpointed and restarted by its cr_checkpoint and cr_restart.
 *
 *   libcr_counter OUT LIMIT
 *
 * Says "pid P" first, then counts from 1 to LIMIT, one step every 20 ms, appending "count N" to OUT
 * (opened once, O_APPEND) and keeping a 1 MiB buffer whose bytes depend on
 * the count, checked before every line (exit 3 if wrong). Its libcr
 * callback (cr_register_callback, signal context) appends "checkpoint" and,
 * when the process comes back from a restart, "restarted". Exits 0 after
 * LIMIT. */
#include <fcntl.h>
#include <libcr.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int out_fd = -1;

static void say(const char *line) {
  if (write(out_fd, line, strlen(line)) < 0) _exit(4);
}

static int callback(void *arg) {
  (void)arg;
  say("checkpoint\n");
  int rc = cr_checkpoint(0);
  if (rc > 0) say("restarted\n");
  return 0;
}

static unsigned char fill(long count, size_t i) { return (unsigned char)(count * 31 + i * 7); }

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: libcr_counter OUT LIMIT\n");
    return 2;
  }
  out_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (out_fd < 0) return 2;
  long limit = atol(argv[2]);
  if (cr_init() < 0) {
    say("cr_init failed\n");
    return 5;
  }
  cr_register_callback(callback, NULL, CR_SIGNAL_CONTEXT);
  char first[64];
  snprintf(first, sizeof first, "pid %d\n", (int)getpid());
  say(first);
  size_t size = 1 << 20;
  unsigned char *buf = malloc(size);
  if (!buf) return 2;
  for (long count = 1; count <= limit; ++count) {
    for (size_t i = 0; i < size; ++i) buf[i] = fill(count, i);
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    for (size_t i = 0; i < size; ++i)
      if (buf[i] != fill(count, i)) {
        say("bad memory\n");
        return 3;
      }
    char line[64];
    snprintf(line, sizeof line, "count %ld\n", count);
    say(line);
  }
  say("done\n");
  return 0;
}

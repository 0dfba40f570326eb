/* demo_counter STOPFILE: the program ci/demo.sh checkpoints and restarts.
 * Prints an increasing count four times a second, from memory only, so the
 * count it prints after a restart shows the memory came back; exits 0 once
 * STOPFILE exists. */
#define _GNU_SOURCE
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: demo_counter STOPFILE\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("  [counter pid %d] started\n", (int)getpid());
  unsigned long count = 0;
  while (access(argv[1], F_OK) != 0) {
    printf("  [counter pid %d] count %lu\n", (int)getpid(), ++count);
    struct timespec ts = {0, 250 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  printf("  [counter pid %d] stop file seen at count %lu, exiting\n", (int)getpid(), count);
  return 0;
}

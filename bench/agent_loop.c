/* Workloads for bench/agent_overhead.sh: a compute loop and a
 * syscall-heavy loop, timed inside the process. With "init", cr_init() is
 * called first (through dlsym, so the same binary runs without libcr):
 * libcr's agent thread and block then exist for the whole run. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 3) return 2;
  long n = atol(argv[2]);
  if (argc > 3 && strcmp(argv[3], "init") == 0) {
    int (*init)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "cr_init");
    if (!init || init() < 0) {
      fprintf(stderr, "agent_loop: cr_init not available\n");
      return 1;
    }
  }
  double t0 = now();
  if (strcmp(argv[1], "compute") == 0) {
    volatile double x = 1.0;
    double acc = 0;
    for (long i = 0; i < n; ++i) acc += x * 1.0000001 + (double)(i & 7);
    if (acc == 42) puts("");
  } else {
    int fd = open("/dev/null", O_WRONLY);
    char c = 'x';
    for (long i = 0; i < n; ++i) {
      if (write(fd, &c, 1) != 1) return 1;
      (void)getppid();
    }
    close(fd);
  }
  printf("%.6f\n", now() - t0);
  return 0;
}

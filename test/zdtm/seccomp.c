/* seccomp: filters across the checkpoint (needs root to checkpoint).
 *
 * With PR_SET_NO_NEW_PRIVS, two threads; filter A (TSYNC: both threads)
 * makes uname() fail with errno 77, filter B (TSYNC, SECCOMP_FILTER_FLAG_LOG)
 * makes getpgrp() fail with errno 78. Everything else is allowed.
 *
 * Check, in both threads: uname gives -1/77, getpgrp -1/78, getpid works;
 * /proc/self/task/TID/status says Seccomp 2 with 2 filters; NoNewPrivs 1. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "zdtm.h"

static void Install(int nr, int err, unsigned flags) {
  struct sock_filter prog[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog fp = {.len = sizeof prog / sizeof prog[0], .filter = prog};
  if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC | flags, &fp) != 0)
    zdtm_die("seccomp: %s", strerror(errno));
}

static const char *Field(const char *text, const char *key, char *out, size_t n) {
  const char *p = strstr(text, key);
  out[0] = 0;
  if (!p) return out;
  p += strlen(key);
  while (*p == ' ' || *p == '\t') p++;
  size_t i = 0;
  while (p[i] && p[i] != '\n' && i + 1 < n) {
    out[i] = p[i];
    i++;
  }
  out[i] = 0;
  return out;
}

static void Expect(const char *who) {
  struct utsname u;
  errno = 0;
  if (uname(&u) != -1 || errno != 77)
    zdtm_fail_note("%s: uname gave errno %d, want 77", who, errno);
  errno = 0;
  long r = syscall(SYS_getpgrp);
  if (r != -1 || errno != 78)
    zdtm_fail_note("%s: getpgrp gave %ld errno %d, want -1/78", who, r, errno);
  if (syscall(SYS_getpid) != getpid()) zdtm_fail_note("%s: getpid is filtered", who);
  char path[64], text[4096], v[64];
  snprintf(path, sizeof path, "/proc/self/task/%ld/status", (long)syscall(SYS_gettid));
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
  if (f) fclose(f);
  text[n] = 0;
  if (strcmp(Field(text, "Seccomp:", v, sizeof v), "2") != 0)
    zdtm_fail_note("%s: Seccomp %s, want 2", who, v);
  if (strcmp(Field(text, "Seccomp_filters:", v, sizeof v), "2") != 0)
    zdtm_fail_note("%s: Seccomp_filters %s, want 2", who, v);
  if (strcmp(Field(text, "NoNewPrivs:", v, sizeof v), "1") != 0)
    zdtm_fail_note("%s: NoNewPrivs %s, want 1", who, v);
}

static int go[2], done[2];

static void *Thread(void *arg) {
  (void)arg;
  char c;
  if (read(go[0], &c, 1) != 1) return NULL;
  Expect("thread");
  if (write(done[1], "x", 1) != 1) zdtm_fail_note("thread: write");
  return NULL;
}

int main(void) {
  zdtm_init("seccomp");
  if (pipe(go) != 0 || pipe(done) != 0) zdtm_die("pipe: %s", strerror(errno));
  pthread_t t;
  if (pthread_create(&t, NULL, Thread, NULL) != 0) zdtm_die("pthread_create failed");
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) zdtm_die("no_new_privs: %s", strerror(errno));
  Install(SYS_uname, 77, 0);
  Install(SYS_getpgrp, 78, SECCOMP_FILTER_FLAG_LOG);
  zdtm_ready();

  zdtm_wait_check();
  Expect("main");
  if (write(go[1], "x", 1) != 1) zdtm_fail_note("main: write");
  char c;
  if (read(done[0], &c, 1) != 1) zdtm_fail_note("the thread did not finish");
  pthread_join(t, NULL);
  zdtm_finish();
}

/*
 * A hand-made libcr agent, as a hostile user would write one (issue 23):
 * it owns a memfd named "stasis-agent" laid out as engine/agent/agent_abi.h
 * says and answers the checkpointer's requests itself.
 *
 *   agent_attack [--no-seal] [--become UID:GID] LOG MODE [PID...]
 *
 * MODE forward: answers READY, forwarding the checkpoint to each PID
 *               (CR_SCOPE_PROC).
 *      permfail: answers FAILED with CR_EPERMFAIL and state_perm = 1
 *                (BLCR: the checkpointer kills the whole scope).
 *      shrink:   truncates its own block to 0 bytes while the checkpointer
 *                waits for its callbacks, then answers READY if the
 *                truncation failed (a sealed block) and nothing otherwise.
 * --no-seal leaves the memfd unsealed (an old or hostile agent); by default
 * it is sealed as libcr seals it, so the checkpointer uses it.
 * --become (started as root): on a request, changes to UID:GID before
 * answering, as a setuid exec changes credentials in the other direction.
 * Each event is appended to LOG as one line. Runs until killed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "engine/agent/agent_abi.h"
#include "engine/agent/include/blcr_common.h"

static const char *g_log;

static void note(const char *fmt, const char *arg, long n) {
  FILE *f = fopen(g_log, "a");
  if (!f) return;
  fprintf(f, fmt, arg, n);
  fputc('\n', f);
  fclose(f);
}

static uint32_t load(volatile uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

int main(int argc, char **argv) {
  int a = 1, seal = 1;
  const char *become = NULL;
  for (;;) {
    if (a < argc && strcmp(argv[a], "--no-seal") == 0) {
      seal = 0;
      ++a;
    } else if (a + 1 < argc && strcmp(argv[a], "--become") == 0) {
      become = argv[a + 1];
      a += 2;
    } else {
      break;
    }
  }
  if (argc - a < 2) {
    fprintf(stderr,
            "usage: agent_attack [--no-seal] [--become UID:GID] LOG forward|permfail|shrink "
            "[PID...]\n");
    return 2;
  }
  g_log = argv[a];
  const char *mode = argv[a + 1];
  int fd = (int)syscall(SYS_memfd_create, STASIS_AGENT_MEMFD_NAME,
                        MFD_CLOEXEC | (seal ? MFD_ALLOW_SEALING : 0));
  if (fd < 0 || ftruncate(fd, STASIS_AGENT_BLOCK_SIZE) != 0) return 1;
  if (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) return 1;
  struct stasis_agent_block *b =
      mmap(NULL, STASIS_AGENT_BLOCK_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (b == MAP_FAILED) return 1;
  b->magic = STASIS_AGENT_MAGIC;
  b->version = STASIS_AGENT_VERSION;
  b->size = STASIS_AGENT_BLOCK_SIZE;
  b->pid = getpid();
  b->flags = STASIS_AGENT_F_ACTIVE;
  note("ready %s %ld", mode, (long)getpid());
  uint64_t seen = 0;
  for (;;) {
    usleep(1000);
    if (load(&b->cmd) != STASIS_AGENT_CMD_REQUEST || b->seq == seen) {
      uint32_t c = load(&b->cmd);
      if ((c == STASIS_AGENT_CMD_CONTINUE || c == STASIS_AGENT_CMD_ABORT) &&
          load(&b->state) != STASIS_AGENT_ST_IDLE) {
        note("outcome %s %ld", c == STASIS_AGENT_CMD_CONTINUE ? "continue" : "abort",
             (long)b->cmd_code);
        store(&b->state, STASIS_AGENT_ST_IDLE);
      }
      continue;
    }
    seen = b->seq;
    store(&b->state, STASIS_AGENT_ST_RUNNING);
    note("request from %s%ld", "pid ", (long)b->requester);
    if (become) {
      unsigned uid = 0, gid = 0;
      if (sscanf(become, "%u:%u", &uid, &gid) != 2 || setgroups(0, NULL) != 0 ||
          setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
        return 1;
      prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
      note("became %s%ld", "uid ", (long)uid);
    }
    if (strcmp(mode, "forward") == 0) {
      int n = 0;
      for (int i = a + 2; i < argc && n < (int)STASIS_AGENT_MAX_FORWARD; ++i, ++n) {
        b->forward[n].scope = CR_SCOPE_PROC;
        b->forward[n].target = atoi(argv[i]);
      }
      store(&b->nforward, (uint32_t)n);
      note("forwarded to %s%ld pids", "", (long)n);
      store(&b->state, STASIS_AGENT_ST_READY);
    } else if (strcmp(mode, "permfail") == 0) {
      b->state_code = CR_EPERMFAIL;
      b->state_perm = 1;
      store(&b->state, STASIS_AGENT_ST_FAILED);
      note("answered %s %ld", "CR_EPERMFAIL", (long)CR_EPERMFAIL);
    } else if (strcmp(mode, "shrink") == 0) {
      if (ftruncate(fd, 0) == 0) {
        note("shrunk %s %ld", "to", 0L);
        /* Our own mapping is gone too: never touch it again. */
        for (;;) pause();
      }
      note("shrink refused: %s %ld", strerror(errno), (long)errno);
      store(&b->state, STASIS_AGENT_ST_READY);
    }
  }
}

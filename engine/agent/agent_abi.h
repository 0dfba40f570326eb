/*
 * The agent block: the one piece of memory the in-process agent (libcr) and
 * the engine (engine/core) share. It lives in a memfd named "stasis-agent",
 * sealed at its size (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: a
 * checkpointer maps only a block that cannot shrink under it, and the
 * restorer seals the blocks it recreates the same way), mapped
 * MAP_SHARED by the process and held open at a high fd, so a
 * checkpointer that may trace the process can open it through
 * /proc/PID/fd (or /proc/PID/map_files as root), map it and talk to the
 * process with plain loads, stores and futexes. Nothing here runs while no
 * checkpoint is requested: the agent thread sleeps in FUTEX_WAIT on `cmd`.
 *
 * Handshake (one checkpointer at a time, serialised by flock(LOCK_EX) on the
 * memfd, which the kernel drops if the checkpointer dies):
 *   checkpointer                          agent
 *   fill request fields, seq++,
 *   cmd = REQUEST, wake(cmd)  ──────────► defer until no critical section,
 *                                          run callbacks up to cr_checkpoint()
 *   wait(state) ◄──────────────────────── state = READY | OMIT | FAILED
 *   freeze, capture, write
 *   cmd = CONTINUE | ABORT, wake(cmd) ──► callbacks return 0 / -code
 *                                          state = IDLE once all have unwound
 * The restorer writes cmd = RESTART (and the restart fields) into the
 * restored block before any restored thread runs, so the same waits return
 * a positive value in the restarted process.
 *
 * Fixed-width fields only; C and C++ both include this header.
 */
#ifndef STASIS_AGENT_ABI_H
#define STASIS_AGENT_ABI_H

#include <stdint.h>

#define STASIS_AGENT_MEMFD_NAME "stasis-agent"
#define STASIS_AGENT_MAGIC 0x31474153u /* "SAG1" */
#define STASIS_AGENT_VERSION 1u
#define STASIS_AGENT_BLOCK_SIZE 8192u

/* flags */
#define STASIS_AGENT_F_ACTIVE 0x1u             /* an agent thread answers requests */
#define STASIS_AGENT_F_OMIT 0x2u               /* never checkpoint this process */
#define STASIS_AGENT_F_OMIT_UNLESS_TARGET 0x4u /* omit unless it is the request's target */

/* cmd (checkpointer -> agent), a futex word */
#define STASIS_AGENT_CMD_NONE 0u
#define STASIS_AGENT_CMD_REQUEST 1u
#define STASIS_AGENT_CMD_CONTINUE 2u
#define STASIS_AGENT_CMD_RESTART 3u
#define STASIS_AGENT_CMD_ABORT 4u

/* state (agent -> checkpointer), a futex word */
#define STASIS_AGENT_ST_IDLE 0u
#define STASIS_AGENT_ST_RUNNING 1u /* request seen: critical sections, callbacks */
#define STASIS_AGENT_ST_READY 2u   /* every callback is inside cr_checkpoint() */
#define STASIS_AGENT_ST_OMIT 3u    /* CR_CHECKPOINT_OMIT: leave this process out */
#define STASIS_AGENT_ST_FAILED 4u  /* TEMP/PERM failure: state_code, state_perm */

/* req_state: libcr's own cr_request_checkpoint(), a futex word */
#define STASIS_AGENT_REQ_NONE 0u
#define STASIS_AGENT_REQ_PENDING 1u
#define STASIS_AGENT_REQ_DONE 2u
#define STASIS_AGENT_REQ_RESTARTED 3u

/* request_flags */
#define STASIS_AGENT_RQ_FINAL 0x1u /* the job is about to end (preemption, time limit) */

#define STASIS_AGENT_MAX_FORWARD 32u

struct stasis_agent_forward {
  int32_t scope; /* BLCR cr_scope_t value */
  int32_t target;
};

struct stasis_agent_block {
  uint32_t magic;
  uint32_t version;
  uint32_t size;
  int32_t pid; /* the owner, as it sees itself (getpid) */
  uint32_t flags;
  uint32_t signum; /* the agent's signal for signal-context callbacks */

  /* checkpointer -> agent */
  uint32_t cmd;
  int32_t cmd_code; /* ABORT: positive error code */
  uint64_t seq;
  int32_t requester;
  int32_t target;
  int32_t scope;  /* BLCR cr_scope_t value */
  int32_t signal; /* sent after the checkpoint, 0 if none */

  /* agent -> checkpointer */
  uint32_t state;
  int32_t state_code;
  uint32_t state_perm; /* 1: CR_CHECKPOINT_PERM_FAILURE */
  uint32_t nforward;
  struct stasis_agent_forward forward[STASIS_AGENT_MAX_FORWARD];

  /* cr_request_checkpoint(): written by the helper, restorer */
  uint32_t req_state;
  int32_t req_result; /* 0, or a positive error code */
  int32_t req_helper;
  uint32_t restarts; /* how many times this process was restarted */
  int32_t restart_requester;
  uint32_t reserved[7];
  char req_msg[1024];     /* the helper's error message, if any */
  char dest[4096];        /* path of the context file being written */
  char restart_src[2560]; /* path of the context file restored from */

  /* Later additions: zero in the blocks of older agents. */
  uint64_t environ_addr;  /* &environ in the process: a restorer that gives it
                             a new Slurm step's variables rewrites that array
                             too (setenv moved it off the stack) */
  uint32_t request_flags; /* checkpointer -> agent: STASIS_AGENT_RQ_* */
  uint32_t reserved2;
};

#if defined(__cplusplus)
static_assert(sizeof(struct stasis_agent_block) <= STASIS_AGENT_BLOCK_SIZE, "agent block");
#else
_Static_assert(sizeof(struct stasis_agent_block) <= STASIS_AGENT_BLOCK_SIZE, "agent block");
#endif

#endif /* STASIS_AGENT_ABI_H */

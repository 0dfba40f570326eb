/*
 * stasis: BLCR-compatible constants and types shared by <libcr.h> and the
 * tools. Names, values and layouts follow BLCR 0.8's public interface so
 * that code written for BLCR compiles unchanged; the implementation behind
 * them is stasis's own (see docs/libcr.md).
 */
#ifndef _BLCR_COMMON_H
#define _BLCR_COMMON_H 1

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The release of BLCR whose interface this header provides. */
#define CR_RELEASE_MAJOR 0
#define CR_RELEASE_MINOR 8
#define CR_RELEASE_PATCH 5
#define CR_RELEASE_VERSION "0.8.5"
#define LIBCR_MAJOR 0
#define LIBCR_MINOR 5
#define LIBCR_PATCH 5
#define LIBCR_VERSION "0.5.5"

/* The checkpoint signal BLCR reserved. stasis uses a real-time signal of its
 * own (SIGRTMAX-2 unless STASIS_AGENT_SIGNAL says otherwise) and only for
 * threads that registered signal-context callbacks. */
#define CR_SIGNUM 64

/* Error codes beyond errno's range (values as in BLCR). */
enum {
  CR_MIN_ERRCODE = 2353,
  CR_ETEMPFAIL,  /* 2354 a callback cancelled the checkpoint for now */
  CR_EPERMFAIL,  /* 2355 a callback cancelled it and killed the job */
  CR_ENOSUPPORT, /* 2356 not used by stasis: every process can be checkpointed */
  CR_EVERSION,   /* 2357 interface version not supported */
  CR_EOMITTED,   /* 2358 this process was left out at a callback's request */
  CR_EBADARCH,   /* 2359 context file of another architecture */
  CR_EPTRACED,   /* 2360 a target is being traced */
  CR_EPTRACER,   /* 2361 a target traces others */
  CR_ERSTRTABRT, /* 2362 restart aborted */
  CR_ERESTARTED, /* 2363 the request was taken, and this is the restart */
  CR_ENOTCB,     /* 2364 only valid inside a checkpoint callback */
  CR_ENOINIT,    /* 2365 this thread has not called cr_init() */
  CR_MAX_ERRCODE
};

typedef long cr_bool_t;

typedef enum { cr_format_vmadump = 0 } cr_format_t;

/* Scope of a checkpoint request. */
typedef enum {
  CR_SCOPE_PROC, /* one process, all its threads */
  CR_SCOPE_PGRP, /* a process group */
  CR_SCOPE_SESS, /* a session */
  CR_SCOPE_TREE  /* a process and all its descendants */
} cr_scope_t;

/* Flags of cr_checkpoint(), called from a callback. */
enum {
  CR_CHECKPOINT_READY = 0,
  CR_CHECKPOINT_TEMP_FAILURE = 1,
  CR_CHECKPOINT_PERM_FAILURE = 2,
  CR_CHECKPOINT_OMIT = 4,
  _CR_CHECKPOINT_STUB = 0x4000
};
#define CR_CHECKPOINT_TEMP_FAILURE_CODE(_v) (CR_CHECKPOINT_TEMP_FAILURE | ((_v) << 16))
#define CR_CHECKPOINT_PERM_FAILURE_CODE(_v) (CR_CHECKPOINT_PERM_FAILURE | ((_v) << 16))
#define CR_CHECKPOINT_ABORT_MASK \
  (CR_CHECKPOINT_TEMP_FAILURE | CR_CHECKPOINT_PERM_FAILURE | CR_CHECKPOINT_OMIT)

/* cr_fd value: write context.PID in the requester's working directory. */
#define CR_DEST_CWD (-4096)

/* Flags of a checkpoint request (cr_checkpoint_args_t.cr_flags). */
#define CR_CHKPT_PROHIBIT_SELF 0x00000001
#define CR_CHKPT_PTRACED_ALLOW 0x00000002
#define CR_CHKPT_PTRACED_SKIP 0x00000004
#define CR_CHKPT_PTRACER_SKIP 0x00000008
#define CR_CHKPT_ASYNC_ERR 0x00000010
#define CR_CHKPT_DUMP_EXEC 0x0200
#define CR_CHKPT_DUMP_PRIVATE 0x0400
#define CR_CHKPT_DUMP_SHARED 0x0800
#define CR_CHKPT_DUMP_ALL (CR_CHKPT_DUMP_EXEC | CR_CHKPT_DUMP_PRIVATE | CR_CHKPT_DUMP_SHARED)

/* Restart-time path relocation (cr_restart --relocate). */
struct cr_rstrt_relocate_pair {
  const char *oldpath;
  const char *newpath;
};
struct cr_rstrt_relocate {
  unsigned int count;
  struct cr_rstrt_relocate_pair path[16];
};
#define CR_RSTRT_RELOCATE_SIZE(_cnt) \
  (sizeof(unsigned int) + (_cnt) * sizeof(struct cr_rstrt_relocate_pair))
#define CR_MAX_RSTRT_RELOC 16

#define CR_RSTRT_ASYNC_ERR 0x00000001
#define CR_RSTRT_RESTORE_PID 0x00000002
#define CR_RSTRT_RESTORE_PGID 0x00000004
#define CR_RSTRT_RESTORE_SID 0x00000008

/* cr_hold_ctrl() flags. */
#define CR_HOLD_READ -1
#define CR_HOLD_NONE 0
#define CR_HOLD_CONT 1
#define CR_HOLD_RSTRT 2
#define CR_HOLD_BOTH (CR_HOLD_CONT | CR_HOLD_RSTRT)
#define CR_HOLD_DFLT 4

#ifdef __cplusplus
}
#endif

#endif /* _BLCR_COMMON_H */

/*
 * libcr.h: BLCR's application interface, provided by stasis.
 *
 * Source-compatible with BLCR 0.8's <libcr.h>: the same names, types,
 * constants and semantics, so a BLCR-aware code rebuilds with
 *     cc prog.c $(pkg-config --cflags --libs libcr)
 * What stasis does differently, and which calls fail with a documented
 * error, is listed in docs/libcr.md. In short: any process can be
 * checkpointed (libcr is needed only for callbacks, critical sections and
 * requests), restart-side requests (cr_request_restart) are not provided
 * (ENOSYS: use cr_restart), and cr_hold_ctrl() only records its flags.
 */
#ifndef _CRLIB_H
#define _CRLIB_H 1

#include <blcr_common.h>
#include <errno.h>
#include <sys/select.h> /* struct timeval */
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef int cr_version_t;
#define CR_CHECKPOINT_ARGS_VERSION 1
#define CR_RESTART_ARGS_VERSION 1

#define CR_MAX_CALLBACKS 0x1FFFFFF

typedef int (*cr_callback_t)(void *);
typedef int cr_client_id_t;
typedef int cr_callback_id_t;
typedef unsigned int cr_spinlock_t;

/* What a callback may learn about the checkpoint being taken. */
struct cr_checkpoint_info {
  int signal;       /* sent to the processes once the checkpoint is taken, or 0 */
  const char *dest; /* path of the context file ("" if not a file) */
  pid_t requester;  /* who asked for the checkpoint */
  pid_t target;     /* the pid, pgid or sid of the request */
  cr_scope_t scope;
};

/* What a callback may learn about the restart it continues from. */
struct cr_restart_info {
  pid_t requester; /* the cr_restart process */
  const char *src; /* path of the context file */
};

enum { CR_STATE_IDLE, CR_STATE_PENDING, CR_STATE_ACTIVE };

typedef struct cr_checkpoint_args {
  cr_version_t cr_version;
  cr_scope_t cr_scope;
  pid_t cr_target;         /* 0: the caller (its pgrp, its session) */
  int cr_fd;               /* where the context is written, or CR_DEST_CWD */
  int cr_signal;           /* sent to the processes after the checkpoint, 0 for none */
  unsigned int cr_timeout; /* seconds the callbacks may take, 0 unbounded */
  unsigned int cr_flags;   /* CR_CHKPT_* */
} cr_checkpoint_args_t;

typedef struct cr_restart_args {
  cr_version_t cr_version;
  int cr_fd;
  int cr_signal;
  unsigned int cr_flags;
  struct cr_rstrt_relocate *cr_relocate;
} cr_restart_args_t;

typedef unsigned long cr_checkpoint_handle_t;
typedef unsigned long cr_restart_handle_t;

#define CR_THREAD_CONTEXT 0x4000000
#define CR_SIGNAL_CONTEXT 0x2000000

#define CR_ID_CALLBACK ((cr_client_id_t)(-1))
#define CR_SPINLOCK_INITIALIZER 0U

typedef enum {
  CR_HOOK_CONT_SIGNAL_CONTEXT =
      0,                        /* continuing, thread with signal callbacks or critical sections */
  CR_HOOK_CONT_THREAD_CONTEXT,  /* continuing, the thread running thread-context callbacks */
  CR_HOOK_CONT_NO_CALLBACKS,    /* continuing, any other thread */
  CR_HOOK_RSTRT_SIGNAL_CONTEXT, /* the same three after a restart */
  CR_HOOK_RSTRT_THREAD_CONTEXT,
  CR_HOOK_RSTRT_NO_CALLBACKS,
  CR_NUM_HOOKS
} cr_hook_event_t;

typedef void (*cr_hook_fn_t)(cr_hook_event_t);
#define CR_HOOK_FN_ERROR ((cr_hook_fn_t)(~0UL))

enum { CR_HOLD_SCOPE_THREAD, CR_HOLD_SCOPE_INIT, CR_HOLD_SCOPE_UNINIT };

/* Per-thread set-up; returns an id for cr_enter_cs/cr_leave_cs, <0 on error. */
extern cr_client_id_t cr_init(void);

#define cr_initialize_checkpoint_args_t(_cr_args) \
  cri_init_checkpoint_args_t(CR_CHECKPOINT_ARGS_VERSION, (_cr_args))
extern int cri_init_checkpoint_args_t(cr_version_t, cr_checkpoint_args_t *);

/* Checkpoint requests. 0 / -1 with errno. */
extern int cr_request_checkpoint(cr_checkpoint_args_t *args, cr_checkpoint_handle_t *handle);
extern int cr_forward_checkpoint(cr_scope_t cr_scope, pid_t cr_target);
extern int cr_wait_checkpoint(cr_checkpoint_handle_t *handle, struct timeval *timeout);
extern int cr_log_checkpoint(cr_checkpoint_handle_t *handle, unsigned int len, char *msg);
extern int cr_reap_checkpoint(cr_checkpoint_handle_t *handle);
#define CR_POLL_CHKPT_ERR_PRE -1
#define CR_POLL_CHKPT_ERR_POST -2
#define CR_POLL_CHKPT_ERR_LOG -3
extern int cr_poll_checkpoint_msg(cr_checkpoint_handle_t *handle, struct timeval *timeout,
                                  char **msg_p);
extern int cr_poll_checkpoint(cr_checkpoint_handle_t *handle, struct timeval *timeout);

/* Restart requests: not provided by stasis (ENOSYS); use cr_restart(1). */
#define cr_initialize_restart_args_t(_cr_args) \
  cri_init_restart_args_t(CR_RESTART_ARGS_VERSION, (_cr_args))
extern int cri_init_restart_args_t(cr_version_t, cr_restart_args_t *);
extern int cr_request_restart(cr_restart_args_t *args, cr_restart_handle_t *handle);
extern int cr_wait_restart(cr_restart_handle_t *handle, struct timeval *timeout);
extern int cr_log_restart(cr_restart_handle_t *handle, unsigned int len, char *msg);
extern int cr_reap_restart(cr_restart_handle_t *handle);
#define CR_POLL_RSTRT_ERR_PRE -1
#define CR_POLL_RSTRT_ERR_POST -2
#define CR_POLL_RSTRT_ERR_LOG -3
extern int cr_poll_restart_msg(cr_restart_handle_t *handle, struct timeval *timeout, char **msg_p);
extern int cr_poll_restart(cr_restart_handle_t *handle, struct timeval *timeout);

/* Callbacks. */
extern cr_callback_id_t cr_register_callback(cr_callback_t func, void *arg, int flags);
extern int cr_replace_callback(cr_callback_id_t id, cr_callback_t func, void *arg, int flags);
extern int cr_replace_self(cr_callback_t func, void *arg, int flags);
/* Inside a callback: 0 continuing, >0 restarted, <0 -error. */
extern int cr_checkpoint(int flags);

/* Critical sections. */
extern int cr_enter_cs(cr_client_id_t id);
extern int cr_tryenter_cs(cr_client_id_t id);
extern int cr_leave_cs(cr_client_id_t id);
extern int cr_status(void);

extern const struct cr_checkpoint_info *cr_get_checkpoint_info(void);
extern const struct cr_restart_info *cr_get_restart_info(void);

extern void cr_spinlock_init(cr_spinlock_t *);
extern void cr_spinlock_lock(cr_spinlock_t *);
extern void cr_spinlock_unlock(cr_spinlock_t *);
extern int cr_spinlock_trylock(cr_spinlock_t *);

extern const char *cr_strerror(int errnum);
extern cr_hook_fn_t cr_register_hook(cr_hook_event_t event, cr_hook_fn_t hook_fn);
extern int cr_hold_ctrl(int scope, int flags);
extern int cr_inc_persist(void);
extern int cr_dec_persist(void);

#ifdef __cplusplus
}
#endif

#endif /* _CRLIB_H */

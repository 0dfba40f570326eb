/* Built as C and as C++ against libcr.pc with -Wall -Wextra -Werror: the
 * BLCR API as legacy codes use it (names, types, constants). */
#include <libcr.h>
#include <stdio.h>
#include <string.h>

static int callback(void *arg) {
  const struct cr_checkpoint_info *ci = cr_get_checkpoint_info();
  int rc = cr_checkpoint(CR_CHECKPOINT_READY);
  if (rc > 0) {
    const struct cr_restart_info *ri = cr_get_restart_info();
    (void)ri;
  }
  (void)ci;
  (void)arg;
  return 0;
}

static void hook(cr_hook_event_t ev) { (void)ev; }

int main(void) {
  cr_client_id_t id = cr_init();
  if (id < 0) return 1;
  cr_callback_id_t cb = cr_register_callback(callback, NULL, CR_THREAD_CONTEXT);
  cr_callback_id_t sb = cr_register_callback(callback, NULL, CR_SIGNAL_CONTEXT);
  if (cb < 0 || sb < 0) return 1;
  if (cr_replace_callback(cb, callback, NULL, CR_THREAD_CONTEXT) != 0) return 1;
  if (cr_register_hook(CR_HOOK_RSTRT_NO_CALLBACKS, hook) == CR_HOOK_FN_ERROR) return 1;
  if (cr_enter_cs(id) != 0 || cr_leave_cs(id) != 0) return 1;
  if (cr_tryenter_cs(id) == 0) cr_leave_cs(id);
  if (cr_status() != CR_STATE_IDLE) return 1;
  cr_checkpoint_args_t args;
  if (cr_initialize_checkpoint_args_t(&args) != 0) return 1;
  args.cr_scope = CR_SCOPE_TREE;
  args.cr_flags = CR_CHKPT_PTRACED_ALLOW | CR_CHKPT_DUMP_EXEC;
  cr_checkpoint_handle_t handle = 0;
  struct timeval tv = {0, 0};
  (void)cr_poll_checkpoint(&handle, &tv); /* bad handle: EINVAL */
  cr_spinlock_t lock = CR_SPINLOCK_INITIALIZER;
  cr_spinlock_lock(&lock);
  cr_spinlock_unlock(&lock);
  int codes[] = {CR_ETEMPFAIL,      CR_EPERMFAIL, CR_ENOSUPPORT, CR_EOMITTED,
                 CR_ERESTARTED,     CR_ENOTCB,    CR_ENOINIT,    CR_CHECKPOINT_TEMP_FAILURE_CODE(5),
                 CR_CHECKPOINT_OMIT};
  if (strlen(cr_strerror(codes[0])) == 0) return 1;
  (void)cr_forward_checkpoint;
  (void)cr_reap_checkpoint;
  (void)cr_log_checkpoint;
  (void)cr_wait_checkpoint;
  (void)cr_replace_self;
  (void)cr_request_checkpoint;
  printf("compile_check: ok (%d codes, %s)\n", (int)(sizeof codes / sizeof codes[0]),
         CR_RELEASE_VERSION);
  return 0;
}

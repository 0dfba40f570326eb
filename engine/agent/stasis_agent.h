/* stasis-private entry points of libcr, used by the stasis tools only. */
#ifndef STASIS_AGENT_H
#define STASIS_AGENT_H

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the calling process to be left out of checkpoints:
 * STASIS_AGENT_F_OMIT (always) or STASIS_AGENT_F_OMIT_UNLESS_TARGET (unless it
 * is the pid or tree root a request names), or 0. cr_restart's
 * --omit-always/--omit-maybe. Returns 0, or -1 with errno. */
int stasis_agent_set_omit(unsigned flags);

/* The flags of the checkpoint request being handled (STASIS_AGENT_RQ_*
 * of agent_abi.h: STASIS_AGENT_RQ_FINAL = the job is about to end), for a
 * callback that wants to know; 0 outside a request. */
unsigned stasis_agent_request_flags(void);

#ifdef __cplusplus
}
#endif

#endif

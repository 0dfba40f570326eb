/*
 * stasis and PMIx programs: what libstasis_pmix.so (preloaded by the stasis
 * SPANK plugin into every task of an `srun --mpi=pmix` step) tells a PMIx
 * program about a checkpoint, and what it expects back. Only PMIx's own
 * calls are needed; this header just names the attributes.
 *
 * 1. Before the node freezes, each process that registered an event
 *    handler for PMIX_JCTRL_CHECKPOINT gets that event (range
 *    PMIX_RANGE_PROC_LOCAL, PMIX_EVENT_NON_DEFAULT: default handlers never
 *    see it), with STASIS_PMIX_CONTEXT (string: the context file). Before a
 *    final checkpoint (preemption, time limit), handlers registered for
 *    PMIX_JCTRL_PREEMPT_ALERT get that event first.
 * 2. The program quiesces (drains its messages, closes connections to other
 *    ranks) and then either notifies PMIX_JCTRL_CHECKPOINT_COMPLETE (range
 *    PMIX_RANGE_PROC_LOCAL), or calls PMIx_Finalize to drop its PMIx
 *    connection (it must, to be restartable: a connection to the step's
 *    PMIx server cannot be restored; a socket still open comes back closed).
 *    Without either within STASIS_PMIX_TIMEOUT seconds (environment, default
 *    60) the checkpoint fails and the job runs on.
 * 3. After the checkpoint the program's handlers get PMIX_ERR_PROC_CHECKPOINT
 *    (it continued: checkpoint written, or failed) or PMIX_ERR_PROC_RESTART
 *    (it was restarted from the context), with STASIS_PMIX_RESTARTED (bool)
 *    and STASIS_PMIX_TAKEN (bool: the checkpoint was written). A program
 *    that called PMIx_Finalize in step 2 may call PMIx_Init at once: the call
 *    returns when the checkpoint is over, connected to the PMIx server of the
 *    step it then runs in (the new step's after a restart, with the new
 *    step's namespace and rank variables); the outcome event reaches the
 *    first handler it registers for it afterwards.
 */
#ifndef STASIS_PMIX_H
#define STASIS_PMIX_H

#define STASIS_PMIX_CONTEXT "stasis.context"     /* string */
#define STASIS_PMIX_RESTARTED "stasis.restarted" /* bool */
#define STASIS_PMIX_TAKEN "stasis.taken"         /* bool */

#endif

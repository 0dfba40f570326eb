/*
 * libstasis_pmix.so: the PMIx side of a checkpoint, inside each task of an
 * `srun --mpi=pmix` step (the SPANK plugin preloads it). It interposes four
 * PMIx calls (Init, Finalize, Register/Deregister_event_handler), forwards
 * each to libpmix, and on the first successful PMIx_Init joins libcr's
 * agent with one thread-context callback. When a checkpoint comes, that
 * callback delivers PMIX_JCTRL_CHECKPOINT to the program's handlers, waits
 * (bounded) for PMIX_JCTRL_CHECKPOINT_COMPLETE or PMIx_Finalize, lets the
 * checkpoint happen, and tells the handlers whether the process continued
 * or was restarted. The protocol, from the program's side: stasis_pmix.h.
 *
 * libpmix is not linked: the real calls are found with dlsym, so a task
 * that never loads libpmix pays nothing but the preload. Nothing here runs
 * in PMIx's progress thread except the tiny handler and registration
 * callbacks, which only set flags.
 */
#define _GNU_SOURCE
#include "pmix/include/stasis_pmix.h"

#include <dlfcn.h>
#include <errno.h>
#include <pmix.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/agent/agent_abi.h"
#include "engine/agent/include/libcr.h"
#include "engine/agent/stasis_agent.h"

#define EXPORT __attribute__((visibility("default")))

typedef pmix_status_t (*init_fn)(pmix_proc_t *, pmix_info_t *, size_t);
typedef pmix_status_t (*finalize_fn)(const pmix_info_t *, size_t);
typedef pmix_status_t (*register_fn)(pmix_status_t *, size_t, pmix_info_t *, size_t,
                                     pmix_notification_fn_t, pmix_hdlr_reg_cbfunc_t, void *);
typedef pmix_status_t (*deregister_fn)(size_t, pmix_op_cbfunc_t, void *);
typedef pmix_status_t (*notify_fn)(pmix_status_t, const pmix_proc_t *, pmix_data_range_t,
                                   const pmix_info_t *, size_t, pmix_op_cbfunc_t, void *);

static struct {
  init_fn init;
  finalize_fn finalize;
  register_fn reg;
  deregister_fn dereg;
  notify_fn notify;
} real;
static pthread_once_t g_resolve_once = PTHREAD_ONCE_INIT;

#define MAX_REFS 64
enum { kWantCheckpoint = 1, kWantPreempt = 2, kWantContinued = 4, kWantRestarted = 8 };

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv = PTHREAD_COND_INITIALIZER;
static int g_inits;      /* successful PMIx_Init calls not yet finalized */
static pmix_proc_t g_me; /* this process, as PMIx_Init named it */
static struct {          /* the program's handlers for the codes we deliver */
  size_t ref;
  unsigned want;
} g_refs[MAX_REFS];
static int g_nrefs;
static int g_in_ckpt;           /* PMIX_JCTRL_CHECKPOINT delivered, outcome not yet known */
static int g_complete;          /* PMIX_JCTRL_CHECKPOINT_COMPLETE seen for this request */
static int g_dropped;           /* the program finalized PMIx during the request */
static pmix_status_t g_pending; /* outcome for the next handler registered for it, or 0 */
static int g_pending_taken;
static int g_cr_joined;

static void resolve(void) {
  real.init = (init_fn)dlsym(RTLD_NEXT, "PMIx_Init");
  real.finalize = (finalize_fn)dlsym(RTLD_NEXT, "PMIx_Finalize");
  real.reg = (register_fn)dlsym(RTLD_NEXT, "PMIx_Register_event_handler");
  real.dereg = (deregister_fn)dlsym(RTLD_NEXT, "PMIx_Deregister_event_handler");
  real.notify = (notify_fn)dlsym(RTLD_DEFAULT, "PMIx_Notify_event");
}

/* One line on the task's stderr, which is the job's output. */
__attribute__((format(printf, 1, 2))) static void note(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "stasis-pmix: rank %u: %s\n", g_me.rank, line);
}

static double timeout_seconds(void) {
  const char *s = getenv("STASIS_PMIX_TIMEOUT");
  double v = s && *s ? strtod(s, NULL) : 60.0;
  return v > 0 ? v : 60.0;
}

static unsigned want_of(const pmix_status_t *codes, size_t n) {
  unsigned w = 0;
  for (size_t i = 0; codes && i < n; ++i) {
    if (codes[i] == PMIX_JCTRL_CHECKPOINT) w |= kWantCheckpoint;
    if (codes[i] == PMIX_JCTRL_PREEMPT_ALERT) w |= kWantPreempt;
    if (codes[i] == PMIX_ERR_PROC_CHECKPOINT) w |= kWantContinued;
    if (codes[i] == PMIX_ERR_PROC_RESTART) w |= kWantRestarted;
  }
  return w;
}

static unsigned wanted_locked(void) {
  unsigned w = 0;
  for (int i = 0; i < g_nrefs; ++i) w |= g_refs[i].want;
  return w;
}

static void info_bool(pmix_info_t *info, const char *key, int value) {
  memset(info, 0, sizeof *info);
  snprintf(info->key, sizeof info->key, "%s", key);
  info->value.type = PMIX_BOOL;
  info->value.data.flag = value != 0;
}

static void info_string(pmix_info_t *info, const char *key, char *value) {
  memset(info, 0, sizeof *info);
  snprintf(info->key, sizeof info->key, "%s", key);
  info->value.type = PMIX_STRING;
  info->value.data.string = value;
}

/* A blocking notification to this process's own handlers. Never called in
 * PMIx's progress thread. */
static pmix_status_t deliver(pmix_status_t code, pmix_info_t *extra, size_t nextra) {
  if (!real.notify) return PMIX_ERR_NOT_SUPPORTED;
  pmix_info_t info[4];
  info_bool(&info[0], PMIX_EVENT_NON_DEFAULT, 1);
  size_t n = 1;
  for (size_t i = 0; i < nextra && n < 4; ++i) info[n++] = extra[i];
  pmix_proc_t me;
  pthread_mutex_lock(&g_mu);
  me = g_me;
  pthread_mutex_unlock(&g_mu);
  return real.notify(code, &me, PMIX_RANGE_PROC_LOCAL, info, n, NULL, NULL);
}

static pmix_status_t deliver_outcome(pmix_status_t code, int taken) {
  pmix_info_t extra[2];
  info_bool(&extra[0], STASIS_PMIX_RESTARTED, code == PMIX_ERR_PROC_RESTART);
  info_bool(&extra[1], STASIS_PMIX_TAKEN, taken);
  return deliver(code, extra, 2);
}

/* Our handler for PMIX_JCTRL_CHECKPOINT_COMPLETE, registered at every
 * PMIx_Init: counts only what this process itself notified. */
static void on_complete(size_t ref, pmix_status_t status, const pmix_proc_t *source,
                        pmix_info_t info[], size_t ninfo, pmix_info_t *results, size_t nresults,
                        pmix_event_notification_cbfunc_fn_t cbfunc, void *cbdata) {
  (void)ref;
  (void)status;
  (void)info;
  (void)ninfo;
  pthread_mutex_lock(&g_mu);
  if (g_in_ckpt && (!source || (source->rank == g_me.rank &&
                                strncmp(source->nspace, g_me.nspace, PMIX_MAX_NSLEN) == 0))) {
    g_complete = 1;
    pthread_cond_broadcast(&g_cv);
  }
  pthread_mutex_unlock(&g_mu);
  if (cbfunc) cbfunc(PMIX_SUCCESS, results, nresults, NULL, NULL, cbdata);
}

/* The libcr callback, in the agent's thread. */
static int on_checkpoint(void *unused) {
  (void)unused;
  const struct cr_checkpoint_info *ci = cr_get_checkpoint_info();
  char dest[4096] = "";
  if (ci && ci->dest) snprintf(dest, sizeof dest, "%s", ci->dest);
  const int final = (stasis_agent_request_flags() & STASIS_AGENT_RQ_FINAL) != 0;

  pthread_mutex_lock(&g_mu);
  unsigned want = g_inits > 0 ? wanted_locked() : 0;
  int deliver_it = (want & kWantCheckpoint) != 0;
  if (deliver_it) {
    g_in_ckpt = 1;
    g_complete = 0;
    g_dropped = 0;
    g_pending = 0;
  }
  pthread_mutex_unlock(&g_mu);

  if (deliver_it) {
    if (final && (want & kWantPreempt)) deliver(PMIX_JCTRL_PREEMPT_ALERT, NULL, 0);
    pmix_info_t extra[1];
    info_string(&extra[0], STASIS_PMIX_CONTEXT, dest);
    pmix_status_t rc = deliver(PMIX_JCTRL_CHECKPOINT, extra, 1);
    if (rc != PMIX_SUCCESS) note("cannot deliver PMIX_JCTRL_CHECKPOINT: PMIx status %d", rc);
    struct timespec by;
    clock_gettime(CLOCK_REALTIME, &by);
    double t = timeout_seconds();
    by.tv_sec += (time_t)t;
    by.tv_nsec += (long)((t - (double)(time_t)t) * 1e9);
    if (by.tv_nsec >= 1000000000L) {
      by.tv_sec++;
      by.tv_nsec -= 1000000000L;
    }
    int ready = rc != PMIX_SUCCESS;
    pthread_mutex_lock(&g_mu);
    while (!ready && !g_complete && !g_dropped)
      if (pthread_cond_timedwait(&g_cv, &g_mu, &by) == ETIMEDOUT) break;
    ready = ready || g_complete || g_dropped;
    if (!ready) {
      g_in_ckpt = 0;
      pthread_cond_broadcast(&g_cv);
    }
    pthread_mutex_unlock(&g_mu);
    if (!ready) {
      note(
          "no PMIX_JCTRL_CHECKPOINT_COMPLETE (or PMIx_Finalize) within %g s: the checkpoint fails "
          "(STASIS_PMIX_TIMEOUT)",
          t);
      return cr_checkpoint(CR_CHECKPOINT_TEMP_FAILURE);
    }
  }

  int rc = cr_checkpoint(CR_CHECKPOINT_READY);
  if (!deliver_it) return rc;
  pmix_status_t outcome = rc > 0 ? PMIX_ERR_PROC_RESTART : PMIX_ERR_PROC_CHECKPOINT;
  int taken = rc >= 0;

  pthread_mutex_lock(&g_mu);
  int connected = g_inits > 0 && !g_dropped;
  if (!connected) {
    /* It dropped its connection: the outcome waits for the first handler
     * it registers for it after its next PMIx_Init. */
    g_pending = outcome;
    g_pending_taken = taken;
  }
  g_in_ckpt = 0;
  pthread_cond_broadcast(&g_cv);
  unsigned now_want = wanted_locked();
  pthread_mutex_unlock(&g_mu);
  unsigned need = outcome == PMIX_ERR_PROC_RESTART ? kWantRestarted : kWantContinued;
  if (connected && (now_want & need)) deliver_outcome(outcome, taken);
  return rc;
}

static void join_libcr(void) {
  if (g_cr_joined) return;
  if (cr_init() < 0) {
    note("%s", "cannot start libcr's agent: PMIx handlers will not hear of checkpoints");
    return;
  }
  if (cr_register_callback(on_checkpoint, NULL, CR_THREAD_CONTEXT) < 0) {
    note("%s", "cannot register the checkpoint callback with libcr");
    return;
  }
  g_cr_joined = 1;
}

EXPORT pmix_status_t PMIx_Init(pmix_proc_t *proc, pmix_info_t info[], size_t ninfo) {
  pthread_once(&g_resolve_once, resolve);
  if (!real.init) return PMIX_ERR_NOT_SUPPORTED;
  /* A re-initialisation during a checkpoint waits for its outcome, so it
   * reaches the server of the step the process then runs in. */
  pthread_mutex_lock(&g_mu);
  while (g_in_ckpt) pthread_cond_wait(&g_cv, &g_mu);
  pthread_mutex_unlock(&g_mu);
  pmix_proc_t me;
  pmix_status_t rc = real.init(proc ? proc : &me, info, ninfo);
  if (rc != PMIX_SUCCESS) return rc;
  pthread_mutex_lock(&g_mu);
  int first = g_inits++ == 0;
  g_me = proc ? *proc : me;
  pthread_mutex_unlock(&g_mu);
  if (first && real.reg) {
    pmix_status_t code = PMIX_JCTRL_CHECKPOINT_COMPLETE;
    pmix_status_t r = real.reg(&code, 1, NULL, 0, on_complete, NULL, NULL);
    if (r < 0) note("cannot register for PMIX_JCTRL_CHECKPOINT_COMPLETE: PMIx status %d", r);
  }
  join_libcr();
  return rc;
}

EXPORT pmix_status_t PMIx_Finalize(const pmix_info_t info[], size_t ninfo) {
  pthread_once(&g_resolve_once, resolve);
  if (!real.finalize) return PMIX_ERR_NOT_SUPPORTED;
  pmix_status_t rc = real.finalize(info, ninfo);
  pthread_mutex_lock(&g_mu);
  if (g_inits > 0 && --g_inits == 0) {
    g_nrefs = 0; /* PMIx dropped every handler */
    if (g_in_ckpt) {
      g_dropped = 1;
      pthread_cond_broadcast(&g_cv);
    }
  }
  pthread_mutex_unlock(&g_mu);
  return rc;
}

/* A registration we watch: its reference, for the program's own callback. */
struct reg_watch {
  pmix_hdlr_reg_cbfunc_t cbfunc;
  void *cbdata;
  unsigned want;
};

static void remember(size_t ref, unsigned want) {
  if (!want) return;
  pthread_mutex_lock(&g_mu);
  if (g_nrefs < MAX_REFS) {
    g_refs[g_nrefs].ref = ref;
    g_refs[g_nrefs].want = want;
    g_nrefs++;
  }
  pthread_mutex_unlock(&g_mu);
}

/* The outcome a registration covering `want` should get now, or 0. */
static pmix_status_t take_pending(unsigned want, int *taken) {
  pmix_status_t out = 0;
  pthread_mutex_lock(&g_mu);
  if ((g_pending == PMIX_ERR_PROC_RESTART && (want & kWantRestarted)) ||
      (g_pending == PMIX_ERR_PROC_CHECKPOINT && (want & kWantContinued))) {
    out = g_pending;
    *taken = g_pending_taken;
    g_pending = 0;
  }
  pthread_mutex_unlock(&g_mu);
  return out;
}

struct late {
  pmix_status_t code;
  int taken;
};

static void *late_delivery(void *arg) {
  struct late *l = arg;
  deliver_outcome(l->code, l->taken);
  free(l);
  return NULL;
}

static void on_registered(pmix_status_t status, size_t ref, void *cbdata) {
  struct reg_watch *w = cbdata;
  if (status == PMIX_SUCCESS) {
    remember(ref, w->want);
    int taken = 1;
    pmix_status_t out = take_pending(w->want, &taken);
    struct late *l = out ? malloc(sizeof *l) : NULL;
    if (l) {
      /* Not from PMIx's own thread: a blocking notify would wait on it. */
      l->code = out;
      l->taken = taken;
      pthread_t th;
      pthread_attr_t attr;
      pthread_attr_init(&attr);
      pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
      if (pthread_create(&th, &attr, late_delivery, l) != 0) {
        note("%s", "cannot start a thread to deliver the checkpoint's outcome");
        free(l);
      }
      pthread_attr_destroy(&attr);
    }
  }
  if (w->cbfunc) w->cbfunc(status, ref, w->cbdata);
  free(w);
}

EXPORT pmix_status_t PMIx_Register_event_handler(pmix_status_t codes[], size_t ncodes,
                                                 pmix_info_t info[], size_t ninfo,
                                                 pmix_notification_fn_t evhdlr,
                                                 pmix_hdlr_reg_cbfunc_t cbfunc, void *cbdata) {
  pthread_once(&g_resolve_once, resolve);
  if (!real.reg) return PMIX_ERR_NOT_SUPPORTED;
  unsigned want = want_of(codes, ncodes);
  if (!want) return real.reg(codes, ncodes, info, ninfo, evhdlr, cbfunc, cbdata);
  if (!cbfunc) {
    pmix_status_t rc = real.reg(codes, ncodes, info, ninfo, evhdlr, NULL, NULL);
    if (rc >= 0) {
      remember((size_t)rc, want);
      int taken = 1;
      pmix_status_t out = take_pending(want, &taken);
      if (out) deliver_outcome(out, taken);
    }
    return rc;
  }
  struct reg_watch *w = malloc(sizeof *w);
  if (!w) return PMIX_ERR_NOMEM;
  w->cbfunc = cbfunc;
  w->cbdata = cbdata;
  w->want = want;
  pmix_status_t rc = real.reg(codes, ncodes, info, ninfo, evhdlr, on_registered, w);
  if (rc != PMIX_SUCCESS) free(w);
  return rc;
}

EXPORT pmix_status_t PMIx_Deregister_event_handler(size_t ref, pmix_op_cbfunc_t cbfunc,
                                                   void *cbdata) {
  pthread_once(&g_resolve_once, resolve);
  if (!real.dereg) return PMIX_ERR_NOT_SUPPORTED;
  pthread_mutex_lock(&g_mu);
  for (int i = 0; i < g_nrefs; ++i)
    if (g_refs[i].ref == ref) {
      g_refs[i] = g_refs[--g_nrefs];
      break;
    }
  pthread_mutex_unlock(&g_mu);
  return real.dereg(ref, cbfunc, cbdata);
}

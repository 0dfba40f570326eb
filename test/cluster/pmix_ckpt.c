/* A PMIx program for the cluster tests (`srun --mpi=pmix`, with the SPANK
 * plugin's libstasis_pmix.so preloaded): counts like count_task, printing
 * "rank R count N" every STEP_MS ms (argv[1]) over 4 MiB of memory that
 * depends on the rank and the count, and checks that memory before each
 * line. It registers PMIx event handlers for PMIX_JCTRL_CHECKPOINT and for
 * the outcome (PMIX_ERR_PROC_CHECKPOINT: continued, PMIX_ERR_PROC_RESTART:
 * restarted), and for PMIX_JCTRL_PREEMPT_ALERT (a final checkpoint comes:
 * it prints "rank R preempt alert" before the checkpoint event's line).
 * On a checkpoint event it prints "rank R checkpoint event",
 * drops its PMIx connection (PMIx_Finalize), calls PMIx_Init again (which
 * returns once the checkpoint is over), registers its handlers again, waits
 * for the outcome and prints "rank R continued|restarted", then fences with
 * every rank of its (possibly new) namespace and prints "rank R of S fence
 * ok after continued|restarted ns NS job J on HOST". Its rank must not
 * change. Exits 0 once it printed the count in the file argv[2]; 3 on bad
 * memory, 4 on a PMIx failure. With argv[3] = "ignore" it never answers a
 * checkpoint event (it prints "rank R ignores the checkpoint event" and
 * counts on), so the checkpoint must fail after STASIS_PMIX_TIMEOUT. With
 * argv[3] = "complete" it keeps its PMIx connection: it notifies
 * PMIX_JCTRL_CHECKPOINT_COMPLETE, waits for the outcome (it can only
 * continue: a connected PMIx client cannot be restarted) and prints "rank R
 * continued connected", then fences as above. */
#define _GNU_SOURCE /* pmix_common.h uses strdup, setenv, strncasecmp */
#include <pmix.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORDS ((4u << 20) / 8)

static volatile int g_event;
static int g_stay_connected;
static volatile int g_alert;
static volatile pmix_status_t g_outcome;
static volatile int g_restarted_flag = -1;
static pmix_proc_t g_me;
static uint64_t g_rank;

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}

/* One handler for every event it registers for (each code separately, as a
 * program would): the checkpoint, the preempt alert and the outcome. */
static void on_event(size_t ref, pmix_status_t status, const pmix_proc_t *source,
                     pmix_info_t info[], size_t ninfo, pmix_info_t *results, size_t nresults,
                     pmix_event_notification_cbfunc_fn_t cbfunc, void *cbdata) {
  (void)ref, (void)source, (void)results, (void)nresults;
  if (status == PMIX_JCTRL_CHECKPOINT) {
    g_event = 1;
  } else if (status == PMIX_JCTRL_PREEMPT_ALERT) {
    g_alert = 1;
  } else {
    for (size_t i = 0; i < ninfo; ++i)
      if (strcmp(info[i].key, "stasis.restarted") == 0 && info[i].value.type == PMIX_BOOL)
        g_restarted_flag = info[i].value.data.flag;
    g_outcome = status;
  }
  if (cbfunc) cbfunc(PMIX_EVENT_ACTION_COMPLETE, NULL, 0, NULL, NULL, cbdata);
}

static void die(const char *what, pmix_status_t rc) {
  printf("rank %llu PMIX FAILED: %s: %s\n", (unsigned long long)g_rank, what,
         PMIx_Error_string(rc));
  exit(4);
}

static void init_and_register(void) {
  pmix_status_t rc = PMIx_Init(&g_me, NULL, 0);
  if (rc != PMIX_SUCCESS) die("PMIx_Init", rc);
  pmix_status_t ck = PMIX_JCTRL_CHECKPOINT;
  rc = PMIx_Register_event_handler(&ck, 1, NULL, 0, on_event, NULL, NULL);
  if (rc < 0) die("register PMIX_JCTRL_CHECKPOINT", rc);
  pmix_status_t alert = PMIX_JCTRL_PREEMPT_ALERT;
  rc = PMIx_Register_event_handler(&alert, 1, NULL, 0, on_event, NULL, NULL);
  if (rc < 0) die("register PMIX_JCTRL_PREEMPT_ALERT", rc);
  pmix_status_t out[2] = {PMIX_ERR_PROC_CHECKPOINT, PMIX_ERR_PROC_RESTART};
  rc = PMIx_Register_event_handler(out, 2, NULL, 0, on_event, NULL, NULL);
  if (rc < 0) die("register the outcome", rc);
}

static uint32_t job_size(void) {
  pmix_proc_t all;
  PMIX_PROC_CONSTRUCT(&all);
  memcpy(all.nspace, g_me.nspace, sizeof(all.nspace));
  all.rank = PMIX_RANK_WILDCARD;
  pmix_value_t *val = NULL;
  pmix_status_t rc = PMIx_Get(&all, PMIX_JOB_SIZE, NULL, 0, &val);
  if (rc != PMIX_SUCCESS || !val || val->type != PMIX_UINT32) die("PMIx_Get(PMIX_JOB_SIZE)", rc);
  uint32_t size = val->data.uint32;
  PMIX_VALUE_RELEASE(val);
  return size;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* The checkpoint: drop PMIx, come back, hear the outcome, fence. */
static void checkpoint_event(void) {
  if (g_alert) printf("rank %llu preempt alert\n", (unsigned long long)g_rank);
  g_alert = 0;
  printf("rank %llu checkpoint event\n", (unsigned long long)g_rank);
  if (g_stay_connected) {
    g_event = 0;
    g_outcome = 0;
    g_restarted_flag = -1;
    pmix_status_t rc = PMIx_Notify_event(PMIX_JCTRL_CHECKPOINT_COMPLETE, &g_me,
                                         PMIX_RANGE_PROC_LOCAL, NULL, 0, NULL, NULL);
    if (rc != PMIX_SUCCESS) die("notify PMIX_JCTRL_CHECKPOINT_COMPLETE", rc);
    for (int i = 0; i < 1000 && !g_outcome; ++i) sleep_ms(10);
    if (g_outcome != PMIX_ERR_PROC_CHECKPOINT || g_restarted_flag != 0) {
      printf("rank %llu PMIX FAILED: outcome %d (restarted flag %d) while connected\n",
             (unsigned long long)g_rank, (int)g_outcome, g_restarted_flag);
      exit(4);
    }
    printf("rank %llu continued connected\n", (unsigned long long)g_rank);
    pmix_proc_t all;
    PMIX_PROC_CONSTRUCT(&all);
    memcpy(all.nspace, g_me.nspace, sizeof(all.nspace));
    all.rank = PMIX_RANK_WILDCARD;
    rc = PMIx_Fence(&all, 1, NULL, 0);
    if (rc != PMIX_SUCCESS) die("PMIx_Fence", rc);
    printf("rank %llu of %u fence ok after continued connected\n", (unsigned long long)g_rank,
           job_size());
    return;
  }
  pmix_status_t rc = PMIx_Finalize(NULL, 0);
  if (rc != PMIX_SUCCESS) die("PMIx_Finalize", rc);
  g_event = 0;
  g_outcome = 0;
  g_restarted_flag = -1;
  init_and_register(); /* returns once the checkpoint is over */
  if (g_me.rank != g_rank) {
    printf("rank %llu PMIX FAILED: PMIx_Init gave rank %u\n", (unsigned long long)g_rank,
           g_me.rank);
    exit(4);
  }
  for (int i = 0; i < 1000 && !g_outcome; ++i) sleep_ms(10);
  const char *what = g_outcome == PMIX_ERR_PROC_RESTART      ? "restarted"
                     : g_outcome == PMIX_ERR_PROC_CHECKPOINT ? "continued"
                                                             : NULL;
  if (!what || g_restarted_flag != (g_outcome == PMIX_ERR_PROC_RESTART)) {
    printf("rank %llu PMIX FAILED: no outcome event within 10 s (status %d, restarted flag %d)\n",
           (unsigned long long)g_rank, (int)g_outcome, g_restarted_flag);
    exit(4);
  }
  printf("rank %llu %s\n", (unsigned long long)g_rank, what);
  uint32_t size = job_size();
  pmix_proc_t all;
  PMIX_PROC_CONSTRUCT(&all);
  memcpy(all.nspace, g_me.nspace, sizeof(all.nspace));
  all.rank = PMIX_RANK_WILDCARD;
  rc = PMIx_Fence(&all, 1, NULL, 0);
  if (rc != PMIX_SUCCESS) die("PMIx_Fence", rc);
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  const char *job = getenv("SLURM_JOB_ID");
  printf("rank %llu of %u fence ok after %s ns %s job %s on %s\n", (unsigned long long)g_rank, size,
         what, g_me.nspace, job ? job : "?", host);
}

int main(int argc, char **argv) {
  long step_ms = argc > 1 ? atol(argv[1]) : 100;
  const char *limit_file = argc > 2 ? argv[2] : NULL;
  const int ignore = argc > 3 && strcmp(argv[3], "ignore") == 0;
  g_stay_connected = argc > 3 && strcmp(argv[3], "complete") == 0;
  setvbuf(stdout, NULL, _IOLBF, 0);
  init_and_register();
  g_rank = g_me.rank;
  printf("rank %llu of %u started ns %s\n", (unsigned long long)g_rank, job_size(), g_me.nspace);
  uint64_t *mem = malloc(WORDS * sizeof(uint64_t));
  if (!mem) return 2;
  for (uint64_t i = 0; i < WORDS; ++i) mem[i] = mix(g_rank * 1000003u + i);
  for (uint64_t n = 1;; ++n) {
    for (uint64_t i = 0; i < WORDS; i += 4099) {
      if (mem[i] != mix(g_rank * 1000003u + i) + (n - 1) * i) {
        printf("rank %llu MEMORY BAD at %llu\n", (unsigned long long)g_rank, (unsigned long long)n);
        return 3;
      }
    }
    printf("rank %llu count %llu\n", (unsigned long long)g_rank, (unsigned long long)n);
    for (uint64_t i = 0; i < WORDS; ++i) mem[i] += i;
    if (limit_file && limit_file[0]) {
      FILE *f = fopen(limit_file, "r");
      unsigned long long limit = 0;
      if (f) {
        if (fscanf(f, "%llu", &limit) != 1) limit = 0;
        fclose(f);
      }
      if (limit && n >= limit) break;
    }
    for (long t = 0; t < step_ms; t += 10) {
      if (g_event && ignore) {
        printf("rank %llu ignores the checkpoint event\n", (unsigned long long)g_rank);
        g_event = 0;
      }
      if (g_event) checkpoint_event();
      sleep_ms(10);
    }
  }
  PMIx_Finalize(NULL, 0);
  return 0;
}

/* A tiny PMIx client for the cluster tests: PMIx_Init, read the job size,
 * PMIx_Fence across every rank of the namespace, then print
 * "rank R of N fence ok on HOST". Run it with `srun --mpi=pmix`; without a
 * PMIx server PMIx_Init fails (exit 1). */
#define _GNU_SOURCE /* pmix_common.h uses strdup, setenv, strncasecmp */
#include <pmix.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void) {
  pmix_proc_t me;
  pmix_status_t rc = PMIx_Init(&me, NULL, 0);
  if (rc != PMIX_SUCCESS) {
    fprintf(stderr, "pmix_fence: PMIx_Init: %s\n", PMIx_Error_string(rc));
    return 1;
  }
  pmix_proc_t all;
  PMIX_PROC_CONSTRUCT(&all);
  memcpy(all.nspace, me.nspace, sizeof(all.nspace));
  all.rank = PMIX_RANK_WILDCARD;

  pmix_value_t *val = NULL;
  uint32_t size = 0;
  rc = PMIx_Get(&all, PMIX_JOB_SIZE, NULL, 0, &val);
  if (rc != PMIX_SUCCESS || val == NULL || val->type != PMIX_UINT32) {
    fprintf(stderr, "pmix_fence: rank %u: PMIx_Get(PMIX_JOB_SIZE): %s\n", me.rank,
            PMIx_Error_string(rc));
    PMIx_Finalize(NULL, 0);
    return 1;
  }
  size = val->data.uint32;
  PMIX_VALUE_RELEASE(val);

  rc = PMIx_Fence(&all, 1, NULL, 0);
  if (rc != PMIX_SUCCESS) {
    fprintf(stderr, "pmix_fence: rank %u: PMIx_Fence: %s\n", me.rank, PMIx_Error_string(rc));
    PMIx_Finalize(NULL, 0);
    return 1;
  }
  char host[256] = "?";
  gethostname(host, sizeof(host) - 1);
  printf("rank %u of %u fence ok on %s\n", me.rank, size, host);
  fflush(stdout);
  rc = PMIx_Finalize(NULL, 0);
  if (rc != PMIX_SUCCESS) {
    fprintf(stderr, "pmix_fence: rank %u: PMIx_Finalize: %s\n", me.rank, PMIx_Error_string(rc));
    return 1;
  }
  return 0;
}

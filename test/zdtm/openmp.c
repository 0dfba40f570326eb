/* openmp: an OpenMP (libgomp) computation that runs straight through the
 * checkpoints.
 *
 * A team of 4 threads repeatedly updates an array of 2^16 words in a
 * parallel for loop (a[i] = mix(a[i] ^ round ^ i)) and reduces it with an
 * xor reduction into a running digest; every round also records which team
 * members took part. The main thread runs rounds without pause until the
 * check (after 4000 rounds with a 2 ms pause between rounds, so the serial
 * recomputation stays short), so the checkpoints land in the middle of
 * parallel regions or while the team waits between them.
 *
 * Check: the number of rounds run; recomputing that many rounds serially
 * from the seed gives the same array and the same digest; every round had
 * all 4 threads; omp_get_max_threads() is still 4. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zdtm.h"

enum { kWords = 1 << 16, kThreads = 4, kMaxRounds = 1 << 20, kBusyRounds = 4000 };
static const uint64_t kSeed = 0x6f70656e6d70ULL;

static uint64_t Update(uint64_t v, uint64_t round, uint64_t i) {
  return zdtm_mix64(v ^ (round << 32) ^ i);
}

static void Init(uint64_t *a) {
  for (uint64_t i = 0; i < kWords; i++) a[i] = zdtm_mix64(kSeed + i);
}

int main(void) {
  zdtm_init("openmp");
  omp_set_dynamic(0);
  omp_set_num_threads(kThreads);
  uint64_t *a = malloc(kWords * sizeof(*a));
  uint8_t *members = calloc(kMaxRounds, 1); /* bit t: thread t took part */
  if (!a || !members) zdtm_die("malloc failed");
  Init(a);
  uint64_t digest = kSeed, rounds = 0;

  bool ready = false;
  int team_size = 0;
  while (rounds < kMaxRounds) {
    uint64_t x = 0;
    uint8_t who = 0;
#pragma omp parallel reduction(^ : x) reduction(| : who)
    {
      if (omp_get_thread_num() == 0) team_size = omp_get_num_threads();
      who |= (uint8_t)(1u << omp_get_thread_num());
#pragma omp for schedule(static)
      for (uint64_t i = 0; i < kWords; i++) {
        a[i] = Update(a[i], rounds, i);
        x ^= a[i];
      }
    }
    members[rounds] = who;
    digest = zdtm_mix64(digest ^ x);
    rounds++;
    if (zdtm_corrupt_requested() && rounds == 8) a[kWords / 3] ^= 1;
    if (!ready && rounds == 3) {
      printf("openmp: %d threads in the team\n", team_size);
      zdtm_ready();
      ready = true;
    }
    if (ready && zdtm_check_requested()) break;
    if (rounds > kBusyRounds) zdtm_sleep_ms(2); /* bounds the serial recomputation */
  }
  printf("openmp: %" PRIu64 " rounds\n", rounds);
  if (rounds >= kMaxRounds) zdtm_fail_note("ran %d rounds without a check request", kMaxRounds);
  if (omp_get_max_threads() != kThreads)
    zdtm_fail_note("omp_get_max_threads() is %d, want %d", omp_get_max_threads(), kThreads);
  for (uint64_t r = 0; r < rounds; r++) {
    if (members[r] != (1u << kThreads) - 1) {
      zdtm_fail_note("round %" PRIu64 ": team members %#x, want %#x", r, members[r],
                     (1u << kThreads) - 1);
      break;
    }
  }

  uint64_t *b = malloc(kWords * sizeof(*b));
  if (!b) zdtm_die("malloc failed");
  Init(b);
  uint64_t want_digest = kSeed;
  for (uint64_t r = 0; r < rounds; r++) {
    uint64_t x = 0;
    for (uint64_t i = 0; i < kWords; i++) {
      b[i] = Update(b[i], r, i);
      x ^= b[i];
    }
    want_digest = zdtm_mix64(want_digest ^ x);
  }
  if (digest != want_digest)
    zdtm_fail_note("digest after %" PRIu64 " rounds is %#" PRIx64 ", a serial run gives %#" PRIx64,
                   rounds, digest, want_digest);
  for (uint64_t i = 0; i < kWords; i++) {
    if (a[i] != b[i]) {
      zdtm_fail_note("word %" PRIu64 " is %#" PRIx64 ", a serial run gives %#" PRIx64, i, a[i],
                     b[i]);
      break;
    }
  }
  zdtm_finish();
}

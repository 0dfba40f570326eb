/* counter: increments a counter in memory and prints it every 100 ms.
 *
 * State: the counter (.bss), a shadow copy xor-ed with a seed (.data), the
 * last printed value, and a history of every value in a heap array allocated
 * before READY. Check: the counter continued from the last printed value,
 * never skipped or repeated, and the shadow and history agree with it. The
 * harness also checks that the "count N" lines in the log are continuous
 * across every checkpoint and restart. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "zdtm.h"

enum { kHistoryCap = 1 << 20, kPollsPerTick = 5 };
static const uint64_t kSeed = 0x5eed0c0a17e4ULL;

static uint64_t counter;
static uint64_t shadow = 0x5eed0c0a17e4ULL; /* == counter ^ kSeed */
static uint64_t last_printed;
static uint64_t *history;
static int continuity_broken;

static void Tick(void) {
  if (!continuity_broken && (counter != last_printed || (counter ^ kSeed) != shadow)) {
    continuity_broken = 1;
    zdtm_fail_note("counter is %" PRIu64 " (shadow says %" PRIu64
                   ") but the last printed value was %" PRIu64,
                   counter, shadow ^ kSeed, last_printed);
  }
  counter++;
  shadow = counter ^ kSeed;
  if (counter <= kHistoryCap) history[counter - 1] = zdtm_mix64(counter);
  printf("count %" PRIu64 "\n", counter);
  last_printed = counter;
}

int main(void) {
  zdtm_init("counter");
  history = malloc(kHistoryCap * sizeof(*history));
  if (!history) zdtm_die("malloc history failed");

  for (int i = 0; i < 3; i++) {
    Tick();
    zdtm_sleep_ms(100);
  }
  zdtm_ready();

  uint64_t ticks_after_ready = 0;
  for (unsigned polls = 1; !zdtm_check_requested(); polls++) {
    zdtm_sleep_ms(20);
    if (polls % kPollsPerTick == 0) {
      Tick();
      if (++ticks_after_ready == 3 && zdtm_corrupt_requested()) {
        counter++; /* skip one value without printing it */
        shadow = counter ^ kSeed;
      }
    }
  }

  if (counter != last_printed)
    zdtm_fail_note("counter %" PRIu64 " != last printed %" PRIu64, counter, last_printed);
  if ((counter ^ kSeed) != shadow)
    zdtm_fail_note("shadow copy says %" PRIu64 ", counter %" PRIu64, shadow ^ kSeed, counter);
  uint64_t n = counter < kHistoryCap ? counter : kHistoryCap;
  for (uint64_t i = 0; i < n; i++) {
    if (history[i] != zdtm_mix64(i + 1)) {
      zdtm_fail_note("history[%" PRIu64 "] does not hold value %" PRIu64
                     " (missed or repeated count)",
                     i, i + 1);
      break;
    }
  }
  zdtm_finish();
}

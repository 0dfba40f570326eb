/* zdtm.h: the protocol every ZDTM-style test program speaks with zdtm.py.
 *
 * A test builds a known state, then calls zdtm_ready(), which writes
 * "READY <pid>" to the file named by $ZDTM_READY (temp file + rename). It then
 * keeps up its normal activity while the harness checkpoints and restarts it,
 * until the file named by $ZDTM_CHECK exists (the main thread polls every
 * 20 ms with nanosleep). Then it verifies all the state it built before READY
 * and ends with zdtm_finish(): "PASS <name>" and exit 0, or
 * "FAIL <name>: <what differs>" and exit 1, on stdout.
 *
 * $ZDTM_SELFTEST_CORRUPT (any non-empty value) asks the test to damage its own
 * state after READY; "zdtm.py selftest" uses it to prove each test can fail.
 *
 * Single-threaded use except zdtm_fail_note(), which any thread may call.
 */
#ifndef STASIS_TEST_ZDTM_H
#define STASIS_TEST_ZDTM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Sets the test name, makes stdout line-buffered, reads the environment. */
void zdtm_init(const char *name);
const char *zdtm_name(void);

/* Writes "READY <pid>" to $ZDTM_READY atomically. */
void zdtm_ready(void);

/* True once $ZDTM_CHECK exists. */
bool zdtm_check_requested(void);

/* Sleeps ms milliseconds with nanosleep, resuming after signals. */
void zdtm_sleep_ms(unsigned ms);

/* Polls $ZDTM_CHECK every 20 ms until it exists. */
void zdtm_wait_check(void);

/* True if $ZDTM_SELFTEST_CORRUPT asks the test to damage its state. */
bool zdtm_corrupt_requested(void);

/* Records one difference found by a check; the test goes on and reports all
 * of them (up to a bounded length) in its FAIL line. Thread-safe. */
void zdtm_fail_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
bool zdtm_failed(void);

/* Prints PASS or FAIL with the recorded notes and exits 0 or 1. */
_Noreturn void zdtm_finish(void);

/* For errors while building the state: FAIL line, exit 1. */
_Noreturn void zdtm_die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Deterministic value sources: the expected state is always recomputed from a
 * seed at check time, never read back from memory the checkpoint restored. */
uint64_t zdtm_mix64(uint64_t x);           /* splitmix64 finaliser */
uint64_t zdtm_xorshift64(uint64_t *state); /* state must be non-zero */
uint64_t zdtm_hash_words(const uint64_t *p, size_t nwords, uint64_t h);

#endif /* STASIS_TEST_ZDTM_H */

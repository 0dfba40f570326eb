/* zdtm_util.h: helpers shared by the process-state test programs (files,
 * pipes, sockets, shared memory, signals, ...): deterministic byte patterns,
 * full reads and writes with a timeout, and the verdict of a child process.
 *
 * A child ends with zdtm_kid_finish(fd): its "PASS name" or "FAIL name: ..."
 * line (zdtm_finish's) goes to fd, a pipe to its parent, instead of stdout,
 * so only the root of a test's tree prints a verdict. The parent reads it with
 * zdtm_kid_collect() and reaps the child with zdtm_kid_reap(); every problem
 * becomes one of the parent's own notes, prefixed with the child's role.
 */
#ifndef STASIS_TEST_ZDTM_UTIL_H
#define STASIS_TEST_ZDTM_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The byte at absolute offset `off` of the pattern named `seed`. */
uint8_t zdtm_pattern_byte(uint64_t seed, uint64_t off);
/* Fills buf with bytes off..off+n-1 of pattern `seed`. */
void zdtm_pattern_fill(void *buf, size_t n, uint64_t seed, uint64_t off);
/* Index of the first byte of buf that is not byte off+i of pattern `seed`,
 * or -1 if all n match. */
long zdtm_pattern_diff(const void *buf, size_t n, uint64_t seed, uint64_t off);
/* Notes a failure "<what>: byte <i> is 0x.., want 0x.." if buf differs from
 * the pattern; returns true if it matched. */
bool zdtm_pattern_check(const char *what, const void *buf, size_t n, uint64_t seed, uint64_t off);

/* Reads exactly n bytes (looping over short reads and EINTR), waiting at most
 * timeout_ms in all for data (poll). Returns the bytes read (< n on timeout,
 * EOF or error; errno tells which for errors, 0 for EOF, ETIMEDOUT). */
size_t zdtm_read_full(int fd, void *buf, size_t n, int timeout_ms);
/* Writes all n bytes (looping over short writes and EINTR). */
bool zdtm_write_full(int fd, const void *buf, size_t n);

/* fflush(stdout), fork(); zdtm_die on failure. */
pid_t zdtm_fork(void);
/* In a child: sends the verdict line to fd and exits 0 (PASS) or 1. */
_Noreturn void zdtm_kid_finish(int fd);
/* In the parent: reads one verdict line from fd within timeout_ms; notes
 * "<who>: <the child's notes>" if it failed, or that no verdict came. */
void zdtm_kid_collect(int fd, const char *who, int timeout_ms);
/* Waits (polling) up to timeout_ms for child pid to end; notes it if it did
 * not end, or ended other than with exit status 0. */
void zdtm_kid_reap(pid_t pid, const char *who, int timeout_ms);

/* A parent/child handshake: one-byte messages each way, and the pipe that
 * carries the child's verdict (zdtm_kid_finish / zdtm_kid_collect). Open it
 * before fork; after fork each side calls its *_side function, which closes
 * the other side's ends. */
struct zdtm_link {
  int to_kid[2], to_parent[2], verdict[2];
};
void zdtm_link_open(struct zdtm_link *link);
void zdtm_link_kid_side(struct zdtm_link *link);
void zdtm_link_parent_side(struct zdtm_link *link);
bool zdtm_link_tell_parent(struct zdtm_link *link, char message);
bool zdtm_link_tell_kid(struct zdtm_link *link, char message);
/* True when one message arrived within timeout_ms. */
bool zdtm_link_hear_from_kid(struct zdtm_link *link, int timeout_ms);
bool zdtm_link_hear_from_parent(struct zdtm_link *link, int timeout_ms);

/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t zdtm_now_ms(void);

#endif /* STASIS_TEST_ZDTM_UTIL_H */

/* tcp: TCP connections whose two ends are both in the checkpoint (issue 20).
 *
 * The parent listens on 127.0.0.1 (and on [::1] when IPv6 loopback works),
 * forks; the child connects to each listener, the parent accepts. Small
 * buffers on every connection socket. Before READY both ends of every
 * connection write a deterministic byte stream (pattern seeded per
 * direction) without reading, until the kernel refuses more: at the
 * checkpoint each direction has bytes in the receiver's receive queue and
 * in the sender's send queue (unacknowledged and unsent ones).
 *
 * With ZDTM_TCP_AUTOTUNED the buffers are the kernel's own (autotuned, a
 * few MiB queued).
 *
 * Check (each process for its ends): write the rest of kTotal bytes while
 * reading the peer's kTotal bytes, every byte compared with the pattern at
 * its offset (nothing lost, nothing duplicated, in order); shut down the
 * write half and read EOF right after the last byte; the options set before
 * (TCP_NODELAY, O_NONBLOCK) are still there; then a new connection through
 * each restored listener carries a message both ways. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum { kTotal = 32 << 20, kChunk = 65536, kBuf = 32768, kMaxConn = 2 };

struct conn {
  int fd;
  uint64_t out_seed, in_seed;
  size_t sent, got;
  int eof;
};

static char wbuf[kChunk], rbuf[kChunk];

static void SetSmallBuffers(int fd) {
  if (getenv("ZDTM_TCP_AUTOTUNED")) return; /* the kernel's buffers, growing */
  int v = kBuf;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof v);
}

/* A listener on the loopback of `family`, port chosen by the kernel; -1 when
 * the family's loopback does not work here. */
static int Listen(int family, struct sockaddr_storage *addr, socklen_t *len) {
  int fd = socket(family, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  memset(addr, 0, sizeof *addr);
  if (family == AF_INET) {
    struct sockaddr_in *in = (struct sockaddr_in *)addr;
    in->sin_family = AF_INET;
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    *len = sizeof *in;
  } else {
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
    in6->sin6_family = AF_INET6;
    in6->sin6_addr = in6addr_loopback;
    *len = sizeof *in6;
  }
  SetSmallBuffers(fd);
  if (bind(fd, (struct sockaddr *)addr, *len) != 0 || listen(fd, 8) != 0 ||
      getsockname(fd, (struct sockaddr *)addr, len) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static int Connect(const struct sockaddr_storage *addr, socklen_t len) {
  int fd = socket(addr->ss_family, SOCK_STREAM, 0);
  if (fd < 0) zdtm_die("socket: %s", strerror(errno));
  SetSmallBuffers(fd);
  if (connect(fd, (const struct sockaddr *)addr, len) != 0)
    zdtm_die("connect: %s", strerror(errno));
  return fd;
}

/* Writes the stream until the kernel takes no more (non-blocking). */
static void Fill(struct conn *c) {
  while (c->sent + kChunk <= kTotal) {
    zdtm_pattern_fill(wbuf, kChunk, c->out_seed, c->sent);
    ssize_t n = send(c->fd, wbuf, kChunk, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) zdtm_die("fill: send: %s", strerror(errno));
    c->sent += (size_t)n;
  }
}

/* Both directions of every connection to the end, checked byte by byte. */
static void Finish(struct conn *cs, int n, const char *who) {
  uint64_t deadline = zdtm_now_ms() + 30000;
  for (;;) {
    struct pollfd p[kMaxConn];
    int busy = 0;
    for (int i = 0; i < n; ++i) {
      p[i].fd = cs[i].fd;
      p[i].events = 0;
      if (!cs[i].eof) p[i].events |= POLLIN;
      if (cs[i].sent < kTotal) p[i].events |= POLLOUT;
      busy |= p[i].events != 0;
    }
    if (!busy) return;
    if (zdtm_now_ms() > deadline) {
      zdtm_fail_note("%s: stalled: sent %zu/%zu got %zu", who, cs[0].sent, (size_t)kTotal,
                     cs[0].got);
      return;
    }
    if (poll(p, (nfds_t)n, 1000) < 0 && errno != EINTR) zdtm_die("poll: %s", strerror(errno));
    for (int i = 0; i < n; ++i) {
      struct conn *c = &cs[i];
      if ((p[i].revents & POLLOUT) && c->sent < kTotal) {
        size_t want = kTotal - c->sent < kChunk ? kTotal - c->sent : kChunk;
        zdtm_pattern_fill(wbuf, want, c->out_seed, c->sent);
        ssize_t w = send(c->fd, wbuf, want, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0)
          c->sent += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EINTR) {
          zdtm_fail_note("%s: conn %d: send after %zu bytes: %s", who, i, c->sent, strerror(errno));
          c->sent = kTotal;
        }
        if (c->sent == kTotal && shutdown(c->fd, SHUT_WR) != 0)
          zdtm_fail_note("%s: conn %d: shutdown: %s", who, i, strerror(errno));
      }
      if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        ssize_t r = recv(c->fd, rbuf, sizeof rbuf, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r < 0) {
          zdtm_fail_note("%s: conn %d: recv after %zu bytes: %s", who, i, c->got, strerror(errno));
          c->eof = 1;
        } else if (r == 0) {
          if (c->got != kTotal)
            zdtm_fail_note("%s: conn %d: EOF after %zu bytes, want %d", who, i, c->got, kTotal);
          c->eof = 1;
        } else {
          if (c->got + (size_t)r > kTotal) {
            zdtm_fail_note("%s: conn %d: %zu bytes past the end of the stream", who, i,
                           c->got + (size_t)r - kTotal);
            c->eof = 1;
            continue;
          }
          long bad = zdtm_pattern_diff(rbuf, (size_t)r, c->in_seed, c->got);
          if (bad >= 0) {
            zdtm_fail_note("%s: conn %d: byte %zu of the stream differs", who, i,
                           c->got + (size_t)bad);
            c->eof = 1;
          }
          c->got += (size_t)r;
        }
      }
    }
  }
}

static void CheckOptions(struct conn *cs, int n, const char *who, int nodelay_want) {
  for (int i = 0; i < n; ++i) {
    int v = 0;
    socklen_t l = sizeof v;
    if (getsockopt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY, &v, &l) != 0 || !!v != nodelay_want)
      zdtm_fail_note("%s: conn %d: TCP_NODELAY is %d, want %d", who, i, v, nodelay_want);
    if (!(fcntl(cs[i].fd, F_GETFL) & O_NONBLOCK))
      zdtm_fail_note("%s: conn %d: O_NONBLOCK lost", who, i);
  }
}

int main(void) {
  zdtm_init("tcp");
  struct sockaddr_storage addr[kMaxConn];
  socklen_t alen[kMaxConn];
  int lfd[kMaxConn], nl = 0;
  lfd[nl] = Listen(AF_INET, &addr[nl], &alen[nl]);
  if (lfd[nl] < 0) zdtm_die("listen on 127.0.0.1: %s", strerror(errno));
  ++nl;
  lfd[nl] = Listen(AF_INET6, &addr[nl], &alen[nl]);
  if (lfd[nl] >= 0) ++nl;
  printf("tcp: %d listener(s)%s\n", nl, nl == 2 ? " (IPv4 and IPv6)" : " (IPv4 only)");
  struct zdtm_link link;
  zdtm_link_open(&link);
  pid_t kid = zdtm_fork();
  struct conn cs[kMaxConn];
  memset(cs, 0, sizeof cs);
  if (kid == 0) {
    zdtm_link_kid_side(&link);
    for (int i = 0; i < nl; ++i) {
      close(lfd[i]);
      cs[i].fd = Connect(&addr[i], alen[i]);
      cs[i].out_seed = 0xc0 + (uint64_t)i;
      cs[i].in_seed = 0x90 + (uint64_t)i;
      fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
    }
    for (int i = 0; i < nl; ++i) Fill(&cs[i]);
    zdtm_link_tell_parent(&link, 'f');
    if (!zdtm_link_hear_from_parent(&link, 600000)) zdtm_die("child: no word from the parent");
    Finish(cs, nl, "child");
    CheckOptions(cs, nl, "child", 0);
    /* A new connection through each restored listener. */
    for (int i = 0; i < nl; ++i) {
      int fd = Connect(&addr[i], alen[i]);
      if (!zdtm_write_full(fd, "ping", 4)) zdtm_fail_note("child: new conn %d: write", i);
      char b[4];
      if (zdtm_read_full(fd, b, 4, 10000) != 4 || memcmp(b, "pong", 4) != 0)
        zdtm_fail_note("child: new conn %d: no pong", i);
      close(fd);
    }
    zdtm_kid_finish(link.verdict[1]);
  }
  zdtm_link_parent_side(&link);
  for (int i = 0; i < nl; ++i) {
    cs[i].fd = accept(lfd[i], NULL, NULL);
    if (cs[i].fd < 0) zdtm_die("accept: %s", strerror(errno));
    cs[i].out_seed = 0x90 + (uint64_t)i;
    cs[i].in_seed = 0xc0 + (uint64_t)i;
    int one = 1;
    setsockopt(cs[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fcntl(cs[i].fd, F_SETFL, O_NONBLOCK);
  }
  /* A socket bound but neither listening nor connected, with keepalive. */
  int bound = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in b4 = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t b4len = sizeof b4;
  int one = 1;
  if (bound < 0 || setsockopt(bound, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0 ||
      bind(bound, (struct sockaddr *)&b4, sizeof b4) != 0 ||
      getsockname(bound, (struct sockaddr *)&b4, &b4len) != 0)
    zdtm_die("bound socket: %s", strerror(errno));
  if (!zdtm_link_hear_from_kid(&link, 30000)) zdtm_die("the child did not fill its side");
  for (int i = 0; i < nl; ++i) Fill(&cs[i]);
  zdtm_sleep_ms(200); /* loopback settles: full windows both ways */
  for (int i = 0; i < nl; ++i) Fill(&cs[i]);
  printf("tcp: parent sent %zu, child side filled before READY\n", cs[0].sent);
  zdtm_ready();
  zdtm_wait_check();
  if (zdtm_corrupt_requested()) {
    /* Lose bytes: read and drop some of what the peer sent. */
    recv(cs[0].fd, rbuf, 100, MSG_DONTWAIT);
  }
  zdtm_link_tell_kid(&link, 'g');
  {
    struct sockaddr_in now;
    socklen_t nlen = sizeof now;
    int ka = 0;
    socklen_t kalen = sizeof ka;
    if (getsockname(bound, (struct sockaddr *)&now, &nlen) != 0 || now.sin_port != b4.sin_port ||
        now.sin_addr.s_addr != b4.sin_addr.s_addr)
      zdtm_fail_note("parent: the bound socket lost its address (port %u, want %u)",
                     ntohs(now.sin_port), ntohs(b4.sin_port));
    if (getsockopt(bound, SOL_SOCKET, SO_KEEPALIVE, &ka, &kalen) != 0 || !ka)
      zdtm_fail_note("parent: the bound socket lost SO_KEEPALIVE");
  }
  Finish(cs, nl, "parent");
  CheckOptions(cs, nl, "parent", 1);
  for (int i = 0; i < nl; ++i) {
    int fl = fcntl(lfd[i], F_GETFL);
    fcntl(lfd[i], F_SETFL, fl & ~O_NONBLOCK);
    int fd = accept(lfd[i], NULL, NULL);
    if (fd < 0) {
      zdtm_fail_note("parent: accept a new connection on listener %d: %s", i, strerror(errno));
      continue;
    }
    char b[4];
    if (zdtm_read_full(fd, b, 4, 10000) != 4 || memcmp(b, "ping", 4) != 0)
      zdtm_fail_note("parent: new conn %d: no ping", i);
    if (!zdtm_write_full(fd, "pong", 4)) zdtm_fail_note("parent: new conn %d: write", i);
    close(fd);
  }
  zdtm_kid_collect(link.verdict[0], "child", 60000);
  zdtm_kid_reap(kid, "child", 10000);
  zdtm_finish();
}

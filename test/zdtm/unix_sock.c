/* unix_sock MODE: UNIX domain sockets in the tree, with data queued inside.
 *
 * socketpair:   a SOCK_STREAM and a SOCK_DGRAM socketpair split between the
 *               root and a forked child. Before READY the root sends 10000
 *               stream bytes and datagrams of 100, 1 and 2000 bytes; the
 *               child 7000 stream bytes and datagrams of 500 and 7 bytes;
 *               nothing is read. Check: each side receives the other's bytes
 *               in order and the datagrams with their boundaries and order,
 *               then one more exchange each way; socket types and domains.
 * unix_listen:  the root listens on a UNIX stream socket bound to
 *               <cwd>/sock; a child connected and the root accepted it; 3000
 *               bytes queued root->child, 2000 child->root. Check: the data
 *               both ways; getsockname/getpeername name the path; the path is
 *               a socket; a new client connects to the path after the
 *               restart and the listener accepts it and talks to it.
 * unix_backlog: as unix_listen, but the root has not accept()ed the child's
 *               connection (it waits in the backlog with 1000 bytes the child
 *               sent). Check: accept() returns it with the bytes, and a reply
 *               reaches the child.
 * net_closed:   network sockets (checkpointed with --close-sockets): a TCP
 *               listener on 127.0.0.1, a TCP connection to it (both ends,
 *               one with O_NONBLOCK), a bound UDP socket. Check: each fd is
 *               still a socket of its type with its FD_CLOEXEC and
 *               O_NONBLOCK; the connection has both ends in the checkpoint,
 *               so it is kept (issue 20): the bytes queued in it arrive and
 *               it carries more both ways. With ZDTM_OUTSIDE_SOCK, also a
 *               UNIX stream socket connected to that path, and with
 *               ZDTM_OUTSIDE_TCP (a file holding a port) a TCP connection
 *               to 127.0.0.1:port, listeners of the harness (outside the
 *               checkpoint): after the restart they read EOF. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum {
  kP2C = 10000,
  kC2P = 7000,
  kConnP2C = 3000,
  kConnC2P = 2000,
  kBacklogMsg = 1000,
  kLate = 333,
  kBuf = 16384
};
static const uint64_t kSeedP2C = 0x703263, kSeedC2P = 0x633270, kSeedDgram = 0xd9a0,
                      kSeedLate = 0x1a7e;
static const size_t kParentDgrams[] = {100, 1, 2000};
static const size_t kChildDgrams[] = {500, 7};

static char buf[kBuf];

static void Send(int fd, size_t n, uint64_t seed, const char *what) {
  zdtm_pattern_fill(buf, n, seed, 0);
  if (!zdtm_write_full(fd, buf, n)) zdtm_fail_note("%s: write: %s", what, strerror(errno));
}

static void Recv(int fd, size_t n, uint64_t seed, const char *what) {
  size_t got = zdtm_read_full(fd, buf, n, 10000);
  if (got != n)
    zdtm_fail_note("%s: received %zu of %zu bytes (%s)", what, got, n,
                   errno == ETIMEDOUT ? "timeout"
                   : errno            ? strerror(errno)
                                      : "EOF");
  else
    zdtm_pattern_check(what, buf, n, seed, 0);
}

static void SendDgrams(int fd, const size_t *sizes, int count, uint64_t seed) {
  for (int i = 0; i < count; i++) {
    zdtm_pattern_fill(buf, sizes[i], seed + (uint64_t)i, 0);
    if (send(fd, buf, sizes[i], 0) != (ssize_t)sizes[i])
      zdtm_die("send datagram %d: %s", i, strerror(errno));
  }
}

static void RecvDgrams(int fd, const size_t *sizes, int count, uint64_t seed, const char *what) {
  for (int i = 0; i < count; i++) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1) {
      zdtm_fail_note("%s: datagram %d did not come", what, i);
      return;
    }
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    char w[96];
    snprintf(w, sizeof(w), "%s datagram %d", what, i);
    if (n != (ssize_t)sizes[i]) {
      zdtm_fail_note("%s: %zd bytes, want %zu", w, n, sizes[i]);
      return;
    }
    zdtm_pattern_check(w, buf, sizes[i], seed + (uint64_t)i, 0);
  }
  ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
  if (n != -1 || errno != EAGAIN) zdtm_fail_note("%s: an extra datagram of %zd bytes", what, n);
}

static void ExpectSocket(const char *what, int fd, int type) {
  int t = -1, dom = -1;
  socklen_t len = sizeof(t);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &len) != 0 || t != type)
    zdtm_fail_note("%s: SO_TYPE %d, want %d (%s)", what, t, type, strerror(errno));
  len = sizeof(dom);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &len) != 0 || dom != AF_UNIX)
    zdtm_fail_note("%s: SO_DOMAIN %d, want AF_UNIX", what, dom);
}

static void KeepOnly(const int *keep, int n) {
  for (int fd = 3; fd < 1024; fd++) {
    int k = 0;
    while (k < n && keep[k] != fd) k++;
    if (k == n) close(fd);
  }
}

static void SocketPair(void) {
  int st[2], dg[2], verdict[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) != 0 ||
      socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg) != 0 || pipe2(verdict, O_CLOEXEC) != 0)
    zdtm_die("socketpair: %s", strerror(errno));
  pid_t kid = zdtm_fork();
  if (kid == 0) {
    KeepOnly((int[]){st[1], dg[1], verdict[1]}, 3);
    SendDgrams(dg[1], kChildDgrams, 2, kSeedDgram + 100); /* before the stream: see below */
    Send(st[1], kC2P, kSeedC2P, "stream child->parent");
    zdtm_wait_check();
    ExpectSocket("stream socket in the child", st[1], SOCK_STREAM);
    ExpectSocket("datagram socket in the child", dg[1], SOCK_DGRAM);
    Recv(st[1], kP2C, kSeedP2C, "stream parent->child");
    RecvDgrams(dg[1], kParentDgrams, 3, kSeedDgram, "parent->child");
    Recv(st[1], kLate, kSeedLate, "stream parent->child after the restart");
    Send(st[1], kLate, kSeedLate + 1, "stream child->parent after the restart");
    SendDgrams(dg[1], (size_t[]){kLate}, 1, kSeedLate + 2);
    zdtm_kid_finish(verdict[1]);
  }
  close(st[1]);
  close(dg[1]);
  close(verdict[1]);
  Send(st[0], kP2C, kSeedP2C, "stream parent->child");
  SendDgrams(dg[0], kParentDgrams, 3, kSeedDgram);
  /* Wait until the child's data is queued for us (datagrams first, so all
   * of it once the stream bytes are there). */
  for (int i = 0; recv(st[0], buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT) != kC2P; i++) {
    if (i == 1000) zdtm_die("the child's data did not arrive within 10 s");
    zdtm_sleep_ms(10);
  }
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested() && recv(dg[0], buf, sizeof(buf), 0) < 0)
    zdtm_die("recv: %s", strerror(errno));
  ExpectSocket("stream socket", st[0], SOCK_STREAM);
  ExpectSocket("datagram socket", dg[0], SOCK_DGRAM);
  Recv(st[0], kC2P, kSeedC2P, "stream child->parent");
  RecvDgrams(dg[0], kChildDgrams, 2, kSeedDgram + 100, "child->parent");
  Send(st[0], kLate, kSeedLate, "stream parent->child after the restart");
  Recv(st[0], kLate, kSeedLate + 1, "stream child->parent after the restart");
  RecvDgrams(dg[0], (size_t[]){kLate}, 1, kSeedLate + 2, "child->parent after the restart");
  zdtm_kid_collect(verdict[0], "child", 15000);
  zdtm_kid_reap(kid, "child", 5000);
}

static struct sockaddr_un addr;
static socklen_t addr_len;

static int Connect(void) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  if (connect(fd, (struct sockaddr *)&addr, addr_len) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  return fd;
}

static void ExpectName(const char *what, int fd, int peer) {
  struct sockaddr_un a;
  socklen_t len = sizeof(a);
  memset(&a, 0, sizeof(a));
  int r = peer ? getpeername(fd, (struct sockaddr *)&a, &len)
               : getsockname(fd, (struct sockaddr *)&a, &len);
  if (r != 0)
    zdtm_fail_note("%s: %s: %s", what, peer ? "getpeername" : "getsockname", strerror(errno));
  else if (a.sun_family != AF_UNIX || strcmp(a.sun_path, addr.sun_path) != 0)
    zdtm_fail_note("%s: bound to '%s', want '%s'", what, a.sun_path, addr.sun_path);
}

static void Listen(int backlog_mode) {
  char cwd[80];
  if (!getcwd(cwd, sizeof(cwd)))
    zdtm_die("getcwd: %s (path too long for sun_path?)", strerror(errno));
  addr.sun_family = AF_UNIX;
  snprintf(addr.sun_path, sizeof(addr.sun_path), "%s/sock", cwd);
  addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(addr.sun_path) + 1);
  int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
  int verdict[2];
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, addr_len) != 0 || listen(lfd, 8) != 0 ||
      pipe2(verdict, O_CLOEXEC) != 0)
    zdtm_die("listen on %s: %s", addr.sun_path, strerror(errno));
  pid_t kid = zdtm_fork();
  if (kid == 0) {
    KeepOnly((int[]){verdict[1]}, 1);
    int fd = Connect();
    if (fd < 0) zdtm_die("connect: %s", strerror(errno));
    Send(fd, backlog_mode ? kBacklogMsg : kConnC2P, kSeedC2P, "client->server");
    zdtm_wait_check();
    ExpectSocket("client socket", fd, SOCK_STREAM);
    ExpectName("client's peer", fd, 1);
    if (!backlog_mode) Recv(fd, kConnP2C, kSeedP2C, "server->client");
    Recv(fd, kLate, kSeedLate, "server->client after the restart");
    zdtm_kid_finish(verdict[1]);
  }
  close(verdict[1]);
  int conn = -1;
  if (!backlog_mode) {
    conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) zdtm_die("accept: %s", strerror(errno));
    Send(conn, kConnP2C, kSeedP2C, "server->client");
    for (int i = 0; recv(conn, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT) != kConnC2P; i++) {
      if (i == 1000) zdtm_die("the client's data did not arrive within 10 s");
      zdtm_sleep_ms(10);
    }
  } else {
    /* Wait until the connection is in the backlog: the listener is readable. */
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1) zdtm_die("no connection in the backlog within 10 s");
    zdtm_sleep_ms(50); /* and the client's bytes are sent */
  }
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) unlink(addr.sun_path);
  ExpectSocket("listening socket", lfd, SOCK_STREAM);
  ExpectName("listening socket", lfd, 0);
  int acc = -1;
  socklen_t len = sizeof(acc);
  if (getsockopt(lfd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) != 0 || acc != 1)
    zdtm_fail_note("listening socket: SO_ACCEPTCONN is %d", acc);
  struct stat st;
  if (stat(addr.sun_path, &st) != 0 || !S_ISSOCK(st.st_mode))
    zdtm_fail_note("%s is not a socket any more (%s)", addr.sun_path, strerror(errno));
  if (backlog_mode) {
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) {
      zdtm_fail_note("the connection in the backlog is gone");
    } else {
      conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
      if (conn < 0) zdtm_fail_note("accept from the backlog: %s", strerror(errno));
    }
    if (conn >= 0) Recv(conn, kBacklogMsg, kSeedC2P, "client->server (sent before accept)");
  } else {
    ExpectSocket("accepted socket", conn, SOCK_STREAM);
    ExpectName("accepted socket", conn, 0);
    Recv(conn, kConnC2P, kSeedC2P, "client->server");
  }
  if (conn >= 0) Send(conn, kLate, kSeedLate, "server->client after the restart");

  /* A new client after the restart. */
  int fd = Connect();
  if (fd < 0) {
    zdtm_fail_note("a new connect to %s: %s", addr.sun_path, strerror(errno));
  } else {
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    int c = poll(&p, 1, 5000) == 1 ? accept4(lfd, NULL, NULL, SOCK_CLOEXEC) : -1;
    if (c < 0) {
      zdtm_fail_note("the listener did not accept a new client");
    } else {
      Send(fd, kLate, kSeedLate + 5, "new client->server");
      Recv(c, kLate, kSeedLate + 5, "new client->server");
      Send(c, kLate, kSeedLate + 6, "server->new client");
      Recv(fd, kLate, kSeedLate + 6, "server->new client");
      close(c);
    }
    close(fd);
  }
  zdtm_kid_collect(verdict[0], "client", 15000);
  zdtm_kid_reap(kid, "client", 5000);
  unlink(addr.sun_path);
}

static void ExpectClosed(const char *what, int fd, int type, int cloexec, int nonblock) {
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    zdtm_fail_note("%s: fd %d is not a socket any more (%s)", what, fd, strerror(errno));
    return;
  }
  int t = -1;
  socklen_t len = sizeof(t);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &len) != 0 || t != type)
    zdtm_fail_note("%s: SO_TYPE %d, want %d", what, t, type);
  int fdf = fcntl(fd, F_GETFD), fl = fcntl(fd, F_GETFL);
  if (!!(fdf & FD_CLOEXEC) != cloexec)
    zdtm_fail_note("%s: FD_CLOEXEC is %d, want %d", what, !!(fdf & FD_CLOEXEC), cloexec);
  if (!!(fl & O_NONBLOCK) != nonblock)
    zdtm_fail_note("%s: O_NONBLOCK is %d, want %d", what, !!(fl & O_NONBLOCK), nonblock);
}

static void NetClosed(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof(a);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 4) != 0 ||
      getsockname(lfd, (struct sockaddr *)&a, &len) != 0)
    zdtm_die("TCP listener: %s", strerror(errno));
  int cfd = socket(AF_INET, SOCK_STREAM, 0);
  if (cfd < 0 || connect(cfd, (struct sockaddr *)&a, sizeof(a)) != 0)
    zdtm_die("TCP connect: %s", strerror(errno));
  int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (afd < 0) zdtm_die("accept: %s", strerror(errno));
  Send(cfd, 100, kSeedP2C, "tcp client->server"); /* queued, kept with the connection */
  int tout = -1;
  const char *tcp_file = getenv("ZDTM_OUTSIDE_TCP");
  if (tcp_file && *tcp_file) {
    FILE *pf = fopen(tcp_file, "r");
    int port = 0;
    if (!pf || fscanf(pf, "%d", &port) != 1) zdtm_die("read the port in %s", tcp_file);
    fclose(pf);
    struct sockaddr_in o = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    tout = socket(AF_INET, SOCK_STREAM, 0);
    if (tout < 0 || connect(tout, (struct sockaddr *)&o, sizeof(o)) != 0)
      zdtm_die("connect to 127.0.0.1:%d: %s", port, strerror(errno));
    Send(tout, 100, kSeedP2C, "tcp to outside"); /* lost with the connection */
  }
  struct sockaddr_in u = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int ufd = socket(AF_INET, SOCK_DGRAM, 0);
  if (ufd < 0 || bind(ufd, (struct sockaddr *)&u, sizeof(u)) != 0)
    zdtm_die("UDP socket: %s", strerror(errno));
  int out = -1;
  const char *outside = getenv("ZDTM_OUTSIDE_SOCK");
  if (outside && *outside) {
    struct sockaddr_un o = {.sun_family = AF_UNIX};
    snprintf(o.sun_path, sizeof(o.sun_path), "%s", outside);
    out = socket(AF_UNIX, SOCK_STREAM, 0);
    if (out < 0 || connect(out, (struct sockaddr *)&o, sizeof(o)) != 0)
      zdtm_die("connect %s: %s", outside, strerror(errno));
  }
  int half[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, half) != 0) zdtm_die("socketpair: %s", strerror(errno));
  Send(half[1], 500, kSeedC2P, "closed peer->survivor");
  close(half[1]);
  zdtm_ready();

  zdtm_wait_check();
  ExpectClosed("TCP listener", lfd, SOCK_STREAM, 1, 0);
  ExpectClosed("TCP client", cfd, SOCK_STREAM, 0, 0);
  ExpectClosed("TCP accepted", afd, SOCK_STREAM, 1, 1);
  ExpectClosed("UDP socket", ufd, SOCK_DGRAM, 0, 0);
  /* Both ends were in the checkpoint: the connection goes on. */
  Recv(afd, 100, kSeedP2C, "tcp client->server");
  Send(afd, 300, kSeedC2P, "tcp server->client");
  Recv(cfd, 300, kSeedC2P, "tcp server->client");
  ssize_t n;
  if (tout >= 0) {
    ExpectSocket("TCP socket that led outside", tout, SOCK_STREAM);
    struct pollfd p = {.fd = tout, .events = POLLIN};
    n = poll(&p, 1, 2000) == 1 ? recv(tout, buf, sizeof(buf), 0) : -2;
    if (n != 0)
      zdtm_fail_note(
          "TCP socket that led outside: recv gives %zd (%s), want 0 (EOF: the peer is gone)", n,
          n < 0 ? strerror(errno) : "");
  }
  if (out >= 0) {
    ExpectSocket("UNIX socket that led outside", out, SOCK_STREAM);
    n = recv(out, buf, sizeof(buf), MSG_DONTWAIT);
    if (n != 0)
      zdtm_fail_note("UNIX socket that led outside: recv gives %zd (%s), want 0 (EOF)", n,
                     n < 0 ? strerror(errno) : "");
  }
  /* A UNIX socket whose peer closed keeps what the peer sent, then EOF. */
  ExpectSocket("UNIX socket with a closed peer", half[0], SOCK_STREAM);
  Recv(half[0], 500, kSeedC2P, "closed peer->survivor");
  n = recv(half[0], buf, sizeof(buf), MSG_DONTWAIT);
  if (n != 0)
    zdtm_fail_note("UNIX socket with a closed peer: recv after the data gives %zd, want 0 (EOF)",
                   n);
}

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "socketpair") != 0 && strcmp(mode, "unix_listen") != 0 &&
      strcmp(mode, "unix_backlog") != 0 && strcmp(mode, "net_closed") != 0) {
    zdtm_init("unix_sock");
    zdtm_die("usage: unix_sock socketpair|unix_listen|unix_backlog|net_closed");
  }
  zdtm_init(mode);
  if (strcmp(mode, "socketpair") == 0)
    SocketPair();
  else if (strcmp(mode, "net_closed") == 0)
    NetClosed();
  else
    Listen(strcmp(mode, "unix_backlog") == 0);
  zdtm_finish();
}

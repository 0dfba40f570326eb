/* pty: a pseudo-terminal pair inside the tree, and a child whose controlling
 * terminal it is.
 *
 * The root opens /dev/ptmx (posix_openpt), unlocks it and opens the slave
 * /dev/pts/N; it sets the slave to raw mode at 38400 baud with VMIN 1 and
 * VTIME 0 and a 33x101 window. Child K (fork, setsid, TIOCSCTTY) makes the
 * slave its controlling terminal and keeps its own fd of it.
 *
 * Check: the master's pty number (TIOCGPTN) and ptsname are N still, the
 * slave fd is /dev/pts/N (same rdev), termios and window size as set; K
 * can open /dev/tty, tcgetsid says K's session and the foreground group is
 * K's; bytes K writes half to its slave fd and half to /dev/tty arrive at the
 * master in order (so /dev/tty is this terminal), and bytes written to the master reach K unchanged
 * (raw mode). No data is left inside the terminal at the checkpoint (terminal queues are not part
 * of this test). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include "zdtm.h"
#include "zdtm_util.h"

enum { kMsg = 200 };
static const uint64_t kSeedUp = 0x7570, kSeedDown = 0x646f776e;

static int master, slave, pty_number;
static char slave_path[64];

static struct termios Wanted(void) {
  struct termios t;
  memset(&t, 0, sizeof(t));
  if (tcgetattr(slave, &t) != 0) zdtm_die("tcgetattr: %s", strerror(errno));
  cfmakeraw(&t);
  cfsetispeed(&t, B38400);
  cfsetospeed(&t, B38400);
  t.c_cc[VMIN] = 1;
  t.c_cc[VTIME] = 0;
  return t;
}

static void CheckSlave(const char *who, int fd, const struct termios *want) {
  struct stat a, b;
  if (fstat(fd, &a) != 0 || stat(slave_path, &b) != 0 || a.st_rdev != b.st_rdev)
    zdtm_fail_note("%s: the slave fd is not %s", who, slave_path);
  struct termios t;
  if (tcgetattr(fd, &t) != 0) {
    zdtm_fail_note("%s: tcgetattr: %s", who, strerror(errno));
  } else if (t.c_iflag != want->c_iflag || t.c_oflag != want->c_oflag ||
             t.c_cflag != want->c_cflag || t.c_lflag != want->c_lflag ||
             cfgetospeed(&t) != B38400 || t.c_cc[VMIN] != 1 || t.c_cc[VTIME] != 0) {
    zdtm_fail_note("%s: termios iflag %#x oflag %#x cflag %#x lflag %#x, want %#x %#x %#x %#x", who,
                   t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, want->c_iflag, want->c_oflag,
                   want->c_cflag, want->c_lflag);
  }
  struct winsize ws;
  if (ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_row != 33 || ws.ws_col != 101)
    zdtm_fail_note("%s: window %ux%u, want 33x101", who, ws.ws_row, ws.ws_col);
}

int main(void) {
  zdtm_init("pty");
  master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0)
    zdtm_die("posix_openpt: %s", strerror(errno));
  if (ptsname_r(master, slave_path, sizeof(slave_path)) != 0 ||
      ioctl(master, TIOCGPTN, &pty_number) != 0)
    zdtm_die("ptsname: %s", strerror(errno));
  slave = open(slave_path, O_RDWR | O_NOCTTY);
  if (slave < 0) zdtm_die("open %s: %s", slave_path, strerror(errno));
  struct termios want = Wanted();
  struct winsize ws = {.ws_row = 33, .ws_col = 101};
  if (tcsetattr(slave, TCSANOW, &want) != 0 || ioctl(slave, TIOCSWINSZ, &ws) != 0)
    zdtm_die("tcsetattr: %s", strerror(errno));
  want = Wanted(); /* as the kernel keeps it */
  int verdict[2], sync[2];
  if (pipe2(verdict, O_CLOEXEC) != 0 || pipe2(sync, O_CLOEXEC) != 0)
    zdtm_die("pipe: %s", strerror(errno));

  pid_t k = zdtm_fork();
  if (k == 0) {
    close(master);
    close(verdict[0]);
    close(sync[0]);
    if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) != 0) zdtm_die("TIOCSCTTY: %s", strerror(errno));
    if (write(sync[1], "s", 1) != 1) _exit(3);
    close(sync[1]);
    zdtm_wait_check();
    CheckSlave("K", slave, &want);
    int tty = open("/dev/tty", O_RDWR | O_CLOEXEC);
    if (tty < 0) zdtm_fail_note("K: open /dev/tty: %s (no controlling terminal)", strerror(errno));
    if (tcgetsid(slave) != getsid(0))
      zdtm_fail_note("K: tcgetsid %d, want its session %d", tcgetsid(slave), getsid(0));
    if (tcgetpgrp(slave) != getpgrp())
      zdtm_fail_note("K: foreground group %d, want %d", tcgetpgrp(slave), getpgrp());
    char buf[kMsg];
    zdtm_pattern_fill(buf, kMsg, kSeedUp, 0);
    /* The first half through the slave fd, the rest through /dev/tty: the
     * master gets all of it only if /dev/tty is this terminal. */
    if (!zdtm_write_full(slave, buf, kMsg / 2) ||
        !zdtm_write_full(tty >= 0 ? tty : slave, buf + kMsg / 2, kMsg / 2))
      zdtm_fail_note("K: write to the terminal: %s", strerror(errno));
    if (tty >= 0) close(tty);
    size_t got = zdtm_read_full(slave, buf, kMsg, 10000);
    if (got != kMsg)
      zdtm_fail_note("K: read %zu of %d bytes from the slave", got, kMsg);
    else
      zdtm_pattern_check("K: bytes from the master", buf, kMsg, kSeedDown, 0);
    zdtm_kid_finish(verdict[1]);
  }
  close(verdict[1]);
  close(sync[1]);
  char c;
  if (zdtm_read_full(sync[0], &c, 1, 10000) != 1) zdtm_die("the child did not take the terminal");
  close(sync[0]);
  printf("pty: %s, controlling terminal of child %d\n", slave_path, k);
  zdtm_ready();

  zdtm_wait_check();
  if (zdtm_corrupt_requested()) {
    struct winsize other = {.ws_row = 24, .ws_col = 80};
    ioctl(slave, TIOCSWINSZ, &other);
  }
  int n = -1;
  char path[64] = "";
  if (ioctl(master, TIOCGPTN, &n) != 0 || n != pty_number)
    zdtm_fail_note("the master is pty %d, want %d", n, pty_number);
  if (ptsname_r(master, path, sizeof(path)) != 0 || strcmp(path, slave_path) != 0)
    zdtm_fail_note("ptsname says '%s', want '%s'", path, slave_path);
  CheckSlave("root", slave, &want);
  char buf[kMsg];
  size_t got = zdtm_read_full(master, buf, kMsg, 10000);
  if (got != kMsg)
    zdtm_fail_note("read %zu of %d bytes from the master", got, kMsg);
  else
    zdtm_pattern_check("bytes from the child through the slave", buf, kMsg, kSeedUp, 0);
  zdtm_pattern_fill(buf, kMsg, kSeedDown, 0);
  if (!zdtm_write_full(master, buf, kMsg))
    zdtm_fail_note("write to the master: %s", strerror(errno));
  zdtm_kid_collect(verdict[0], "K", 15000);
  zdtm_kid_reap(k, "K", 5000);
  zdtm_finish();
}

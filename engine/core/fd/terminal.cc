// Terminals, both directions: pty masters of the checkpoint (restored at
// their index with their settings), their slaves (found after the capture by
// ClassifyPtys), and other terminals, reattached to /dev/tty or stdio.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <map>

#include "engine/core/capture_internal.h"
#include "engine/core/fd/fd_kind.h"
#include "engine/core/restore_internal.h"
#include "engine/format/fd_payloads.h"

namespace stasis::core {
namespace {

using format::FileDesc;

// Linux's struct termios2 on x86-64 (asm/termbits.h, which cannot be
// included beside <termios.h>): what TCGETS2 and TCSETS2 take.
struct KernelTermios2 {
  uint32_t iflag, oflag, cflag, lflag;
  uint8_t line;
  uint8_t cc[19];
  uint32_t ispeed, ospeed;
};
static_assert(sizeof(KernelTermios2) == 44);

format::TerminalState ToTerminalState(const KernelTermios2& t, const struct winsize& w) {
  format::TerminalState s;
  s.iflag = t.iflag;
  s.oflag = t.oflag;
  s.cflag = t.cflag;
  s.lflag = t.lflag;
  s.line = t.line;
  std::copy(std::begin(t.cc), std::end(t.cc), std::begin(s.cc));
  s.ispeed = t.ispeed;
  s.ospeed = t.ospeed;
  s.rows = w.ws_row;
  s.cols = w.ws_col;
  s.xpixel = w.ws_xpixel;
  s.ypixel = w.ws_ypixel;
  return s;
}

void FromTerminalState(const format::TerminalState& s, KernelTermios2* t, struct winsize* w) {
  *t = {s.iflag, s.oflag, s.cflag, s.lflag, s.line, {}, s.ispeed, s.ospeed};
  std::copy(std::begin(s.cc), std::end(s.cc), std::begin(t->cc));
  *w = {s.rows, s.cols, s.xpixel, s.ypixel};
}

bool IsPtmx(const std::string& link) {
  return link == "/dev/ptmx" || link.rfind("/dev/pts/ptmx", 0) == 0;
}

// A pty master of the job: its index, and the terminal's settings and window
// size (asked of the master: they are the slave's).
Status CapturePtyMaster(capture::Capturer* cap, capture::ProcState* p, const FdSeen& s,
                        FileDesc* f) {
  const std::string& where = s.where;
  const int fd = s.fd;
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString(s.proc + "/fdinfo/" + std::to_string(fd)));
  auto index = StatusField(text, "tty-index");
  if (!index)
    return Status::Error(
        ENOTSUP, "cannot checkpoint " + where + ": this kernel does not show a pty's index");
  f->kind = format::kFilePtyMaster;
  f->pos = strtoull(index->c_str(), nullptr, 10);
  if (p->unseized)
    return Status::Error(ENOTSUP, "cannot checkpoint " + where +
                                      " while its debugger holds the process: "
                                      "reading its terminal settings needs a call in the process");
  Tracee* leader = p->threads[0].get();
  KernelTermios2 tio{};
  struct winsize ws {};
  STASIS_ASSIGN_OR_RETURN(long r, cap->Inject(p, leader, SYS_ioctl, static_cast<uint64_t>(fd),
                                              0x802C542A /* TCGETS2 */, p->scratch));
  if (r != 0)
    return Status::FromErrno(static_cast<int>(-r), "cannot checkpoint " + where + ": TCGETS2");
  STASIS_RETURN_IF_ERROR(cap->ReadScratch(p, &tio, sizeof tio));
  STASIS_ASSIGN_OR_RETURN(r, cap->Inject(p, leader, SYS_ioctl, static_cast<uint64_t>(fd),
                                         0x5413 /* TIOCGWINSZ */, p->scratch));
  if (r != 0)
    return Status::FromErrno(static_cast<int>(-r), "cannot checkpoint " + where + ": TIOCGWINSZ");
  STASIS_RETURN_IF_ERROR(cap->ReadScratch(p, &ws, sizeof ws));
  f->data = format::EncodeTerminalState(ToTerminalState(tio, ws));
  return Status::Ok();
}

Status CaptureTty(capture::Capturer*, capture::ProcState*, const FdSeen&, FileDesc* f) {
  f->kind = format::kFileTty;
  return Status::Ok();
}

Result<UniqueFd> OpenPtyMaster(restore::Restorer* r, const restore::RProc*, const FileDesc& f) {
  STASIS_ASSIGN_OR_RETURN(int m, r->PtyPair(f));
  UniqueFd fd(::fcntl(m, F_DUPFD_CLOEXEC, 0));
  if (!fd) return Status::FromErrno(errno, "dup pty master");
  ::fcntl(fd.get(), F_SETFL, static_cast<int>(f.open_flags) & O_NONBLOCK);
  return fd;
}

Result<UniqueFd> OpenPtySlave(restore::Restorer* r, const restore::RProc*, const FileDesc& f) {
  STASIS_RETURN_IF_ERROR(r->PtyPair(f).status());
  std::string path = "/dev/pts/" + std::to_string(f.pos);
  int flags = static_cast<int>(f.open_flags) & (O_ACCMODE | O_NONBLOCK | O_APPEND);
  UniqueFd fd(::open(path.c_str(), flags | O_CLOEXEC | O_NOCTTY));
  if (!fd)
    return Status::FromErrno(errno, "cannot restore fd " + std::to_string(f.fd) + ": open " + path);
  return fd;
}

Result<UniqueFd> OpenTty(restore::Restorer* r, const restore::RProc* p, const FileDesc& f) {
  int flags = static_cast<int>(f.open_flags) & (O_ACCMODE | O_NONBLOCK | O_APPEND);
  UniqueFd fd(::open("/dev/tty", flags | O_CLOEXEC | O_NOCTTY));
  if (!fd) fd.reset(::fcntl(r->StdioFor(p, f), F_DUPFD_CLOEXEC, 0));
  if (!fd) return Status::FromErrno(errno, "reattach terminal fd " + std::to_string(f.fd));
  return fd;
}

}  // namespace

extern const FdKindOps kFdPtyMaster = {format::kFilePtyMaster,
                                       "ptmx",
                                       [](const struct stat& st, const std::string& link) {
                                         return S_ISCHR(st.st_mode) && IsPtmx(link);
                                       },
                                       CapturePtyMaster,
                                       OpenPtyMaster,
                                       nullptr,
                                       nullptr};

// Before the character devices (fd/regular.cc) in the table.
extern const FdKindOps kFdTty = {
    format::kFileTty,
    "tty",
    [](const struct stat& st, const std::string& link) {
      unsigned maj = major(st.st_rdev);
      return S_ISCHR(st.st_mode) &&
             (maj == 136 || maj == 4 || maj == 5 || link.rfind("/dev/pts/", 0) == 0);
    },
    CaptureTty,
    OpenTty,
    nullptr,
    nullptr};

// Never claimed by the capture: ClassifyPtys turns a terminal into the
// slave of a pty whose master is in the checkpoint.
extern const FdKindOps kFdPtySlave = {format::kFilePtySlave, "pts",   nullptr, nullptr,
                                      OpenPtySlave,          nullptr, nullptr};

namespace capture {

// Ptys whose master is in the checkpoint: their slave fds (and /dev/tty
// opens of processes whose controlling terminal they are) come back as the
// restored pty's slave; session leaders get it back as controlling terminal.
void Capturer::ClassifyPtys() {
  std::map<uint64_t, std::string> masters;  // index -> terminal state
  for (auto& p : procs_)
    for (const FileDesc& f : p->files)
      if (f.kind == format::kFilePtyMaster) masters[f.pos] = f.data;
  if (masters.empty()) return;
  // /proc/PID/stat tty_nr: a pts is major 136..143, index = major's offset * 256 + minor.
  auto pts_index = [](uint64_t dev) -> int64_t {
    uint64_t major = (dev >> 8) & 0xfff, minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    if (major < 136 || major > 143) return -1;
    return static_cast<int64_t>((major - 136) * 256 + minor);
  };
  for (auto& p : procs_) {
    int64_t ctty = pts_index(p->stat.tty_nr);
    for (FileDesc& f : p->files) {
      if (f.kind != format::kFileTty) continue;
      int64_t index = -1;
      if (f.path.rfind("/dev/pts/", 0) == 0)
        index = static_cast<int64_t>(strtoull(f.path.c_str() + 9, nullptr, 10));
      else if (f.path == "/dev/tty")
        index = ctty;
      if (index < 0 || !masters.count(static_cast<uint64_t>(index))) continue;
      f.kind = format::kFilePtySlave;
      f.pos = static_cast<uint64_t>(index);
      f.data = masters[f.pos];
    }
    if (ctty >= 0 && masters.count(static_cast<uint64_t>(ctty)) && p->stat.session == p->pid) {
      p->info.ctty_pty = static_cast<uint32_t>(ctty + 1);
      p->info.tty_pgrp = p->stat.tpgid > 0 ? static_cast<uint32_t>(p->stat.tpgid) : 0;
    }
  }
}

}  // namespace capture

namespace restore {

// The pty of a checkpoint's master, at its index again: /dev/ptmx hands out
// the lowest free index, so we open until we get it (the extra ones are
// closed again); then unlocked, with the saved termios and window size.
Result<int> Restorer::PtyPair(const FileDesc& f) {
  auto it = ptys_.find(f.pos);
  if (it != ptys_.end()) return it->second.first.get();
  auto state = format::DecodeTerminalState(f.data);
  if (!state) return state.error().Prefixed("pty fd " + std::to_string(f.fd));
  KernelTermios2 tio;
  struct winsize ws;
  FromTerminalState(*state, &tio, &ws);
  const int want = static_cast<int>(f.pos);
  std::vector<UniqueFd> extra;
  UniqueFd master;
  for (int i = 0; i < 4096 && !master; ++i) {
    UniqueFd m(::open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!m) return Status::FromErrno(errno, "open /dev/ptmx");
    int n = -1;
    if (::ioctl(m.get(), TIOCGPTN, &n) != 0) return Status::FromErrno(errno, "TIOCGPTN");
    if (n == want)
      master = std::move(m);
    else if (n > want)
      return Status::Error(EBUSY, "cannot restore pty " + std::to_string(want) + ": /dev/pts/" +
                                      std::to_string(want) + " is in use here");
    else
      extra.push_back(std::move(m));
  }
  if (!master) return Status::Error(EBUSY, "cannot restore pty " + std::to_string(want));
  int unlock = 0;
  if (::ioctl(master.get(), TIOCSPTLCK, &unlock) != 0)
    return Status::FromErrno(errno, "unlock pty " + std::to_string(want));
  std::string path = "/dev/pts/" + std::to_string(want);
  UniqueFd slave(::open(path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!slave) return Status::FromErrno(errno, "open " + path);
  if (::ioctl(slave.get(), 0x402C542B /* TCSETS2 */, &tio) != 0)
    return Status::FromErrno(errno, "restore the terminal settings of " + path);
  if (::ioctl(slave.get(), TIOCSWINSZ, &ws) != 0)
    return Status::FromErrno(errno, "restore the window size of " + path);
  int raw = master.get();
  ptys_[f.pos] = {std::move(master), std::move(slave)};
  return raw;
}

}  // namespace restore
}  // namespace stasis::core

// Pipes and FIFOs, both directions: which end is inside the checkpoint,
// the buffered data (peeked with tee, never consumed), and the refill.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <map>
#include <set>

#include "engine/core/capture_internal.h"
#include "engine/core/fd/fd_kind.h"
#include "engine/core/restore_internal.h"

namespace stasis::core {
namespace {

using format::FileDesc;

Status CapturePipe(capture::Capturer*, capture::ProcState*, const FdSeen& s, FileDesc* f) {
  f->kind = format::kFilePipe;
  f->peer_id = static_cast<uint64_t>(s.st.st_ino);
  return Status::Ok();
}

Status CaptureFifo(capture::Capturer*, capture::ProcState*, const FdSeen& s, FileDesc* f) {
  f->kind = format::kFileFifo;
  f->peer_id = static_cast<uint64_t>(s.st.st_ino);
  if (capture::IsDeleted(s.link)) {
    f->fd_flags |= format::kFdUnlinked;
    f->path = s.link.substr(0, s.link.size() - 10);
  }
  return Status::Ok();
}

Result<UniqueFd> OpenPipe(restore::Restorer* r, const restore::RProc* p, const FileDesc& f) {
  const int acc = static_cast<int>(f.open_flags & O_ACCMODE);
  UniqueFd fd;
  if (f.fd_flags & format::kFdOutside) {
    fd.reset(::fcntl(r->StdioFor(p, f), F_DUPFD_CLOEXEC, 0));
    if (!fd) return Status::FromErrno(errno, "reattach pipe fd " + std::to_string(f.fd));
    return fd;
  }
  auto pit = r->pipes_.find(f.peer_id);
  if (pit == r->pipes_.end()) {
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC) != 0) return Status::FromErrno(errno, "create pipe");
    pit = r->pipes_.emplace(f.peer_id, std::make_pair(UniqueFd(ends[0]), UniqueFd(ends[1]))).first;
    if (f.pipe_size) ::fcntl(ends[1], F_SETPIPE_SZ, static_cast<int>(f.pipe_size));
  }
  const bool reader = acc == O_RDONLY || acc == O_RDWR;
  if (!f.data.empty()) {
    ssize_t w = ::write(pit->second.second.get(), f.data.data(), f.data.size());
    if (w != static_cast<ssize_t>(f.data.size()))
      return Status::FromErrno(errno, "refill pipe of fd " + std::to_string(f.fd));
  }
  int end = acc == O_RDONLY ? pit->second.first.get() : pit->second.second.get();
  if (f.fd_flags & format::kFdPeerClosed) {
    // The other end was closed everywhere: it is closed again, after the
    // buffered data went in (a reader sees the data, then EOF).
    if (reader)
      pit->second.second.reset();
    else
      pit->second.first.reset();
  }
  if (acc == O_RDWR) {
    // A pipe opened read-write through /proc (bash's `exec {fd}<> <(:)`).
    std::string self = "/proc/self/fd/" + std::to_string(pit->second.first.get());
    fd.reset(::open(self.c_str(), O_RDWR | O_CLOEXEC));
  } else {
    fd.reset(::fcntl(end, F_DUPFD_CLOEXEC, 0));
  }
  if (!fd) return Status::FromErrno(errno, "dup pipe end");
  int fl = ::fcntl(fd.get(), F_GETFL);
  int want_nb = static_cast<int>(f.open_flags) & O_NONBLOCK;
  if (fl >= 0 && (fl & O_NONBLOCK) != want_nb)
    ::fcntl(fd.get(), F_SETFL, (fl & ~O_NONBLOCK) | want_nb);
  return fd;
}

Result<UniqueFd> OpenFifo(restore::Restorer* r, const restore::RProc*, const FileDesc& f) {
  auto fit = r->fifos_.find(f.peer_id);
  if (fit == r->fifos_.end()) {
    // One holder per FIFO (read-write never blocks), with its data.
    std::string path = r->Relocate(f.path);
    if (f.fd_flags & format::kFdUnlinked) {
      if (::mkfifo(path.c_str(), 0600) != 0)
        return Status::FromErrno(errno, "recreate unlinked FIFO " + path);
    }
    UniqueFd holder(::open(path.c_str(), O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (f.fd_flags & format::kFdUnlinked) ::unlink(path.c_str());
    if (!holder)
      return Status::FromErrno(errno,
                               "cannot restore fd " + std::to_string(f.fd) + ": open FIFO " + path);
    struct stat st;
    if (::fstat(holder.get(), &st) != 0 || !S_ISFIFO(st.st_mode))
      return Status::Error(ESTALE, "cannot restore fd " + std::to_string(f.fd) + ": " + path +
                                       " is no longer a FIFO");
    if (f.pipe_size) ::fcntl(holder.get(), F_SETPIPE_SZ, static_cast<int>(f.pipe_size));
    fit = r->fifos_.emplace(f.peer_id, std::move(holder)).first;
  }
  if (!f.data.empty() && ::write(fit->second.get(), f.data.data(), f.data.size()) !=
                             static_cast<ssize_t>(f.data.size()))
    return Status::FromErrno(errno, "refill FIFO " + f.path);
  std::string self = "/proc/self/fd/" + std::to_string(fit->second.get());
  int flags = static_cast<int>(f.open_flags) & (O_ACCMODE | O_NONBLOCK | O_APPEND);
  UniqueFd fd(::open(self.c_str(), flags | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return Status::FromErrno(errno, "reopen FIFO " + f.path);
  if (!(flags & O_NONBLOCK)) ::fcntl(fd.get(), F_SETFL, flags & O_APPEND);
  return fd;
}

}  // namespace

extern const FdKindOps kFdPipe = {format::kFilePipe,
                                  "pipe",
                                  [](const struct stat& st, const std::string& link) {
                                    return S_ISFIFO(st.st_mode) && link.rfind("pipe:[", 0) == 0;
                                  },
                                  CapturePipe,
                                  OpenPipe,
                                  nullptr,
                                  nullptr};

// After pipes in the table: every other FIFO is a named one.
extern const FdKindOps kFdFifo = {
    format::kFileFifo,
    "fifo",
    [](const struct stat& st, const std::string&) { return S_ISFIFO(st.st_mode); },
    CaptureFifo,
    OpenFifo,
    nullptr,
    nullptr};

namespace capture {

// Marks pipes with an end outside the checkpoint, and saves the buffered
// data of pipes with both ends inside (read without consuming, via tee).
Status Capturer::ClassifyPipes() {
  std::map<uint64_t, int> modes;  // peer id -> bit 1 read end, bit 2 write end
  for (auto& p : procs_)
    for (FileDesc& f : p->files)
      if (f.kind == format::kFilePipe)
        modes[f.peer_id] |= (f.open_flags & O_ACCMODE) == O_RDONLY   ? 1
                            : (f.open_flags & O_ACCMODE) == O_WRONLY ? 2
                                                                     : 3;
  // Pipes with one end in the tree: is the other end held outside, or by
  // nobody (closed everywhere)? Only then is /proc scanned.
  std::set<uint64_t> held_outside;
  bool one_sided = false, blind = false;
  for (auto& [id, m] : modes) one_sided |= m != 3;
  if (one_sided) {
    auto all = ListAllProcesses();
    for (pid_t pid : all ? *all : std::vector<pid_t>{}) {
      if (by_pid_.count(pid) || pid == Self()) continue;
      auto fds = ListFds(pid);
      if (!fds) {
        // Another user's process (an unprivileged checkpointer cannot see
        // its fds): it may hold the other end, so "closed everywhere"
        // cannot be proven; such pipes are reattached like outside ones.
        if (fds.error().code() == EACCES || fds.error().code() == EPERM) blind = true;
        continue;
      }
      for (int fd : *fds) {
        auto link = ReadLink("/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd));
        if (!link || link->rfind("pipe:[", 0) != 0) continue;
        uint64_t ino = strtoull(link->c_str() + 6, nullptr, 10);
        if (!modes.count(ino)) continue;
        auto fi = ReadFdInfo(pid, fd);
        int mode = !fi                                   ? 3
                   : (fi->flags & O_ACCMODE) == O_RDONLY ? 1
                   : (fi->flags & O_ACCMODE) == O_WRONLY ? 2
                                                         : 3;
        if ((mode | modes[ino]) != modes[ino]) held_outside.insert(ino);  // the missing end
      }
    }
  }
  std::set<uint64_t> saved;
  for (auto& p : procs_) {
    for (FileDesc& f : p->files) {
      if (f.kind == format::kFileFifo && !saved.count(f.peer_id)) {
        // A named FIFO: its buffered data, read through a reader of our own.
        saved.insert(f.peer_id);
        std::string link = "/proc/" + std::to_string(p->pid) + "/fd/" + std::to_string(f.fd);
        UniqueFd mine(::open(link.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
        if (!mine) return Status::FromErrno(errno, "open FIFO " + f.path + " of " + Pid(p->pid));
        STASIS_RETURN_IF_ERROR(PeekPipe(mine.get(), &f));
        continue;
      }
      if (f.kind != format::kFilePipe) continue;
      if (modes[f.peer_id] != 3 && (held_outside.count(f.peer_id) || blind)) {
        f.fd_flags |= format::kFdOutside;
        continue;
      }
      if (modes[f.peer_id] != 3) f.fd_flags |= format::kFdPeerClosed;
      if ((f.open_flags & O_ACCMODE) == O_WRONLY || saved.count(f.peer_id)) continue;
      saved.insert(f.peer_id);
      UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, p->pid, 0)));
      if (!pidfd) return Status::FromErrno(errno, "pidfd_open " + Pid(p->pid));
      UniqueFd mine(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), f.fd, 0)));
      if (!mine)
        return Status::FromErrno(errno,
                                 "take pipe fd " + std::to_string(f.fd) + " of " + Pid(p->pid));
      STASIS_RETURN_IF_ERROR(PeekPipe(mine.get(), &f));
    }
  }
  return Status::Ok();
}

// Copies what is buffered in the pipe behind `fd` into f->data without
// consuming it (tee), and records the pipe's size.
Status Capturer::PeekPipe(int fd, FileDesc* f) {
  int sz = ::fcntl(fd, F_GETPIPE_SZ);
  if (sz > 0) f->pipe_size = static_cast<uint32_t>(sz);
  int tmp[2];
  if (::pipe2(tmp, O_CLOEXEC | O_NONBLOCK) != 0) return Status::FromErrno(errno, "pipe");
  UniqueFd r(tmp[0]), w(tmp[1]);
  if (sz > 0) ::fcntl(w.get(), F_SETPIPE_SZ, sz);
  ssize_t n = ::tee(fd, w.get(), 1 << 30, SPLICE_F_NONBLOCK);
  if (n > 0) {
    f->data.resize(static_cast<size_t>(n));
    if (::read(r.get(), f->data.data(), f->data.size()) != n)
      return Status::FromErrno(errno, "copy buffered pipe data");
  }
  return Status::Ok();
}

}  // namespace capture
}  // namespace stasis::core

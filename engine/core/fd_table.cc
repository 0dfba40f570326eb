// The fd table of a process, both directions, and the table of fd kinds.
//
// Capture: list the fds (or take the module's list), read what every fd
// shares (flags, position, path, file identity), let the kind's row
// (fd/fd_kind.h) capture the rest, and give fds that share one open file
// description (kcmp) one object id. Restore: close what the process
// inherited, then for every fd either create it inside the process (the
// row's create_in_process) or open it here once per object id and hand it
// over with pidfd_getfd; dup3 puts it at its number.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "engine/core/capture_internal.h"
#include "engine/core/fd/fd_kind.h"
#include "engine/core/restore_internal.h"

namespace stasis::core {

extern const FdKindOps kFdRegular, kFdDirectory, kFdPtyMaster, kFdTty, kFdCharDevice, kFdPtySlave,
    kFdPipe, kFdFifo, kFdUnixSocket, kFdEpoll, kFdEventfd, kFdSignalfd, kFdTimerfd, kFdTcpSocket;

namespace {

// Every fd kind, in the order the capture tries them (the first row that
// claims an fd captures it; within one file type the narrower row comes
// first). A new kind: its row in its family's file, and one line here.
const FdKindOps* const kFdKinds[] = {
    &kFdRegular,     // fd/regular.cc
    &kFdDirectory,   // fd/regular.cc
    &kFdPtyMaster,   // fd/terminal.cc: before the other character devices
    &kFdTty,         // fd/terminal.cc
    &kFdCharDevice,  // fd/regular.cc: every other character device
    &kFdPtySlave,    // fd/terminal.cc: never claimed (ClassifyPtys)
    &kFdPipe,        // fd/pipe.cc
    &kFdFifo,        // fd/pipe.cc
    &kFdUnixSocket,  // fd/unix_socket.cc
    &kFdEpoll,       // fd/event.cc
    &kFdEventfd,     // fd/event.cc
    &kFdSignalfd,    // fd/event.cc
    &kFdTimerfd,     // fd/event.cc
    &kFdTcpSocket,   // fd/tcp_socket.cc: never claimed (the UNIX row hands it over)
};

}  // namespace

const FdKindOps* FdKindClaiming(const struct stat& st, const std::string& link) {
  for (const FdKindOps* ops : kFdKinds)
    if (ops->claims && ops->claims(st, link)) return ops;
  return nullptr;
}

const FdKindOps* FdKindOf(uint32_t kind) {
  for (const FdKindOps* ops : kFdKinds)
    if (ops->kind == kind) return ops;
  return nullptr;
}

namespace capture {

using format::FileDesc;

void Capturer::CheckTransient(ProcState* p, const std::string& what, const std::string& path) {
  for (const CheckpointOptions::TransientDir& d : options_.transient_dirs) {
    if (path.size() <= d.path.size() || path.compare(0, d.path.size(), d.path) != 0 ||
        path[d.path.size()] != '/')
      continue;
    if (!transient_seen_.insert({p->pid, path}).second) return;  // one line per file
    refused_files_.push_back("cannot checkpoint " + Who(p->pid) + (what.empty() ? "" : " " + what) +
                             ": " + (what.empty() ? "it maps " : "") + path + ", in " + d.path +
                             (d.note.empty() ? "" : " (" + d.note + ")") +
                             ": it would be gone at restart, so this checkpoint could not be "
                             "restarted");
    return;
  }
}

Status Capturer::CaptureFiles(ProcState* p) {
  std::vector<int> fds;
  if (kernel_) {
    for (const KernelFile& kf : p->kernel.files) fds.push_back(kf.fd);
  } else {
    STASIS_ASSIGN_OR_RETURN(fds, ListFds(p->pid));
  }
  const std::string proc = "/proc/" + std::to_string(p->pid);
  for (int fd : fds) {
    FileDesc f;
    f.fd = fd;
    const std::string link_path = proc + "/fd/" + std::to_string(fd);
    const std::string where = Who(p->pid) + " fd " + std::to_string(fd);
    const KernelFile* kf = kernel_ ? p->kernel.File(fd) : nullptr;
    std::string link;
    FdInfo fi;
    struct stat st;
    if (kf) {
      link = kf->path;
      fi.pos = kf->pos;
      fi.flags = kf->f_flags | (kf->cloexec ? O_CLOEXEC : 0);
      st = kf->st;
    } else {
      STASIS_ASSIGN_OR_RETURN(link, ReadLink(link_path));
      STASIS_ASSIGN_OR_RETURN(fi, ReadFdInfo(p->pid, fd));
      if (::stat(link_path.c_str(), &st) != 0)
        return Status::FromErrno(errno, "cannot checkpoint " + where + ": stat " + link);
    }
    // The userfaultfd of dirty tracking (dirty_track.h): stasis's own, as
    // is an inherited one of a fork child's parent.
    if (p->track_valid && fd == p->track.uffd && link == "anon_inode:[userfaultfd]") continue;
    f.open_flags = fi.flags & ~static_cast<uint32_t>(O_CLOEXEC);
    if (fi.flags & O_CLOEXEC) f.fd_flags |= format::kFdCloexec;
    f.pos = fi.pos;
    f.path = link;
    f.file_id = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                 static_cast<uint64_t>(st.st_size),
                 st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, st.st_mode};
    FdSeen seen;
    seen.fd = fd;
    seen.link = link;
    seen.link_path = link_path;
    seen.proc = proc;
    seen.where = where;
    seen.st = st;
    const FdKindOps* ops = FdKindClaiming(st, link);
    if (!ops)
      return Status::Error(ENOTSUP,
                           "cannot checkpoint " + where + ": " + link + " is not supported yet");
    STASIS_RETURN_IF_ERROR(ops->capture(this, p, seen, &f));
    if (!options_.transient_dirs.empty() && !link.empty() && link[0] == '/')
      CheckTransient(p, "fd " + std::to_string(fd),
                     IsDeleted(link) ? link.substr(0, link.size() - 10) : link);
    // Same open file description as an fd seen before => same object.
    for (auto& other : procs_) {
      for (const FileDesc& g : other->files) {
        if (g.file_id.dev != f.file_id.dev || g.file_id.ino != f.file_id.ino) continue;
        if (::syscall(SYS_kcmp, p->pid, other->pid, KCMP_FILE, fd, g.fd) == 0) {
          f.object_id = g.object_id;
          break;
        }
      }
      if (f.object_id) break;
    }
    for (const FileDesc& g : p->files) {
      if (f.object_id) break;
      if (g.file_id.dev != f.file_id.dev || g.file_id.ino != f.file_id.ino) continue;
      if (::syscall(SYS_kcmp, p->pid, p->pid, KCMP_FILE, fd, g.fd) == 0) f.object_id = g.object_id;
    }
    if (!f.object_id) f.object_id = next_object_id_++;
    p->files.push_back(std::move(f));
  }
  return Status::Ok();
}

}  // namespace capture

namespace restore {

using format::FileDesc;

// The restorer's fd for `f`'s open file description: opened once per object
// id by the kind's row, shared by every fd of that description.
Result<int> Restorer::RestorerFdFor(const RProc* p, const FileDesc& f) {
  auto it = objects_.find(f.object_id);
  if (it != objects_.end()) return it->second.get();
  const FdKindOps* ops = FdKindOf(f.kind);
  if (!ops || !ops->open_in_restorer)
    return Status::Error(ENOTSUP, "cannot restore fd " + std::to_string(f.fd) + " of kind " +
                                      std::to_string(f.kind));
  STASIS_ASSIGN_OR_RETURN(UniqueFd fd, ops->open_in_restorer(this, p, f));
  int raw = fd.get();
  objects_[f.object_id] = std::move(fd);
  return raw;
}

// Where an fd that leads outside the checkpoint (a terminal, a pipe) is
// reattached: the task's stdio, else the restorer's.
int Restorer::StdioFor(const RProc* p, const FileDesc& f) const {
  const int acc = static_cast<int>(f.open_flags & O_ACCMODE);
  if (p->stdio) {
    if (f.fd == 0 || acc == O_RDONLY) return p->stdio->stdin_fd;
    if (f.fd == 2) return p->stdio->stderr_fd;
    return p->stdio->stdout_fd;
  }
  if (f.fd == 0 || acc == O_RDONLY) return options_.stdin_fd;
  if (f.fd == 2) return options_.stderr_fd;
  return options_.stdout_fd;
}

Status Restorer::RestoreFiles(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  int max_fd = 2;
  for (const FileDesc& f : p->files) {
    if (f.fd < 0 || f.fd > (1 << 20)) return Status::Corrupt("fd number out of range in " + who);
    max_fd = std::max(max_fd, f.fd);
  }
  // The process fetches each fd from us with pidfd_getfd, through the pidfd
  // of the restorer that it inherited (it may not see our pid: new pid ns).
  STASIS_ASSIGN_OR_RETURN(long pfd,
                          Checked(Call(p, SYS_fcntl, static_cast<uint64_t>(self_pidfd_.get()),
                                       F_DUPFD_CLOEXEC, static_cast<uint64_t>(max_fd + 1)),
                                  "move restorer pidfd in " + who));
  STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_close_range, 0, static_cast<uint64_t>(pfd - 1), 0),
                                 "close inherited fds of " + who)
                             .status());
  STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_close_range, static_cast<uint64_t>(pfd + 1), ~0u, 0),
                                 "close inherited fds of " + who)
                             .status());
  for (const FileDesc& f : p->files) {
    long got = 0;
    const FdKindOps* ops = FdKindOf(f.kind);
    if (ops && ops->create_in_process) {
      STASIS_ASSIGN_OR_RETURN(got, ops->create_in_process(this, p, f));
    } else {
      STASIS_ASSIGN_OR_RETURN(int mine, RestorerFdFor(p, f));
      STASIS_ASSIGN_OR_RETURN(got, Checked(Call(p, SYS_pidfd_getfd, static_cast<uint64_t>(pfd),
                                                static_cast<uint64_t>(mine), 0),
                                           "hand fd " + std::to_string(f.fd) + " to " + who));
    }
    bool cloexec = f.fd_flags & format::kFdCloexec;
    if (got != f.fd) {
      STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_dup3, static_cast<uint64_t>(got),
                                          static_cast<uint64_t>(f.fd), cloexec ? O_CLOEXEC : 0),
                                     "place fd " + std::to_string(f.fd) + " in " + who)
                                 .status());
      STASIS_RETURN_IF_ERROR(Call(p, SYS_close, static_cast<uint64_t>(got)).status());
    } else {
      STASIS_RETURN_IF_ERROR(
          Call(p, SYS_fcntl, static_cast<uint64_t>(f.fd), F_SETFD, cloexec ? FD_CLOEXEC : 0)
              .status());
    }
  }
  p->pidfd = pfd;  // closed by FinishProcess, the last user
  for (const FileDesc& f : p->files) {
    const FdKindOps* ops = FdKindOf(f.kind);
    if (ops && ops->after_all_fds) STASIS_RETURN_IF_ERROR(ops->after_all_fds(this, p, f));
  }
  p->files_done = true;
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core

// Files opened by path: regular files (unlinked ones saved by value),
// directories and character devices, both directions.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "engine/core/capture_internal.h"
#include "engine/core/fd/fd_kind.h"
#include "engine/core/restore_internal.h"

namespace stasis::core {
namespace {

using format::FileDesc;

Status CaptureRegular(capture::Capturer* cap, capture::ProcState* p, const FdSeen& s, FileDesc* f) {
  f->kind = format::kFileRegular;
  if (capture::IsDeleted(s.link) || s.st.st_nlink == 0) {
    // Saved by value once, shared by every fd and mapping of it.
    f->fd_flags |= format::kFdUnlinked;
    f->peer_id = static_cast<uint64_t>(s.st.st_ino);
    if (capture::IsDeleted(s.link)) f->path = s.link.substr(0, s.link.size() - 10);
    MapsEntry pseudo;
    pseudo.inode = static_cast<uint64_t>(s.st.st_ino);
    STASIS_RETURN_IF_ERROR(
        cap->NoteSharedMemory(p, pseudo, format::kShmFileByValue, f->path, s.link_path));
  }
  return Status::Ok();
}

Status CaptureDirectory(capture::Capturer*, capture::ProcState*, const FdSeen&, FileDesc* f) {
  f->kind = format::kFileDirectory;
  return Status::Ok();
}

Status CaptureCharDevice(capture::Capturer*, capture::ProcState*, const FdSeen&, FileDesc* f) {
  f->kind = format::kFileCharDevice;
  return Status::Ok();
}

// A new open file description of the recreated unlinked file, with the old
// flags.
Result<UniqueFd> OpenUnlinked(restore::Restorer* r, const FileDesc& f) {
  auto it = r->shm_.find(f.peer_id);
  if (it == r->shm_.end())
    return Status::Corrupt("fd " + std::to_string(f.fd) + " refers to an unknown unlinked file");
  std::string self = "/proc/self/fd/" + std::to_string(it->second.get());
  int flags = static_cast<int>(f.open_flags) & ~(O_CREAT | O_TRUNC | O_EXCL | O_NOCTTY);
  UniqueFd fd(::open(self.c_str(), flags | O_CLOEXEC));
  if (!fd) return Status::FromErrno(errno, "reopen unlinked " + f.path);
  if (f.pos && ::lseek(fd.get(), static_cast<off_t>(f.pos), SEEK_SET) < 0)
    return Status::FromErrno(errno, "seek unlinked " + f.path);
  return fd;
}

// Regular files, directories and character devices: opened again by path
// (relocated), checked to be the same file.
Result<UniqueFd> OpenByPath(restore::Restorer* r, const restore::RProc*, const FileDesc& f) {
  if ((f.fd_flags & format::kFdUnlinked) && f.kind == format::kFileRegular)
    return OpenUnlinked(r, f);
  const RestoreOptions& options = r->options_;
  UniqueFd fd;
  std::string path = r->Relocate(f.path);
  auto again = std::find_if(options.reattach_files.begin(), options.reattach_files.end(),
                            [&](const auto& x) { return x.first == path; });
  if (f.kind == format::kFileRegular && again != options.reattach_files.end()) {
    fd.reset(::fcntl(again->second, F_DUPFD_CLOEXEC, 0));
    if (!fd) return Status::FromErrno(errno, "reattach fd " + std::to_string(f.fd) + " to " + path);
    return fd;
  }
  int flags = static_cast<int>(f.open_flags) & ~(O_CREAT | O_TRUNC | O_EXCL | O_NOCTTY);
  fd.reset(::open(path.c_str(), flags | O_CLOEXEC | O_NOCTTY));
  if (!fd)
    return Status::FromErrno(errno, "cannot restore fd " + std::to_string(f.fd) + ": open " + path);
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  const bool rewritten = std::find(options.rewritten_ok.begin(), options.rewritten_ok.end(),
                                   path) != options.rewritten_ok.end() &&
                         static_cast<uint64_t>(st.st_size) == f.file_id.size;
  if (f.kind == format::kFileRegular &&
      (static_cast<uint64_t>(st.st_ino) != f.file_id.ino ||
       static_cast<uint64_t>(st.st_dev) != f.file_id.dev) &&
      options.relocate.empty() && !rewritten)
    return Status::Error(ESTALE, "cannot restore fd " + std::to_string(f.fd) + ": " + path +
                                     " was replaced by another file since the checkpoint");
  if (f.kind != format::kFileCharDevice && f.pos != 0 &&
      ::lseek(fd.get(), static_cast<off_t>(f.pos), SEEK_SET) < 0)
    return Status::FromErrno(errno, "seek " + path);
  return fd;
}

}  // namespace

extern const FdKindOps kFdRegular = {
    format::kFileRegular,
    "file",
    [](const struct stat& st, const std::string&) { return S_ISREG(st.st_mode); },
    CaptureRegular,
    OpenByPath,
    nullptr,
    nullptr};

extern const FdKindOps kFdDirectory = {
    format::kFileDirectory,
    "dir",
    [](const struct stat& st, const std::string&) { return S_ISDIR(st.st_mode); },
    CaptureDirectory,
    OpenByPath,
    nullptr,
    nullptr};

// After the pty master and the terminals (fd/terminal.cc) in the table:
// every other character device.
extern const FdKindOps kFdCharDevice = {
    format::kFileCharDevice,
    "chardev",
    [](const struct stat& st, const std::string&) { return S_ISCHR(st.st_mode); },
    CaptureCharDevice,
    OpenByPath,
    nullptr,
    nullptr};

}  // namespace stasis::core

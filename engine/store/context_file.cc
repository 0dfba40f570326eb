// Context files written into place; see context_file.h.
#include "engine/store/context_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/fd.h"

namespace stasis::store {
namespace {

void SplitPath(const std::string& path, std::string* dir, std::string* base) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) {
    *dir = ".";
    *base = path;
  } else {
    *dir = slash == 0 ? "/" : path.substr(0, slash);
    *base = path.substr(slash + 1);
  }
}

Status SyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return Status::FromErrno(errno, "open folder " + dir);
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync folder " + dir);
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<ContextFileWriter>> ContextFileWriter::Open(const std::string& path,
                                                                   WriteMode mode,
                                                                   const WriteOptions& wo) {
  std::unique_ptr<ContextFileWriter> w(new ContextFileWriter());
  w->path_ = path;
  w->mode_ = mode;
  SplitPath(path, &w->dir_, &w->base_);
  if (w->base_.empty()) return Status::Error(EINVAL, "no file name in " + path);
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode))
    return Status::Error(EEXIST, path + " exists and is not a regular file");
  int fd;
  if (mode == WriteMode::kClobber) {
    w->temp_ = path;
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
  } else {
    w->temp_ = TempPathFor(path, ::getpid());
    fd = ::open(w->temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  }
  if (fd < 0) return Status::FromErrno(errno, "create " + w->temp_);
  // The store's pipelined sink: aligned chunks written by a thread of their
  // own while the capture fills the next ones.
  w->sink_ = std::make_unique<NodeFileSink>(WrapFd(UniqueFd(fd), path, wo.strategy), wo);
  return w;
}

std::string ContextFileWriter::TempPathFor(const std::string& path, pid_t pid) {
  std::string dir, base;
  SplitPath(path, &dir, &base);
  return dir + "/." + base + ".tmp." + std::to_string(pid);
}

ContextFileWriter::~ContextFileWriter() {
  if (!committed_ && !temp_.empty()) ::unlink(temp_.c_str());
}

Status ContextFileWriter::Commit() {
  STASIS_RETURN_IF_ERROR(sink_->Sync());
  if (mode_ == WriteMode::kBackup) {
    struct stat st;
    if (::lstat(path_.c_str(), &st) == 0) {
      for (int n = 1; n < 10000; ++n) {
        std::string backup = path_ + ".~" + std::to_string(n) + "~";
        if (::link(path_.c_str(), backup.c_str()) == 0) break;
        if (errno != EEXIST) return Status::FromErrno(errno, "keep backup " + backup);
      }
    }
  }
  if (mode_ != WriteMode::kClobber && ::rename(temp_.c_str(), path_.c_str()) != 0)
    return Status::FromErrno(errno, "rename " + temp_ + " to " + path_);
  committed_ = true;
  return SyncDir(dir_);
}

Status CommitContextFile(void* writer) { return static_cast<ContextFileWriter*>(writer)->Commit(); }

}  // namespace stasis::store

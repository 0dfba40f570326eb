// Context files on disk; see context_file.h.
#include "engine/core/context_file.h"

#include "engine/format/context_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/fd.h"

namespace stasis::core {
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
                                                                   const store::WriteOptions& wo) {
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
  w->sink_ = std::make_unique<store::NodeFileSink>(store::WrapFd(UniqueFd(fd), path, wo.strategy), wo);
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

Status CommitContextFile(void* writer) {
  return static_cast<ContextFileWriter*>(writer)->Commit();
}

Status SyncFdSink(void* fd_sink) {
  auto* sink = static_cast<FdSink*>(fd_sink);
  STASIS_RETURN_IF_ERROR(sink->Flush());
  if (::fsync(sink->fd()) != 0 && errno != EINVAL && errno != EROFS)
    return Status::FromErrno(errno, "fsync of the checkpoint destination");
  return Status::Ok();
}

namespace {

// A context file to read: no symlink, a regular file, the caller's own
// unless the caller is root.
Result<UniqueFd> OpenOwnContext(const std::string& path) {
  STASIS_ASSIGN_OR_RETURN(UniqueFd owned, OpenRegularNoFollow(AT_FDCWD, path, path));
  struct stat st;
  if (::fstat(owned.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (::geteuid() != 0 && st.st_uid != ::geteuid())
    return Status::Error(EPERM, path + " belongs to uid " + std::to_string(st.st_uid) +
                                    ", not to you; refusing it");
  return owned;
}

std::string DirName(const std::string& p) {
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : p.substr(0, slash);
}

}  // namespace

Result<std::unique_ptr<ByteSource>> OpenContextForRead(const std::string& path) {
  STASIS_ASSIGN_OR_RETURN(UniqueFd owned, OpenOwnContext(path));
  return std::unique_ptr<ByteSource>(new PrefetchSource(std::move(owned), path));
}

Result<format::ImageInfo> ReadContextImage(const std::string& path) {
  // A small buffer: no read-ahead of a file of gigabytes for its first section.
  STASIS_ASSIGN_OR_RETURN(UniqueFd owned, OpenOwnContext(path));
  FdSource source(std::move(owned), path, 64u << 10);
  format::ContextReader reader(&source);
  auto image = reader.Begin();
  if (!image) return Status::Error(image.error().code(), path + ": " + image.error().message());
  return *image;
}

Result<std::string> ParentReference(const std::string& child, const std::string& parent) {
  char* c = ::realpath(DirName(child).c_str(), nullptr);
  char* q = ::realpath(parent.c_str(), nullptr);
  if (!c || !q) {
    int e = errno;
    ::free(c);
    ::free(q);
    return Status::FromErrno(e, "resolve " + (q ? child : parent));
  }
  std::string cdir = c, full = q;
  ::free(c);
  ::free(q);
  if (DirName(full) == cdir) return full.substr(full.rfind('/') + 1);
  return full;
}

std::string ResolveParent(const std::string& child, const std::string& recorded) {
  return !recorded.empty() && recorded[0] == '/' ? recorded : DirName(child) + "/" + recorded;
}

}  // namespace stasis::core

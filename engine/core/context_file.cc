// Context files on disk; see context_file.h.
#include "engine/core/context_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/base/fd.h"
#include "engine/format/context_io.h"

namespace stasis::core {

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
    return Status::Error(
        EPERM, path + " belongs to uid " + std::to_string(st.st_uid) + ", not to you; refusing it");
  return owned;
}

std::string DirName(const std::string& p) {
  size_t slash = p.rfind('/');
  return slash == std::string::npos ? std::string(".")
         : slash == 0               ? std::string("/")
                                    : p.substr(0, slash);
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

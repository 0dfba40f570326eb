// The POSIX Env; see env.h.
#include "engine/store/env.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <mutex>
#include <set>

#include "engine/base/io.h"

namespace stasis::store {
namespace {

constexpr size_t kDirectAlign = 4096;

class PosixFile : public WritableFile {
 public:
  PosixFile(UniqueFd fd, std::string name, WriteStrategy strategy)
      : fd_(std::move(fd)), name_(std::move(name)), strategy_(strategy) {}

  Status Append(const void* data, size_t n) override {
    const char* p = static_cast<const char*>(data);
    if (strategy_ == WriteStrategy::kDirect) {
      // Whole aligned blocks from an aligned buffer go around the cache; a
      // tail (the end of the file) goes through it.
      bool aligned =
          reinterpret_cast<uintptr_t>(p) % kDirectAlign == 0 && offset_ % kDirectAlign == 0;
      size_t direct = aligned ? n / kDirectAlign * kDirectAlign : 0;
      if (direct) {
        STASIS_RETURN_IF_ERROR(SetDirect(true));
        STASIS_RETURN_IF_ERROR(WriteAll(p, direct));
        p += direct;
        n -= direct;
      }
      if (n) {
        STASIS_RETURN_IF_ERROR(SetDirect(false));
        STASIS_RETURN_IF_ERROR(WriteAll(p, n));
      }
      return Status::Ok();
    }
    uint64_t start = offset_;
    STASIS_RETURN_IF_ERROR(WriteAll(p, n));
    if (strategy_ == WriteStrategy::kStreaming) {
      // Start writeback of this chunk now; wait for the previous one and
      // drop it from the page cache, so a checkpoint never fills the cache
      // with dirty pages that stall the whole node later.
      ::sync_file_range(fd_.get(), static_cast<off_t>(start), static_cast<off_t>(n),
                        SYNC_FILE_RANGE_WRITE);
      if (start > 0) {
        ::sync_file_range(
            fd_.get(), static_cast<off_t>(synced_), static_cast<off_t>(start - synced_),
            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
        ::posix_fadvise(fd_.get(), static_cast<off_t>(synced_), static_cast<off_t>(start - synced_),
                        POSIX_FADV_DONTNEED);
        synced_ = start;
      }
    }
    return Status::Ok();
  }

  Status Sync() override {
    if (::fsync(fd_.get()) != 0) return Status::FromErrno(errno, "fsync " + name_);
    if (strategy_ == WriteStrategy::kStreaming)
      ::posix_fadvise(fd_.get(), 0, 0, POSIX_FADV_DONTNEED);
    return Status::Ok();
  }
  int fd() const override { return fd_.get(); }
  const std::string& name() const override { return name_; }

 private:
  Status SetDirect(bool on) {
    if (on == direct_) return Status::Ok();
    int flags = ::fcntl(fd_.get(), F_GETFL);
    if (flags < 0 || ::fcntl(fd_.get(), F_SETFL, on ? flags | O_DIRECT : flags & ~O_DIRECT) != 0) {
      if (on && errno == EINVAL) {  // the file system has no O_DIRECT
        strategy_ = WriteStrategy::kBuffered;
        return Status::Ok();
      }
      return Status::FromErrno(errno, "set O_DIRECT on " + name_);
    }
    direct_ = on;
    return Status::Ok();
  }
  Status WriteAll(const char* p, size_t n) {
    STASIS_RETURN_IF_ERROR(WriteFully(fd_.get(), p, n, name_));
    offset_ += n;
    return Status::Ok();
  }

  UniqueFd fd_;
  std::string name_;
  WriteStrategy strategy_;
  bool direct_ = false;
  uint64_t offset_ = 0, synced_ = 0;
};

class PosixEnv : public Env {
 public:
  Result<UniqueFd> OpenDir(int dirfd, const std::string& name, bool follow) override {
    int fd = ::openat(dirfd, name.c_str(),
                      O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW));
    if (fd < 0) {
      if (!follow && (errno == ELOOP || errno == ENOTDIR)) {
        struct stat st;
        if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
          return Status::Error(ELOOP, name + " is a symbolic link; refusing it");
      }
      return Status::FromErrno(errno, "open folder " + name);
    }
    return UniqueFd(fd);
  }
  Status MakeDir(int dirfd, const std::string& name) override {
    if (::mkdirat(dirfd, name.c_str(), 0700) != 0)
      return Status::FromErrno(errno, "create folder " + name);
    return Status::Ok();
  }
  Result<std::unique_ptr<WritableFile>> NewFile(int dirfd, const std::string& name,
                                                WriteStrategy strategy) override {
    int fd =
        ::openat(dirfd, name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return Status::FromErrno(errno, "create " + name);
    return std::unique_ptr<WritableFile>(new PosixFile(UniqueFd(fd), name, strategy));
  }
  Status SyncDir(int dirfd) override {
    if (::fsync(dirfd) != 0) return Status::FromErrno(errno, "fsync folder");
    return Status::Ok();
  }
  Status Rename(int dirfd, const std::string& from, const std::string& to) override {
    struct stat st;
    const bool known = ::fstat(dirfd, &st) == 0;
    if (known && Refuses(st.st_dev))
      return Status::Error(EINVAL, "rename " + from + " to " + to +
                                       ": this file system has no RENAME_NOREPLACE (found before)");
    if (::renameat2(dirfd, from.c_str(), dirfd, to.c_str(), RENAME_NOREPLACE) != 0) {
      int e = errno;
      if (known && RenameFlagsRefused(e)) Remember(st.st_dev);
      return Status::FromErrno(e, "rename " + from + " to " + to);
    }
    return Status::Ok();
  }
  Status Link(int dirfd, const std::string& from, const std::string& to) override {
    if (::linkat(dirfd, from.c_str(), dirfd, to.c_str(), 0) != 0)
      return Status::FromErrno(errno, "link " + from + " to " + to);
    return Status::Ok();
  }
  Status Remove(int dirfd, const std::string& name, bool is_dir) override {
    if (::unlinkat(dirfd, name.c_str(), is_dir ? AT_REMOVEDIR : 0) != 0)
      return Status::FromErrno(errno, "remove " + name);
    return Status::Ok();
  }
  Result<uint64_t> FreeBytes(int fd) override {
    struct statvfs sv;
    if (::fstatvfs(fd, &sv) != 0) return Status::FromErrno(errno, "statvfs");
    return static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize;
  }

 private:
  // File systems that refused rename flags (a process meets few).
  bool Refuses(dev_t dev) {
    std::lock_guard<std::mutex> lock(mu_);
    return no_flags_.count(dev) != 0;
  }
  void Remember(dev_t dev) {
    std::lock_guard<std::mutex> lock(mu_);
    no_flags_.insert(dev);
  }
  std::mutex mu_;
  std::set<dev_t> no_flags_;
};

}  // namespace

bool RenameFlagsRefused(int code) { return code == EINVAL || code == ENOSYS || code == EOPNOTSUPP; }

std::unique_ptr<WritableFile> WrapFd(UniqueFd fd, std::string name, WriteStrategy strategy) {
  return std::make_unique<PosixFile>(std::move(fd), std::move(name), strategy);
}

Env* DefaultEnv() {
  static PosixEnv env;
  return &env;
}

}  // namespace stasis::store

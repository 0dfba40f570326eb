// FaultEnv; see fault_env.h.
#include "test/store/fault_env.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

namespace stasis::test {

const char* OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kMkdir:
      return "mkdir";
    case OpKind::kCreate:
      return "create";
    case OpKind::kWrite:
      return "write";
    case OpKind::kSync:
      return "fsync";
    case OpKind::kSyncDir:
      return "fsync-folder";
    case OpKind::kRename:
      return "rename";
    case OpKind::kLink:
      return "link";
    case OpKind::kRemove:
      return "remove";
  }
  return "?";
}

std::string FdPath(int fd) {
  if (fd == AT_FDCWD) return std::filesystem::current_path().string();
  char buf[4096];
  ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "?";
}

namespace {

std::string PathIn(int dirfd, const std::string& name) {
  if (!name.empty() && name[0] == '/') return name;
  return FdPath(dirfd) + "/" + name;
}

class FaultFile : public store::WritableFile {
 public:
  FaultFile(FaultEnv* env, std::unique_ptr<store::WritableFile> base, std::string path)
      : env_(env), base_(std::move(base)), path_(std::move(path)) {}
  Status Append(const void* data, size_t n) override {
    STASIS_RETURN_IF_ERROR(env_->Before(OpKind::kWrite, base_->name() + " " + std::to_string(n)));
    STASIS_RETURN_IF_ERROR(base_->Append(data, n));
    size_ += n;
    env_->FileWritten(path_, size_);
    return Status::Ok();
  }
  Status Sync() override {
    STASIS_RETURN_IF_ERROR(env_->Before(OpKind::kSync, base_->name()));
    STASIS_RETURN_IF_ERROR(base_->Sync());
    env_->FileSynced(path_);
    return Status::Ok();
  }
  int fd() const override { return base_->fd(); }
  const std::string& name() const override { return base_->name(); }

 private:
  FaultEnv* env_;
  std::unique_ptr<store::WritableFile> base_;
  std::string path_;
  uint64_t size_ = 0;
};

}  // namespace

FaultEnv::FaultEnv(store::Env* base) : base_(base) {}

Status FaultEnv::Before(OpKind kind, const std::string& what) {
  ++ops_;
  int nth = ++kind_ops_[kind];
  log_.push_back(std::to_string(ops_) + " " + OpKindName(kind) + " " + what);
  if (kill_at_ && ops_ >= kill_at_) ::kill(::getpid(), SIGKILL);
  if (crash_at_ && ops_ >= crash_at_) crashed_ = true;
  if (crashed_)
    return Status::Error(EIO, std::string("simulated crash before ") + OpKindName(kind));
  if (fail_at_ == ops_ || (fail_kind_ && *fail_kind_ == kind && fail_kind_n_ == nth))
    return Status::FromErrno(fail_err_, std::string("injected ") + OpKindName(kind) + " " + what);
  return Status::Ok();
}

Result<UniqueFd> FaultEnv::OpenDir(int dirfd, const std::string& name, bool follow) {
  return base_->OpenDir(dirfd, name, follow);  // reading changes nothing
}

Status FaultEnv::MakeDir(int dirfd, const std::string& name) {
  STASIS_RETURN_IF_ERROR(Before(OpKind::kMkdir, name));
  STASIS_RETURN_IF_ERROR(base_->MakeDir(dirfd, name));
  pending_[FdPath(dirfd)].push_back({PendingName::kCreated, name, "", true});
  return Status::Ok();
}

Result<std::unique_ptr<store::WritableFile>> FaultEnv::NewFile(int dirfd, const std::string& name,
                                                               store::WriteStrategy strategy) {
  STASIS_RETURN_IF_ERROR(Before(OpKind::kCreate, name));
  auto f = base_->NewFile(dirfd, name, strategy);
  if (!f) return f.error();
  std::string path = PathIn(dirfd, name);
  files_[path] = FileState{};
  pending_[FdPath(dirfd)].push_back({PendingName::kCreated, name, "", false});
  return std::unique_ptr<store::WritableFile>(new FaultFile(this, std::move(*f), path));
}

Status FaultEnv::SyncDir(int dirfd) {
  STASIS_RETURN_IF_ERROR(Before(OpKind::kSyncDir, FdPath(dirfd)));
  STASIS_RETURN_IF_ERROR(base_->SyncDir(dirfd));
  pending_.erase(FdPath(dirfd));
  return Status::Ok();
}

Status FaultEnv::Rename(int dirfd, const std::string& from, const std::string& to) {
  STASIS_RETURN_IF_ERROR(Before(OpKind::kRename, from + " " + to));
  if (refuse_rename_flags_)
    return Status::Error(
        EINVAL, "rename " + from + " to " + to + ": Invalid argument (no rename flags here)");
  STASIS_RETURN_IF_ERROR(base_->Rename(dirfd, from, to));
  std::string dir = FdPath(dirfd);
  pending_[dir].push_back({PendingName::kRenamed, to, from, false});
  auto it = files_.find(dir + "/" + from);
  if (it != files_.end()) {
    files_[dir + "/" + to] = it->second;
    files_.erase(it);
  }
  return Status::Ok();
}

Status FaultEnv::Link(int dirfd, const std::string& from, const std::string& to) {
  STASIS_RETURN_IF_ERROR(Before(OpKind::kLink, from + " " + to));
  STASIS_RETURN_IF_ERROR(base_->Link(dirfd, from, to));
  std::string dir = FdPath(dirfd);
  pending_[dir].push_back({PendingName::kLinked, to, from, false});
  auto it = files_.find(dir + "/" + from);
  if (it != files_.end()) files_[dir + "/" + to] = it->second;
  if (replay_links_)
    return Status::Error(EEXIST, "link " + from + " to " + to + ": File exists (resent)");
  return Status::Ok();
}

Status FaultEnv::Remove(int dirfd, const std::string& name, bool is_dir) {
  STASIS_RETURN_IF_ERROR(Before(OpKind::kRemove, name));
  STASIS_RETURN_IF_ERROR(base_->Remove(dirfd, name, is_dir));
  // A removal that is not yet durable could come back after a power loss;
  // the old content is gone from here, so it is not played back (a removed
  // epoch reappearing would be harmless: it was complete or incomplete).
  files_.erase(PathIn(dirfd, name));
  return Status::Ok();
}

Result<uint64_t> FaultEnv::FreeBytes(int fd) {
  if (free_bytes_) return *free_bytes_;
  return base_->FreeBytes(fd);
}

Status FaultEnv::DropUnsyncedData() {
  namespace fs = std::filesystem;
  // File contents first, then names (newest change first).
  for (const auto& [path, st] : files_) {
    struct stat sb;
    if (::lstat(path.c_str(), &sb) == 0 && static_cast<uint64_t>(sb.st_size) > st.synced)
      if (::truncate(path.c_str(), static_cast<off_t>(st.synced)) != 0)
        return Status::FromErrno(errno, "truncate " + path);
  }
  for (auto& [dir, changes] : pending_) {
    for (auto it = changes.rbegin(); it != changes.rend(); ++it) {
      std::string path = dir + "/" + it->name;
      std::error_code ec;
      if (it->what == PendingName::kCreated) {
        fs::remove_all(path, ec);
      } else if (it->what == PendingName::kLinked) {
        fs::remove(path, ec);
      } else if (it->what == PendingName::kRenamed) {
        fs::rename(path, dir + "/" + it->from, ec);
      }
      if (ec && ec != std::errc::no_such_file_or_directory)
        return Status::Error(ec.value(), "undo " + path + ": " + ec.message());
    }
  }
  pending_.clear();
  files_.clear();
  crashed_ = false;
  crash_at_ = 0;
  return Status::Ok();
}

}  // namespace stasis::test

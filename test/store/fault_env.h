// FaultEnv: an Env (engine/store/env.h) whose failures the tests choose, in
// the style of LevelDB's fault-injection Env. It forwards to a real Env and
// counts every operation that changes the disk (mkdir, create, write,
// fsync, folder fsync, rename, remove), so a test can say:
//   - FailAt(n, err): operation n fails with err (ENOSPC, EIO); the others work;
//   - FailNth(kind, n, err): the nth operation of one kind fails (the 3rd write);
//   - CrashAt(n): the process "dies" before operation n: it and everything
//     after it fail with EIO and change nothing, so cleanup code cannot run
//     either; DropUnsyncedData() then plays the power loss: files are cut
//     back to what was last fsynced, and names created, renamed or removed in
//     a folder since that folder's last fsync are undone;
//   - KillAt(n): SIGKILL to ourselves before operation n (a real crash, for
//     tests that run the checkpointer as a child process);
//   - SetFreeBytes(b): what FreeBytes reports;
//   - RefuseRenameFlags(): every Rename fails with EINVAL and changes nothing,
//     as on GlusterFS's FUSE client and NFS, so the store links instead;
//   - ReplayLinks(): every Link is made and then reported as EEXIST, as an
//     NFS client that resent a link whose reply was lost sees it.
// Not thread-safe, like the store.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/store/env.h"

namespace stasis::test {

enum class OpKind { kMkdir, kCreate, kWrite, kSync, kSyncDir, kRename, kLink, kRemove };
const char* OpKindName(OpKind kind);

class FaultEnv : public store::Env {
 public:
  explicit FaultEnv(store::Env* base);

  void FailAt(int n, int err) { fail_at_ = n, fail_err_ = err; }
  void FailNth(OpKind kind, int n, int err) {
    fail_kind_ = kind, fail_kind_n_ = n, fail_err_ = err;
  }
  void CrashAt(int n) { crash_at_ = n; }
  void KillAt(int n) { kill_at_ = n; }
  void SetFreeBytes(uint64_t b) { free_bytes_ = b; }
  void RefuseRenameFlags() { refuse_rename_flags_ = true; }
  void ReplayLinks() { replay_links_ = true; }

  int ops() const { return ops_; }
  bool crashed() const { return crashed_; }
  // One line per operation: "7 write node0.ctx 4096".
  const std::vector<std::string>& log() const { return log_; }
  Status DropUnsyncedData();

  Result<UniqueFd> OpenDir(int dirfd, const std::string& name, bool follow) override;
  Status MakeDir(int dirfd, const std::string& name) override;
  Result<std::unique_ptr<store::WritableFile>> NewFile(int dirfd, const std::string& name,
                                                       store::WriteStrategy strategy) override;
  Status SyncDir(int dirfd) override;
  Status Rename(int dirfd, const std::string& from, const std::string& to) override;
  Status Link(int dirfd, const std::string& from, const std::string& to) override;
  Status Remove(int dirfd, const std::string& name, bool is_dir) override;
  Result<uint64_t> FreeBytes(int fd) override;

  // Called by the files this Env creates.
  Status Before(OpKind kind, const std::string& what);
  void FileWritten(const std::string& path, uint64_t size) { files_[path].size = size; }
  void FileSynced(const std::string& path) { files_[path].synced = files_[path].size; }

 private:
  struct FileState {
    uint64_t size = 0, synced = 0;
  };
  struct PendingName {  // a change to a folder not yet made durable
    enum { kCreated, kRenamed, kLinked, kRemoved } what;
    std::string name, from;
    bool is_dir = false;
  };
  store::Env* base_;
  int ops_ = 0;
  std::map<OpKind, int> kind_ops_;
  int fail_at_ = 0, fail_err_ = 0, crash_at_ = 0, kill_at_ = 0, fail_kind_n_ = 0;
  std::optional<OpKind> fail_kind_;
  bool crashed_ = false, refuse_rename_flags_ = false, replay_links_ = false;
  std::optional<uint64_t> free_bytes_;
  std::vector<std::string> log_;
  std::map<std::string, FileState> files_;                   // by path
  std::map<std::string, std::vector<PendingName>> pending_;  // by folder path
};

// The path an fd refers to (/proc/self/fd).
std::string FdPath(int fd);

}  // namespace stasis::test

// Env: the file-system operations of the checkpoint store, as one interface
// the tests control (in the style of LevelDB's Env). The store never calls
// open/mkdir/rename/fsync itself: it asks an Env, so a test Env can fail the
// Nth write, report ENOSPC at any step, stop dead at any step (a crash), and
// then drop whatever was not made durable (test/store/fault_env.h).
//
// Every name is one path component inside a folder given as an fd, and no
// operation follows a symbolic link: the folders of the store are reached
// with openat(O_NOFOLLOW) from their parent's fd, never by path.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "engine/base/fd.h"
#include "engine/base/status.h"

namespace stasis::store {

// How a context file reaches the disk (measured in bench/storage_write).
enum class WriteStrategy {
  kBuffered,   // plain write(2), one fsync at the end
  kStreaming,  // write-behind: sync_file_range each chunk, drop it from the
               // page cache once written (POSIX_FADV_DONTNEED)
  kDirect,     // O_DIRECT for aligned chunks, the tail through the cache
};

// A file being written. Append is one logical write (looping on short
// writes); the caller buffers.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  virtual Status Append(const void* data, size_t n) = 0;
  virtual Status Sync() = 0;
  // The fd (for fstatvfs and for handing the file to stasisd).
  virtual int fd() const = 0;
  virtual const std::string& name() const = 0;
};

class Env {
 public:
  virtual ~Env() = default;
  // Opens folder `name` in `dirfd` (AT_FDCWD and a path for the root of a
  // store: the one place a path with several components is accepted, and
  // the only place symlinks are followed, so /scratch -> /lustre works).
  virtual Result<UniqueFd> OpenDir(int dirfd, const std::string& name, bool follow) = 0;
  // mkdirat(name, 0700).
  virtual Status MakeDir(int dirfd, const std::string& name) = 0;
  // Creates a new file (O_EXCL, 0600).
  virtual Result<std::unique_ptr<WritableFile>> NewFile(int dirfd, const std::string& name,
                                                        WriteStrategy strategy) = 0;
  // fsync of a folder: makes the names in it durable.
  virtual Status SyncDir(int dirfd) = 0;
  // Renames within one folder; never replaces an existing name
  // (renameat2 RENAME_NOREPLACE). A file system without rename flags
  // (GlusterFS's FUSE client, NFS) fails with EINVAL, ENOSYS or EOPNOTSUPP:
  // RenameFlagsRefused() tells; the store then uses Link and Remove.
  virtual Status Rename(int dirfd, const std::string& from, const std::string& to) = 0;
  // A second name `to` for the file `from` in the same folder (link(2)):
  // never replaces; EEXIST when `to` exists.
  virtual Status Link(int dirfd, const std::string& from, const std::string& to) = 0;
  // Removes a file, or an empty folder.
  virtual Status Remove(int dirfd, const std::string& name, bool is_dir) = 0;
  // Bytes an unprivileged writer may still use on the file system of `fd`.
  virtual Result<uint64_t> FreeBytes(int fd) = 0;
};

// The real one. It remembers, per file system (st_dev), that rename flags
// were refused once, and then refuses them without asking again.
Env* DefaultEnv();

// Did Rename fail because the file system has no RENAME_NOREPLACE (rather
// than for a reason that a link would meet too)?
bool RenameFlagsRefused(int code);

// A WritableFile over an fd opened elsewhere (stasisd writing the node file
// its client created and handed over).
std::unique_ptr<WritableFile> WrapFd(UniqueFd fd, std::string name, WriteStrategy strategy);

}  // namespace stasis::store

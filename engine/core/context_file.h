// Context files on disk: created so that a failed or interrupted checkpoint
// never leaves a half-written file under the target name and never harms a
// previous file of that name; opened for restore without following
// symlinks and only when the caller owns them (or is root).
//
// ContextFileWriter is single-use: Open, write through sink(), then Commit
// (fsync, rename, fsync folder) or let the destructor abort (unlink the
// temporary file).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "engine/base/io.h"
#include "engine/base/status.h"
#include "engine/format/context.h"
#include "engine/store/store.h"

namespace stasis::core {

enum class WriteMode {
  kAtomic,   // temp file + rename (default)
  kClobber,  // write the target in place; removed again on failure
  kBackup,   // like kAtomic, but an existing target is kept as NAME.~N~
};

class ContextFileWriter {
 public:
  // Written through the store's pipelined sink (store::NodeFileSink).
  static Result<std::unique_ptr<ContextFileWriter>> Open(const std::string& path, WriteMode mode,
                                                         const store::WriteOptions& write = {});
  ~ContextFileWriter();
  ByteSink* sink() { return sink_.get(); }
  // Makes the file durable under its final name.
  Status Commit();
  const std::string& path() const { return path_; }
  // The temporary name a writer in process `pid` uses for `path` (kAtomic,
  // kBackup): what stasisd removes after a killed worker.
  static std::string TempPathFor(const std::string& path, pid_t pid);

 private:
  ContextFileWriter() = default;
  std::string path_, temp_, dir_, base_;
  WriteMode mode_ = WriteMode::kAtomic;
  std::unique_ptr<store::NodeFileSink> sink_;
  bool committed_ = false;
};

// FinalizeFn adapters for core::Checkpoint: `arg` is a ContextFileWriter
// (fsync, rename, fsync folder), or an FdSink given by the caller (flush,
// and fsync when the fd can be: a pipe or socket cannot).
Status CommitContextFile(void* writer);
Status SyncFdSink(void* fd_sink);

// Opens a context for reading: no symlinks, a regular file, owned by the
// caller unless the caller is root.
Result<std::unique_ptr<ByteSource>> OpenContextForRead(const std::string& path);

// The Image of the context at `path` (opened as above; the rest unread).
Result<format::ImageInfo> ReadContextImage(const std::string& path);

// What a context written to `child` records as its parent `parent`
// (ImageInfo::parent): the parent's name when both are in one folder, so
// that the pair can be moved together, else its absolute path.
Result<std::string> ParentReference(const std::string& child, const std::string& parent);
// The other way: the path of the parent a context at `child` records as
// `recorded` (relative to the child's folder unless absolute).
std::string ResolveParent(const std::string& child, const std::string& recorded);

}  // namespace stasis::core

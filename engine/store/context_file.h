// Context files written into place: created so that a failed or
// interrupted checkpoint never leaves a half-written file under the target
// name and never harms a previous file of that name. The reading side
// (OpenContextForRead, ParentReference) is in engine/core/context_file.h.
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
#include "engine/store/store.h"

namespace stasis::store {

enum class WriteMode {
  kAtomic,   // temp file + rename (default)
  kClobber,  // write the target in place; removed again on failure
  kBackup,   // like kAtomic, but an existing target is kept as NAME.~N~
};

class ContextFileWriter {
 public:
  // Written through the store's pipelined sink (NodeFileSink).
  static Result<std::unique_ptr<ContextFileWriter>> Open(const std::string& path, WriteMode mode,
                                                         const WriteOptions& write = {});
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
  std::unique_ptr<NodeFileSink> sink_;
  bool committed_ = false;
};

// FinalizeFn adapter for core::Checkpoint: `arg` is a ContextFileWriter
// (fsync, rename, fsync folder).
Status CommitContextFile(void* writer);

}  // namespace stasis::store

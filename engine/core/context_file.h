// Context files on disk, the reading side: opened for restore without
// following symlinks and only when the caller owns them (or is root), and
// the references from a context to its parent. Writing one into place
// (temp file, rename, backups) is store::ContextFileWriter
// (engine/store/context_file.h), so that core does not depend on the store.
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>

#include "engine/base/io.h"
#include "engine/base/status.h"
#include "engine/format/context.h"

namespace stasis::core {

// FinalizeFn adapter for core::Checkpoint: `arg` is an FdSink given by the
// caller (flush, and fsync when the fd can be: a pipe or socket cannot). The
// adapter for a context file written into place is store::CommitContextFile.
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

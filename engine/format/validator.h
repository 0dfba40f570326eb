// ContextValidator: the rules a context file obeys beyond its framing: the
// order of sections, the cross-references between them (every pid is in
// the Tree, threads match the Tree's tids, mappings name existing shared
// memory, page runs lie inside the owner's memory) and the ranges of
// values a restore will act on. The writer runs it before emitting a
// section and the reader after decoding one, so a writer cannot produce a
// file a reader refuses. docs/format.md, "Order and cross-references",
// states the same rules in prose.
//
// Internal to engine/format. Errors are Status::Corrupt with a message
// that does not name the section; callers add "<Type> section at byte N".
// A method that fails leaves the validator unchanged. Not thread-safe.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "engine/base/status.h"
#include "engine/format/context.h"
#include "engine/format/context_io.h"
#include "engine/format/schema.h"

namespace stasis::format::internal {

class ContextValidator {
 public:
  Status Image(const ImageInfo& image);
  Status Tree(const ProcessTree& tree);
  Status Shared(const SharedMemory& shm);
  Status Process(const ProcessInfo& process);
  Status Mappings(uint32_t pid, const std::vector<Mapping>& mappings);
  Status Files(uint32_t pid, const std::vector<FileDesc>& files);
  Status Thread(uint32_t pid, const ThreadInfo& thread);
  // On success sets *data_bytes to sum(npages) * kPageSize.
  Status Pages(const PageOwner& owner, const std::vector<PageRun>& runs, uint64_t* data_bytes);
  // Pages of the current process that the parent context holds (an
  // incremental context): at most one section per process, before its
  // Pages, inside its private anonymous mappings; its Pages must not
  // overlap them. Only in a context that names a parent.
  Status ParentPages(uint32_t pid, const std::vector<PageRun>& runs);
  // Checks that the context is complete; on success sets *counts to the
  // totals the End section carries.
  Status End(EndCounts* counts);

 private:
  enum class Stage { kImage, kTree, kShared, kMappings, kFiles, kThreads, kDone };

  // "expected <what the stage wants>, found <type>".
  Status Unexpected(SectionType found) const;
  // Checks that `pid` is the current process; names what is wrong if not.
  Status CheckCurrentPid(uint64_t pid) const;
  // The current process has all its threads (Pages/Process/End may follow).
  bool ProcessComplete() const;
  const ProcessEntry& Current() const { return tree_.processes[processes_seen_ - 1]; }
  Status CheckRunsInMappings(const std::vector<PageRun>& runs,
                             const std::vector<std::pair<uint64_t, uint64_t>>& ranges,
                             const char* which) const;

  Stage stage_ = Stage::kImage;
  ProcessTree tree_;
  std::unordered_map<uint32_t, size_t> pid_index_;
  std::unordered_set<uint64_t> shm_ids_;
  EndCounts counts_;
  size_t processes_seen_ = 0;            // Process sections so far; current is the last
  size_t threads_seen_ = 0;              // Thread sections of the current process
  bool have_shm_ = false;                // a SharedMemory section is current
  uint64_t shm_id_ = 0, shm_limit_ = 0;  // its id, size rounded up to pages
  uint64_t pages_end_ = 0;               // end of the last run of the current owner
  std::vector<std::pair<uint64_t, uint64_t>> ranges_;       // current mappings
  std::vector<std::pair<uint64_t, uint64_t>> anon_ranges_;  // its private anonymous ones
  bool has_parent_ = false;                                 // the Image names a parent
  bool parent_seen_ = false;                                // ParentPages of the current process
  std::vector<PageRun> parent_runs_;                        // ... and its runs
  // TCP connections with both ends here: socket inode -> its peer's; each
  // must name the other by End (fd/tcp_socket.cc rebuilds them in pairs).
  std::unordered_map<uint64_t, uint64_t> tcp_peers_;
  Status CheckNotInParent(const std::vector<PageRun>& runs) const;
};

}  // namespace stasis::format::internal

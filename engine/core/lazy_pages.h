// Lazy restart (cr_restart --lazy): the restored tree runs as soon as its
// registers, mappings and descriptors are in place; the page data of its
// private anonymous memory arrives afterwards. Each restored process gets a
// userfaultfd (created inside it, so that faults of the kernel on its
// behalf are caught too) on which every private anonymous mapping but the
// stack is registered for missing pages. A thread of the restorer then
// serves faults from the context file (pread at the offsets the reader
// recorded while it skipped those Pages sections), and streams every other
// page in file order, verifying each section's CRC32C as it goes; a
// mismatch kills the tree (it may already have run on pages the file did
// not vouch for, so nothing is kept). fork, mremap, munmap and madvise
// (DONTNEED, REMOVE) by the restored processes are followed
// (UFFD_FEATURE_EVENT_*), so a removed page reads zero and a moved one
// finds its data. When every page is in, the userfaultfds are closed.
//
// The restorer must outlive the streaming: if it dies first, the kernel
// drops the registrations and untouched pages would read zero. cr_restart
// stays the tree's parent, so it does.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/format/context.h"

namespace stasis::core {

class LazyPages {
 public:
  // `file`: the context file, read with pread (its own offset is unused).
  LazyPages(UniqueFd file, std::string name);
  ~LazyPages();
  LazyPages(const LazyPages&) = delete;
  LazyPages& operator=(const LazyPages&) = delete;

  // A version 1 Pages section of process `pid` that was skipped unread:
  // its runs' bytes start at data_offset, its trailer is at trailer_offset.
  void AddSection(pid_t pid, std::vector<format::PageRun> runs, uint64_t data_offset,
                  uint64_t trailer_offset, uint32_t crc_seed);
  // The recorded runs of `pid` (to write eagerly the pages already present
  // before registration, or everything when registration is refused).
  struct Piece {
    uint64_t addr, bytes, offset;  // address, length, file offset of the data
  };
  std::vector<Piece> PiecesOf(pid_t pid) const;
  Status ReadAt(uint64_t offset, void* buf, size_t n) const;

  // Takes `uffd` (already through UFFDIO_API and registered on the
  // process's lazy mappings) as the fault source of `pid`.
  Status Adopt(pid_t pid, UniqueFd uffd);
  // The features the server asks for in UFFDIO_API.
  static uint64_t Features();

  // Starts serving faults (before the tree runs: the restorer's own last
  // touches may fault), and streaming once StartStreaming is called.
  Status Start();
  void StartStreaming(std::vector<pid_t> tree);
  // Blocks until every page is in (or the server failed); the error, if any.
  Status Wait();
  bool done() const;
  // Called once, from the server's thread, when every page is in (or the
  // server failed); at once if that already happened.
  void OnDone(std::function<void(const Status&)> fn);
  uint64_t faults_served() const;
  uint64_t bytes_streamed() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace stasis::core

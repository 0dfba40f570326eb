// Dirty tracking between checkpoints, for incremental contexts
// (docs/design.md, "Incremental epochs").
//
// A checkpoint that tracks leaves two things in each process it captured:
// a userfaultfd with asynchronous write protection (UFFD_FEATURE_WP_ASYNC:
// the kernel clears a page's protection bit on its first write, nobody is
// told) whose registrations cover the process's private writable anonymous
// memory, and a one-page private read-only mapping of a memfd named
// "stasis-track" (a name /proc/PID/maps shows on every kernel, where
// PR_SET_VMA_ANON_NAME needs CONFIG_ANON_VMA_NAME) that
// says which fd that is, whose process it belongs to and the token of the
// capture that last reset the bits. The next checkpoint reads which pages
// were written since (PAGEMAP_SCAN on /proc/PID/pagemap, which also
// protects them again in the same walk) and, when the token matches the
// parent context it was given, stores only those pages and names the rest
// as the parent's. Neither thing is ever part of a context.
//
// Linux 6.7+ (PAGEMAP_SCAN, UFFD_FEATURE_WP_ASYNC); Debian 12's headers
// predate them, so the uapi bits are spelled out here.
#pragma once

#include <sys/ioctl.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/status.h"

namespace stasis::core {

namespace uapi {
inline constexpr uint64_t kUffdFeatureWpAsync = 1ull << 15;
inline constexpr uint64_t kPageIsWritten = 1ull << 1;
inline constexpr uint64_t kPageIsPresent = 1ull << 3;
inline constexpr uint64_t kPageIsSwapped = 1ull << 4;
inline constexpr uint64_t kPmScanWpMatching = 1ull << 0;
inline constexpr uint64_t kPmScanCheckWpAsync = 1ull << 1;
struct PageRegion {
  uint64_t start, end, categories;
};
struct PmScanArg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
inline constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
}  // namespace uapi

// The content of the stasis-track page (written through /proc/PID/mem: a
// private copy of the page, so that a fork child's copy is its own).
struct TrackArea {
  char magic[8];       // kTrackMagic
  uint32_t version;    // 1
  int32_t uffd;        // the process's fd of its userfaultfd
  uint64_t pid;        // whose: a fork child inherits the page and the fd
  uint64_t starttime;  // ... (with pid: /proc/PID/stat field 22)
  uint64_t token;      // ImageInfo::token of the capture that reset the bits; 0 = none
};
inline constexpr char kTrackMagic[8] = {'S', 'T', 'A', 'S', 'T', 'R', 'K', '1'};
inline constexpr char kTrackAreaName[] = "stasis-track";
inline constexpr char kTrackAreaMaps[] = "/memfd:stasis-track (deleted)";
inline constexpr uint64_t kTrackAreaSize = 4096;

// Has this kernel asynchronous userfaultfd write protection? Probed once in
// the calling process; false with the reason when not.
bool DirtyTrackingSupported(std::string* why_not);
// Does PAGEMAP_SCAN work on this pagemap (a process's /proc/PID/pagemap,
// which the capture can open where /proc/self/pagemap may be closed to a
// daemon's worker that changed its identity)?
Status CheckPagemapScan(int pagemap_fd);

// Enables asynchronous write protection on a fresh userfaultfd.
Status EnableWpAsync(int uffd);
// Registers [start, end) for write protection and protects every page.
Status RegisterAndProtect(int uffd, uint64_t start, uint64_t end);
// The present (or swapped) pages of [start, end), as sorted runs of
// [start, end) with `written` telling whether they were written since they
// were last protected; protects them all again in the same walk. Fails
// (nothing to trust) when part of the range is not write-protect tracked.
struct ScannedRun {
  uint64_t start, end;
  bool written;
};
Result<std::vector<ScannedRun>> ScanPresentAndProtect(int pagemap_fd, uint64_t start, uint64_t end);

}  // namespace stasis::core

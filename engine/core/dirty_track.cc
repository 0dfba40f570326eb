#include "engine/core/dirty_track.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "engine/base/fd.h"

namespace stasis::core {

bool DirtyTrackingSupported(std::string* why_not) {
  static std::once_flag once;
  static bool ok = false;
  static std::string why;
  std::call_once(once, [] {
    UniqueFd uffd(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)));
    if (!uffd) {
      why = std::string("userfaultfd: ") + strerror(errno);
      return;
    }
    if (!EnableWpAsync(uffd.get()).ok()) {
      why = "the kernel has no asynchronous userfaultfd write protection (Linux 6.7+)";
      return;
    }
    ok = true;
  });
  if (!ok && why_not) *why_not = why;
  return ok;
}

Status CheckPagemapScan(int pagemap_fd) {
  uapi::PmScanArg a{};
  a.size = sizeof a;
  if (::ioctl(pagemap_fd, uapi::kPagemapScan, &a) == 0) return Status::Ok();
  if (errno == ENOTTY) return Status::Error(ENOTSUP, "the kernel has no PAGEMAP_SCAN (Linux 6.7+)");
  return Status::FromErrno(errno, "PAGEMAP_SCAN");
}

Status EnableWpAsync(int uffd) {
  struct uffdio_api api = {};
  api.api = UFFD_API;
  api.features = uapi::kUffdFeatureWpAsync;
  if (::ioctl(uffd, UFFDIO_API, &api) != 0) return Status::FromErrno(errno, "userfaultfd API with WP_ASYNC");
  return Status::Ok();
}

Status RegisterAndProtect(int uffd, uint64_t start, uint64_t end) {
  struct uffdio_register r = {};
  r.range.start = start;
  r.range.len = end - start;
  r.mode = UFFDIO_REGISTER_MODE_WP;
  if (::ioctl(uffd, UFFDIO_REGISTER, &r) != 0) return Status::FromErrno(errno, "register for write protection");
  struct uffdio_writeprotect w = {};
  w.range.start = start;
  w.range.len = end - start;
  w.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &w) != 0) return Status::FromErrno(errno, "write-protect");
  return Status::Ok();
}

Result<std::vector<ScannedRun>> ScanPresentAndProtect(int pagemap_fd, uint64_t start, uint64_t end) {
  std::vector<ScannedRun> out;
  std::vector<uapi::PageRegion> vec(4096);
  uint64_t at = start;
  while (at < end) {
    uapi::PmScanArg a{};
    a.size = sizeof a;
    a.flags = uapi::kPmScanWpMatching | uapi::kPmScanCheckWpAsync;
    a.start = at;
    a.end = end;
    a.vec = reinterpret_cast<uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_anyof_mask = uapi::kPageIsPresent | uapi::kPageIsSwapped;
    a.return_mask = uapi::kPageIsWritten;
    long n = ::ioctl(pagemap_fd, uapi::kPagemapScan, &a);
    if (n < 0) return Status::FromErrno(errno, "PAGEMAP_SCAN");
    for (long i = 0; i < n; ++i) {
      const uapi::PageRegion& r = vec[static_cast<size_t>(i)];
      const bool w = (r.categories & uapi::kPageIsWritten) != 0;
      const uint64_t rs = std::max(r.start, at), re = std::min(r.end, end);
      if (rs >= re) continue;
      if (!out.empty() && out.back().end == rs && out.back().written == w)
        out.back().end = re;
      else
        out.push_back({rs, re, w});
    }
    // Continue after the last region: 6.18 was seen to report regions
    // (already protected again) past the walk_end it returns; scanning them
    // again would find them unwritten.
    uint64_t next = a.walk_end;
    if (n > 0) next = std::max(next, vec[static_cast<size_t>(n - 1)].end);
    if (next <= at) return Status::Error(EIO, "PAGEMAP_SCAN made no progress");
    at = next;
  }
  return out;
}

}  // namespace stasis::core

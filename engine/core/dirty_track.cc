#include "engine/core/dirty_track.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>

#include "engine/base/fd.h"
#include "engine/core/capture_internal.h"

namespace stasis::core {

bool DirtyTrackingSupported(std::string* why_not) {
  static std::once_flag once;
  static bool ok = false;
  static std::string why;
  std::call_once(once, [] {
    UniqueFd uffd(
        static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)));
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
  if (::ioctl(uffd, UFFDIO_API, &api) != 0)
    return Status::FromErrno(errno, "userfaultfd API with WP_ASYNC");
  return Status::Ok();
}

Status RegisterAndProtect(int uffd, uint64_t start, uint64_t end) {
  struct uffdio_register r = {};
  r.range.start = start;
  r.range.len = end - start;
  r.mode = UFFDIO_REGISTER_MODE_WP;
  if (::ioctl(uffd, UFFDIO_REGISTER, &r) != 0)
    return Status::FromErrno(errno, "register for write protection");
  struct uffdio_writeprotect w = {};
  w.range.start = start;
  w.range.len = end - start;
  w.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (::ioctl(uffd, UFFDIO_WRITEPROTECT, &w) != 0) return Status::FromErrno(errno, "write-protect");
  return Status::Ok();
}

Result<std::vector<ScannedRun>> ScanPresentAndProtect(int pagemap_fd, uint64_t start,
                                                      uint64_t end) {
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

namespace capture {

namespace {

// Private writable anonymous memory that fork copies: what dirty tracking
// covers. The rest of a tracked process is stored whole every time.
bool Trackable(const Mapping& m, uint64_t scratch) {
  return m.kind == format::kMapAnon && !(m.flags & format::kMapShared) && (m.prot & PROT_WRITE) &&
         !(m.flags & (format::kMapDontFork | format::kMapWipeOnFork | format::kMapHugetlb)) &&
         m.start != scratch;
}

}  // namespace

void Capturer::Track(uint64_t token, CheckpointStats* stats) {
  std::string why;
  if (kernel_) {
    stats->track_note = "no dirty tracking with the kernel backend: stored whole";
    return;
  }
  if (!DirtyTrackingSupported(&why)) {
    stats->track_note = "no dirty tracking (" + why + "): stored whole";
    return;
  }
  token_ = token;
  for (auto& p : procs_) {
    if (p->zombie) continue;
    if (p->unseized) {
      stats->track_note += (stats->track_note.empty() ? "" : "; ") + Pid(p->pid) +
                           ": not tracked (its debugger holds it: no call can be injected)";
      continue;
    }
    std::string w;
    bool ok = TrackProcess(p.get(), token, &w);
    if (!w.empty()) stats->track_note += (stats->track_note.empty() ? "" : "; ") + w;
    if (!ok) continue;
    if (p->incremental) {
      stats->incremental_processes++;
      for (const PageRun& r : p->parent_runs) stats->parent_page_bytes += r.npages * kPageSize;
    }
  }
  stats->token = token;
  stats->incremental = stats->incremental_processes > 0;
}

bool Capturer::TrackProcess(ProcState* p, uint64_t token, std::string* why) {
  const std::string pid = std::to_string(p->pid);
  Tracee* leader = p->threads[0].get();
  auto fail = [&](const std::string& w) {
    *why = Pid(p->pid) + ": " + w;
    return false;
  };
  auto is_uffd = [&](int fd) {
    auto l = ReadLink("/proc/" + pid + "/fd/" + std::to_string(fd));
    return l && *l == "anon_inode:[userfaultfd]";
  };
  // Its own page and its own userfaultfd (a fork child inherits both, but
  // the fd is its parent's, tracking the parent's memory).
  const bool mine = p->track_valid && p->track.pid == static_cast<uint64_t>(p->pid) &&
                    p->track.starttime == p->stat.starttime;
  const bool fd_ok = mine && p->track.uffd >= 0 && is_uffd(p->track.uffd);
  const bool incremental =
      options_.parent_token != 0 && fd_ok && p->track.token == options_.parent_token;
  if (options_.parent_token != 0 && !incremental)
    *why = Pid(p->pid) + ": stored whole (" +
           (!p->track_area ? std::string("not tracked since the parent")
            : !mine        ? std::string("a fork child, not tracked itself yet")
            : !fd_ok       ? std::string("its tracking userfaultfd is gone")
                           : std::string("tracked since another capture than the parent")) +
           ")";
  UniqueFd pagemap(::open(("/proc/" + pid + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return fail(std::string("open pagemap: ") + strerror(errno));
  if (Status s = CheckPagemapScan(pagemap.get()); !s.ok()) return fail(s.message());
  // Invalidate first: should anything below fail half way, no later
  // capture takes what this one resets for changes since the parent.
  if (p->track_area) {
    const uint64_t zero = 0;
    if (!p->mem.WriteThroughProc(p->track_area + offsetof(TrackArea, token), &zero, sizeof zero)
             .ok())
      return fail("cannot write its tracking page");
  }
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, p->pid, 0)));
  if (!pidfd) return fail(std::string("pidfd_open: ") + strerror(errno));
  UniqueFd uffd;
  int target_fd = -1;
  if (fd_ok) {
    target_fd = p->track.uffd;
    uffd.reset(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), target_fd, 0)));
    if (!uffd) return fail(std::string("take its userfaultfd: ") + strerror(errno));
  } else {
    if (p->track_valid && p->track.uffd >= 0 && is_uffd(p->track.uffd))
      (void)Inject(p, leader, SYS_close, static_cast<uint64_t>(p->track.uffd));
    auto r = Inject(p, leader, SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (!r) return fail(r.error().message());
    if (*r < 0) return fail(std::string("userfaultfd: ") + strerror(static_cast<int>(-*r)));
    long fd = *r;
    // Out of the way of the program's own fds (BLCR and DMTCP keep theirs
    // high too), below its RLIMIT_NOFILE.
    uint64_t limit =
        p->info.rlimits.size() > RLIMIT_NOFILE ? p->info.rlimits[RLIMIT_NOFILE].cur : 1024;
    long base = limit >= 1024 ? 1000 : static_cast<long>(limit * 3 / 4);
    if (base > fd) {
      auto d = Inject(p, leader, SYS_fcntl, static_cast<uint64_t>(fd), F_DUPFD_CLOEXEC,
                      static_cast<uint64_t>(base));
      if (d && *d >= 0) {
        (void)Inject(p, leader, SYS_close, static_cast<uint64_t>(fd));
        fd = *d;
      }
    }
    target_fd = static_cast<int>(fd);
    uffd.reset(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), target_fd, 0)));
    Status api =
        uffd ? EnableWpAsync(uffd.get()) : Status::FromErrno(errno, "take its userfaultfd");
    if (!api.ok()) {
      (void)Inject(p, leader, SYS_close, static_cast<uint64_t>(target_fd));
      return fail(api.message());
    }
    if (!p->track_area) {
      // A private mapping of a memfd of that name: found again by its name.
      long area = -1;
      if (p->mem.Write(p->scratch, kTrackAreaName, sizeof kTrackAreaName).ok()) {
        auto m = Inject(p, leader, SYS_memfd_create, p->scratch, MFD_CLOEXEC);
        if (m && *m >= 0) {
          auto t = Inject(p, leader, SYS_ftruncate, static_cast<uint64_t>(*m), kTrackAreaSize);
          auto a = t && *t == 0 ? Inject(p, leader, SYS_mmap, 0, kTrackAreaSize, PROT_READ,
                                         MAP_PRIVATE, static_cast<uint64_t>(*m), 0)
                                : Result<long>(-1L);
          if (a && !(*a < 0 && *a > -4096)) area = *a;
          (void)Inject(p, leader, SYS_close, static_cast<uint64_t>(*m));
        }
      }
      if (area == -1) {
        (void)Inject(p, leader, SYS_close, static_cast<uint64_t>(target_fd));
        return fail("cannot map its tracking page");
      }
      p->track_area = static_cast<uint64_t>(area);
    }
  }
  std::vector<PageRun> parent, dirty;
  std::set<uint64_t> incremental_maps;
  for (const Mapping& m : p->mappings) {
    if (!Trackable(m, p->scratch_address)) continue;
    auto at = std::lower_bound(p->maps.begin(), p->maps.end(), m.start,
                               [](const MapsEntry& e, uint64_t a) { return e.start < a; });
    const size_t index = static_cast<size_t>(at - p->maps.begin());
    const bool registered =
        fd_ok && index < p->vm_wp.size() && at->start == m.start && p->vm_wp[index];
    if (!registered) {
      // From now on; this time it is stored whole.
      (void)RegisterAndProtect(uffd.get(), m.start, m.end);
      continue;
    }
    // One walk: which pages are there, which were written since the last
    // capture, and protect them all again.
    auto scanned = ScanPresentAndProtect(pagemap.get(), m.start, m.end);
    if (!scanned || !incremental) continue;  // stored whole this time
    for (const ScannedRun& r : *scanned) {
      std::vector<PageRun>& to = r.written ? dirty : parent;
      if (!to.empty() && to.back().start + to.back().npages * kPageSize == r.start)
        to.back().npages += (r.end - r.start) / kPageSize;
      else
        to.push_back({r.start, (r.end - r.start) / kPageSize});
    }
    incremental_maps.insert(m.start);
  }
  TrackArea area{};
  std::memcpy(area.magic, kTrackMagic, sizeof area.magic);
  area.version = 1;
  area.uffd = target_fd;
  area.pid = static_cast<uint64_t>(p->pid);
  area.starttime = p->stat.starttime;
  area.token = token;
  if (!p->mem.WriteThroughProc(p->track_area, &area, sizeof area).ok())
    return fail("cannot write its tracking page");
  if (incremental) {
    p->parent_runs = std::move(parent);
    p->dirty_runs = std::move(dirty);
    p->incremental_maps = std::move(incremental_maps);
    p->incremental = true;
  }
  return true;
}

}  // namespace capture

}  // namespace stasis::core

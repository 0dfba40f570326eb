// seccomp, both directions: the filters read (as root) from every thread at
// capture, refused unless every thread has the same ones; installed at
// restore after everything else that sets state, to every thread (TSYNC).
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "engine/core/capture_internal.h"
#include "engine/core/restore_internal.h"

namespace stasis::core {
namespace capture {

// seccomp filters (mode 2) are saved, as root, when every thread has the
// same ones (TSYNC or inherited); strict mode (1) cannot be restored.
Status Capturer::CaptureSeccomp(ProcState* p) {
  const std::string proc = "/proc/" + std::to_string(p->pid);
  format::ProcessInfo& info = p->info;
  auto seccomp = StatusField(p->status_text, "Seccomp");
  if (seccomp && *seccomp == "1")
    return Status::Error(ENOTSUP, "cannot checkpoint " + Pid(p->pid) +
                                      ": it runs in seccomp strict mode, which cannot be restored");
  if (seccomp && *seccomp == "2") {
    if (::geteuid() != 0)
      return Status::Error(EPERM, "cannot checkpoint " + Pid(p->pid) +
                                      ": it runs under seccomp filters, which only root can read");
    for (size_t i = 0; i < p->threads.size(); ++i) {
      Tracee* t = p->threads[i].get();
      auto text = ReadFileToString(proc + "/task/" + std::to_string(t->tid()) + "/status");
      auto count = text ? StatusField(*text, "Seccomp_filters") : Result<std::string>(text.error());
      if (!count)
        return Status::Error(
            EPROTO, "cannot checkpoint " + Pid(p->pid) + ": no Seccomp_filters in its status");
      STASIS_ASSIGN_OR_RETURN(
          auto filters,
          t->SeccompFilters(static_cast<uint32_t>(std::strtoul(count->c_str(), nullptr, 10))));
      if (i == 0)
        info.seccomp_filters = std::move(filters);
      else if (filters != info.seccomp_filters)
        return Status::Error(ENOTSUP,
                             "cannot checkpoint " + Pid(p->pid) +
                                 ": its threads have different seccomp "
                                 "filters (only filters shared by every thread are restored)");
    }
  }
  return Status::Ok();
}

}  // namespace capture

namespace restore {

Status Restorer::FinishSeccomp(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  if (!info.seccomp_filters.empty() || !options_.outer_seccomp_filters.empty()) {
    for (auto& t : p->tracees) {
      Status suspended = t->SuspendSeccomp();
      if (!suspended.ok() && !info.seccomp_filters.empty()) return suspended;
    }
    constexpr uint64_t kTsync = 1, kKeptFlags = 2 /* LOG */ | 4 /* SPEC_ALLOW */;
    std::vector<format::SeccompFilter> filters = options_.outer_seccomp_filters;
    filters.insert(filters.end(), info.seccomp_filters.begin(), info.seccomp_filters.end());
    for (const format::SeccompFilter& f : filters) {
      if (f.program.empty() || f.program.size() % 8 != 0 || f.program.size() > kMaxPath)
        return Status::Corrupt("bad seccomp filter for " + who);
      STASIS_RETURN_IF_ERROR(
          p->mem.Write(p->scratch + kOffPath, f.program.data(), f.program.size()));
      struct {
        uint16_t len;
        uint16_t pad[3];
        uint64_t filter;
      } prog = {static_cast<uint16_t>(f.program.size() / 8), {0, 0, 0}, p->scratch + kOffPath};
      STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, &prog, sizeof prog));
      STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_seccomp, 1 /* SECCOMP_SET_MODE_FILTER */,
                                          (f.flags & kKeptFlags) | kTsync, p->scratch + kOffArgs),
                                     "restore a seccomp filter of " + who)
                                 .status());
    }
  }
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core

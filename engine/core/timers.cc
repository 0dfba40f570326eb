// POSIX timers at restore (their capture is part of the process state in
// task_state.cc): recreated with their ids and re-armed.
#include <elf.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "engine/agent/agent_abi.h"
#include "engine/base/fd.h"
#include "engine/core/agent_client.h"
#include "engine/core/capture_internal.h"
#include "engine/core/context_file.h"
#include "engine/core/dirty_track.h"
#include "engine/core/engine.h"
#include "engine/core/kernel_capture.h"
#include "engine/core/lazy_pages.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/core/restore_internal.h"
#include "engine/core/unix_diag.h"
#include "engine/format/context_io.h"
#include "engine/format/format_constants.h"

namespace stasis::core {
namespace restore {

using format::FileDesc;
using format::Mapping;

// POSIX timers, each under its old id (programs keep timer_t values). Linux
// 6.16+ takes the id we ask for (PR_TIMER_CREATE_RESTORE_IDS); older kernels
// hand out ids in increasing order from 0 in a new process, so ids below the
// wanted one are used up by creating and deleting placeholders. Timers are
// armed with the time they had left (relative); overrun counts are lost.
// STASIS_TIMER_IDS=count takes the older kernels' way on any kernel (tests).
Status Restorer::RestorePosixTimers(RProc* p) {
  constexpr uint64_t kPrTimerCreateRestoreIds = 77;
  const std::string who = Pid(p->entry.pid);
  std::vector<const format::PosixTimer*> timers;
  for (const format::PosixTimer& t : p->info.posix_timers) timers.push_back(&t);
  if (timers.empty()) return Status::Ok();
  std::sort(timers.begin(), timers.end(), [](auto* a, auto* b) { return a->id < b->id; });
  const char* mode = std::getenv("STASIS_TIMER_IDS");
  long on = -EINVAL;
  if (!mode || std::strcmp(mode, "count") != 0) {
    STASIS_ASSIGN_OR_RETURN(on, Call(p, SYS_prctl, kPrTimerCreateRestoreIds, 1, 0, 0, 0));
  }
  const bool by_id = on == 0;
  const uint64_t ev_at = p->scratch + kOffArgs, id_at = ev_at + 0x100, its_at = ev_at + 0x200;
  for (const format::PosixTimer* t : timers) {
    const std::string what = "POSIX timer " + std::to_string(t->id) + " of " + who;
    // struct sigevent: sigval, signo, notify, then the target thread.
    struct {
      uint64_t sigval;
      int32_t signo, notify, tid;
      int32_t pad[11];
    } ev = {t->sigval, static_cast<int32_t>(t->signo), static_cast<int32_t>(t->notify), 0, {}};
    if (t->notify & SIGEV_THREAD_ID) {
      for (size_t i = 0; i < p->threads.size() && !ev.tid; ++i)
        if (p->threads[i].tid == t->tid) ev.tid = InnermostPid(p->tracees[i]->tid());
      if (!ev.tid)
        return Status::Corrupt(what + " signals thread " + std::to_string(t->tid) +
                               ", which the context does not hold");
    }
    STASIS_RETURN_IF_ERROR(p->mem.Write(ev_at, &ev, sizeof ev));
    int32_t got = -1;
    for (long tries = 0;; ++tries) {
      int32_t want = t->id;
      STASIS_RETURN_IF_ERROR(p->mem.Write(id_at, &want, sizeof want));
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_timer_create, static_cast<uint64_t>(t->clock), ev_at, id_at),
                  "restore " + what)
              .status());
      STASIS_RETURN_IF_ERROR(p->mem.Read(id_at, &got, sizeof got));
      if (got == t->id) break;
      (void)Call(p, SYS_timer_delete, static_cast<uint64_t>(static_cast<uint32_t>(got)));
      if (by_id || got > t->id || tries > 200000)
        return Status::Error(ENOTSUP, "cannot restore " + what + ": the kernel gave id " +
                                          std::to_string(got) +
                                          " (ids are only chosen by Linux 6.16+)");
    }
    if (t->value_ns) {
      int64_t its[4] = {static_cast<int64_t>(t->interval_ns / 1000000000),
                        static_cast<int64_t>(t->interval_ns % 1000000000),
                        static_cast<int64_t>(t->value_ns / 1000000000),
                        static_cast<int64_t>(t->value_ns % 1000000000)};
      STASIS_RETURN_IF_ERROR(p->mem.Write(its_at, its, sizeof its));
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_timer_settime, static_cast<uint64_t>(static_cast<uint32_t>(got)), 0,
                       its_at, 0),
                  "arm " + what)
              .status());
    }
  }
  if (by_id) (void)Call(p, SYS_prctl, kPrTimerCreateRestoreIds, 0, 0, 0, 0);
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core

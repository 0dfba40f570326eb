// Timers, both directions: interval timers (setitimer) and POSIX timers
// (how each was created, from /proc/PID/timers, and the time left, read in
// the process), recreated with their ids and re-armed at restore.
#include <signal.h>
#include <sys/syscall.h>

#include <algorithm>
#include <cstring>

#include "engine/core/capture_internal.h"
#include "engine/core/kernel_capture.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/core/restore_internal.h"
#include "engine/format/format_constants.h"

namespace stasis::core {
namespace capture {

// POSIX timers: how each was created (their time left is read below,
// with timer_gettime in the process).
Status Capturer::ListPosixTimers(ProcState* p) {
  const std::string proc = "/proc/" + std::to_string(p->pid);
  format::ProcessInfo& info = p->info;
  auto timers = ReadFileToString(proc + "/timers");
  if (timers && !timers->empty()) {
    STASIS_ASSIGN_OR_RETURN(info.posix_timers, ParsePosixTimers(*timers));
    if (info.posix_timers.size() > format::kMaxPosixTimers)
      return Status::Error(ENOTSUP, "cannot checkpoint " + Pid(p->pid) + ": it has " +
                                        std::to_string(info.posix_timers.size()) +
                                        " POSIX timers (at most " +
                                        std::to_string(format::kMaxPosixTimers) + ")");
  }
  return Status::Ok();
}

// The time left of each POSIX timer and the interval timers, read in the
// process (with the module's TASKSTATE `ks`, the real itimer came from the
// kernel already).
Status Capturer::ReadTimers(ProcState* p, Tracee* leader, const KernelTaskState* ks) {
  format::ProcessInfo& info = p->info;
  for (format::PosixTimer& t : info.posix_timers) {
    STASIS_ASSIGN_OR_RETURN(long r,
                            Inject(p, leader, SYS_timer_gettime,
                                   static_cast<uint64_t>(static_cast<uint32_t>(t.id)), p->scratch));
    if (r != 0)
      return Status::FromErrno(static_cast<int>(-r),
                               "read POSIX timer " + std::to_string(t.id) + " of " + Pid(p->pid));
    int64_t v[4];  // struct itimerspec: interval, value
    STASIS_RETURN_IF_ERROR(ReadScratch(p, v, sizeof v));
    t.interval_ns = static_cast<uint64_t>(v[0] * 1000000000 + v[1]);
    t.value_ns = static_cast<uint64_t>(v[2] * 1000000000 + v[3]);
  }
  for (int which = ks ? 1 : 0; which < 3 && (!ks || ks->cpu_itimers); ++which) {
    STASIS_ASSIGN_OR_RETURN(
        long r, Inject(p, leader, SYS_getitimer, static_cast<uint64_t>(which), p->scratch));
    if (r != 0) return Status::FromErrno(static_cast<int>(-r), "read itimer of " + Pid(p->pid));
    int64_t v[4];
    STASIS_RETURN_IF_ERROR(ReadScratch(p, v, sizeof v));
    format::ItimerValue iv{static_cast<uint64_t>(v[0] * 1000000 + v[1]),
                           static_cast<uint64_t>(v[2] * 1000000 + v[3])};
    (which == 0 ? info.itimer_real : which == 1 ? info.itimer_virtual : info.itimer_prof) = iv;
  }
  return Status::Ok();
}

}  // namespace capture

namespace restore {

using format::FileDesc;
using format::Mapping;

// POSIX timers, each under its old id (programs keep timer_t values). Linux
// 6.16+ takes the id we ask for (PR_TIMER_CREATE_RESTORE_IDS); older kernels
// hand out ids in increasing order from 0 in a new process, so ids below the
// wanted one are used up by creating and deleting placeholders. Timers are
// armed with the time they had left (relative); overrun counts are lost.
// RestoreOptions::timer_ids_by_count takes the older kernels' way on any
// kernel (tests).
Status Restorer::RestorePosixTimers(RProc* p) {
  constexpr uint64_t kPrTimerCreateRestoreIds = 77;
  const std::string who = Pid(p->entry.pid);
  std::vector<const format::PosixTimer*> timers;
  for (const format::PosixTimer& t : p->info.posix_timers) timers.push_back(&t);
  if (timers.empty()) return Status::Ok();
  std::sort(timers.begin(), timers.end(), [](auto* a, auto* b) { return a->id < b->id; });
  long on = -EINVAL;
  if (!options_.timer_ids_by_count) {
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

Status Restorer::FinishItimers(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  const format::ItimerValue* timers[3] = {&info.itimer_real, &info.itimer_virtual,
                                          &info.itimer_prof};
  for (int which = 0; which < 3; ++which) {
    const format::ItimerValue& v = *timers[which];
    if (!v.value_us && !v.interval_us) continue;
    int64_t it[4] = {static_cast<int64_t>(v.interval_us / 1000000),
                     static_cast<int64_t>(v.interval_us % 1000000),
                     static_cast<int64_t>(v.value_us / 1000000),
                     static_cast<int64_t>(v.value_us % 1000000)};
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, it, sizeof it));
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_setitimer, static_cast<uint64_t>(which), p->scratch + kOffArgs, 0),
                "restore interval timer of " + who)
            .status());
  }
  return Status::Ok();
}
}  // namespace restore
}  // namespace stasis::core

// Thread state, both directions: registers and extended state, signal masks
// and pending signals, alternate stacks, timer slack, tid address, robust
// futex list and rseq.
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>

#include <cstring>
#include <memory>

#include "engine/core/capture_internal.h"
#include "engine/core/kernel_capture.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/core/restore_internal.h"

namespace stasis::core {
namespace capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

Status Capturer::CaptureThreads(ProcState* p) {
  for (auto& t : p->threads) {
    format::ThreadInfo ti;
    ti.tid = static_cast<uint32_t>(t->tid());
    STASIS_RETURN_IF_ERROR(t->PrepareForInjection());
    const Regs& regs = t->saved_regs();
    ti.gpregs.assign(reinterpret_cast<const uint8_t*>(&regs),
                     reinterpret_cast<const uint8_t*>(&regs) + sizeof regs);
    STASIS_RETURN_IF_ERROR(t->GetXstate(&ti.xsave));
    ti.sigmask = t->saved_sigmask();
    STASIS_RETURN_IF_ERROR(t->PeekSiginfo(false, &ti.pending));
    if (kernel_)
      STASIS_RETURN_IF_ERROR(ApplyKernelThread(p->kernel, t->first_stop(), p->was_stopped, &ti));
    if (t->first_stop().kind == StopInfo::kSignal) {
      // A signal was being delivered when we stopped the thread: it is off
      // its queue already. It goes into the context as pending, and back
      // onto the queue if the tree continues.
      std::vector<uint8_t> info;
      STASIS_RETURN_IF_ERROR(t->GetSiginfo(&info));
      ti.pending.insert(ti.pending.end(), info.begin(), info.end());
      p->in_flight.push_back({t.get(), info});
    }
    auto comm = ReadFileToString("/proc/" + std::to_string(p->pid) + "/task/" +
                                 std::to_string(t->tid()) + "/comm");
    if (comm) ti.comm = comm->substr(0, comm->find('\n'));

    const KernelTaskState::ThreadState* kt = kernel_ ? p->kernel.state.ThreadOf(ti.tid) : nullptr;
    if (kt) {
      ApplyKernelThreadState(*kt, &ti);
    } else {
      struct {
        uint64_t sp;
        int32_t flags;
        int32_t pad;
        uint64_t size;
      } ss{};
      STASIS_ASSIGN_OR_RETURN(long r, Inject(p, t.get(), SYS_sigaltstack, 0, p->scratch));
      if (r != 0)
        return Status::FromErrno(static_cast<int>(-r),
                                 "read altstack of thread " + std::to_string(t->tid()));
      STASIS_RETURN_IF_ERROR(ReadScratch(p, &ss, sizeof ss));
      ti.altstack_sp = ss.sp;
      ti.altstack_flags = static_cast<uint32_t>(ss.flags);
      ti.altstack_size = ss.size;
      STASIS_ASSIGN_OR_RETURN(long slack, Inject(p, t.get(), SYS_prctl, PR_GET_TIMERSLACK));
      if (slack > 0) ti.timerslack_ns = static_cast<uint64_t>(slack);
      STASIS_ASSIGN_OR_RETURN(
          r, Inject(p, t.get(), SYS_prctl, 40 /* PR_GET_TID_ADDRESS */, p->scratch));
      if (r == 0) STASIS_RETURN_IF_ERROR(ReadScratch(p, &ti.clear_tid_address, 8));
      struct {
        uint64_t ptr;
        uint32_t size;
        uint32_t sig;
        uint32_t flags;
        uint32_t pad;
      } rseq{};
      if (::ptrace(static_cast<__ptrace_request>(0x420f /* PTRACE_GET_RSEQ_CONFIGURATION */),
                   t->tid(), reinterpret_cast<void*>(sizeof rseq), &rseq) > 0) {
        ti.rseq_address = rseq.ptr;
        ti.rseq_length = rseq.size;
        ti.rseq_signature = rseq.sig;
      }
    }
    ReadRobustList(&ti);
    p->thread_infos.push_back(std::move(ti));
  }
  return Status::Ok();
}

}  // namespace capture

namespace restore {

using format::FileDesc;
using format::Mapping;

Status Restorer::UnregisterInheritedRseq(RProc* p) {
  struct {
    uint64_t ptr;
    uint32_t size, sig, flags, pad;
  } rseq{};
  Tracee* t = p->tracees[0].get();
  if (::ptrace(static_cast<__ptrace_request>(0x420f), t->tid(),
               reinterpret_cast<void*>(sizeof rseq), &rseq) > 0 &&
      rseq.ptr != 0) {
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_rseq, rseq.ptr, rseq.size, 1 /* UNREGISTER */, rseq.sig),
                "unregister inherited rseq in " + Pid(p->pid))
            .status());
  }
  return Status::Ok();
}

Status Restorer::CreateThreads(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  if (p->threads.empty() || p->threads[0].tid != p->entry.pid)
    return Status::Corrupt("first thread of " + who + " is not its leader");
  for (size_t i = 1; i < p->threads.size(); ++i) {
    pid_t want = static_cast<pid_t>(p->threads[i].tid);
    STASIS_ASSIGN_OR_RETURN(
        pid_t tid,
        InjectClone3(
            p, CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM, 0,
            want, "thread " + std::to_string(want) + " of " + who));
    auto t = std::make_unique<Tracee>(p->pid, tid, options_.ptrace_timeout_seconds);
    t->MarkAttached();
    STASIS_RETURN_IF_ERROR(t->WaitForStop());
    p->tracees.push_back(std::move(t));
  }
  return Status::Ok();
}

Status Restorer::FinishThread(RProc* p, Tracee* t, const format::ThreadInfo& ti) {
  const std::string who = "thread " + std::to_string(ti.tid) + " of " + Pid(p->entry.pid);
  if (ti.gpregs.size() != sizeof(Regs)) return Status::Corrupt("bad register block for " + who);
  if (!ti.comm.empty()) {
    STASIS_ASSIGN_OR_RETURN(uint64_t a, PutPath(p, ti.comm.substr(0, 15)));
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, t, SYS_prctl, PR_SET_NAME, a));
    (void)r;
  }
  struct {
    uint64_t sp;
    int32_t flags;
    int32_t pad;
    uint64_t size;
  } ss = {ti.altstack_sp, static_cast<int32_t>(ti.altstack_flags), 0, ti.altstack_size};
  if (!(ti.altstack_flags & SS_DISABLE)) {
    ss.flags &= ~SS_ONSTACK;
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, &ss, sizeof ss));
    STASIS_RETURN_IF_ERROR(Checked(Call(p, t, SYS_sigaltstack, p->scratch + kOffArgs, 0),
                                   "restore alternate signal stack of " + who)
                               .status());
  }
  if (ti.timerslack_ns) {
    STASIS_RETURN_IF_ERROR(Checked(Call(p, t, SYS_prctl, PR_SET_TIMERSLACK, ti.timerslack_ns),
                                   "restore timer slack of " + who)
                               .status());
  }
  if (ti.robust_list) {
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, t, SYS_set_robust_list, ti.robust_list, ti.robust_list_len),
                "restore robust futex list of " + who)
            .status());
  }
  STASIS_RETURN_IF_ERROR(Call(p, t, SYS_set_tid_address, ti.clear_tid_address).status());
  if (ti.rseq_address) {
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, t, SYS_rseq, ti.rseq_address, ti.rseq_length, 0, ti.rseq_signature),
                "register rseq of " + who)
            .status());
  }
  // Per-thread pending signals, queued by the thread to itself.
  STASIS_ASSIGN_OR_RETURN(long self_tgid, Call(p, t, SYS_getpid));
  STASIS_ASSIGN_OR_RETURN(long self_tid, Call(p, t, SYS_gettid));
  for (size_t off = 0; off + 128 <= ti.pending.size(); off += 128) {
    int32_t signo;
    std::memcpy(&signo, ti.pending.data() + off, 4);
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, ti.pending.data() + off, 128));
    // Ids as the process sees them (it may live in a fresh pid namespace).
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, t, SYS_rt_tgsigqueueinfo, static_cast<uint64_t>(self_tgid),
                     static_cast<uint64_t>(self_tid), static_cast<uint64_t>(signo),
                     p->scratch + kOffArgs),
                "re-queue signal " + std::to_string(signo) + " of " + who)
            .status());
  }
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core

// Freezing a tree and letting it go: seize and interrupt every thread
// (rescanning until the tree is stable), the owner check, signals caught in
// delivery re-queued, and the resume.
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "engine/core/agent_client.h"
#include "engine/core/capture_internal.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"

namespace stasis::core {
namespace capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

Status Capturer::SeizeProcess(ProcState* p, bool* added) {
  if (p->unseized) return Status::Ok();
  // Seize every thread we have not seized yet; a thread that appears while
  // we work is found by the caller's rescan.
  STASIS_ASSIGN_OR_RETURN(std::vector<pid_t> tids, ListTasks(p->pid));
  for (pid_t tid : tids) {
    bool known = false;
    for (auto& t : p->threads) known |= t->tid() == tid;
    if (known) continue;
    auto t = std::make_unique<Tracee>(p->pid, tid, options_.ptrace_timeout_seconds);
    // A thread that ended between the listing and now is no longer part of
    // the process (glibc's SIGEV_THREAD timers start and end one per
    // expiry): skip it rather than fail the checkpoint.
    auto thread_gone = [&]() {
      return tid != p->pid &&
             ::access(("/proc/" + std::to_string(p->pid) + "/task/" + std::to_string(tid)).c_str(),
                      F_OK) != 0;
    };
    Status s = t->SeizeAndInterrupt();
    if (!s.ok() && s.code() == ESRCH && thread_gone()) continue;
    if (!s.ok()) {
      if (s.code() == EPERM) {
        auto status = ReadFileToString("/proc/" + std::to_string(p->pid) + "/status");
        auto tracer = status ? StatusField(*status, "TracerPid")
                             : Result<std::string>(Status::Error(ENOENT, ""));
        if (tracer && *tracer != "0") {
          // Stopped under a debugger: the module reads it as it is.
          bool stopped = kernel_ && p->threads.empty();
          for (pid_t other : tids) {
            auto st = ReadFileToString("/proc/" + std::to_string(p->pid) + "/task/" +
                                       std::to_string(other) + "/stat");
            size_t paren = st ? st->rfind(')') : std::string::npos;
            char state =
                paren != std::string::npos && paren + 2 < st->size() ? (*st)[paren + 2] : '?';
            stopped = stopped && (state == 't' || state == 'T');
          }
          if (stopped) {
            p->unseized = true;
            return Status::Ok();
          }
          return Status::Error(
              EBUSY, "cannot checkpoint " + Pid(p->pid) + ": it is traced by pid " + *tracer +
                         (kernel_ ? " (a debugger?) and not stopped there: stop it first"
                                  : " (a debugger?); with the kernel module (stasis.ko) a "
                                    "process stopped under a debugger can be captured"));
        }
        return Status::Error(
            EPERM, "cannot checkpoint " + Pid(p->pid) + ": permission denied (not your process?)");
      }
      return s;
    }
    if (Status w = t->WaitForStop(); !w.ok()) {
      if (thread_gone()) continue;
      return w;
    }
    if (tid == p->pid)
      p->threads.insert(p->threads.begin(), std::move(t));
    else
      p->threads.push_back(std::move(t));
    *added = true;
  }
  return Status::Ok();
}

// stasisd's check: the requesting user could ptrace the process itself
// (all its uids and gids the user's, dumpable, no capability the user
// lacks), so a setuid or setgid program the user started is refused like
// any other's. A process that only a forwarded scope (a callback's
// cr_forward_checkpoint) brought in must also be one the forwarding
// process could trace: an agent never widens a checkpoint, root's
// included, beyond its own reach.
Status Capturer::CheckOwner(pid_t pid) {
  if (options_.owner_uid >= 0) {
    TraceCreds owner;
    owner.uid = static_cast<uid_t>(options_.owner_uid);
    owner.gid = static_cast<gid_t>(options_.owner_gid);  // -1 (unset) matches no process
    owner.cap_permitted = options_.owner_caps;
    STASIS_RETURN_IF_ERROR(CheckMayTrace(pid, owner));
  }
  auto by = forwarded_by_.find(pid);
  if (by != forwarded_by_.end()) {
    const ForwardedScope& f = extra_[by->second];
    Status s = CheckMayTrace(pid, f.by_creds);
    if (!s.ok() && s.code() == EPERM)
      return Status::Error(EPERM, s.message() + " (the checkpoint was forwarded to it by pid " +
                                      std::to_string(f.by) + ")");
    STASIS_RETURN_IF_ERROR(s);
  }
  return Status::Ok();
}

void Capturer::SignalAll(int sig) {
  for (auto& p : procs_)
    if (!p->zombie) (void)PidfdSignal(p->pidfd.get(), sig);
}

Status Capturer::Freeze() {
  std::vector<pid_t> named{options_.target};
  if (!options_.tasks.empty()) {
    named.clear();
    for (const TaskRoot& t : options_.tasks) named.push_back(t.pid);
  }
  for (pid_t target : named) {
    if (target <= 0) continue;
    auto uid = ProcessUid(target);
    if (uid && ::geteuid() != 0 && *uid != ::geteuid())
      return Status::Error(EPERM, "cannot checkpoint pid " + std::to_string(target) +
                                      ": it belongs to uid " + std::to_string(*uid) +
                                      ", not to you");
  }
  for (int round = 0; round < 100; ++round) {
    STASIS_ASSIGN_OR_RETURN(std::vector<pid_t> scope, DiscoverScope());
    bool added = false;
    for (pid_t pid : scope) {
      ProcState* p = by_pid_.count(pid) ? by_pid_[pid] : nullptr;
      if (!p) {
        auto st = ReadStat(pid);
        if (!st) continue;  // exited meanwhile
        if (st->state == 'Z' && std::find(named.begin(), named.end(), pid) != named.end())
          return Status::Error(ESRCH, "cannot checkpoint " + Pid(pid) + ": it has exited");
        auto proc = std::make_unique<ProcState>();
        proc->pid = pid;
        // The pidfd first: the check then describes the process it names
        // (alive after the check: the pid was not reused in between).
        proc->pidfd.reset(PidfdOpen(pid));
        if (!proc->pidfd) {
          if (errno == ESRCH) continue;  // exited meanwhile
          return Status::FromErrno(errno, "pidfd_open " + Pid(pid));
        }
        if (Status s = CheckOwner(pid); !s.ok()) {
          if (s.code() == ESRCH) continue;
          return s;
        }
        if (!PidfdAlive(proc->pidfd.get())) continue;
        if (st->state == 'Z') {
          // A zombie: only its exit status and place in the tree remain.
          proc->zombie = true;
          proc->stat = *st;
          proc->info.pid = static_cast<uint32_t>(pid);
          proc->info.comm = st->comm;
          p = proc.get();
          by_pid_[pid] = p;
          procs_.push_back(std::move(proc));
          added = true;
          continue;
        }
        proc->was_stopped = st->state == 'T';
        p = proc.get();
        by_pid_[pid] = p;
        procs_.push_back(std::move(proc));
        added = true;
      }
      if (p->zombie) continue;
      STASIS_RETURN_IF_ERROR(SeizeProcess(p, &added));
    }
    if (added) continue;
    // Everything is stopped: no credentials can change any more. Checked
    // again, each process being still the one its pidfd names (while it
    // lives its pid is not reused, so what we seized by pid is it).
    for (auto& p : procs_) {
      if (p->zombie) continue;  // nothing to read but its exit status
      if (!PidfdAlive(p->pidfd.get()))
        return Status::Error(ESRCH, Pid(p->pid) + " exited while being stopped");
      if (Status s = CheckOwner(p->pid); !s.ok()) return s;
    }
    return Status::Ok();
  }
  return Status::Error(EAGAIN, "the process tree kept changing while it was being stopped");
}

void Capturer::Requeue(ProcState* p) {
  for (auto& [t, info] : p->in_flight) {
    if (!p->scratch) break;
    int32_t signo;
    std::memcpy(&signo, info.data(), 4);
    if (!p->mem.Write(p->scratch, info.data(), info.size()).ok()) continue;
    (void)Inject(p, t, SYS_rt_tgsigqueueinfo, static_cast<uint64_t>(p->pid),
                 static_cast<uint64_t>(t->tid()), static_cast<uint64_t>(signo), p->scratch);
  }
  p->in_flight.clear();
}

void Capturer::ResumeAll() {
  if (released_) return;
  released_ = true;
  for (auto& p : procs_) {
    Requeue(p.get());
    if (p->scratch && !p->threads.empty()) {
      (void)Inject(p.get(), p->threads[0].get(), SYS_munmap, p->scratch, kScratchSize);
      p->scratch = 0;
    }
    for (auto& t : p->threads) (void)t->RestoreAndDetach(0);
  }
}

// Once everything is captured, before the (long) write: the last injected
// calls (re-queue caught signals, unmap the scratch page), then every
// thread gets its own registers and signal mask back while it stays
// stopped. From here on a checkpointer that dies (SIGKILL, OOM) leaves
// processes that simply continue when the kernel detaches them.
Status Capturer::Settle() {
  for (auto& p : procs_)
    for (auto& t : p->threads) STASIS_RETURN_IF_ERROR(t->Settle());
  return Status::Ok();
}

}  // namespace capture
}  // namespace stasis::core

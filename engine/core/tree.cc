// The process tree, both directions: which processes a checkpoint takes
// (scope discovery) and, at restore, the task check, the tree built with
// clone3(set_tid) from inside each parent, a pid namespace's init, and
// zombies.
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <set>

#include "engine/core/capture_internal.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/core/restore_internal.h"

namespace stasis::core {
namespace capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

Result<std::vector<pid_t>> Capturer::DiscoverScope() {
  std::vector<pid_t> out;
  if (options_.tasks.empty()) {
    STASIS_ASSIGN_OR_RETURN(out, DiscoverOne(options_.scope, options_.target, true));
  } else {
    for (const TaskRoot& t : options_.tasks) {
      STASIS_ASSIGN_OR_RETURN(std::vector<pid_t> tree,
                              DiscoverOne(format::kScopeTree, t.pid, true));
      for (pid_t pid : tree)
        if (std::find(out.begin(), out.end(), pid) == out.end()) out.push_back(pid);
    }
  }
  for (size_t i = 0; i < extra_.size(); ++i) {
    auto more = DiscoverOne(extra_[i].scope, extra_[i].target, false);
    if (!more) continue;  // a forwarded target that has gone meanwhile
    for (pid_t pid : *more)
      if (std::find(out.begin(), out.end(), pid) == out.end()) {
        out.push_back(pid);
        forwarded_by_.emplace(pid, i);
      }
  }
  // Processes that opted out stay running and out of the context; their
  // children in a tree are still in it.
  std::erase_if(out, [&](pid_t pid) { return omit_.count(pid) > 0; });
  if (out.empty())
    return Status::Error(ESRCH, "every process of the checkpoint asked to be omitted");
  return out;
}

Result<std::vector<pid_t>> Capturer::DiscoverOne(format::ScopeKind scope, pid_t target,
                                                 bool named) {
  if (target <= 0) return Status::Error(EINVAL, "invalid pid " + std::to_string(target));
  if (scope == format::kScopeTree || scope == format::kScopePid) {
    auto root_stat = ReadStat(target);
    if (!root_stat) return Status::Error(ESRCH, "no such process: " + std::to_string(target));
  }
  std::vector<pid_t> out;
  switch (scope) {
    case format::kScopePid:
      out.push_back(target);
      break;
    case format::kScopeTree: {
      if (target == Self() && named)
        return Status::Error(EINVAL, "cannot checkpoint the checkpointing process itself");
      // The checkpointer omits itself (and what it started) when it is
      // inside the tree, as BLCR's cr_checkpoint did.
      std::vector<pid_t> queue{target};
      for (size_t i = 0; i < queue.size(); ++i) {
        auto kids = ListChildren(queue[i]);
        if (!kids) continue;
        for (pid_t k : *kids) {
          if (k == Self()) continue;
          if (IsLeftoverSnapshot(k, queue[i])) {  // not part of the program
            leftovers_[queue[i]].push_back(InnermostPid(k));
            continue;
          }
          queue.push_back(k);
        }
      }
      out = queue;
      break;
    }
    case format::kScopePgid:
    case format::kScopeSid: {
      STASIS_ASSIGN_OR_RETURN(std::vector<pid_t> all, ListAllProcesses());
      for (pid_t pid : all) {
        auto st = ReadStat(pid);
        if (!st || pid == Self()) continue;
        pid_t key = scope == format::kScopePgid ? st->pgrp : st->session;
        if (key == target) out.push_back(pid);
      }
      if (out.empty())
        return Status::Error(ESRCH,
                             std::string("no process in ") +
                                 (scope == format::kScopePgid ? "process group " : "session ") +
                                 std::to_string(target));
      // Parents first, so the tree section lists them before children.
      std::sort(out.begin(), out.end());
      break;
    }
  }
  return out;
}

}  // namespace capture

namespace restore {

using format::FileDesc;
using format::Mapping;

// A context of several tasks restarts only into a step with exactly its
// tasks on this node: checked before anything is built.
Status Restorer::MatchTasks(const format::ProcessTree& tree) {
  std::set<uint32_t> saved, given;
  for (const auto& e : tree.processes)
    if (e.flags & format::kProcTask) saved.insert(e.task);
  for (const auto& t : options_.task_stdio) given.insert(t.task);
  if (options_.task_stdio.empty()) {
    if (saved.size() > 1)
      return Status::Error(EINVAL, "the context holds " + std::to_string(saved.size()) +
                                       " tasks; restart it as a step with as many tasks "
                                       "(srun --restart-from)");
    return Status::Ok();
  }
  if (saved == given) return Status::Ok();
  auto list = [](const std::set<uint32_t>& s) {
    std::string out;
    for (uint32_t t : s) out += (out.empty() ? "" : ",") + std::to_string(t);
    return out.empty() ? std::string("none") : out;
  };
  return Status::Error(EINVAL, "the checkpoint has " + std::to_string(saved.size()) +
                                   " task(s) on this node (" + list(saved) + "), the new step " +
                                   std::to_string(given.size()) + " (" + list(given) + ")");
}

Status Restorer::CreateTree(const format::ProcessTree& tree) {
  STASIS_RETURN_IF_ERROR(MatchTasks(tree));
  // Pids in use make exact restore impossible.
  if (options_.restore_pids) {
    std::string taken;
    for (const auto& e : tree.processes) {
      for (uint32_t tid : e.tids) {
        if (tid == 1 || ::kill(static_cast<pid_t>(tid), 0) == 0 || errno == EPERM)
          taken = std::to_string(tid);
        // A number still in use as a process group (a zombie of the old
        // group, say) cannot be given to a new process either.
        else if (::kill(-static_cast<pid_t>(tid), 0) == 0 || errno == EPERM)
          taken = std::to_string(tid);
      }
    }
    if (!taken.empty()) {
      if (::geteuid() != 0)
        return Status::Error(EEXIST, "pid " + taken +
                                         " is in use; restore with --no-restore-pid or end "
                                         "the process that holds it");
      uint32_t root_pid = 0;
      for (const auto& e : tree.processes)
        if (e.ppid == 0 && !root_pid) root_pid = e.pid;
      for (const auto& e : tree.processes)
        if (e.ppid == 0 && e.pid != root_pid)
          return Status::Error(ENOTSUP, "pid " + taken +
                                            " is in use and the context has "
                                            "several top-level processes; use --no-restore-pid");
      STASIS_RETURN_IF_ERROR(CreateNamespaceInit(static_cast<pid_t>(root_pid)));
    }
  }
  for (const auto& e : tree.processes) {
    auto p = std::make_unique<RProc>();
    p->entry = e;
    by_pid_[e.pid] = p.get();
    procs_.push_back(std::move(p));
  }
  for (auto& p : procs_) {
    RProc* parent = nullptr;
    if (p->entry.ppid != 0) {
      auto it = by_pid_.find(p->entry.ppid);
      if (it == by_pid_.end() || it->second->pid == 0)
        return Status::Corrupt("process " + std::to_string(p->entry.pid) +
                               " is listed before its parent " + std::to_string(p->entry.ppid));
      parent = it->second;
      p->stdio = parent->stdio;
    } else if (p->entry.flags & format::kProcTask) {
      for (const auto& t : options_.task_stdio)
        if (t.task == p->entry.task) p->stdio = &t;
    }
    STASIS_RETURN_IF_ERROR(CreateProcess(p.get(), parent));
  }
  // Process groups: leaders first, then members.
  for (int pass = 0; pass < 2; ++pass) {
    for (auto& p : procs_) {
      bool leader = p->entry.pgid == p->entry.pid;
      if ((pass == 0) != leader) continue;
      if (p->entry.sid == p->entry.pid) continue;  // setsid made it a leader
      auto it = by_pid_.find(p->entry.pgid);
      if (!leader && it == by_pid_.end()) continue;  // group outside: keep ours
      // Inside the tree's own pid space the saved numbers are the real ones.
      pid_t pgid = leader                  ? 0
                   : options_.restore_pids ? static_cast<pid_t>(p->entry.pgid)
                                           : it->second->pid;
      STASIS_RETURN_IF_ERROR(Checked(Call(p.get(), SYS_setpgid, 0, static_cast<uint64_t>(pgid)),
                                     "set process group of " + Pid(p->pid))
                                 .status());
    }
  }
  return Status::Ok();
}

// Runs clone3 inside `in` (its leader), with the saved number when pids
// are restored; returns the new task's pid as we (the tracer) see it.
Result<pid_t> Restorer::InjectClone3(RProc* in, uint64_t flags, int exit_signal, pid_t want,
                                     const std::string& what) {
  struct clone_args args;
  std::memset(&args, 0, sizeof args);
  args.flags = flags;
  args.exit_signal = static_cast<uint64_t>(exit_signal);
  const uint64_t tid_addr = in->scratch + kOffArgs + 0x100;
  if (options_.restore_pids) {
    args.set_tid = tid_addr;
    args.set_tid_size = 1;
  }
  STASIS_RETURN_IF_ERROR(in->mem.Write(in->scratch + kOffArgs, &args, sizeof args));
  STASIS_RETURN_IF_ERROR(in->mem.Write(tid_addr, &want, sizeof want));
  pid_t created = 0;
  STASIS_RETURN_IF_ERROR(Checked(Call(in, in->tracees[0].get(), SYS_clone3, in->scratch + kOffArgs,
                                      sizeof args, 0, 0, 0, 0, &created),
                                 "create " + what + " in " + Pid(in->pid))
                             .status());
  if (created <= 0) return Status::Error(ECHILD, "no fork/clone event for " + what);
  return created;
}

Status Restorer::CreateNamespaceInit(pid_t root_in_ns) {
  struct clone_args args;
  std::memset(&args, 0, sizeof args);
  args.flags = CLONE_NEWPID;
  args.exit_signal = SIGCHLD;
  long r = ::syscall(SYS_clone3, &args, sizeof args);
  if (r < 0) return Status::FromErrno(errno, "create a pid namespace for the restored tree");
  if (r == 0) {
    // pid 1 of the new namespace: parent of the restored root, reaper of
    // its orphans; exits with the root's status.
    ::syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0);
    ::syscall(SYS_kill, ::syscall(SYS_getpid), SIGSTOP);
    for (;;) {
      int st = 0;
      pid_t w = ::waitpid(-1, &st, __WALL);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) ::_exit(0);
      if (w == root_in_ns) {
        if (WIFEXITED(st)) ::_exit(WEXITSTATUS(st));
        ::_exit(128 + WTERMSIG(st));
      }
    }
  }
  init_ = std::make_unique<RProc>();
  init_->pid = static_cast<pid_t>(r);
  auto t = std::make_unique<Tracee>(init_->pid, init_->pid, options_.ptrace_timeout_seconds);
  STASIS_RETURN_IF_ERROR(t->AdoptTracedChild());
  init_->tracees.push_back(std::move(t));
  init_->scratch = scratch_;
  STASIS_ASSIGN_OR_RETURN(init_->mem, ProcessMemory::Open(init_->pid, true));
  result_.in_new_pid_namespace = true;
  return Status::Ok();
}

Status Restorer::CreateProcess(RProc* p, RProc* parent) {
  pid_t want = static_cast<pid_t>(p->entry.pid);
  if (!parent && init_) parent = init_.get();
  if (!parent) {
    struct clone_args args;
    std::memset(&args, 0, sizeof args);
    args.exit_signal = SIGCHLD;
    if (options_.restore_pids) {
      args.set_tid = reinterpret_cast<uint64_t>(&want);
      args.set_tid_size = 1;
    }
    long r = ::syscall(SYS_clone3, &args, sizeof args);
    if (r < 0) {
      int err = errno;
      if (err == EPERM)
        return Status::Error(EPERM, "cannot restore pid " + std::to_string(want) +
                                        ": choosing pids needs root (CAP_CHECKPOINT_RESTORE); "
                                        "use --no-restore-pid");
      return Status::FromErrno(err, "create process for pid " + std::to_string(want));
    }
    if (r == 0) {
      // The child: become traceable and wait to be rebuilt.
      ::syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0);
      ::syscall(SYS_kill, ::syscall(SYS_getpid), SIGSTOP);
      ::syscall(SYS_exit_group, 127);
    }
    p->pid = static_cast<pid_t>(r);
    auto t = std::make_unique<Tracee>(p->pid, p->pid, options_.ptrace_timeout_seconds);
    STASIS_RETURN_IF_ERROR(t->AdoptTracedChild());
    p->tracees.push_back(std::move(t));
    p->scratch = scratch_;
    STASIS_RETURN_IF_ERROR(UnregisterInheritedRseq(p));
  } else {
    STASIS_ASSIGN_OR_RETURN(pid_t child, InjectClone3(parent, 0, SIGCHLD, want,
                                                      "process for pid " + std::to_string(want)));
    p->pid = child;
    auto t = std::make_unique<Tracee>(p->pid, p->pid, options_.ptrace_timeout_seconds);
    t->MarkAttached();
    STASIS_RETURN_IF_ERROR(t->WaitForStop());
    p->tracees.push_back(std::move(t));
    p->scratch = parent->scratch;
    STASIS_RETURN_IF_ERROR(UnregisterInheritedRseq(p));
  }
  STASIS_ASSIGN_OR_RETURN(p->mem, ProcessMemory::Open(p->pid, true));
  if (p->entry.sid == p->entry.pid) {
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_setsid), "create session for " + Pid(p->pid)).status());
  }
  return Status::Ok();
}

// A zombie is rebuilt as a process that exits again with the saved status
// (its parent then finds it as it was). A spurious SIGCHLD to the parent is
// the one visible difference.
Status Restorer::MakeZombie(RProc* p) {
  const int status = p->entry.exit_code;
  Tracee* t = p->tracees[0].get();
  if (!p->info.comm.empty()) {  // ps shows the zombie under its own name
    STASIS_ASSIGN_OR_RETURN(uint64_t a, PutPath(p, p->info.comm.substr(0, 15)));
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_NAME, a));
    (void)r;
  }
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    uint64_t dfl[4] = {0, 0, 0, 0};
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, dfl, sizeof dfl));
    STASIS_RETURN_IF_ERROR(
        Call(p, SYS_rt_sigaction, static_cast<uint64_t>(sig), p->scratch + kOffArgs, 0, 8)
            .status());
    // Unblocked before it is queued, so the kernel notices it on the way out.
    STASIS_RETURN_IF_ERROR(t->SetSigmask(0));
    STASIS_ASSIGN_OR_RETURN(long self, Call(p, SYS_getpid));  // its own view (pid ns)
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_kill, static_cast<uint64_t>(self), static_cast<uint64_t>(sig)),
                "signal zombie " + Pid(p->entry.pid))
            .status());
    int deliver = 0;
    for (int i = 0; i < 100; ++i) {
      if (::ptrace(PTRACE_CONT, t->tid(), nullptr,
                   reinterpret_cast<void*>(static_cast<long>(deliver))) != 0)
        return Status::FromErrno(errno, "let zombie " + Pid(p->entry.pid) + " die");
      STASIS_ASSIGN_OR_RETURN(StopInfo s, WaitThread(t->tid()));
      if (s.kind == StopInfo::kKilled || s.kind == StopInfo::kExited) break;
      deliver = s.kind == StopInfo::kSignal ? s.signal : 0;
    }
  } else {
    auto r = Call(p, SYS_exit_group, static_cast<uint64_t>(WEXITSTATUS(status)));
    (void)r;  // the call does not return: the thread is gone
  }
  t->MarkDetached();
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core

// Capture of a process tree into a context stream.
//
//   discover scope ──► seize+interrupt every thread (rescan until stable)
//        │
//        ▼
//   per process: /proc facts, injected queries (sigactions, brk, itimers,
//   altstacks, tid addresses), fds, memory map, pagemap-selected pages
//        │
//        ▼
//   write Image, Tree, then per process sections ──► finalize (caller
//   fsyncs and renames) ──► resume / stop / term / kill the tree
//
// Every failure before finalize resumes the tree exactly as it was: the
// registers and signal masks we touched are put back and the scratch page
// we mapped for injected calls is unmapped.
#include <elf.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <set>

#include "engine/base/fd.h"
#include "engine/core/agent_client.h"
#include "engine/core/capture_internal.h"
#include "engine/core/dirty_track.h"
#include "engine/core/engine.h"
#include "engine/core/kernel_capture.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/core/unix_diag.h"
#include "engine/format/context_io.h"
#include "engine/format/format_constants.h"

namespace stasis::core {
namespace capture {

// A snapshot a killed checkpointer left behind (EXITKILL killed it, nobody
// had it reaped): a zombie child with exit signal 0 named "stasis-snap" (or
// its parent's name, when naming it failed).
// Programs practically never make such children themselves (clone with no
// exit signal, then never wait with __WCLONE); one that did would see it
// reaped by the next checkpoint.
bool IsLeftoverSnapshot(pid_t pid, pid_t parent) {
  auto st = ReadStat(pid);
  auto pst = ReadStat(parent);
  return st && pst && st->state == 'Z' && st->exit_signal == 0 && st->ppid == parent &&
         (st->comm == "stasis-snap" || st->comm == pst->comm);
}

Result<long> Capturer::Inject(ProcState* p, Tracee* t, long nr, uint64_t a1, uint64_t a2,
                              uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6) {
  return t->Syscall(p->syscall_insn, nr, a1, a2, a3, a4, a5, a6);
}

Result<std::vector<pid_t>> Capturer::DiscoverScope() {
  std::vector<pid_t> out;
  if (options_.tasks.empty()) {
    STASIS_ASSIGN_OR_RETURN(out, DiscoverOne(options_.scope, options_.target, true));
  } else {
    for (const TaskRoot& t : options_.tasks) {
      STASIS_ASSIGN_OR_RETURN(std::vector<pid_t> tree, DiscoverOne(format::kScopeTree, t.pid, true));
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
        return Status::Error(ESRCH, std::string("no process in ") +
                                        (scope == format::kScopePgid ? "process group "
                                                                     : "session ") +
                                        std::to_string(target));
      // Parents first, so the tree section lists them before children.
      std::sort(out.begin(), out.end());
      break;
    }
  }
  return out;
}

Status Capturer::SeizeProcess(ProcState* p, bool* added) {
  if (p->unseized) return Status::Ok();
  // Seize every thread we have not seized yet; a thread that appears while
  // we work is found by the caller's rescan.
  STASIS_ASSIGN_OR_RETURN(std::vector<pid_t> tids, ListTasks(p->pid));
  for (pid_t tid : tids) {
    bool known = false;
    for (auto& t : p->threads) known |= t->tid() == tid;
    if (known) continue;
    auto t = std::make_unique<Tracee>(p->pid, tid);
    Status s = t->SeizeAndInterrupt();
    if (!s.ok()) {
      if (s.code() == EPERM) {
        auto status = ReadFileToString("/proc/" + std::to_string(p->pid) + "/status");
        auto tracer = status ? StatusField(*status, "TracerPid") : Result<std::string>(Status::Error(ENOENT, ""));
        if (tracer && *tracer != "0") {
          // Stopped under a debugger: the module reads it as it is.
          bool stopped = kernel_ && p->threads.empty();
          for (pid_t other : tids) {
            auto st = ReadFileToString("/proc/" + std::to_string(p->pid) + "/task/" + std::to_string(other) + "/stat");
            size_t paren = st ? st->rfind(')') : std::string::npos;
            char state = paren != std::string::npos && paren + 2 < st->size() ? (*st)[paren + 2] : '?';
            stopped = stopped && (state == 't' || state == 'T');
          }
          if (stopped) {
            p->unseized = true;
            return Status::Ok();
          }
          return Status::Error(EBUSY, "cannot checkpoint " + Pid(p->pid) + ": it is traced by pid " + *tracer +
                                          (kernel_ ? " (a debugger?) and not stopped there: stop it first"
                                                   : " (a debugger?); with the kernel module (stasis.ko) a "
                                                     "process stopped under a debugger can be captured"));
        }
        return Status::Error(EPERM, "cannot checkpoint " + Pid(p->pid) +
                                        ": permission denied (not your process?)");
      }
      return s;
    }
    STASIS_RETURN_IF_ERROR(t->WaitForStop());
    if (tid == p->pid)
      p->threads.insert(p->threads.begin(), std::move(t));
    else
      p->threads.push_back(std::move(t));
    *added = true;
  }
  return Status::Ok();
}

// /proc/PID/limits: a header, then one line per resource in resource
// order, "%-25s %-20s %-20s %-10s" (name, soft, hard, units).
Status ReadLimitsFile(pid_t pid, std::vector<format::Rlimit>* out) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/limits"));
  auto value = [](std::string v, uint64_t* x) {
    while (!v.empty() && v.back() == ' ') v.pop_back();
    if (v == "unlimited") {
      *x = RLIM64_INFINITY;
      return true;
    }
    char* end = nullptr;
    *x = std::strtoull(v.c_str(), &end, 10);
    return !v.empty() && end && *end == '\0';
  };
  size_t pos = text.find('\n');
  while (pos != std::string::npos && out->size() < RLIM_NLIMITS) {
    size_t next = text.find('\n', pos + 1);
    std::string line = text.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1);
    pos = next;
    if (line.size() < 67) continue;
    format::Rlimit r;
    if (!value(line.substr(26, 20), &r.cur) || !value(line.substr(47, 20), &r.max))
      return Status::Corrupt("cannot read /proc/" + std::to_string(pid) + "/limits: '" + line + "'");
    out->push_back(r);
  }
  if (out->size() != RLIM_NLIMITS)
    return Status::Corrupt("/proc/" + std::to_string(pid) + "/limits has " +
                           std::to_string(out->size()) + " limits");
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
        if (st->state == 'Z' &&
            std::find(named.begin(), named.end(), pid) != named.end())
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

Status Capturer::CaptureAll() {
  for (auto& p : procs_) {
    if (p->zombie) continue;
    Status s = CaptureProcess(p.get());
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

Status Capturer::CaptureProcess(ProcState* p) {
  const std::string proc = "/proc/" + std::to_string(p->pid);
  STASIS_ASSIGN_OR_RETURN(p->stat, ReadStat(p->pid));
  STASIS_ASSIGN_OR_RETURN(p->status_text, ReadFileToString(proc + "/status"));
  if (kernel_) {
    // Before any injected call: registers and masks are still the program's.
    STASIS_ASSIGN_OR_RETURN(p->kernel, kernel_->CaptureTask(p->pid));
    p->maps = p->kernel.maps;
    p->vmflags = p->kernel.vmflags;
  } else {
    STASIS_ASSIGN_OR_RETURN(p->maps, ReadMaps(p->pid));
    STASIS_ASSIGN_OR_RETURN(p->vmflags, ReadVmFlags(p->pid));
    // Memory a userfaultfd still has to fill (a lazy restart in progress):
    // its missing pages would be taken for zero pages. Refuse until it is in.
    for (uint32_t& f : p->vmflags) {
      if (f & kVmUffdMissing)
        return Status::Error(EAGAIN, "cannot checkpoint " + Pid(p->pid) +
                                         ": its memory is still arriving from a lazy restart "
                                         "(cr_restart --lazy); retry once every page is in");
      f &= ~kVmUffdMissing;
      p->vm_wp.push_back((f & kVmUffdWp) != 0);
      f &= ~kVmUffdWp;
    }
  }
  STASIS_ASSIGN_OR_RETURN(p->mem, ProcessMemory::Open(p->pid, true));
  STASIS_ASSIGN_OR_RETURN(p->syscall_insn, FindVdsoSyscall(p->pid, p->mem));

  format::ProcessInfo& info = p->info;
  info.pid = static_cast<uint32_t>(p->pid);
  auto comm = ReadFileToString(proc + "/comm");
  if (comm) info.comm = comm->substr(0, comm->find('\n'));
  auto exe = ReadLink(proc + "/exe");
  if (exe) {
    info.exe_path = *exe;
    struct stat st;
    if (::stat((proc + "/exe").c_str(), &st) == 0) {
      info.exe_id = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                     static_cast<uint64_t>(st.st_size),
                     st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, st.st_mode};
    }
  }
  STASIS_ASSIGN_OR_RETURN(info.cwd, ReadLink(proc + "/cwd"));
  STASIS_ASSIGN_OR_RETURN(info.root, ReadLink(proc + "/root"));
  STASIS_ASSIGN_OR_RETURN(info.cmdline, ReadFileToString(proc + "/cmdline"));
  STASIS_ASSIGN_OR_RETURN(info.environ, ReadFileToString(proc + "/environ"));
  STASIS_ASSIGN_OR_RETURN(info.auxv, ReadFileToString(proc + "/auxv"));
  for (size_t i = 0; i + 16 <= info.auxv.size(); i += 16) {
    uint64_t type, value;
    std::memcpy(&type, info.auxv.data() + i, 8);
    std::memcpy(&value, info.auxv.data() + i + 8, 8);
    if (type == AT_RANDOM && p->mem.Read(value, p->at_random_bytes, 16).ok()) p->at_random = value;
  }
  auto pers = ReadFileToString(proc + "/personality");
  if (pers) info.personality = static_cast<uint32_t>(strtoul(pers->c_str(), nullptr, 16));
  auto umask = StatusField(p->status_text, "Umask");
  if (umask) info.umask = static_cast<uint32_t>(strtoul(umask->c_str(), nullptr, 8));
  // seccomp filters (mode 2) are saved, as root, when every thread has the
  // same ones (TSYNC or inherited); strict mode (1) cannot be restored.
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
      if (!count) return Status::Error(EPROTO, "cannot checkpoint " + Pid(p->pid) + ": no Seccomp_filters in its status");
      STASIS_ASSIGN_OR_RETURN(auto filters,
                              t->SeccompFilters(static_cast<uint32_t>(std::strtoul(count->c_str(), nullptr, 10))));
      if (i == 0)
        info.seccomp_filters = std::move(filters);
      else if (filters != info.seccomp_filters)
        return Status::Error(ENOTSUP, "cannot checkpoint " + Pid(p->pid) + ": its threads have different seccomp "
                                                                             "filters (only filters shared by every thread are restored)");
    }
  }
  // POSIX timers: how each was created (their time left is read below,
  // with timer_gettime in the process).
  auto timers = ReadFileToString(proc + "/timers");
  if (timers && !timers->empty()) {
    STASIS_ASSIGN_OR_RETURN(info.posix_timers, ParsePosixTimers(*timers));
    if (info.posix_timers.size() > format::kMaxPosixTimers)
      return Status::Error(ENOTSUP, "cannot checkpoint " + Pid(p->pid) + ": it has " +
                                        std::to_string(info.posix_timers.size()) +
                                        " POSIX timers (at most " +
                                        std::to_string(format::kMaxPosixTimers) + ")");
  }
  auto nnp = StatusField(p->status_text, "NoNewPrivs");
  if (nnp) info.no_new_privs = static_cast<uint32_t>(atoi(nnp->c_str()));
  {
    unsigned r[4] = {0, 0, 0, 0}, g[4] = {0, 0, 0, 0};
    auto u = StatusField(p->status_text, "Uid");
    auto gg = StatusField(p->status_text, "Gid");
    if (u) sscanf(u->c_str(), "%u %u %u %u", &r[0], &r[1], &r[2], &r[3]);
    if (gg) sscanf(gg->c_str(), "%u %u %u %u", &g[0], &g[1], &g[2], &g[3]);
    info.creds = {r[0], r[1], r[2], r[3], g[0], g[1], g[2], g[3], {}};
    auto groups = StatusField(p->status_text, "Groups");
    if (groups) {
      char* s = groups->data();
      char* end = nullptr;
      for (;;) {
        unsigned long v = strtoul(s, &end, 10);
        if (end == s) break;
        info.creds.groups.push_back(static_cast<uint32_t>(v));
        s = end;
      }
    }
  }
  for (int res = 0; res < RLIM_NLIMITS; ++res) {
    struct rlimit64 lim;
    if (::prlimit64(p->pid, static_cast<__rlimit_resource>(res), nullptr, &lim) != 0) {
      // Reading another user's limits needs CAP_SYS_RESOURCE, which a root
      // without it (containers) lacks: /proc/PID/limits has the same values.
      if (errno != EPERM) return Status::FromErrno(errno, "read rlimits of " + Pid(p->pid));
      info.rlimits.clear();
      STASIS_RETURN_IF_ERROR(ReadLimitsFile(p->pid, &info.rlimits));
      break;
    }
    info.rlimits.push_back({lim.rlim_cur, lim.rlim_max});
  }
  info.exit_signal = static_cast<uint32_t>(p->stat.exit_signal);
  info.mm.start_code = p->stat.start_code;
  info.mm.end_code = p->stat.end_code;
  info.mm.start_data = p->stat.start_data;
  info.mm.end_data = p->stat.end_data;
  info.mm.start_brk = p->stat.start_brk;
  info.mm.start_stack = p->stat.start_stack;
  info.mm.arg_start = p->stat.arg_start;
  info.mm.arg_end = p->stat.arg_end;
  info.mm.env_start = p->stat.env_start;
  info.mm.env_end = p->stat.env_end;

  if (p->unseized) return CaptureUnseized(p);
  // Injected queries run in the leader, with a scratch page for results.
  Tracee* leader = p->threads[0].get();
  STASIS_ASSIGN_OR_RETURN(long scratch, Inject(p, leader, SYS_mmap, 0, kScratchSize,
                                               PROT_READ | PROT_WRITE,
                                               MAP_PRIVATE | MAP_ANONYMOUS, static_cast<uint64_t>(-1), 0));
  if (scratch < 0 && scratch > -4096)
    return Status::FromErrno(static_cast<int>(-scratch), "map a scratch page in " + Pid(p->pid));
  p->scratch = p->scratch_address = static_cast<uint64_t>(scratch);
  // Snapshots an earlier checkpointer left behind (it was killed before it
  // could have them reaped): the process reaps them now.
  for (pid_t old : leftovers_[p->pid])
    (void)Inject(p, leader, SYS_wait4, static_cast<uint64_t>(old), 0, __WALL | WNOHANG, 0);

  // With the module's TASKSTATE: handlers, brk, the real itimer and the
  // prctl values come from the kernel, read before anything was injected
  // (kmod_equivalent checks they equal what the injected calls give).
  const KernelTaskState* ks = kernel_ && p->kernel.state.have ? &p->kernel.state : nullptr;
  if (ks) {
    ApplyKernelProcessState(*ks, &info);
  } else {
    STASIS_ASSIGN_OR_RETURN(long brk, Inject(p, leader, SYS_brk, 0));
    info.mm.brk = static_cast<uint64_t>(brk);
  }

  for (int sig = 1; sig <= 64 && !ks; ++sig) {
    format::SigAction act;
    if (sig != SIGKILL && sig != SIGSTOP) {
      STASIS_ASSIGN_OR_RETURN(long r, Inject(p, leader, SYS_rt_sigaction, static_cast<uint64_t>(sig), 0,
                                             p->scratch, 8));
      if (r != 0) return Status::FromErrno(static_cast<int>(-r), "read handler of signal " +
                                                                      std::to_string(sig) + " of " +
                                                                      Pid(p->pid));
      uint64_t k[4];
      STASIS_RETURN_IF_ERROR(ReadScratch(p, k, sizeof k));
      act = {k[0], k[1], k[2], k[3]};
    }
    info.sigactions.push_back(act);
  }
  for (format::PosixTimer& t : info.posix_timers) {
    STASIS_ASSIGN_OR_RETURN(long r, Inject(p, leader, SYS_timer_gettime,
                                           static_cast<uint64_t>(static_cast<uint32_t>(t.id)), p->scratch));
    if (r != 0)
      return Status::FromErrno(static_cast<int>(-r), "read POSIX timer " + std::to_string(t.id) +
                                                          " of " + Pid(p->pid));
    int64_t v[4];  // struct itimerspec: interval, value
    STASIS_RETURN_IF_ERROR(ReadScratch(p, v, sizeof v));
    t.interval_ns = static_cast<uint64_t>(v[0] * 1000000000 + v[1]);
    t.value_ns = static_cast<uint64_t>(v[2] * 1000000000 + v[3]);
  }
  for (int which = ks ? 1 : 0; which < 3 && (!ks || ks->cpu_itimers); ++which) {
    STASIS_ASSIGN_OR_RETURN(long r, Inject(p, leader, SYS_getitimer, static_cast<uint64_t>(which),
                                           p->scratch));
    if (r != 0) return Status::FromErrno(static_cast<int>(-r), "read itimer of " + Pid(p->pid));
    int64_t v[4];
    STASIS_RETURN_IF_ERROR(ReadScratch(p, v, sizeof v));
    format::ItimerValue iv{static_cast<uint64_t>(v[0] * 1000000 + v[1]),
                           static_cast<uint64_t>(v[2] * 1000000 + v[3])};
    (which == 0 ? info.itimer_real : which == 1 ? info.itimer_virtual : info.itimer_prof) = iv;
  }
  if (!ks) {
    STASIS_ASSIGN_OR_RETURN(long r, Inject(p, leader, SYS_prctl, PR_GET_PDEATHSIG, p->scratch));
    if (r == 0) {
      int32_t v = 0;
      STASIS_RETURN_IF_ERROR(ReadScratch(p, &v, sizeof v));
      info.pdeathsig = static_cast<uint32_t>(v);
    }
    STASIS_ASSIGN_OR_RETURN(r, Inject(p, leader, SYS_prctl, PR_GET_CHILD_SUBREAPER, p->scratch));
    if (r == 0) {
      int32_t v = 0;
      STASIS_RETURN_IF_ERROR(ReadScratch(p, &v, sizeof v));
      info.child_subreaper = static_cast<uint32_t>(v);
    }
    STASIS_ASSIGN_OR_RETURN(long d, Inject(p, leader, SYS_prctl, PR_GET_DUMPABLE));
    info.dumpable = d >= 0 ? static_cast<uint32_t>(d) : 1;
    STASIS_ASSIGN_OR_RETURN(long ts, Inject(p, leader, SYS_prctl, PR_GET_TIMERSLACK));
    info.timerslack_ns = ts >= 0 ? static_cast<uint64_t>(ts) : 50000;
  }
  STASIS_RETURN_IF_ERROR(leader->PeekSiginfo(true, &info.pending_shared));
  if (kernel_) info.pending_shared = p->kernel.shared_pending;
  STASIS_RETURN_IF_ERROR(CaptureThreads(p));
  STASIS_RETURN_IF_ERROR(CaptureMappings(p));
  STASIS_RETURN_IF_ERROR(CaptureFiles(p));
  return Status::Ok();
}

Status Capturer::CaptureUnseized(ProcState* p) {
  const std::string who = Pid(p->pid);
  auto refuse = [&](const std::string& why) {
    return Status::Error(ENOTSUP, "cannot checkpoint " + who + " while its debugger holds it: " + why +
                                      " needs a call in the process (detach the debugger and retry)");
  };
  const KernelTaskState& ks = p->kernel.state;
  if (!ks.have) return refuse("this stasis.ko has no STASIS_IOC_TASKSTATE, so everything");
  auto seccomp = StatusField(p->status_text, "Seccomp");
  if (seccomp && *seccomp == "2") return refuse("reading its seccomp filters");
  if (!p->info.posix_timers.empty()) return refuse("reading its POSIX timers");
  if (ks.cpu_itimers) return refuse("reading its armed ITIMER_VIRTUAL/ITIMER_PROF");
  ApplyKernelProcessState(ks, &p->info);
  p->info.pending_shared = p->kernel.shared_pending;
  // Stopped by its debugger's SIGSTOP or at a trap: a call a stop made fail
  // with EINTR is recorded as restartable, as for our own group stop.
  const StopInfo stop{StopInfo::kGroupStop, SIGSTOP, 0};
  for (const KernelThread& kt : p->kernel.threads) {
    format::ThreadInfo ti;
    ti.tid = kt.tid;
    STASIS_RETURN_IF_ERROR(ApplyKernelThread(p->kernel, stop, p->was_stopped, &ti));
    auto comm = ReadFileToString("/proc/" + std::to_string(p->pid) + "/task/" + std::to_string(kt.tid) + "/comm");
    if (comm) ti.comm = comm->substr(0, comm->find('\n'));
    const KernelTaskState::ThreadState* t = ks.ThreadOf(kt.tid);
    if (!t) return Status::Error(EAGAIN, "thread " + std::to_string(kt.tid) + " of " + who + " is not in TASKSTATE");
    ApplyKernelThreadState(*t, &ti);
    ReadRobustList(&ti);
    p->thread_infos.push_back(std::move(ti));
  }
  STASIS_RETURN_IF_ERROR(CaptureMappings(p));
  return CaptureFiles(p);
}

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
      if (r != 0) return Status::FromErrno(static_cast<int>(-r), "read altstack of thread " +
                                                                      std::to_string(t->tid()));
      STASIS_RETURN_IF_ERROR(ReadScratch(p, &ss, sizeof ss));
      ti.altstack_sp = ss.sp;
      ti.altstack_flags = static_cast<uint32_t>(ss.flags);
      ti.altstack_size = ss.size;
      STASIS_ASSIGN_OR_RETURN(long slack, Inject(p, t.get(), SYS_prctl, PR_GET_TIMERSLACK));
      if (slack > 0) ti.timerslack_ns = static_cast<uint64_t>(slack);
      STASIS_ASSIGN_OR_RETURN(r, Inject(p, t.get(), SYS_prctl, 40 /* PR_GET_TID_ADDRESS */, p->scratch));
      if (r == 0) STASIS_RETURN_IF_ERROR(ReadScratch(p, &ti.clear_tid_address, 8));
      struct {
        uint64_t ptr;
        uint32_t size;
        uint32_t sig;
        uint32_t flags;
        uint32_t pad;
      } rseq{};
      if (::ptrace(static_cast<__ptrace_request>(0x420f /* PTRACE_GET_RSEQ_CONFIGURATION */), t->tid(),
                   reinterpret_cast<void*>(sizeof rseq), &rseq) > 0) {
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

bool IsDeleted(const std::string& path) {
  static const std::string kDeleted = " (deleted)";
  return path.size() >= kDeleted.size() &&
         path.compare(path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0;
}

// VmFlags of every VMA, in maps order, as MappingFlags bits.
Result<std::vector<uint32_t>> ReadVmFlags(pid_t pid) {
  STASIS_ASSIGN_OR_RETURN(std::string text,
                          ReadFileToString("/proc/" + std::to_string(pid) + "/smaps", 1u << 30));
  std::vector<uint32_t> out;
  size_t pos = 0;
  while ((pos = text.find("VmFlags:", pos)) != std::string::npos) {
    size_t eol = text.find('\n', pos);
    std::string line = text.substr(pos + 8, eol - pos - 8);
    uint32_t f = 0;
    for (size_t i = 0; i + 1 < line.size(); ++i) {
      if (line[i] == ' ') continue;
      std::string code = line.substr(i, 2);
      i += 2;
      if (code == "gd") f |= format::kMapGrowsDown;
      else if (code == "lo") f |= format::kMapLocked;
      else if (code == "dc") f |= format::kMapDontFork;
      else if (code == "nh") f |= format::kMapNoHugepage;
      else if (code == "hg") f |= format::kMapHugepage;
      else if (code == "dd") f |= format::kMapDontDump;
      else if (code == "wf") f |= format::kMapWipeOnFork;
      else if (code == "nr") f |= format::kMapNoReserve;
      else if (code == "mg") f |= format::kMapMergeable;
      else if (code == "ht") f |= format::kMapHugetlb;
      else if (code == "um") f |= kVmUffdMissing;
      else if (code == "uw") f |= kVmUffdWp;
    }
    out.push_back(f);
    pos = eol;
  }
  return out;
}

Status Capturer::CaptureMappings(ProcState* p) {
  const std::vector<uint32_t>& vmflags = p->vmflags;
  if (vmflags.size() != p->maps.size())
    return Status::Error(EAGAIN, "memory map of " + Pid(p->pid) + " changed while being read");
  size_t index = 0;
  for (const MapsEntry& e : p->maps) {
    uint32_t extra = vmflags[index++];
    Mapping m;
    m.start = e.start;
    m.end = e.end;
    m.prot = (e.read ? PROT_READ : 0) | (e.write ? PROT_WRITE : 0) | (e.exec ? PROT_EXEC : 0);
    m.flags = (e.shared ? format::kMapShared : format::kMapPrivate) | extra;
    m.pgoff = e.offset;
    const std::string where = Pid(p->pid) + " mapping " + ToHex(e.start) + "-" + ToHex(e.end);
    if (e.path == kTrackAreaMaps && !e.shared && e.end - e.start == kTrackAreaSize) {
      // stasis's own (dirty_track.h): never part of the context.
      p->track_area = e.start;
      p->track_valid = p->mem.Read(e.start, &p->track, sizeof p->track).ok() &&
                       std::memcmp(p->track.magic, kTrackMagic, sizeof kTrackMagic) == 0 &&
                       p->track.version == 1;
      continue;
    }
    if (e.path == "[vdso]") {
      m.kind = format::kMapVdso;
    } else if (e.path == "[vvar]") {
      m.kind = format::kMapVvar;
    } else if (e.path == "[vvar_vclock]") {
      m.kind = format::kMapVvarVclock;
    } else if (e.path == "[vsyscall]") {
      m.kind = format::kMapVsyscall;
    } else if (e.path == "[heap]") {
      m.kind = format::kMapAnon;
      m.flags |= format::kMapHeap;
    } else if (e.path == "[stack]") {
      m.kind = format::kMapAnon;
      m.flags |= format::kMapStack;
    } else if (e.path == "/anon_hugepage (deleted)" || e.path == "/anon_hugepage") {
      // MAP_HUGETLB anonymous memory: private pages go with the process,
      // a shared segment is saved once like other shared memory.
      if (!e.shared) {
        m.kind = format::kMapAnon;
      } else {
        m.kind = format::kMapSharedAnon;
        m.shmem_id = e.inode;
        STASIS_RETURN_IF_ERROR(NoteSharedMemory(p, e, 5, "",
                                                "/proc/" + std::to_string(p->pid) + "/map_files/" +
                                                    ToHex(e.start) + "-" + ToHex(e.end)));
      }
    } else if (e.shared && (e.path == "/dev/zero (deleted)" || e.path.rfind("/memfd:", 0) == 0 ||
                            e.path == "/dev/zero")) {
      // Shared anonymous memory or a memfd: saved once per context.
      m.kind = format::kMapSharedAnon;
      m.shmem_id = e.inode;
      bool memfd = e.path.rfind("/memfd:", 0) == 0;
      std::string name;
      if (memfd) {
        name = e.path.substr(7);
        if (IsDeleted(name)) name.resize(name.size() - 10);
      }
      STASIS_RETURN_IF_ERROR(NoteSharedMemory(p, e, memfd ? 1 : 0, name,
                                              "/proc/" + std::to_string(p->pid) + "/map_files/" +
                                                  ToHex(e.start) + "-" + ToHex(e.end)));
    } else if (e.path.empty() || e.path.rfind("[anon", 0) == 0) {
      if (e.shared)
        return Status::Error(ENOTSUP, "cannot checkpoint " + where +
                                          ": shared anonymous memory is not supported yet");
      m.kind = format::kMapAnon;
    } else if (e.path[0] == '[') {
      return Status::Error(ENOTSUP, "cannot checkpoint " + where + ": unknown special mapping " +
                                        e.path);
    } else {
      if (e.path.rfind("/SYSV", 0) == 0) {
        // SysV shared memory: the inode is the shmid.
        // Ids are shmids offset past inode numbers (shmid 0 is valid).
        m.kind = format::kMapSysvShm;
        MapsEntry seg = e;
        seg.inode = kSysvIdBase + e.inode;
        m.shmem_id = seg.inode;
        STASIS_RETURN_IF_ERROR(NoteSharedMemory(p, seg, 3, "",
                                                "/proc/" + std::to_string(p->pid) + "/map_files/" +
                                                    ToHex(e.start) + "-" + ToHex(e.end)));
        STASIS_RETURN_IF_ERROR(NoteSysvSegment(e.inode, where));
        p->mappings.push_back(std::move(m));
        continue;
      }
      const bool is_exe = e.path == p->info.exe_path;
      const bool by_choice = (is_exe && options_.save_exe) ||
                             (!e.shared && options_.save_private) ||
                             (e.shared && options_.save_shared);
      if (IsDeleted(e.path) || e.inode == 0 || by_choice) {
        // A deleted file: its content is saved once, by value.
        m.kind = format::kMapFileByValue;
        m.path = IsDeleted(e.path) ? e.path.substr(0, e.path.size() - 10) : e.path;
        m.shmem_id = e.inode;
        STASIS_RETURN_IF_ERROR(NoteSharedMemory(p, e, 4, m.path,
                                                "/proc/" + std::to_string(p->pid) + "/map_files/" +
                                                    ToHex(e.start) + "-" + ToHex(e.end)));
        p->mappings.push_back(std::move(m));
        continue;
      }
      m.kind = format::kMapFile;
      m.path = e.path;
      struct stat st;
      if (::stat(e.path.c_str(), &st) != 0)
        return Status::FromErrno(errno, "cannot checkpoint " + where + ": stat " + e.path);
      if (static_cast<uint64_t>(st.st_ino) != e.inode)
        return Status::Error(ENOTSUP, "cannot checkpoint " + where + ": " + e.path +
                                          " was replaced by another file since it was mapped");
      m.file_id = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino),
                   static_cast<uint64_t>(st.st_size),
                   st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec, st.st_mode};
    }
    if (e.start <= p->stat.start_stack && p->stat.start_stack < e.end && m.kind == format::kMapAnon)
      m.flags |= format::kMapStack;
    if ((m.flags & format::kMapHugetlb) && m.kind == format::kMapFile && (m.flags & format::kMapShared) == 0)
      return Status::Error(ENOTSUP, "cannot checkpoint " + where +
                                        ": private mappings of hugetlbfs files are not supported yet");
    p->mappings.push_back(std::move(m));
  }
  return Status::Ok();
}

bool IsZeroPage(const char* page) {
  const uint64_t* w = reinterpret_cast<const uint64_t*>(page);
  uint64_t acc = 0;
  for (size_t i = 0; i < kPageSize / 8; i += 8) {
    acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
    if (acc) return false;
  }
  return acc == 0;
}

namespace {

// Does this pagemap entry name a page the context must hold? Swapped pages
// and present private pages; for file mappings only the privately
// modified (anonymous) ones, the rest comes back from the file.
bool PageWanted(uint64_t entry, bool anon) {
  bool present = entry & (1ull << 63);
  bool swapped = entry & (1ull << 62);
  bool file_or_shared = entry & (1ull << 61);
  if (swapped) return true;
  if (!present) return false;
  return anon || !file_or_shared;
}

bool MappingHasPages(const Mapping& m) {
  return (m.kind == format::kMapAnon || m.kind == format::kMapFile ||
          m.kind == format::kMapFileByValue) &&
         !(m.flags & format::kMapShared);
}

}  // namespace

Result<uint64_t> Capturer::PageBytesToStore(ProcState* p, uint64_t enough) {
  uint64_t bytes = 0;
  for (const PageRun& r : p->dirty_runs) bytes += r.npages * kPageSize;
  UniqueFd pagemap(::open(("/proc/" + std::to_string(p->pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return Status::FromErrno(errno, "open pagemap of " + Pid(p->pid));
  std::vector<uint64_t> pm;
  for (const Mapping& m : p->mappings) {
    if (bytes > enough) break;
    if (!MappingHasPages(m) || m.start == p->scratch_address || p->incremental_maps.count(m.start)) continue;
    pm.resize((m.end - m.start) / kPageSize);
    ssize_t n = ::pread(pagemap.get(), pm.data(), pm.size() * 8, static_cast<off_t>(m.start / kPageSize * 8));
    if (n != static_cast<ssize_t>(pm.size() * 8))
      return Status::FromErrno(n < 0 ? errno : EIO, "read pagemap of " + Pid(p->pid));
    for (uint64_t e : pm)
      if (PageWanted(e, m.kind == format::kMapAnon)) bytes += kPageSize;
  }
  return bytes;
}

Result<uint64_t> Capturer::EstimateBytes() {
  // Metadata: a generous 64 KiB per process and 4 KiB per mapping.
  uint64_t bytes = 1u << 20;
  for (auto& [id, shm] : shms_) bytes += shm.info.size;
  for (auto& p : procs_) {
    bytes += 64u << 10;
    if (p->zombie) continue;
    bytes += 4096 * p->mappings.size();
    STASIS_ASSIGN_OR_RETURN(uint64_t pages, PageBytesToStore(p.get()));
    bytes += pages;
  }
  return bytes;
}

namespace {

// Private writable anonymous memory that fork copies: what dirty tracking
// covers. The rest of a tracked process is stored whole every time.
bool Trackable(const Mapping& m, uint64_t scratch) {
  return m.kind == format::kMapAnon && !(m.flags & format::kMapShared) && (m.prot & PROT_WRITE) &&
         !(m.flags & (format::kMapDontFork | format::kMapWipeOnFork | format::kMapHugetlb)) &&
         m.start != scratch;
}

}  // namespace

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
  const bool incremental = options_.parent_token != 0 && fd_ok && p->track.token == options_.parent_token;
  if (options_.parent_token != 0 && !incremental)
    *why = Pid(p->pid) + ": stored whole (" +
           (!p->track_area  ? std::string("not tracked since the parent")
            : !mine         ? std::string("a fork child, not tracked itself yet")
            : !fd_ok        ? std::string("its tracking userfaultfd is gone")
                            : std::string("tracked since another capture than the parent")) +
           ")";
  UniqueFd pagemap(::open(("/proc/" + pid + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return fail(std::string("open pagemap: ") + strerror(errno));
  if (Status s = CheckPagemapScan(pagemap.get()); !s.ok()) return fail(s.message());
  // Invalidate first: should anything below fail half way, no later
  // capture takes what this one resets for changes since the parent.
  if (p->track_area) {
    const uint64_t zero = 0;
    if (!p->mem.WriteThroughProc(p->track_area + offsetof(TrackArea, token), &zero, sizeof zero).ok())
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
    uint64_t limit = p->info.rlimits.size() > RLIMIT_NOFILE ? p->info.rlimits[RLIMIT_NOFILE].cur : 1024;
    long base = limit >= 1024 ? 1000 : static_cast<long>(limit * 3 / 4);
    if (base > fd) {
      auto d = Inject(p, leader, SYS_fcntl, static_cast<uint64_t>(fd), F_DUPFD_CLOEXEC, static_cast<uint64_t>(base));
      if (d && *d >= 0) {
        (void)Inject(p, leader, SYS_close, static_cast<uint64_t>(fd));
        fd = *d;
      }
    }
    target_fd = static_cast<int>(fd);
    uffd.reset(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), target_fd, 0)));
    Status api = uffd ? EnableWpAsync(uffd.get()) : Status::FromErrno(errno, "take its userfaultfd");
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
          auto a = t && *t == 0 ? Inject(p, leader, SYS_mmap, 0, kTrackAreaSize, PROT_READ, MAP_PRIVATE,
                                         static_cast<uint64_t>(*m), 0)
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
    const bool registered = fd_ok && index < p->vm_wp.size() && at->start == m.start && p->vm_wp[index];
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

Status Capturer::WritePages(ProcState* p, format::ContextWriter* writer, uint64_t* page_bytes) {
  if (kernel_)
    return kernel_->WritePages(
        p->pid, p->mappings,
        [p](const Mapping& m) { return MappingHasPages(m) && m.start != p->scratch_address; },
        writer, page_bytes, &zero_skipped_);
  // From the snapshot when there is one: same mappings, same pages, frozen
  // at the moment it was taken while the process itself runs on.
  const pid_t src = p->snap ? p->snap : p->pid;
  const ProcessMemory& mem = p->snap ? p->snap_mem : p->mem;
  // An incremental context: pages unchanged since the parent are named, not
  // stored (Track() found them); the data below skips them.
  if (p->incremental)
    STASIS_RETURN_IF_ERROR(writer->WriteParentPages(static_cast<uint32_t>(p->pid), p->parent_runs));
  size_t parent_at = 0;
  auto in_parent = [&](uint64_t addr) {
    const std::vector<PageRun>& runs = p->parent_runs;
    while (parent_at < runs.size() && runs[parent_at].start + runs[parent_at].npages * kPageSize <= addr)
      ++parent_at;
    return parent_at < runs.size() && runs[parent_at].start <= addr;
  };
  UniqueFd pagemap(::open(("/proc/" + std::to_string(src) + "/pagemap").c_str(),
                          O_RDONLY | O_CLOEXEC));
  if (!pagemap) return Status::FromErrno(errno, "open pagemap of " + Pid(src));
  // Pages are read straight into the batch, zero pages squeezed out in
  // place. When the sink lends its aligned buffers, the batch is one of
  // them and goes to the file without another copy.
  ByteSink* sink = writer->sink();
  size_t cap = 0;
  char* batch = sink->Borrow(&cap);
  const bool lent = batch != nullptr;
  std::unique_ptr<char[]> own;
  if (!lent) {
    own.reset(new char[kBatchBytes]);
    batch = own.get();
    cap = kBatchBytes;
  }
  cap = cap / kPageSize * kPageSize;
  std::vector<PageRun> runs;
  size_t used = 0;
  auto flush = [&]() -> Status {
    if (runs.empty()) return Status::Ok();
    STASIS_RETURN_IF_ERROR(writer->BeginPages({format::PageOwner::kProcess, static_cast<uint64_t>(p->pid)}, runs));
    if (lent) {
      char* full = batch;
      batch = nullptr;
      STASIS_RETURN_IF_ERROR(writer->AppendBorrowedPageData(full, used));
    } else {
      STASIS_RETURN_IF_ERROR(writer->AppendPageData(batch, used));
    }
    STASIS_RETURN_IF_ERROR(writer->EndPages());
    *page_bytes += used;
    runs.clear();
    used = 0;
    if (lent) {
      size_t got = 0;
      batch = sink->Borrow(&got);
      if (!batch || got / kPageSize * kPageSize != cap)
        return Status::Error(EIO, "the context sink stopped lending buffers");
    }
    return Status::Ok();
  };
  // Gives an unused lent buffer back, on every path out.
  struct GiveBack {
    ByteSink* sink;
    char** batch;
    bool lent;
    ~GiveBack() {
      if (lent && *batch) (void)sink->WriteBorrowed(*batch, 0);
    }
  } give_back{sink, &batch, lent};
  std::vector<uint64_t> pm;
  // Queued reads into the batch (from `used` to `read_end`), then settled:
  // read, zero pages squeezed out, runs noted.
  struct Seg {
    uint64_t addr;
    size_t off;
    uint64_t npages;
    bool anon;
  };
  std::vector<Seg> segs;
  size_t read_end = used;
  std::vector<struct iovec> local, remote;
  auto settle = [&]() -> Status {
    if (segs.empty()) return Status::Ok();
    bool done = false;
    if (segs.size() > 1) {
      local.clear();
      remote.clear();
      size_t total = 0;
      for (const Seg& g : segs) {
        local.push_back({batch + g.off, g.npages * kPageSize});
        remote.push_back({reinterpret_cast<void*>(g.addr), g.npages * kPageSize});
        total += g.npages * kPageSize;
      }
      ssize_t r = ::process_vm_readv(src, local.data(), local.size(), remote.data(), remote.size(), 0);
      done = r == static_cast<ssize_t>(total);
    }
    for (const Seg& g : segs)
      if (!done) STASIS_RETURN_IF_ERROR(mem.Read(g.addr, batch + g.off, g.npages * kPageSize));
    // Squeeze out zero pages: `keep` is where the next kept page goes.
    char* keep = batch + used;
    for (const Seg& g : segs) {
      const char* dst = batch + g.off;
      for (uint64_t k = 0; k < g.npages; ++k) {
        const char* page = dst + k * kPageSize;
        if (g.anon && IsZeroPage(page)) {
          ++zero_skipped_;
          continue;
        }
        if (keep != page) std::memmove(keep, page, kPageSize);
        keep += kPageSize;
        const uint64_t at = g.addr + k * kPageSize;
        if (!runs.empty() && runs.back().start + runs.back().npages * kPageSize == at)
          runs.back().npages++;
        else
          runs.push_back({at, 1});
      }
    }
    used = static_cast<size_t>(keep - batch);
    segs.clear();
    return Status::Ok();
  };
  for (const Mapping& m : p->mappings) {
    if (!MappingHasPages(m)) continue;  // shared: by reference or stored once
    if (m.start == p->scratch_address) continue;
    bool anon = m.kind == format::kMapAnon;
    uint64_t npages = (m.end - m.start) / kPageSize;
    pm.resize(npages);
    if (p->incremental_maps.count(m.start)) {
      // Tracked: the written pages Track() listed (present at the freeze),
      // not another walk of the page tables.
      std::fill(pm.begin(), pm.end(), 0);
      auto d = std::lower_bound(p->dirty_runs.begin(), p->dirty_runs.end(), m.start,
                                [](const PageRun& r, uint64_t a) { return r.start + r.npages * kPageSize <= a; });
      for (; d != p->dirty_runs.end() && d->start < m.end; ++d) {
        const uint64_t s0 = std::max(d->start, m.start), e0 = std::min(d->start + d->npages * kPageSize, m.end);
        for (uint64_t a = s0; a < e0; a += kPageSize) pm[(a - m.start) / kPageSize] = 1ull << 63;
      }
    } else {
      ssize_t n = ::pread(pagemap.get(), pm.data(), npages * 8, static_cast<off_t>(m.start / kPageSize * 8));
      if (n != static_cast<ssize_t>(npages * 8))
        return Status::FromErrno(n < 0 ? errno : EIO, "read pagemap of " + Pid(p->pid));
    }
    // Page k of the mapping is stored: present (or swapped) and not the
    // parent's. Addresses are asked in increasing order (in_parent's cursor).
    auto wanted = [&](uint64_t k) {
      return PageWanted(pm[k], anon) && !in_parent(m.start + k * kPageSize);
    };
    // Reads are queued and done together: contiguous ones through
    // /proc/PID/mem one by one (see ProcessMemory::Read), and in a tracked
    // mapping, where the written pages lie scattered, up to 1024 at a time
    // with process_vm_readv, but only from the process itself: in a
    // snapshot it would unshare every page it reads (measured: 207 MiB of
    // scattered pages read in 0.72 s against 0.23 s one by one, 0.14 s
    // batched from the frozen process).
    const bool scattered = !p->snap && p->incremental_maps.count(m.start) != 0;
    uint64_t i = 0;
    while (i < npages) {
      if (!wanted(i)) {
        ++i;
        continue;
      }
      if (read_end == cap) {
        STASIS_RETURN_IF_ERROR(settle());
        if (used == cap) STASIS_RETURN_IF_ERROR(flush());
        read_end = used;
      }
      const uint64_t room = (cap - read_end) / kPageSize;
      uint64_t j = i;
      while (j < npages && wanted(j) && j - i < room) ++j;
      segs.push_back({m.start + i * kPageSize, read_end, j - i, anon});
      read_end += (j - i) * kPageSize;
      if (!scattered || segs.size() == 1024) {
        STASIS_RETURN_IF_ERROR(settle());
        read_end = used;
      }
      i = j;
    }
    STASIS_RETURN_IF_ERROR(settle());
    read_end = used;
  }
  return flush();
}

Status Capturer::Write(format::ContextWriter* writer, CheckpointStats* stats,
                       const std::function<Status()>& between) {
  format::ImageInfo image;
  image.stasis_version = STASIS_VERSION;
  image.job = options_.job;
  image.step = options_.step;
  image.epoch = options_.epoch;
  image.node_index = options_.node_index;
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  image.hostname = host;
  struct utsname u;
  if (::uname(&u) == 0) image.kernel_release = u.release;
  image.created_unix_ns = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  image.checkpoint_uid = ::getuid();
  image.root_pid = static_cast<uint32_t>(
      options_.tasks.empty() ? options_.target : options_.tasks.front().pid);
  image.scope = options_.scope;
  image.argv = options_.tool_argv;
  image.token = token_;
  for (auto& p : procs_) {
    if (!p->incremental) continue;
    image.parent_token = options_.parent_token;
    image.parent = options_.parent;
  }
  STASIS_RETURN_IF_ERROR(writer->Begin(image));

  // Parents before children (forwarded scopes may have added a parent late).
  {
    std::vector<std::unique_ptr<ProcState>> ordered;
    std::set<pid_t> placed;
    while (!procs_.empty()) {
      bool moved = false;
      for (auto it = procs_.begin(); it != procs_.end();) {
        pid_t ppid = (*it)->stat.ppid;
        bool ready = !by_pid_.count(ppid) || placed.count(ppid);
        if (ready) {
          placed.insert((*it)->pid);
          ordered.push_back(std::move(*it));
          it = procs_.erase(it);
          moved = true;
        } else {
          ++it;
        }
      }
      if (!moved) {  // a cycle cannot happen; keep the rest as they are
        for (auto& rest : procs_) ordered.push_back(std::move(rest));
        procs_.clear();
      }
    }
    procs_ = std::move(ordered);
  }
  format::ProcessTree tree;
  for (auto& p : procs_) {
    format::ProcessEntry e;
    e.pid = static_cast<uint32_t>(p->pid);
    e.ppid = by_pid_.count(p->stat.ppid) ? static_cast<uint32_t>(p->stat.ppid) : 0;
    e.pgid = static_cast<uint32_t>(p->stat.pgrp);
    e.sid = static_cast<uint32_t>(p->stat.session);
    if (p->was_stopped) e.flags |= format::kProcStopped;
    if (options_.tasks.empty() && p->pid == options_.target) e.flags |= format::kProcIsRoot;
    for (const TaskRoot& t : options_.tasks) {
      if (t.pid != p->pid) continue;
      e.flags |= format::kProcIsRoot | format::kProcTask;
      e.task = t.task;
    }
    for (auto& t : p->threads) e.tids.push_back(static_cast<uint32_t>(t->tid()));
    if (p->unseized)
      for (const auto& ti : p->thread_infos) e.tids.push_back(ti.tid);
    if (p->zombie) {
      e.flags |= format::kProcZombie;
      e.exit_code = p->stat.exit_code;
      e.tids = {e.pid};
      format::ThreadInfo ti;
      ti.tid = e.pid;
      p->thread_infos = {ti};
    }
    tree.processes.push_back(std::move(e));
  }
  STASIS_RETURN_IF_ERROR(writer->WriteTree(tree));
  STASIS_RETURN_IF_ERROR(ClassifyPipes());
  STASIS_RETURN_IF_ERROR(ClassifySockets());
  ClassifyPtys();
  STASIS_RETURN_IF_ERROR(WriteSharedMemory(writer, &stats->page_bytes));
  // Shared memory and pipe data are written; what follows comes from the
  // captured metadata and the snapshots, so the tree may run from here.
  if (between) STASIS_RETURN_IF_ERROR(between());
  for (auto& p : procs_) {
    const uint32_t pid = static_cast<uint32_t>(p->pid);
    STASIS_RETURN_IF_ERROR(writer->WriteProcess(p->info));
    std::vector<Mapping> maps;
    for (const Mapping& m : p->mappings)
      if (m.start != p->scratch_address) maps.push_back(m);
    STASIS_RETURN_IF_ERROR(writer->WriteMappings(pid, maps));
    STASIS_RETURN_IF_ERROR(writer->WriteFiles(pid, p->files));
    for (const auto& t : p->thread_infos) STASIS_RETURN_IF_ERROR(writer->WriteThread(pid, t));
    if (!p->zombie) STASIS_RETURN_IF_ERROR(WritePages(p.get(), writer, &stats->page_bytes));
    stats->threads += static_cast<uint32_t>(p->thread_infos.size());
    stats->pids.push_back(p->pid);
  }
  stats->processes = static_cast<uint32_t>(procs_.size());
  return writer->Finish();
}

// Notes an object saved once per context: shared anonymous memory, a memfd
// or an unlinked file. `e` is a mapping of it (or, for an fd, only its
// inode); `open_path` reaches the object itself (map_files or fd link).
Status Capturer::NoteSharedMemory(ProcState* p, const MapsEntry& e, uint32_t kind,
                                  const std::string& name, const std::string& open_path) {
  Shm& shm = shms_[e.inode];
  if (shm.pid == 0) {
    shm.info.id = e.inode;
    shm.info.kind = kind;
    shm.info.name = name;
    shm.pid = p->pid;
    shm.entry = e;
  }
  if (!shm.fd) {
    // The object itself (map_files needs root or CAP_CHECKPOINT_RESTORE): its
    // full size and every page, also those only other processes touched.
    shm.fd.reset(::open(open_path.c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st;
    if (shm.fd && ::fstat(shm.fd.get(), &st) == 0) {
      shm.info.size = std::max(shm.info.size, static_cast<uint64_t>(st.st_size));
      shm.info.sysv_mode = st.st_mode & 07777;
      shm.pid = p->pid;
      shm.entry = e;
    }
  }
  if (!shm.fd && (shm.pid != p->pid || e.end == 0))
    return Status::Error(EPERM, "cannot checkpoint " + Pid(p->pid) + ": cannot read " +
                                    (name.empty() ? std::string("shared memory") : name) +
                                    " (needs root when several processes share it)");
  if ((kind <= 1 || kind == 5) && e.end > e.start)
    shm.info.size = std::max(shm.info.size, (e.offset + (e.end - e.start) + kPageSize - 1) /
                                                kPageSize * kPageSize);
  return Status::Ok();
}

// Key, mode (with SHM_DEST when it is marked for removal) and size of a
// SysV segment, from /proc/sysvipc/shm.
Status Capturer::NoteSysvSegment(uint64_t shmid, const std::string& where) {
  STASIS_ASSIGN_OR_RETURN(std::string text, ReadFileToString("/proc/sysvipc/shm"));
  size_t pos = text.find('\n');
  while (pos != std::string::npos && pos + 1 < text.size()) {
    long long key = 0;
    unsigned long long id = 0, size = 0;
    unsigned mode = 0;
    if (sscanf(text.c_str() + pos + 1, "%lld %llu %o %llu", &key, &id, &mode, &size) == 4 &&
        id == shmid) {
      Shm& shm = shms_[kSysvIdBase + shmid];
      shm.info.sysv_key = key;
      shm.info.sysv_mode = mode;
      shm.info.size = size;  // exact: shmget gets the same size back
      return Status::Ok();
    }
    pos = text.find('\n', pos + 1);
  }
  return Status::Error(ENOENT, "cannot checkpoint " + where + ": SysV segment " +
                                   std::to_string(shmid) + " not found");
}

Status Capturer::WriteSharedMemory(format::ContextWriter* writer, uint64_t* page_bytes) {
  std::unique_ptr<char[]> chunk(new char[kReadChunk]);
  for (auto& [id, shm] : shms_) {
    STASIS_RETURN_IF_ERROR(writer->WriteSharedMemory(shm.info));
    const format::PageOwner owner{format::PageOwner::kSharedMemory, id};
    std::vector<PageRun> runs;
    std::string data;
    auto flush = [&]() -> Status {
      if (runs.empty()) return Status::Ok();
      STASIS_RETURN_IF_ERROR(writer->BeginPages(owner, runs));
      STASIS_RETURN_IF_ERROR(writer->AppendPageData(data.data(), data.size()));
      STASIS_RETURN_IF_ERROR(writer->EndPages());
      *page_bytes += data.size();
      runs.clear();
      data.clear();
      return Status::Ok();
    };
    // Reads [off, off+len) of the object, keeping the non-zero pages.
    auto take = [&](uint64_t off, uint64_t len, auto read) -> Status {
      while (len > 0) {
        size_t n = static_cast<size_t>(std::min<uint64_t>(len, kReadChunk));
        STASIS_RETURN_IF_ERROR(read(off, chunk.get(), n));
        for (size_t k = 0; k < n; k += kPageSize) {
          const char* page = chunk.get() + k;
          if (IsZeroPage(page)) {
            ++zero_skipped_;
            continue;
          }
          uint64_t at = off + k;
          if (!runs.empty() && runs.back().start + runs.back().npages * kPageSize == at)
            runs.back().npages++;
          else
            runs.push_back({at, 1});
          data.append(page, kPageSize);
          if (data.size() >= kBatchBytes) STASIS_RETURN_IF_ERROR(flush());
        }
        off += n;
        len -= n;
      }
      return Status::Ok();
    };
    if (shm.fd) {
      auto read = [&](uint64_t off, char* buf, size_t n) -> Status {
        ssize_t r = ::pread(shm.fd.get(), buf, n, static_cast<off_t>(off));
        if (r < 0) return Status::FromErrno(errno, "read shared memory of " + Pid(shm.pid));
        if (static_cast<size_t>(r) < n) std::memset(buf + r, 0, n - static_cast<size_t>(r));
        return Status::Ok();
      };
      off_t pos = 0;
      const off_t size = static_cast<off_t>(shm.info.size);
      while (pos < size) {
        off_t data_at = ::lseek(shm.fd.get(), pos, SEEK_DATA);
        if (data_at < 0 && errno != ENXIO) {
          // No SEEK_DATA here (hugetlbfs): read it all, zero pages skipped.
          STASIS_RETURN_IF_ERROR(take(static_cast<uint64_t>(pos), static_cast<uint64_t>(size - pos), read));
          break;
        }
        if (data_at < 0) break;  // ENXIO: no more data
        off_t hole = ::lseek(shm.fd.get(), data_at, SEEK_HOLE);
        if (hole < 0 || hole > size) hole = size;
        uint64_t lo = static_cast<uint64_t>(data_at) & ~(kPageSize - 1);
        uint64_t hi = (static_cast<uint64_t>(hole) + kPageSize - 1) & ~(kPageSize - 1);
        STASIS_RETURN_IF_ERROR(take(lo, hi - lo, read));
        pos = static_cast<off_t>(hi);
      }
    } else {
      // Only one process maps it: read its window through /proc/PID/mem.
      ProcState* p = by_pid_[shm.pid];
      const MapsEntry& e = shm.entry;
      auto read = [&](uint64_t off, char* buf, size_t n) -> Status {
        return p->mem.Read(e.start + (off - e.offset), buf, n);
      };
      STASIS_RETURN_IF_ERROR(take(e.offset, e.end - e.start, read));
    }
    STASIS_RETURN_IF_ERROR(flush());
  }
  return Status::Ok();
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

// Copy-on-write snapshots. The leader of each process runs an injected
// clone() (no flags, exit signal 0: the child is invisible to the process's
// own wait() and sends it no SIGCHLD) while we trace forks, so the child is
// stopped before its first instruction; it never runs and is killed with
// us (PTRACE_O_EXITKILL) if we die. Its memory is the process's memory at
// this moment, kept by the kernel's copy-on-write while the process runs.
// Shared mappings are not copied by fork, but they are not read from
// here: shared objects are written before the tree runs (Write's
// `between`). Memory a fork does not copy (MADV_DONTFORK, as RDMA buffers
// are, or MADV_WIPEONFORK) cannot be read from a snapshot: such a process
// makes the whole checkpoint stay frozen while it writes.
bool Capturer::Snapshot(std::string* why_not) {
  // An incremental capture with little to write: writing it frozen (and
  // reading its scattered pages in batches) costs less than forking the
  // tree's page tables and tearing them down again. Measured on a 4 GiB
  // process with 5% written (bench/checkpoint.py --incremental): 0.24 s
  // frozen throughout against 0.45 s with a snapshot that paused it 0.18 s.
  uint64_t kFrozenWriteBytes = 256u << 20;
  if (const char* e = std::getenv("STASIS_FROZEN_WRITE_BYTES")) kFrozenWriteBytes = std::strtoull(e, nullptr, 10);  // tests
  bool incremental = false;
  for (auto& p : procs_) incremental |= p->incremental;
  if (incremental) {
    uint64_t bytes = 0;
    for (auto& p : procs_) {
      if (p->zombie || bytes > kFrozenWriteBytes) continue;
      auto more = PageBytesToStore(p.get(), kFrozenWriteBytes);
      bytes = more ? bytes + *more : UINT64_MAX;
    }
    if (bytes <= kFrozenWriteBytes) {
      *why_not = "an incremental capture with " + std::to_string(bytes >> 20) +
                 " MiB to write is written frozen, faster than a snapshot";
      return false;
    }
  }
  for (auto& p : procs_) {
    if (p->zombie) continue;
    for (const Mapping& m : p->mappings) {
      if (!MappingHasPages(m) || m.start == p->scratch_address) continue;
      if (m.flags & (format::kMapDontFork | format::kMapWipeOnFork)) {
        *why_not = Pid(p->pid) + " has private memory a fork does not copy (" +
                   ((m.flags & format::kMapDontFork) ? "MADV_DONTFORK" : "MADV_WIPEONFORK") +
                   ") at 0x" + ToHex(m.start);
        return false;
      }
    }
  }
  for (auto& p : procs_) {
    if (p->zombie || p->threads.empty()) continue;
    Tracee* t = p->threads[0].get();
    const long trace = SeizeOptions() | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK;
    pid_t child = 0;
    Result<long> r = Status::Error(EIO, "not run");
    if (::ptrace(PTRACE_SETOPTIONS, t->tid(), nullptr, reinterpret_cast<void*>(trace)) == 0) {
      r = t->Syscall(p->syscall_insn, SYS_clone, 0, 0, 0, 0, 0, 0, &child);
      ::ptrace(PTRACE_SETOPTIONS, t->tid(), nullptr, reinterpret_cast<void*>(SeizeOptions()));
    }
    if (r && *r > 0 && child <= 0) child = static_cast<pid_t>(*r);
    if (!r || *r <= 0 || child <= 0) {
      *why_not = "fork of " + Pid(p->pid) + " failed: " +
                 (!r ? r.error().message() : std::string(std::strerror(static_cast<int>(-*r))));
      EndSnapshots();
      return false;
    }
    p->snap = child;
    p->snap_seen = InnermostPid(child);
    // Its first stop (PTRACE_EVENT_STOP for a seized parent); from there it
    // dies with us.
    auto first = WaitThread(child);
    auto mem = ProcessMemory::Open(child, false);
    if (!first || first->kind == StopInfo::kExited || first->kind == StopInfo::kKilled || !mem ||
        ::ptrace(PTRACE_SETOPTIONS, child, nullptr,
                 reinterpret_cast<void*>(PTRACE_O_EXITKILL | PTRACE_O_TRACESYSGOOD)) != 0) {
      *why_not = "the snapshot of " + Pid(p->pid) + " did not stop as expected";
      EndSnapshots();
      return false;
    }
    p->snap_mem = std::move(*mem);
    IsolateSnapshot(p.get(), child);
  }
  return true;
}

// The snapshot gets a session of its own, so that one left behind by a
// killed checkpointer (a zombie until its parent reaps it) does not keep
// the program's session and process group ids in use (a restart needs
// those numbers free), and the name "stasis-snap". Best effort: the calls
// run in it like any injected call, and it still runs no instruction of its
// own.
void Capturer::IsolateSnapshot(ProcState* p, pid_t child) {
  const uint64_t insn = p->syscall_insn;  // the vDSO is the same in the copy
  Tracee ct(child, child);
  ct.MarkAttached();
  (void)ct.Syscall(insn, SYS_setsid);
  if (p->scratch) {
    auto w = ProcessMemory::Open(child, true);
    static const char kName[] = "stasis-snap";
    if (w && w->WriteThroughProc(p->scratch, kName, sizeof kName).ok())
      (void)ct.Syscall(insn, SYS_prctl, PR_SET_NAME, p->scratch);
  }
}

// The process ran on while its snapshot was written; it is seized again only
// if it is still the very process we captured, with the image we captured:
// - gone (its pidfd says ESRCH): its children, the snapshot zombie
//   included, went to init (or a subreaper), which reaps it (reparenting
//   gives it SIGCHLD as exit signal). Its pid may already be another
//   process's: never seized by number.
// - exec'd (a setuid program, or anything): the snapshot zombie stays its
//   child, invisible to a plain wait() (exit signal 0), until the new image
//   waits with __WALL or the process exits and init reaps it. Injecting
//   into the new image would run at an address of the old one, under
//   whatever credentials it now has.
// Checked before the seize (pidfd alive, the capture-time view of its
// memory still readable and AT_RANDOM's bytes unchanged), and again once
// it is stopped, when nothing can change any more: its pidfd (a pid
// reused between the check and the seize would be a stranger, released at
// once with nothing injected), a fresh view of its memory, and the owner
// rule. Every wait is bounded (Tracee timeouts).
bool Capturer::SameImage(ProcState* p, const ProcessMemory& mem) {
  if (!p->at_random) return false;
  uint8_t now[16];
  return mem.Read(p->at_random, now, sizeof now).ok() &&
         std::memcmp(now, p->at_random_bytes, sizeof now) == 0;
}

void Capturer::ReapReleasedSnapshot(ProcState* p, pid_t seen) {
  if (!PidfdAlive(p->pidfd.get()) || !SameImage(p, p->mem)) return;
  // Stopped now (job control) stays stopped; a signal our interrupt
  // caught in delivery is delivered.
  auto st = ReadStat(p->pid);
  const bool stopped = st && (st->state == 'T' || st->state == 't');
  Tracee t(p->pid, p->pid);
  if (!t.SeizeAndInterrupt().ok() || !t.WaitForStop().ok()) {
    (void)t.Detach(0);
    return;
  }
  auto now = ProcessMemory::Open(p->pid, false);
  if (!PidfdAlive(p->pidfd.get()) || !now || !SameImage(p, *now) || !CheckOwner(p->pid).ok()) {
    (void)t.Detach(0);  // nothing was changed in it
    return;
  }
  (void)t.Syscall(p->syscall_insn, SYS_wait4, static_cast<uint64_t>(seen), 0, __WALL, 0);
  int sig = stopped ? SIGSTOP : 0;
  const StopInfo& first = t.first_stop();
  if (first.kind == StopInfo::kSignal && first.signal != SIGSTOP && first.signal != SIGTRAP)
    sig = first.signal;
  (void)t.RestoreAndDetach(sig);
}

void Capturer::EndSnapshots() {
  for (auto& p : procs_) {
    if (!p->snap) continue;
    const pid_t child = p->snap;
    const pid_t seen = p->snap_seen > 0 ? p->snap_seen : child;
    p->snap = 0;
    p->snap_mem = ProcessMemory();
    // Our tracee, never run, dies with us at worst: while we trace it its
    // pid cannot be reaped, so this kill is for it.
    ::kill(child, SIGKILL);
    for (;;) {  // our tracer's view of its death first
      auto st = WaitThread(child);
      if (!st || st->kind == StopInfo::kExited || st->kind == StopInfo::kKilled) break;
    }
    // Now a zombie of the process: have it reap the child (wait4 with
    // __WALL, injected in a brief second stop of one of its threads).
    if (released_) {
      ReapReleasedSnapshot(p.get(), seen);
    } else if (!p->threads.empty()) {
      (void)Inject(p.get(), p->threads[0].get(), SYS_wait4, static_cast<uint64_t>(seen), 0, __WALL, 0);
    }
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

Status Capturer::Release(AfterCheckpoint after) {
  released_ = true;
  Status first;
  for (auto& p : procs_) {
    if (after != AfterCheckpoint::kKill) Requeue(p.get());
    if (p->scratch && !p->threads.empty()) {
      auto r = Inject(p.get(), p->threads[0].get(), SYS_munmap, p->scratch, kScratchSize);
      if (!r && first.ok()) first = r.error();
      p->scratch = 0;
    }
    int sig = 0;
    if (after == AfterCheckpoint::kKill) (void)PidfdSignal(p->pidfd.get(), SIGKILL);
    if (after == AfterCheckpoint::kTerm) sig = SIGTERM;
    if (p->unseized && sig == SIGTERM)  // no tracee of ours to send it
      (void)PidfdSignal(p->pidfd.get(), SIGTERM);
    if (after == AfterCheckpoint::kStop || p->was_stopped) sig = SIGSTOP;
    for (auto& t : p->threads) {
      Status s = t->RestoreAndDetach(t->tid() == p->pid ? sig : 0);
      if (!s.ok() && first.ok() && after != AfterCheckpoint::kKill) first = s;
    }
  }
  return first;
}

}  // namespace capture

using capture::Capturer;
using capture::SecondsSince;

Result<CheckpointStats> Checkpoint(const CheckpointOptions& options, ByteSink* sink,
                                   FinalizeFn finalize, void* finalize_arg) {
  auto t0 = std::chrono::steady_clock::now();
  CheckpointStats stats;
  AgentRequest request;
  request.requester = options.requester ? options.requester : ::getpid();
  request.target = options.tasks.empty() ? options.target : options.tasks.front().pid;
  request.scope = options.tasks.empty() ? options.scope : format::kScopeTree;
  request.dest = options.dest;
  request.timeout_seconds = options.callback_timeout_seconds;
  request.final = options.final;
  switch (options.after) {
    case AfterCheckpoint::kKill: request.signal = SIGKILL; break;
    case AfterCheckpoint::kTerm: request.signal = SIGTERM; break;
    case AfterCheckpoint::kStop: request.signal = SIGSTOP; break;
    case AfterCheckpoint::kContinue: request.signal = options.after_signal; break;
  }
  // Declared before the capturer: on an early return the processes are
  // resumed first, then their callbacks learn that the checkpoint failed.
  AgentSession agents(request);
  Capturer cap(options);
  auto fail = [&](const Status& s) -> Status {
    cap.ResumeAll();
    agents.Finish(s.code() > 0 ? s.code() : EIO);
    return s;
  };

  // libcr callbacks run before anything is frozen. Callbacks may forward
  // the checkpoint to more processes, whose callbacks then run too.
  // Every process is checked (CheckOwner: the requester, and the process
  // that forwarded to it, could trace it) before its agent block is opened,
  // and pinned by a pidfd then: a callback's PERM failure kills only
  // checked processes, through their pidfds. One that fails the check
  // fails the checkpoint before any agent of this round is touched.
  std::set<pid_t> seen;
  std::map<pid_t, UniqueFd> checked;
  for (int round = 0;; ++round) {
    auto scope = cap.Scope();
    if (!scope) return fail(scope.error());
    std::vector<pid_t> fresh;
    for (pid_t pid : *scope)
      if (seen.insert(pid).second) fresh.push_back(pid);
    if (fresh.empty() || round == 16) break;
    std::vector<pid_t> ready;
    for (pid_t pid : fresh) {
      UniqueFd pidfd(PidfdOpen(pid));
      if (!pidfd) {
        if (errno == ESRCH) continue;  // gone: nothing to call back
        return fail(Status::FromErrno(errno, "pidfd_open pid " + std::to_string(pid)));
      }
      if (Status s = cap.CheckOwner(pid); !s.ok()) {
        if (s.code() == ESRCH) continue;
        return fail(s);
      }
      if (!PidfdAlive(pidfd.get())) continue;  // the check may have read a successor
      checked.emplace(pid, std::move(pidfd));
      ready.push_back(pid);
    }
    Status s = agents.Prepare(ready, checked);
    if (!s.ok()) return fail(s);
    cap.SetOmitted(agents.omitted());
    cap.SetExtraScopes(agents.forwarded());
  }
  stats.callbacks_seconds = SecondsSince(t0);
  if (options.after_callbacks) {
    if (Status s = options.after_callbacks(); !s.ok()) return fail(s);
  }

  if (Status s = cap.UseBackend(options.capture_backend); !s.ok()) return fail(s);
  stats.kernel_backend = cap.kernel_backend();
  auto t1 = std::chrono::steady_clock::now();
  if (Status s = cap.Freeze(); !s.ok()) return fail(s);
  stats.freeze_seconds = SecondsSince(t1);
  if (Status s = cap.CaptureAll(); !s.ok()) return fail(s);
  if (options.track || options.parent_token) {
    uint64_t token = 0;
    while (token == 0)
      if (::getrandom(&token, sizeof token, 0) != sizeof token) token = 0;
    cap.Track(token, &stats);
  }
  if (options.settle_before_write) {
    if (Status s = cap.Settle(); !s.ok()) return fail(s);
  }
  if (options.before_write) {
    auto estimate = cap.EstimateBytes();
    if (!estimate) return fail(estimate.error());
    stats.estimated_bytes = *estimate;
    if (Status s = options.before_write(*estimate); !s.ok()) return fail(s);
  }
  format::ContextWriter writer(sink);
  if (options.compress != format::kCodecNone) {
    int threads = options.compress_threads > 0 ? options.compress_threads
                                               : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    writer.SetCompression(options.compress, options.compress_level, threads);
  }
  // With a snapshot the tree runs again as soon as the shared objects are
  // written; its pages are then read from the snapshots.
  std::function<Status()> release_early;
  const bool may_snapshot =
      options.snapshot && options.after == AfterCheckpoint::kContinue && !cap.kernel_backend();
  if (may_snapshot || options.before_release) {
    release_early = [&]() -> Status {
      const bool snap = may_snapshot && cap.Snapshot(&stats.snapshot_note);
      if (options.before_release)
        STASIS_RETURN_IF_ERROR(options.before_release(snap, stats.snapshot_note));
      if (!snap) return Status::Ok();
      stats.snapshot = true;
      Status s = cap.Release(AfterCheckpoint::kContinue);
      stats.pause_seconds = SecondsSince(t1);
      return s;
    };
  }
  if (Status s = cap.Write(&writer, &stats, release_early); !s.ok()) return fail(s);
  stats.bytes = sink->Offset();
  stats.zero_pages_skipped = cap.zero_pages_skipped();
  if (finalize) {
    if (Status s = finalize(finalize_arg); !s.ok()) return fail(s);
  }
  Status s = stats.snapshot ? Status::Ok() : cap.Release(options.after);
  cap.EndSnapshots();
  agents.Finish(0);
  if (options.after == AfterCheckpoint::kContinue && options.after_signal > 0)
    cap.SignalAll(options.after_signal);  // by pidfd: a pid reused meanwhile is not hit
  if (!stats.snapshot) stats.pause_seconds = SecondsSince(t1);
  if (options.after == AfterCheckpoint::kKill) {
    // Return once the tree is gone (dead, or a zombie for its parent to
    // reap), so a restart right after finds its pids free of live tasks.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (pid_t pid : stats.pids) {
      for (;;) {
        auto st = ReadStat(pid);
        if (!st || st->state == 'Z' || st->state == 'X') break;
        if (std::chrono::steady_clock::now() > deadline) break;
        ::usleep(1000);
      }
    }
  }
  stats.total_seconds = SecondsSince(t0);
  if (!s.ok()) return s;
  return stats;
}

}  // namespace stasis::core

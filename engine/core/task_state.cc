// Process state, both directions: credentials and groups, limits, umask,
// personality, cwd and root, exe, auxv and mm fields, prctl settings, signal
// handlers, itimers and POSIX timers at capture, shared pending signals, the
// controlling terminal; at restore the environment rewrite and the finish of
// each process.
#include <elf.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "engine/agent/agent_abi.h"
#include "engine/base/fd.h"
#include "engine/core/agent_client.h"
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
    std::string line =
        text.substr(pos + 1, next == std::string::npos ? std::string::npos : next - pos - 1);
    pos = next;
    if (line.size() < 67) continue;
    format::Rlimit r;
    if (!value(line.substr(26, 20), &r.cur) || !value(line.substr(47, 20), &r.max))
      return Status::Corrupt("cannot read /proc/" + std::to_string(pid) + "/limits: '" + line +
                             "'");
    out->push_back(r);
  }
  if (out->size() != RLIM_NLIMITS)
    return Status::Corrupt("/proc/" + std::to_string(pid) + "/limits has " +
                           std::to_string(out->size()) + " limits");
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
  STASIS_RETURN_IF_ERROR(CaptureSeccomp(p));
  STASIS_RETURN_IF_ERROR(ListPosixTimers(p));
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
  STASIS_ASSIGN_OR_RETURN(long scratch,
                          Inject(p, leader, SYS_mmap, 0, kScratchSize, PROT_READ | PROT_WRITE,
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
      STASIS_ASSIGN_OR_RETURN(long r, Inject(p, leader, SYS_rt_sigaction,
                                             static_cast<uint64_t>(sig), 0, p->scratch, 8));
      if (r != 0)
        return Status::FromErrno(
            static_cast<int>(-r),
            "read handler of signal " + std::to_string(sig) + " of " + Pid(p->pid));
      uint64_t k[4];
      STASIS_RETURN_IF_ERROR(ReadScratch(p, k, sizeof k));
      act = {k[0], k[1], k[2], k[3]};
    }
    info.sigactions.push_back(act);
  }
  STASIS_RETURN_IF_ERROR(ReadTimers(p, leader, ks));
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
    return Status::Error(ENOTSUP,
                         "cannot checkpoint " + who + " while its debugger holds it: " + why +
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
    auto comm = ReadFileToString("/proc/" + std::to_string(p->pid) + "/task/" +
                                 std::to_string(kt.tid) + "/comm");
    if (comm) ti.comm = comm->substr(0, comm->find('\n'));
    const KernelTaskState::ThreadState* t = ks.ThreadOf(kt.tid);
    if (!t)
      return Status::Error(
          EAGAIN, "thread " + std::to_string(kt.tid) + " of " + who + " is not in TASKSTATE");
    ApplyKernelThreadState(*t, &ti);
    ReadRobustList(&ti);
    p->thread_infos.push_back(std::move(ti));
  }
  STASIS_RETURN_IF_ERROR(CaptureMappings(p));
  return CaptureFiles(p);
}

}  // namespace capture

namespace restore {

using format::FileDesc;
using format::Mapping;

// The new task's variables (RestoreOptions::TaskStdio::env) in the
// environment array on the process's stack: exec laid out argc, argv[],
// NULL, envp[], NULL at mm.start_stack. Each entry whose name is given is
// pointed at "NAME=value" in a fresh page. Anything that does not look like
// that layout (pointers outside env_start..env_end) is left alone: the
// program then sees its old values. A process whose libcr agent published
// where `environ` lives (`environ_addr`, 0 = unknown) gets the array
// `environ` points to rewritten the same way when setenv() moved it to the
// heap (a PMIx client's PMIx_Init does): that is the array getenv() reads.
Status Restorer::RewriteEnvironment(RProc* p, uint64_t environ_addr) {
  const format::MmFields& mm = p->info.mm;
  std::string block;
  std::map<std::string, size_t> placed;              // name -> offset in block
  std::vector<std::pair<uint64_t, size_t>> patches;  // envp slot, offset in block
  // The name of the entry at `ptr`, or "" (not "NAME=...", unreadable).
  auto name_at = [&](uint64_t ptr, uint64_t limit) -> std::string {
    char name[256];
    for (size_t want : {sizeof name, size_t{64}, size_t{16}}) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(want, limit - ptr));
      if (n == 0 || !p->mem.Read(ptr, name, n).ok()) continue;
      const char* eq = static_cast<const char*>(std::memchr(name, '=', n));
      return eq ? std::string(name, static_cast<size_t>(eq - name)) : std::string();
    }
    return std::string();
  };
  auto scan = [&](uint64_t slot, bool on_stack) {
    for (int i = 0; i < 65536; ++i, slot += 8) {
      uint64_t ptr = 0;
      if (!p->mem.Read(slot, &ptr, 8).ok() || ptr == 0) return;
      if (on_stack && (ptr < mm.env_start || ptr >= mm.env_end)) return;
      std::string key = name_at(ptr, on_stack ? mm.env_end : ptr + 256);
      if (key.empty()) continue;
      for (const auto& [k, v] : p->stdio->env) {
        if (k != key) continue;
        auto [it, fresh] = placed.emplace(k, block.size());
        if (fresh) {
          block += k + "=" + v;
          block.push_back('\0');
        }
        patches.emplace_back(slot, it->second);
        break;
      }
    }
  };
  uint64_t argc = 0, stack_envp = 0;
  if (mm.start_stack != 0 && p->mem.Read(mm.start_stack, &argc, 8).ok() && argc <= 65536) {
    stack_envp = mm.start_stack + 8 * (argc + 2);
    scan(stack_envp, true);
  }
  uint64_t heap_envp = 0;
  if (environ_addr && p->mem.Read(environ_addr, &heap_envp, 8).ok() && heap_envp &&
      heap_envp != stack_envp)
    scan(heap_envp, false);
  if (patches.empty()) return Status::Ok();
  const uint64_t len =
      (block.size() + format::kPageSize - 1) / format::kPageSize * format::kPageSize;
  STASIS_ASSIGN_OR_RETURN(
      long r, Checked(Call(p, SYS_mmap, 0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                           static_cast<uint64_t>(-1), 0),
                      "map the new environment of " + Pid(p->entry.pid)));
  const uint64_t at = static_cast<uint64_t>(r);
  STASIS_RETURN_IF_ERROR(p->mem.Write(at, block.data(), block.size()));
  for (const auto& [where, off] : patches) {
    uint64_t v = at + off;
    STASIS_RETURN_IF_ERROR(p->mem.Write(where, &v, 8));
  }
  return Status::Ok();
}

Status Restorer::FinishEnvironment(RProc* p) {
  if (p->stdio && !p->stdio->env.empty()) {
    uint64_t environ_addr = 0;
    for (const Mapping& m : p->mappings)
      if (m.kind == format::kMapSharedAnon && agent_shm_ids_.count(m.shmem_id))
        environ_addr = AgentEnvironAddress(&p->mem, m.start);
    STASIS_RETURN_IF_ERROR(RewriteEnvironment(p, environ_addr));
  }
  return Status::Ok();
}

Status Restorer::FinishAgentBlock(RProc* p) {
  for (const Mapping& m : p->mappings)
    if (m.kind == format::kMapSharedAnon && agent_shm_ids_.count(m.shmem_id))
      STASIS_RETURN_IF_ERROR(
          MarkRestarted(p->pid, &p->mem, m.start, ::getpid(), options_.source_path));
  return Status::Ok();
}

Status Restorer::FinishSignalHandlers(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  for (size_t i = 0; i < info.sigactions.size() && i < 64; ++i) {
    int sig = static_cast<int>(i) + 1;
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    const format::SigAction& a = info.sigactions[i];
    uint64_t k[4] = {a.handler, a.flags, a.restorer, a.mask};
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, k, sizeof k));
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_rt_sigaction, static_cast<uint64_t>(sig), p->scratch + kOffArgs, 0, 8),
                "restore handler of signal " + std::to_string(sig) + " of " + who)
            .status());
  }
  return Status::Ok();
}

Status Restorer::FinishCwd(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  {
    std::string cwd = Relocate(info.cwd);
    STASIS_ASSIGN_OR_RETURN(uint64_t a, PutPath(p, cwd));
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_chdir, a), "cannot restore " + who + ": working directory " + cwd)
            .status());
    STASIS_RETURN_IF_ERROR(Call(p, SYS_umask, info.umask).status());
    STASIS_RETURN_IF_ERROR(Call(p, SYS_personality, info.personality).status());
  }
  return Status::Ok();
}

Status Restorer::FinishMm(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  {
    std::string exe = Relocate(info.exe_path);
    long exe_fd = -1;
    // Replacing /proc/PID/exe needs CAP_CHECKPOINT_RESTORE: unprivileged,
    // the restored process keeps showing the restorer there (documented).
    // The process already shows that file (it was forked from a process
    // running the same program, e.g. a restored cr_restart): the kernel
    // refuses to replace an exe that is still mapped, and need not.
    struct stat want, have;
    bool same_exe = !exe.empty() && ::stat(exe.c_str(), &want) == 0 &&
                    ::stat(("/proc/" + std::to_string(p->pid) + "/exe").c_str(), &have) == 0 &&
                    want.st_dev == have.st_dev && want.st_ino == have.st_ino;
    if (!exe.empty() && ::geteuid() == 0 && !same_exe) {
      auto saved = shm_.find(info.exe_id.ino);
      struct stat st;
      if (saved != shm_.end() && ::stat(exe.c_str(), &st) != 0) {
        // Saved by value (--save-exe) and gone from its path: the copy,
        // through a read-only open file (an exe may not be open for write).
        // Our read-write open of the copy must go too (deny_write_access).
        std::string self = "/proc/self/fd/" + std::to_string(saved->second.get());
        UniqueFd ro(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
        if (!ro) return Status::FromErrno(errno, "reopen saved executable " + exe);
        saved->second = std::move(ro);
        STASIS_ASSIGN_OR_RETURN(exe_fd, Call(p, SYS_pidfd_getfd, static_cast<uint64_t>(p->pidfd),
                                             static_cast<uint64_t>(saved->second.get()), 0));
      } else {
        STASIS_ASSIGN_OR_RETURN(uint64_t a, PutPath(p, exe));
        STASIS_ASSIGN_OR_RETURN(
            exe_fd, Call(p, SYS_openat, static_cast<uint64_t>(AT_FDCWD), a, O_RDONLY | O_CLOEXEC));
      }
      STASIS_RETURN_IF_ERROR(SysErr(exe_fd, "cannot restore " + who + ": executable " + exe));
    }
    struct {
      uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
      uint64_t arg_start, arg_end, env_start, env_end;
      uint64_t auxv;
      uint32_t auxv_size;
      uint32_t exe_fd;
    } map = {info.mm.start_code,
             info.mm.end_code,
             info.mm.start_data,
             info.mm.end_data,
             info.mm.start_brk,
             info.mm.brk,
             info.mm.start_stack,
             info.mm.arg_start,
             info.mm.arg_end,
             info.mm.env_start,
             info.mm.env_end,
             0,
             0,
             static_cast<uint32_t>(exe_fd)};
    if (!info.auxv.empty() && info.auxv.size() <= 0x1000) {
      STASIS_RETURN_IF_ERROR(
          p->mem.Write(p->scratch + kOffAuxv, info.auxv.data(), info.auxv.size()));
      map.auxv = p->scratch + kOffAuxv;
      map.auxv_size = static_cast<uint32_t>(info.auxv.size());
    }
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, &map, sizeof map));
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_MM, 14 /* PR_SET_MM_MAP */,
                                         p->scratch + kOffArgs, sizeof map, 0));
    if (exe_fd >= 0) (void)Call(p, SYS_close, static_cast<uint64_t>(exe_fd));
    STASIS_RETURN_IF_ERROR(SysErr(r, "restore memory layout fields of " + who));
  }
  return Status::Ok();
}

Status Restorer::FinishLimits(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  for (size_t res = 0; res < info.rlimits.size() && res < RLIM_NLIMITS; ++res) {
    struct rlimit64 lim = {info.rlimits[res].cur, info.rlimits[res].max};
    struct rlimit64 ours;
    if (options_.clamp_limits) {
      // Never above the client's hard limit (the restorer took its limits).
      if (::prlimit64(0, static_cast<__rlimit_resource>(res), nullptr, &ours) != 0)
        return Status::FromErrno(errno, "read our limit " + std::to_string(res));
      lim.rlim_max = std::min(lim.rlim_max, ours.rlim_max);
      lim.rlim_cur = std::min(lim.rlim_cur, lim.rlim_max);
    }
    if (::prlimit64(p->pid, static_cast<__rlimit_resource>(res), &lim, nullptr) != 0 &&
        errno != EPERM)
      return Status::FromErrno(errno, "restore limit " + std::to_string(res) + " of " + who);
  }
  {
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_PDEATHSIG, info.pdeathsig));
    if (info.child_subreaper) {
      STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_prctl, PR_SET_CHILD_SUBREAPER, 1),
                                     "make " + who + " a child subreaper again")
                                 .status());
    }
    if (info.timerslack_ns) {
      STASIS_RETURN_IF_ERROR(Call(p, SYS_prctl, PR_SET_TIMERSLACK, info.timerslack_ns).status());
    }
    (void)r;
  }
  return Status::Ok();
}

Status Restorer::FinishEachThread(RProc* p) {
  for (size_t i = 0; i < p->threads.size(); ++i)
    STASIS_RETURN_IF_ERROR(FinishThread(p, p->tracees[i].get(), p->threads[i]));
  STASIS_RETURN_IF_ERROR(RestorePosixTimers(p));
  return Status::Ok();
}

Status Restorer::FinishPendingSignals(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  for (size_t off = 0; off + 128 <= info.pending_shared.size(); off += 128) {
    int32_t signo;
    std::memcpy(&signo, info.pending_shared.data() + off, 4);
    STASIS_RETURN_IF_ERROR(
        p->mem.Write(p->scratch + kOffArgs, info.pending_shared.data() + off, 128));
    STASIS_ASSIGN_OR_RETURN(long self, Call(p, SYS_getpid));
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_rt_sigqueueinfo, static_cast<uint64_t>(self),
                                        static_cast<uint64_t>(signo), p->scratch + kOffArgs),
                                   "re-queue signal " + std::to_string(signo) + " of " + who)
                               .status());
  }
  return Status::Ok();
}

Status Restorer::FinishTerminal(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  if (info.ctty_pty && p->entry.sid == p->entry.pid && ptys_.count(info.ctty_pty - 1)) {
    STASIS_ASSIGN_OR_RETURN(uint64_t a,
                            PutPath(p, "/dev/pts/" + std::to_string(info.ctty_pty - 1)));
    STASIS_ASSIGN_OR_RETURN(long tfd, Checked(Call(p, SYS_openat, static_cast<uint64_t>(AT_FDCWD),
                                                   a, O_RDWR | O_CLOEXEC),
                                              "open the controlling terminal of " + who));
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_ioctl, static_cast<uint64_t>(tfd), TIOCSCTTY, 0));
    if (r == 0 && info.tty_pgrp) {
      int32_t pg = static_cast<int32_t>(info.tty_pgrp);
      STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, &pg, sizeof pg));
      STASIS_RETURN_IF_ERROR(
          Call(p, SYS_ioctl, static_cast<uint64_t>(tfd), TIOCSPGRP, p->scratch + kOffArgs)
              .status());
    }
    (void)Call(p, SYS_close, static_cast<uint64_t>(tfd));
    STASIS_RETURN_IF_ERROR(SysErr(r, "make /dev/pts/" + std::to_string(info.ctty_pty - 1) +
                                         " the controlling terminal of " + who));
  }
  return Status::Ok();
}

Status Restorer::FinishCredentials(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  const format::ProcessInfo& info = p->info;
  if (::geteuid() == 0) {
    const format::Credentials& c = info.creds;
    for (auto& t : p->tracees) {
      if (c.groups.size() > 65536) return Status::Corrupt("too many groups for " + who);
      STASIS_RETURN_IF_ERROR(
          p->mem.Write(p->scratch + kOffArgs, c.groups.data(), c.groups.size() * sizeof(uint32_t)));
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, t.get(), SYS_setgroups, c.groups.size(), p->scratch + kOffArgs),
                  "restore groups of " + who)
              .status());
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, t.get(), SYS_setresgid, c.rgid, c.egid, c.sgid), "restore gids of " + who)
              .status());
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, t.get(), SYS_setresuid, c.ruid, c.euid, c.suid), "restore uids of " + who)
              .status());
    }
  }
  return Status::Ok();
}

Status Restorer::FinishCapabilities(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  if (options_.drop_capabilities) {
    struct {
      uint32_t version;
      int32_t pid;
      uint32_t data[6];
    } caps{0x20080522 /* _LINUX_CAPABILITY_VERSION_3 */, 0, {}};
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, &caps, sizeof caps));
    for (auto& t : p->tracees) {
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, t.get(), SYS_capset, p->scratch + kOffArgs, p->scratch + kOffArgs + 8),
                  "drop the restorer's capabilities from " + who)
              .status());
    }
  }
  return Status::Ok();
}

Status Restorer::FinishDumpable(RProc* p) {
  const format::ProcessInfo& info = p->info;
  {
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_DUMPABLE, info.dumpable));
    (void)r;
  }
  if (info.no_new_privs) {
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    (void)r;
  }
  return Status::Ok();
}

Status Restorer::FinishPidfd(RProc* p) {
  if (p->pidfd >= 0) {
    STASIS_ASSIGN_OR_RETURN(long c, Call(p, SYS_close, static_cast<uint64_t>(p->pidfd)));
    (void)c;
    p->pidfd = -1;
  }
  return Status::Ok();
}

Status Restorer::FinishRegisters(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  STASIS_RETURN_IF_ERROR(
      Checked(Call(p, SYS_munmap, p->scratch, kScratchSize), "unmap restorer scratch of " + who)
          .status());
  for (size_t i = 0; i < p->threads.size(); ++i) {
    const format::ThreadInfo& ti = p->threads[i];
    Tracee* t = p->tracees[i].get();
    Regs regs;
    std::memcpy(&regs, ti.gpregs.data(), sizeof regs);
    STASIS_RETURN_IF_ERROR(t->SetRegs(FixupRestart(regs, true)));
    if (!ti.xsave.empty()) STASIS_RETURN_IF_ERROR(t->SetXstate(ti.xsave));
    STASIS_RETURN_IF_ERROR(t->SetSigmask(ti.sigmask));
  }
  return Status::Ok();
}

Status Restorer::FinishProcess(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  if (p->entry.flags & format::kProcZombie) return Status::Ok();
  if (!p->have_info || !p->mm_built || !p->files_done || p->tracees.size() != p->threads.size())
    return Status::Corrupt("context holds incomplete state for " + who);
  // The finishing steps of one built process, in this order: the whole
  // context is read and verified, the process has its memory, fds and
  // threads and has run no instruction of its own; it stays stopped and
  // traced until Release. Each step is one injected-call sequence (above).
  static constexpr Status (Restorer::*kSteps[])(RProc*) = {
      // The task's environment for the new step (RestoreOptions::TaskStdio::env),
      // written where libcr's agent block says environ is.
      &Restorer::FinishEnvironment,
      // libcr's agent block: callbacks waiting in cr_checkpoint() return >0.
      &Restorer::FinishAgentBlock,
      // Signal handlers: before anything below can raise a signal (timers,
      // re-queued pending signals).
      &Restorer::FinishSignalHandlers,
      // Working directory, umask, personality.
      &Restorer::FinishCwd,
      // mm fields, auxv and /proc/PID/exe.
      &Restorer::FinishMm,
      // Limits and prctl state.
      &Restorer::FinishLimits,
      // Interval timers.
      &Restorer::FinishItimers,
      // Per-thread state (FinishThread: name, altstack, timer slack, robust
      // list, tid address, rseq, its pending signals), then the POSIX timers
      // (timers.cc).
      &Restorer::FinishEachThread,
      // Process-wide pending signals: after the handlers, queued by the
      // process to itself.
      &Restorer::FinishPendingSignals,
      // Its controlling terminal, when that is a pty of the checkpoint: opened
      // (without O_NOCTTY) by the session leader, made its terminal, given its
      // foreground group.
      &Restorer::FinishTerminal,
      // Credentials last: they may take away our right to do the rest.
      &Restorer::FinishCredentials,
      // A restorer running as the context's owner with only
      // CAP_CHECKPOINT_RESTORE (stasisd for a user) lent that capability to the
      // tree it forked: take it back from every thread.
      &Restorer::FinishCapabilities,
      // After the credentials: changing them resets the dumpable flag.
      &Restorer::FinishDumpable,
      // seccomp filters after everything that sets state, oldest first, to
      // every thread (TSYNC); the calls we still inject are not filtered
      // (PTRACE_O_SUSPEND_SECCOMP until we detach).
      // The client's filters (a restart through stasisd for a sandboxed
      // client) come first, the outermost. Without the right to suspend
      // filters (stasisd for a user), they are installed anyway and the two
      // calls still injected after them (close, munmap) must pass them: a
      // filter that forbids those fails the restore, it is never skipped.
      &Restorer::FinishSeccomp,
      // The restorer's pidfd in the process (RestoreFiles): its last user is done.
      &Restorer::FinishPidfd,
      // The last injected call: the scratch area goes away. Then registers.
      &Restorer::FinishRegisters,
  };
  for (auto step : kSteps) STASIS_RETURN_IF_ERROR((this->*step)(p));
  return Status::Ok();
}

}  // namespace restore
}  // namespace stasis::core

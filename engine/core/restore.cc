// Restore of a process tree from a context stream.
//
// The restorer (cr_restart, or stasisd on behalf of a user) builds every
// process from the inside by driving it through ptrace with injected
// system calls; the restored program executes none of its own instructions
// until the whole context has been read and verified:
//
//   restorer                         restored process P (stopped, traced)
//   ────────                         ──────────────────────────────────
//   mmap scratch page (syscall insn)
//   clone3(set_tid=root pid) ──────► child: PTRACE_TRACEME, SIGSTOP
//   for each child C of P:    ─────► P: clone3(set_tid=C) (auto-attached)
//   Mappings section         ─────► P: munmap old, mremap vDSO, mmap each VMA
//   Files section            ─────► P: pidfd_getfd(restorer fd), dup3
//   Thread sections          ─────► P: clone3(CLONE_THREAD, set_tid=tid)
//   Pages sections           ─────► /proc/P/mem writes
//   End (all checksums ok)   ─────► P: sigactions, cwd, limits, mm map,
//                                      altstacks, rseq, creds, signals;
//                                      munmap scratch; set registers
//   detach everything: P continues where it was checkpointed
//
// Any error kills every process built so far (they never ran).
#include <fcntl.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <set>

#include "engine/agent/agent_abi.h"
#include "engine/base/fd.h"
#include "engine/core/agent_client.h"
#include "engine/core/context_file.h"
#include "engine/core/engine.h"
#include "engine/core/lazy_pages.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/core/restore_internal.h"
#include "engine/format/context_io.h"

namespace stasis::core {
namespace restore {

Restorer::~Restorer() {
  if (!released_) KillAll();
  for (auto& [id, m] : shm_maps_) ::munmap(m.first, m.second);
  if (scratch_) ::munmap(reinterpret_cast<void*>(scratch_), kScratchSize);
}

void Restorer::KillAll() {
  // Everything built so far dies (it never ran). Reap what reports to us,
  // bounded: tracees whose parent is another restored process are reaped
  // by the kernel when that parent dies too.
  for (auto& p : procs_)
    if (p->pid > 0) ::kill(p->pid, SIGKILL);
  if (init_) ::kill(init_->pid, SIGKILL);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    int st;
    pid_t r = ::waitpid(-1, &st, __WALL | WNOHANG);
    if (r < 0 && errno == ECHILD) break;
    if (r <= 0) ::usleep(1000);
  }
}

std::string Restorer::Relocate(const std::string& path) const {
  for (const auto& [from, to] : options_.relocate) {
    if (path.compare(0, from.size(), from) == 0 &&
        (path.size() == from.size() || path[from.size()] == '/' || from.back() == '/'))
      return to + path.substr(from.size());
  }
  return path;
}

Result<uint64_t> Restorer::PutPath(RProc* p, const std::string& path) {
  if (path.size() + 1 > kMaxPath) return Status::Error(ENAMETOOLONG, "path too long: " + path);
  STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffPath, path.c_str(), path.size() + 1));
  return p->scratch + kOffPath;
}

Status Restorer::SetUpScratch() {
  void* m = ::mmap(nullptr, kScratchSize, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return Status::FromErrno(errno, "map restorer scratch area");
  scratch_ = reinterpret_cast<uint64_t>(m);
  static const uint8_t kSyscall[] = {0x0f, 0x05, 0xcc, 0xcc};
  std::memcpy(m, kSyscall, sizeof kSyscall);
  return Status::Ok();
}

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
          return Status::Error(ENOTSUP, "pid " + taken + " is in use and the context has "
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
      pid_t pgid = leader ? 0 : options_.restore_pids ? static_cast<pid_t>(p->entry.pgid)
                                                      : it->second->pid;
      STASIS_RETURN_IF_ERROR(Checked(Call(p.get(), SYS_setpgid, 0, static_cast<uint64_t>(pgid)),
                                     "set process group of " + Pid(p->pid))
                                 .status());
    }
  }
  return Status::Ok();
}

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
  auto t = std::make_unique<Tracee>(init_->pid, init_->pid);
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
    auto t = std::make_unique<Tracee>(p->pid, p->pid);
    STASIS_RETURN_IF_ERROR(t->AdoptTracedChild());
    p->tracees.push_back(std::move(t));
    p->scratch = scratch_;
    STASIS_RETURN_IF_ERROR(UnregisterInheritedRseq(p));
  } else {
    STASIS_ASSIGN_OR_RETURN(pid_t child, InjectClone3(parent, 0, SIGCHLD, want,
                                                      "process for pid " + std::to_string(want)));
    p->pid = child;
    auto t = std::make_unique<Tracee>(p->pid, p->pid);
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

Status Restorer::MoveVdso(RProc* p, const std::vector<MapsEntry>& current) {
  // Saved and current [vvar], [vvar_vclock], [vdso] blocks.
  auto kind_of = [](const std::string& path) -> int {
    if (path == "[vvar]") return format::kMapVvar;
    if (path == "[vvar_vclock]") return format::kMapVvarVclock;
    if (path == "[vdso]") return format::kMapVdso;
    return -1;
  };
  std::map<int, Interval> cur, want;
  for (const MapsEntry& e : current) {
    int k = kind_of(e.path);
    if (k >= 0) cur[k] = {e.start, e.end};
  }
  for (const Mapping& m : p->mappings) {
    if (m.kind == format::kMapVdso || m.kind == format::kMapVvar ||
        m.kind == format::kMapVvarVclock)
      want[static_cast<int>(m.kind)] = {m.start, m.end};
  }
  if (want.empty()) {
    for (auto& [k, iv] : cur) {
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_munmap, iv.lo, iv.hi - iv.lo), "unmap vDSO of " + Pid(p->pid))
              .status());
    }
    return Status::Ok();
  }
  for (auto& [k, iv] : want) {
    if (!cur.count(k) || cur[k].hi - cur[k].lo != iv.hi - iv.lo)
      return Status::Error(ENOTSUP, "cannot restore " + Pid(p->entry.pid) +
                                        ": this kernel's vDSO layout differs from the "
                                        "checkpointing kernel's");
  }
  // Move to a temporary place free in both layouts, then to the target.
  std::vector<Interval> busy;
  for (const MapsEntry& e : current) busy.push_back({e.start, e.end});
  for (const Mapping& m : p->mappings) busy.push_back({m.start, m.end});
  uint64_t total = 0;
  for (auto& [k, iv] : cur) total += iv.hi - iv.lo;
  uint64_t tmp = FindFree(busy, total, 0x200000000ull);
  if (!tmp) return Status::Error(ENOMEM, "no room to move the vDSO of " + Pid(p->pid));
  std::map<int, uint64_t> at;
  for (auto& [k, iv] : cur) {
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_mremap, iv.lo, iv.hi - iv.lo, iv.hi - iv.lo,
                                        MREMAP_MAYMOVE | MREMAP_FIXED, tmp),
                                   "move vDSO of " + Pid(p->pid))
                               .status());
    at[k] = tmp;
    tmp += iv.hi - iv.lo;
  }
  for (auto& [k, iv] : cur) {
    if (!want.count(k)) {
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_munmap, at[k], iv.hi - iv.lo), "unmap vDSO part of " + Pid(p->pid))
              .status());
      continue;
    }
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_mremap, at[k], iv.hi - iv.lo, iv.hi - iv.lo,
                                        MREMAP_MAYMOVE | MREMAP_FIXED, want[k].lo),
                                   "move vDSO of " + Pid(p->pid) + " to 0x" + ToHex(want[k].lo))
                               .status());
  }
  return Status::Ok();
}

Status Restorer::BuildAddressSpace(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  for (const Mapping& m : p->mappings) {
    if (m.start >= m.end || (m.start | m.end) % kPageSize != 0 ||
        (m.end > kUserTop && m.kind != format::kMapVsyscall))
      return Status::Corrupt("mapping " + ToHex(m.start) + "-" + ToHex(m.end) + " of " + who +
                             " is not a valid user range");
  }
  STASIS_ASSIGN_OR_RETURN(std::vector<MapsEntry> current, ReadMaps(p->pid));
  // 1. Keep the scratch area out of the way of the saved layout.
  std::vector<Interval> target;
  for (const Mapping& m : p->mappings)
    if (m.kind != format::kMapVsyscall) target.push_back({m.start, m.end});
  bool clash = false;
  for (const Interval& iv : target)
    clash |= iv.lo < p->scratch + kScratchSize && p->scratch < iv.hi;
  if (clash) {
    std::vector<Interval> busy = target;
    for (const MapsEntry& e : current) busy.push_back({e.start, e.end});
    uint64_t to = FindFree(busy, kScratchSize, 0x100000000ull);
    if (!to) return Status::Error(ENOMEM, "no room for the restorer in " + who);
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_mremap, p->scratch, kScratchSize, kScratchSize,
                                        MREMAP_MAYMOVE | MREMAP_FIXED, to),
                                   "move restorer scratch in " + who)
                               .status());
    p->scratch = to;
    STASIS_ASSIGN_OR_RETURN(current, ReadMaps(p->pid));
  }
  // 2. Drop everything inherited except scratch and the vDSO family.
  for (const MapsEntry& e : current) {
    if (e.start == p->scratch || e.path == "[vdso]" || e.path == "[vvar]" ||
        e.path == "[vvar_vclock]" || e.path == "[vsyscall]")
      continue;
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_munmap, e.start, e.end - e.start), "unmap inherited memory of " + who)
            .status());
  }
  STASIS_RETURN_IF_ERROR(MoveVdso(p, current));
  // 3. Map every saved VMA.
  for (const Mapping& m : p->mappings) {
    uint64_t len = m.end - m.start;
    int flags = MAP_FIXED | ((m.flags & format::kMapShared) ? MAP_SHARED : MAP_PRIVATE);
    if (m.flags & format::kMapGrowsDown) flags |= MAP_GROWSDOWN;
    if (m.flags & format::kMapNoReserve) flags |= MAP_NORESERVE;
    if ((m.flags & format::kMapHugetlb) && m.kind == format::kMapAnon) flags |= MAP_HUGETLB;
    switch (m.kind) {
      case format::kMapVdso:
      case format::kMapVvar:
      case format::kMapVvarVclock:
      case format::kMapVsyscall:
        continue;
      case format::kMapAnon: {
        STASIS_RETURN_IF_ERROR(
            Checked(
                Call(p, SYS_mmap, m.start, len, m.prot,
                     static_cast<uint64_t>(flags | MAP_ANONYMOUS), static_cast<uint64_t>(-1), 0),
                "map memory " + ToHex(m.start) + "-" + ToHex(m.end) + " of " + who)
                .status());
        break;
      }
      case format::kMapFile: {
        std::string path = Relocate(m.path);
        struct stat st;
        if (::stat(path.c_str(), &st) != 0)
          return Status::FromErrno(errno, "cannot restore " + who + ": mapped file " + path);
        // A relocated file is a copy: its size must match, its mtime may not.
        const bool relocated = path != m.path;
        if (static_cast<uint64_t>(st.st_size) != m.file_id.size ||
            (!relocated && st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec != m.file_id.mtime_ns))
          return Status::Error(ESTALE, "cannot restore " + who + ": mapped file " + path +
                                           " changed since the checkpoint (size or mtime)");
        STASIS_ASSIGN_OR_RETURN(uint64_t path_addr, PutPath(p, path));
        bool rw = (m.flags & format::kMapShared) && (m.prot & PROT_WRITE);
        STASIS_ASSIGN_OR_RETURN(
            long fd, Checked(Call(p, SYS_openat, static_cast<uint64_t>(AT_FDCWD), path_addr,
                                  rw ? O_RDWR : O_RDONLY),
                             "open " + path + " in " + who));
        STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_mmap, m.start, len, m.prot,
                                             static_cast<uint64_t>(flags),
                                             static_cast<uint64_t>(fd), m.pgoff));
        STASIS_ASSIGN_OR_RETURN(long c, Call(p, SYS_close, static_cast<uint64_t>(fd)));
        (void)c;
        STASIS_RETURN_IF_ERROR(SysErr(r, "map " + path + " at " + ToHex(m.start) + " in " + who));
        break;
      }
      case format::kMapSysvShm: {
        auto it = sysv_ids_.find(m.shmem_id);
        if (it == sysv_ids_.end()) return Status::Corrupt("mapping of unknown SysV segment in " + who);
        uint64_t shmflg = (m.prot & PROT_WRITE) ? 0 : SHM_RDONLY;
        if (m.prot & PROT_EXEC) shmflg |= SHM_EXEC;
        STASIS_ASSIGN_OR_RETURN(
            long r, Checked(Call(p, SYS_shmat, static_cast<uint64_t>(it->second), m.start, shmflg),
                            "attach SysV segment at " + ToHex(m.start) + " in " + who));
        if (static_cast<uint64_t>(r) != m.start || m.pgoff != 0)
          return Status::Error(ENOTSUP, "cannot restore " + who + ": partial SysV attachment");
        // The segment may be larger than this (split) mapping: trim the rest.
        uint64_t seg = (shm_size_[m.shmem_id] + kPageSize - 1) & ~(kPageSize - 1);
        if (seg > len) (void)Call(p, SYS_munmap, m.end, seg - len);
        STASIS_ASSIGN_OR_RETURN(r, Checked(Call(p, SYS_mprotect, m.start, len, m.prot),
                                           "protect SysV segment in " + who));
        break;
      }
      case format::kMapSharedAnon:
      case format::kMapFileByValue: {
        auto it = shm_.find(m.shmem_id);
        if (it == shm_.end())
          return Status::Corrupt("mapping of unknown shared memory in " + who);
        // A VMA keeps its open file: map a read-only one unless the mapping
        // writes through (else the copy of an executable counts as written).
        UniqueFd ro;
        int give = it->second.get();
        if (m.kind == format::kMapFileByValue &&
            !((m.flags & format::kMapShared) && (m.prot & PROT_WRITE))) {
          std::string self = "/proc/self/fd/" + std::to_string(it->second.get());
          ro.reset(::open(self.c_str(), O_RDONLY | O_CLOEXEC));
          if (!ro) return Status::FromErrno(errno, "reopen saved copy of " + m.path);
          give = ro.get();
        }
        STASIS_ASSIGN_OR_RETURN(
            long fd, Checked(Call(p, SYS_pidfd_getfd, static_cast<uint64_t>(self_pidfd_.get()),
                                  static_cast<uint64_t>(give), 0),
                             "hand shared memory to " + who));
        STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_mmap, m.start, len, m.prot,
                                             static_cast<uint64_t>(flags),
                                             static_cast<uint64_t>(fd), m.pgoff));
        (void)Call(p, SYS_close, static_cast<uint64_t>(fd));
        STASIS_RETURN_IF_ERROR(SysErr(r, "map shared memory at " + ToHex(m.start) + " in " + who));
        break;
      }
      default:
        return Status::Error(ENOTSUP, "cannot restore " + who + ": mapping kind " +
                                          std::to_string(m.kind) + " is not supported yet");
    }
    static const struct {
      uint32_t flag;
      int advice;
    } kAdvice[] = {{format::kMapNoHugepage, MADV_NOHUGEPAGE}, {format::kMapHugepage, MADV_HUGEPAGE},
                   {format::kMapDontDump, MADV_DONTDUMP},     {format::kMapWipeOnFork, MADV_WIPEONFORK},
                   {format::kMapDontFork, MADV_DONTFORK},     {format::kMapMergeable, MADV_MERGEABLE}};
    for (const auto& a : kAdvice) {
      if (!(m.flags & a.flag)) continue;
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_madvise, m.start, len, static_cast<uint64_t>(a.advice)),
                  "restore memory advice of " + ToHex(m.start) + " in " + who)
              .status());
    }
    if (m.flags & format::kMapLocked) {
      STASIS_RETURN_IF_ERROR(
          Checked(Call(p, SYS_mlock, m.start, len), "lock memory " + ToHex(m.start) + " in " + who)
              .status());
    }
  }
  p->mm_built = true;
  return Status::Ok();
}

// One object per saved segment, created by the restorer and mapped by every
// process that shared it. Anonymous shared memory is recreated as a real
// MAP_SHARED|MAP_ANONYMOUS object (same "/dev/zero" identity in maps) when
// /proc/self/map_files can be opened (root); otherwise as a memfd.
Status Restorer::CreateSharedMemory(const format::SharedMemory& shm) {
  // libcr's agent block comes back as a memfd of its name, sealed at its
  // size as libcr seals it (checkpointers map only sealed blocks).
  const bool agent = (shm.kind == 1 && shm.name == STASIS_AGENT_MEMFD_NAME) ||
                     (shm.kind == 4 && shm.name == "/memfd:" STASIS_AGENT_MEMFD_NAME);
  if (agent) agent_shm_ids_.insert(shm.id);
  if (shm.size > (1ull << 46) ||
      ((shm.kind < 3 || shm.kind == 5) && (shm.size == 0 || shm.size % kPageSize != 0)))
    return Status::Corrupt("shared memory " + std::to_string(shm.id) + " has a bad size");
  UniqueFd fd;
  if (shm.kind == 4 && !agent) {
    // An unlinked file: recreated under its old name (so /proc shows the same
    // "NAME (deleted)") and unlinked again; a temporary name if it is taken.
    std::string path = Relocate(shm.name);
    mode_t mode = shm.sysv_mode ? shm.sysv_mode & 0777 : 0600;
    fd.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
    if (fd) {
      ::unlink(path.c_str());
    } else {
      size_t slash = path.rfind('/');
      std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
      fd.reset(::open(dir.c_str(), O_RDWR | O_TMPFILE | O_CLOEXEC, mode));
      if (!fd) fd.reset(::open("/tmp", O_RDWR | O_TMPFILE | O_CLOEXEC, mode));
      if (!fd) return Status::FromErrno(errno, "recreate unlinked file " + path);
    }
    if (::ftruncate(fd.get(), static_cast<off_t>(shm.size)) != 0)
      return Status::FromErrno(errno, "size recreated file " + path);
  } else if (shm.kind == 3) {
    // A new SysV segment with the old key when it is free (else private);
    // processes attach it with shmat at their old addresses.
    int mode = static_cast<int>(shm.sysv_mode & 0777);
    int id = -1;
    // The old shmid when the kernel lets us choose it (root; racy only
    // against other creators of SysV segments in the same instant).
    const int old_id = static_cast<int>(shm.id & 0xffffffffu);
    if (::geteuid() == 0) {
      UniqueFd next(::open("/proc/sys/kernel/shm_next_id", O_WRONLY | O_CLOEXEC));
      std::string v = std::to_string(old_id);
      if (next) (void)!::write(next.get(), v.data(), v.size());
    }
    if (shm.sysv_key != 0) {
      // The very segment may have outlived its processes (SysV segments do):
      // same key, same id, size and nobody attached: refill and reuse it.
      int left = ::shmget(static_cast<key_t>(shm.sysv_key), 0, 0);
      struct shmid_ds ds;
      if (left == old_id && ::shmctl(left, IPC_STAT, &ds) == 0 && ds.shm_nattch == 0 &&
          ds.shm_segsz == shm.size)
        id = left;
    }
    if (id < 0 && shm.sysv_key != 0)
      id = ::shmget(static_cast<key_t>(shm.sysv_key), shm.size, IPC_CREAT | IPC_EXCL | mode);
    if (id < 0) id = ::shmget(IPC_PRIVATE, shm.size, IPC_CREAT | mode);
    if (id < 0) return Status::FromErrno(errno, "create SysV shared memory");
    sysv_ids_[shm.id] = id;
    if (shm.sysv_mode & 01000 /* SHM_DEST */) sysv_remove_.push_back(id);
    void* m = ::shmat(id, nullptr, 0);
    if (m == reinterpret_cast<void*>(-1)) return Status::FromErrno(errno, "attach SysV segment");
    uint64_t a = reinterpret_cast<uint64_t>(m);
    uint64_t rounded = (shm.size + kPageSize - 1) / kPageSize * kPageSize;
    std::string mf = "/proc/self/map_files/" + ToHex(a) + "-" + ToHex(a + rounded);
    fd.reset(::open(mf.c_str(), O_RDWR | O_CLOEXEC));
    ::shmdt(m);
    if (!fd) return Status::FromErrno(errno, "open SysV segment (needs root)");
  } else if (shm.kind == 5) {
    // Huge pages: hugetlbfs has no write(), so the pages go in through a
    // mapping the restorer keeps until the end.
    void* m = ::mmap(nullptr, shm.size, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
    if (m == MAP_FAILED)
      return Status::FromErrno(errno, "create shared huge-page memory of " +
                                          std::to_string(shm.size >> 20) + " MiB (free huge pages?)");
    uint64_t a = reinterpret_cast<uint64_t>(m);
    std::string mf = "/proc/self/map_files/" + ToHex(a) + "-" + ToHex(a + shm.size);
    fd.reset(::open(mf.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd) {
      ::munmap(m, shm.size);
      return Status::FromErrno(errno, "open shared huge-page memory (needs root)");
    }
    shm_maps_[shm.id] = {m, shm.size};
  } else if (shm.kind == 0) {
    void* m = ::mmap(nullptr, shm.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return Status::FromErrno(errno, "create shared memory");
    uint64_t a = reinterpret_cast<uint64_t>(m);
    std::string mf = "/proc/self/map_files/" + ToHex(a) + "-" + ToHex(a + shm.size);
    fd.reset(::open(mf.c_str(), O_RDWR | O_CLOEXEC));
    ::munmap(m, shm.size);
  }
  if (!fd) {
    std::string name = agent ? STASIS_AGENT_MEMFD_NAME : shm.kind == 1 ? shm.name : "stasis-shared";
    fd.reset(static_cast<int>(
        ::syscall(SYS_memfd_create, name.c_str(), MFD_CLOEXEC | (agent ? MFD_ALLOW_SEALING : 0))));
    if (!fd) return Status::FromErrno(errno, "create memfd " + name);
    if (::ftruncate(fd.get(), static_cast<off_t>(shm.size)) != 0)
      return Status::FromErrno(errno, "size memfd " + name);
    if (agent && ::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0)
      return Status::FromErrno(errno, "seal memfd " + name);
  }
  shm_size_[shm.id] = shm.size;
  shm_[shm.id] = std::move(fd);
  return Status::Ok();
}

// The next up to `left` bytes of page data: in place from a source that
// lends its buffers (no copy), else read into `buf`.
Result<size_t> Restorer::NextPageBytes(uint64_t left, std::vector<char>* buf, const char** data) {
  size_t n = static_cast<size_t>(std::min<uint64_t>(left, 8u << 20));
  if (in_place_) {
    auto got = reader_.ReadPageDataInPlace(data, n);
    if (got || got.error().code() != ENOTSUP) return got;
    in_place_ = false;
  }
  buf->resize(n);
  STASIS_RETURN_IF_ERROR(reader_.ReadPageData(buf->data(), n));
  *data = buf->data();
  return n;
}

Status Restorer::WriteSharedPages() {
  const format::PagesHeader& h = reader_.pages();
  auto it = shm_.find(h.owner.id);
  if (it == shm_.end()) return Status::Corrupt("pages for an unknown shared memory segment");
  std::vector<char> buf;
  for (const format::PageRun& run : h.runs) {
    uint64_t off = run.start, left = run.npages * kPageSize;
    const uint64_t size = shm_size_[h.owner.id];
    if (off + left > (size + kPageSize - 1) / kPageSize * kPageSize || off + left < off)
      return Status::Corrupt("shared memory pages beyond the segment's size");
    while (left > 0) {
      const char* data = nullptr;
      STASIS_ASSIGN_OR_RETURN(size_t n, NextPageBytes(left, &buf, &data));
      // The last page of a file may reach past its end: write only up to it.
      size_t w = static_cast<size_t>(std::min<uint64_t>(n, size > off ? size - off : 0));
      auto mapped = shm_maps_.find(h.owner.id);
      if (mapped != shm_maps_.end()) {
        std::memcpy(static_cast<char*>(mapped->second.first) + off, data, w);
      } else if (w && ::pwrite(it->second.get(), data, w, static_cast<off_t>(off)) !=
                   static_cast<ssize_t>(w))
        return Status::FromErrno(errno, "write shared memory");
      result_.page_bytes += n;
      off += n;
      left -= n;
    }
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
        pid_t tid, InjectClone3(p,
                                CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                                    CLONE_SYSVSEM,
                                0, want, "thread " + std::to_string(want) + " of " + who));
    auto t = std::make_unique<Tracee>(p->pid, tid);
    t->MarkAttached();
    STASIS_RETURN_IF_ERROR(t->WaitForStop());
    p->tracees.push_back(std::move(t));
  }
  return Status::Ok();
}

Status Restorer::WritePages(RProc* p) {
  const format::PagesHeader& h = reader_.pages();
  if (!p || !p->mm_built)
    return Status::Corrupt("page data for a process whose memory map was not read");
  // Every byte of every run must lie in a saved mapping that takes page
  // data (a run may span adjacent mappings).
  const Mapping* last = nullptr;
  for (const format::PageRun& run : h.runs) {
    uint64_t end = run.start + run.npages * kPageSize;
    uint64_t cursor = run.start;
    while (cursor < end) {
      const Mapping* hit = nullptr;
      if (last && last->start <= cursor && cursor < last->end) hit = last;
      for (size_t i = 0; !hit && i < p->mappings.size(); ++i) {
        const Mapping& m = p->mappings[i];
        if (m.start <= cursor && cursor < m.end &&
            (m.kind == format::kMapAnon || m.kind == format::kMapFile ||
             m.kind == format::kMapFileByValue))
          hit = &m;
      }
      if (!hit) break;
      last = hit;
      cursor = std::min(end, hit->end);
    }
    if (cursor < end || end < run.start)
      return Status::Corrupt("page data at " + ToHex(run.start) + " of " + Pid(p->entry.pid) +
                             " lies outside its saved mappings");
  }
  // The page data is contiguous in the file while the runs scatter it: each
  // span read (up to 8 MiB, in place when the source lends its buffers) is
  // written with one process_vm_writev over all the runs it covers, not one
  // call per run (half-zero memory has runs of one page).
  std::vector<char> buf;
  std::vector<struct iovec> remote;
  size_t run = 0;
  uint64_t run_off = 0, left = h.data_bytes;
  while (left > 0) {
    const char* data = nullptr;
    STASIS_ASSIGN_OR_RETURN(size_t n, NextPageBytes(left, &buf, &data));
    size_t done = 0, flushed = 0;
    remote.clear();
    while (done < n) {
      if (run >= h.runs.size()) return Status::Corrupt("page data beyond its runs");
      const format::PageRun& r = h.runs[run];
      uint64_t take = std::min<uint64_t>(r.npages * kPageSize - run_off, n - done);
      remote.push_back({reinterpret_cast<void*>(r.start + run_off), static_cast<size_t>(take)});
      done += take;
      run_off += take;
      if (run_off == r.npages * kPageSize) {
        ++run;
        run_off = 0;
      }
      if (remote.size() == 1024 || done == n) {
        STASIS_RETURN_IF_ERROR(p->mem.WriteScattered(data + flushed, remote));
        flushed = done;
        remote.clear();
      }
    }
    result_.page_bytes += n;
    left -= n;
  }
  return Status::Ok();
}

namespace {

// The parts of sorted runs `a` that lie in sorted runs `b`.
std::vector<format::PageRun> IntersectRuns(const std::vector<format::PageRun>& a,
                                           const std::vector<format::PageRun>& b) {
  std::vector<format::PageRun> out;
  size_t j = 0;
  for (const format::PageRun& r : a) {
    const uint64_t rs = r.start, re = r.start + r.npages * kPageSize;
    while (j < b.size() && b[j].start + b[j].npages * kPageSize <= rs) ++j;
    for (size_t k = j; k < b.size() && b[k].start < re; ++k) {
      const uint64_t s = std::max(rs, b[k].start), e = std::min(re, b[k].start + b[k].npages * kPageSize);
      if (s < e) out.push_back({s, (e - s) / kPageSize});
    }
  }
  return out;
}

}  // namespace

Status Restorer::ApplyParents(const format::ImageInfo& image) {
  std::map<uint32_t, std::vector<format::PageRun>> need = std::move(parent_needed_);
  std::string child = options_.source_path, recorded = image.parent;
  uint64_t token = image.parent_token;
  std::vector<char> buf(8u << 20);
  for (int depth = 1; !need.empty(); ++depth) {
    if (depth > 1000) return Status::Corrupt("the chain of parent contexts is longer than 1000");
    std::string path;
    std::unique_ptr<ByteSource> source;
    if (options_.open_parent) {
      STASIS_ASSIGN_OR_RETURN(source, options_.open_parent(child, recorded, &path));
    } else {
      path = ResolveParent(child, recorded);
      auto opened = OpenContextForRead(path);
      // A missing parent makes this context unusable, like a damaged one
      // (EBADMSG: a restart from a job folder then tries an older epoch).
      if (!opened)
        return Status::Error(opened.error().code() == ENOENT ? EBADMSG : opened.error().code(),
                             "parent context of " + child + ": " + opened.error().message());
      source = std::move(*opened);
    }
    const std::string what = "parent context " + path + " (of " + child + ")";
    format::ContextReader r(source.get());
    auto pimg = r.Begin();
    if (!pimg) return Status::Error(pimg.error().code(), what + ": " + pimg.error().message());
    if (pimg->token != token)
      return Status::Error(EBADMSG, what + " is not the context this one was taken after (its token is " +
                                        ToHex(pimg->token) + ", expected " + ToHex(token) +
                                        "): replaced or taken again since");
    result_.parents++;
    std::map<uint32_t, std::vector<format::PageRun>> next;
    for (;;) {
      auto type = r.Next();
      if (!type) return Status::Error(type.error().code(), what + ": " + type.error().message());
      if (*type == format::SectionType::kEnd) break;
      if (*type == format::SectionType::kParentPages) {
        auto it = need.find(r.section_pid());
        if (it != need.end()) {
          std::vector<format::PageRun> still = IntersectRuns(it->second, r.parent_runs());
          if (!still.empty()) next[it->first] = std::move(still);
        }
        continue;
      }
      if (*type != format::SectionType::kPages) continue;
      const format::PagesHeader& h = r.pages();
      auto it = h.owner.kind == format::PageOwner::kProcess ? need.find(static_cast<uint32_t>(h.owner.id))
                                                             : need.end();
      if (it == need.end()) {
        Status s = r.SkipPageData();
        if (!s.ok()) return Status::Error(s.code(), what + ": " + s.message());
        continue;
      }
      RProc* p = by_pid_.at(it->first);
      const std::vector<format::PageRun>& want = it->second;
      size_t w = 0;
      for (const format::PageRun& run : h.runs) {
        const uint64_t end = run.start + run.npages * kPageSize;
        for (uint64_t at = run.start; at < end;) {
          const size_t n = static_cast<size_t>(std::min<uint64_t>(end - at, buf.size()));
          Status s = r.ReadPageData(buf.data(), n);
          if (!s.ok()) return Status::Error(s.code(), what + ": " + s.message());
          // The wanted parts of [at, at + n).
          while (w < want.size() && want[w].start + want[w].npages * kPageSize <= at) ++w;
          for (size_t k = w; k < want.size() && want[k].start < at + n; ++k) {
            const uint64_t s0 = std::max(at, want[k].start);
            const uint64_t e0 = std::min(at + n, want[k].start + want[k].npages * kPageSize);
            if (s0 >= e0) continue;
            STASIS_RETURN_IF_ERROR(p->mem.Write(s0, buf.data() + (s0 - at), e0 - s0));
            result_.parent_bytes += e0 - s0;
            result_.page_bytes += e0 - s0;
          }
          at += n;
        }
      }
    }
    need = std::move(next);
    child = path;
    recorded = pimg->parent;
    token = pimg->parent_token;
    if (!need.empty() && token == 0)
      return Status::Corrupt(what + " names no parent, yet holds parent pages");  // the validator prevents it
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
      if (::ptrace(PTRACE_CONT, t->tid(), nullptr, reinterpret_cast<void*>(static_cast<long>(deliver))) != 0)
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
  std::map<std::string, size_t> placed;                   // name -> offset in block
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
  if (environ_addr && p->mem.Read(environ_addr, &heap_envp, 8).ok() && heap_envp && heap_envp != stack_envp)
    scan(heap_envp, false);
  if (patches.empty()) return Status::Ok();
  const uint64_t len = (block.size() + format::kPageSize - 1) / format::kPageSize * format::kPageSize;
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
                                          std::to_string(got) + " (ids are only chosen by Linux 6.16+)");
    }
    if (t->value_ns) {
      int64_t its[4] = {static_cast<int64_t>(t->interval_ns / 1000000000), static_cast<int64_t>(t->interval_ns % 1000000000),
                        static_cast<int64_t>(t->value_ns / 1000000000), static_cast<int64_t>(t->value_ns % 1000000000)};
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

// Can the current Pages section of `p` be left to the lazy server? Version 1
// data, every run in private anonymous memory other than the stack.
bool Restorer::LazyEligible(const RProc* p) const {
  if (!options_.lazy || !p->mm_built || (p->entry.flags & format::kProcZombie)) return false;
  const format::PagesHeader& h = reader_.pages();
  if (h.codec != format::kCodecNone || h.runs.empty()) return false;
  for (const format::PageRun& run : h.runs) {
    uint64_t end = run.start + run.npages * kPageSize;
    bool inside = false;
    for (const Mapping& m : p->mappings)
      if (m.kind == format::kMapAnon && !(m.flags & format::kMapStack) && m.start <= run.start &&
          end <= m.end)
        inside = true;
    if (!inside) return false;
  }
  return true;
}

// Before anything of `p` runs: its lazy pages that are present already
// (the kernel wrote thread ids into them while threads were created) get
// their saved content now, as an eager restore would; then a userfaultfd
// made inside the process is registered on its private anonymous mappings
// and handed to the server.
Status Restorer::SetUpLazy(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  if (p->entry.flags & format::kProcZombie) return Status::Ok();
  std::vector<LazyPages::Piece> pieces = options_.lazy->PiecesOf(static_cast<pid_t>(p->entry.pid));
  if (pieces.empty()) return Status::Ok();
  UniqueFd pagemap(::open(("/proc/" + std::to_string(p->pid) + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap) return Status::FromErrno(errno, "open pagemap of " + who);
  std::vector<uint64_t> pm;
  std::vector<char> page(kPageSize);
  for (const LazyPages::Piece& piece : pieces) {
    pm.resize(piece.bytes / kPageSize);
    ssize_t n = ::pread(pagemap.get(), pm.data(), pm.size() * 8, static_cast<off_t>(piece.addr / kPageSize * 8));
    if (n != static_cast<ssize_t>(pm.size() * 8)) return Status::FromErrno(errno ? errno : EIO, "read pagemap of " + who);
    for (size_t i = 0; i < pm.size(); ++i) {
      if (!(pm[i] & (1ull << 63))) continue;
      STASIS_RETURN_IF_ERROR(options_.lazy->ReadAt(piece.offset + i * kPageSize, page.data(), kPageSize));
      STASIS_RETURN_IF_ERROR(p->mem.Write(piece.addr + i * kPageSize, page.data(), kPageSize));
    }
  }
  STASIS_ASSIGN_OR_RETURN(long fd, Call(p, SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd < 0)
    return Status::FromErrno(static_cast<int>(-fd), "lazy restart: userfaultfd in " + who +
                                                         " (needs root, or vm.unprivileged_userfaultfd=1)");
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, p->pid, 0)));
  UniqueFd uffd(pidfd ? static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), static_cast<int>(fd), 0)) : -1);
  int saved = errno;
  (void)Call(p, SYS_close, static_cast<uint64_t>(fd));
  if (!uffd) return Status::FromErrno(saved, "lazy restart: take the userfaultfd of " + who);
  struct uffdio_api api = {UFFD_API, LazyPages::Features(), 0};
  if (::ioctl(uffd.get(), UFFDIO_API, &api) != 0)
    return Status::FromErrno(errno, "lazy restart: UFFDIO_API for " + who);
  for (const Mapping& m : p->mappings) {
    if (m.kind != format::kMapAnon || (m.flags & format::kMapStack)) continue;
    struct uffdio_register reg;
    std::memset(&reg, 0, sizeof reg);
    reg.range = {m.start, m.end - m.start};
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(uffd.get(), UFFDIO_REGISTER, &reg) == 0) continue;
    // Not registrable: its pages now, eagerly.
    for (const LazyPages::Piece& piece : pieces) {
      if (piece.addr < m.start || piece.addr >= m.end) continue;
      std::vector<char> data(piece.bytes);
      STASIS_RETURN_IF_ERROR(options_.lazy->ReadAt(piece.offset, data.data(), data.size()));
      STASIS_RETURN_IF_ERROR(p->mem.Write(piece.addr, data.data(), data.size()));
    }
  }
  return options_.lazy->Adopt(static_cast<pid_t>(p->entry.pid), std::move(uffd));
}

Status Restorer::FinishProcess(RProc* p) {
  const std::string who = Pid(p->entry.pid);
  if (p->entry.flags & format::kProcZombie) return Status::Ok();
  const format::ProcessInfo& info = p->info;
  if (!p->have_info || !p->mm_built || !p->files_done || p->tracees.size() != p->threads.size())
    return Status::Corrupt("context holds incomplete state for " + who);
  if (p->stdio && !p->stdio->env.empty()) {
    uint64_t environ_addr = 0;
    for (const Mapping& m : p->mappings)
      if (m.kind == format::kMapSharedAnon && agent_shm_ids_.count(m.shmem_id))
        environ_addr = AgentEnvironAddress(&p->mem, m.start);
    STASIS_RETURN_IF_ERROR(RewriteEnvironment(p, environ_addr));
  }
  // libcr's agent block: callbacks waiting in cr_checkpoint() return >0.
  for (const Mapping& m : p->mappings)
    if (m.kind == format::kMapSharedAnon && agent_shm_ids_.count(m.shmem_id))
      STASIS_RETURN_IF_ERROR(MarkRestarted(p->pid, &p->mem, m.start, ::getpid(),
                                           options_.source_path));
  // Signal handlers.
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
  // Working directory, umask, personality.
  {
    std::string cwd = Relocate(info.cwd);
    STASIS_ASSIGN_OR_RETURN(uint64_t a, PutPath(p, cwd));
    STASIS_RETURN_IF_ERROR(
        Checked(Call(p, SYS_chdir, a), "cannot restore " + who + ": working directory " + cwd)
            .status());
    STASIS_RETURN_IF_ERROR(Call(p, SYS_umask, info.umask).status());
    STASIS_RETURN_IF_ERROR(Call(p, SYS_personality, info.personality).status());
  }
  // mm fields, auxv and /proc/PID/exe.
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
        STASIS_ASSIGN_OR_RETURN(exe_fd, Call(p, SYS_openat, static_cast<uint64_t>(AT_FDCWD), a,
                                             O_RDONLY | O_CLOEXEC));
      }
      STASIS_RETURN_IF_ERROR(SysErr(exe_fd, "cannot restore " + who + ": executable " + exe));
    }
    struct {
      uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
      uint64_t arg_start, arg_end, env_start, env_end;
      uint64_t auxv;
      uint32_t auxv_size;
      uint32_t exe_fd;
    } map = {info.mm.start_code, info.mm.end_code,  info.mm.start_data, info.mm.end_data,
             info.mm.start_brk,  info.mm.brk,       info.mm.start_stack, info.mm.arg_start,
             info.mm.arg_end,    info.mm.env_start, info.mm.env_end,    0,
             0,                  static_cast<uint32_t>(exe_fd)};
    if (!info.auxv.empty() && info.auxv.size() <= 0x1000) {
      STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffAuxv, info.auxv.data(), info.auxv.size()));
      map.auxv = p->scratch + kOffAuxv;
      map.auxv_size = static_cast<uint32_t>(info.auxv.size());
    }
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, &map, sizeof map));
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_MM, 14 /* PR_SET_MM_MAP */,
                                         p->scratch + kOffArgs, sizeof map, 0));
    if (exe_fd >= 0) (void)Call(p, SYS_close, static_cast<uint64_t>(exe_fd));
    STASIS_RETURN_IF_ERROR(SysErr(r, "restore memory layout fields of " + who));
  }
  // Limits and prctl state.
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
  // Interval timers.
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
  // Per-thread state.
  for (size_t i = 0; i < p->threads.size(); ++i)
    STASIS_RETURN_IF_ERROR(FinishThread(p, p->tracees[i].get(), p->threads[i]));
  STASIS_RETURN_IF_ERROR(RestorePosixTimers(p));
  // Process-wide pending signals.
  for (size_t off = 0; off + 128 <= info.pending_shared.size(); off += 128) {
    int32_t signo;
    std::memcpy(&signo, info.pending_shared.data() + off, 4);
    STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, info.pending_shared.data() + off, 128));
    STASIS_ASSIGN_OR_RETURN(long self, Call(p, SYS_getpid));
    STASIS_RETURN_IF_ERROR(Checked(Call(p, SYS_rt_sigqueueinfo, static_cast<uint64_t>(self),
                                        static_cast<uint64_t>(signo), p->scratch + kOffArgs),
                                   "re-queue signal " + std::to_string(signo) + " of " + who)
                               .status());
  }
  // Its controlling terminal, when that is a pty of the checkpoint: opened
  // (without O_NOCTTY) by the session leader, made its terminal, given its
  // foreground group.
  if (info.ctty_pty && p->entry.sid == p->entry.pid && ptys_.count(info.ctty_pty - 1)) {
    STASIS_ASSIGN_OR_RETURN(uint64_t a, PutPath(p, "/dev/pts/" + std::to_string(info.ctty_pty - 1)));
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
  // Credentials last: they may take away our right to do the rest.
  if (::geteuid() == 0) {
    const format::Credentials& c = info.creds;
    for (auto& t : p->tracees) {
      if (c.groups.size() > 65536) return Status::Corrupt("too many groups for " + who);
      STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffArgs, c.groups.data(),
                                          c.groups.size() * sizeof(uint32_t)));
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
  // A restorer running as the context's owner with only
  // CAP_CHECKPOINT_RESTORE (stasisd for a user) lent that capability to the
  // tree it forked: take it back from every thread.
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
  // After the credentials: changing them resets the dumpable flag.
  {
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_DUMPABLE, info.dumpable));
    (void)r;
  }
  if (info.no_new_privs) {
    STASIS_ASSIGN_OR_RETURN(long r, Call(p, SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0));
    (void)r;
  }
  // seccomp filters after everything that sets state, oldest first, to
  // every thread (TSYNC); the calls we still inject are not filtered
  // (PTRACE_O_SUSPEND_SECCOMP until we detach).
  // The client's filters (a restart through stasisd for a sandboxed
  // client) come first, the outermost. Without the right to suspend
  // filters (stasisd for a user), they are installed anyway and the two
  // calls still injected after them (close, munmap) must pass them: a
  // filter that forbids those fails the restore, it is never skipped.
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
      STASIS_RETURN_IF_ERROR(p->mem.Write(p->scratch + kOffPath, f.program.data(), f.program.size()));
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
  if (p->pidfd >= 0) {
    STASIS_ASSIGN_OR_RETURN(long c, Call(p, SYS_close, static_cast<uint64_t>(p->pidfd)));
    (void)c;
    p->pidfd = -1;
  }
  // The last injected call: the scratch area goes away. Then registers.
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

// Waits (up to 2 s) until task `tid` of `pid` is in a stopped state.
void WaitTaskStopped(pid_t pid, pid_t tid) {
  const std::string path = "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat";
  for (int i = 0; i < 2000; ++i) {
    auto text = ReadFileToString(path);
    if (!text) return;
    size_t paren = text->rfind(')');
    if (paren == std::string::npos || paren + 2 >= text->size()) return;
    char state = (*text)[paren + 2];
    if (state == 'T' || state == 't') return;
    ::usleep(1000);
  }
}

Status Restorer::Release() {
  for (auto& p : procs_)
    if (p->entry.flags & format::kProcZombie) STASIS_RETURN_IF_ERROR(MakeZombie(p.get()));
  released_ = true;
  Status first;
  for (auto& p : procs_) {
    int sig = 0;
    if (p->entry.flags & format::kProcStopped || options_.after == AfterRestore::kStop)
      sig = SIGSTOP;
    // Leader first, with SIGSTOP for a stopped process; the other threads
    // only once the leader has entered the group stop, so they find the
    // stop pending when they resume and never run an instruction.
    for (auto& t : p->tracees) {
      if (t->tid() != p->pid) continue;
      Status s = t->Detach(sig);
      if (!s.ok() && first.ok()) first = s;
      if (sig == SIGSTOP) WaitTaskStopped(p->pid, p->pid);
    }
    for (auto& t : p->tracees) {
      if (t->tid() == p->pid) continue;
      Status s = t->Detach(0);
      if (!s.ok() && first.ok()) first = s;
    }
  }
  if (init_) {
    Status s = init_->tracees[0]->RestoreAndDetach(0);
    if (!s.ok() && first.ok()) first = s;
  }
  for (int id : sysv_remove_) ::shmctl(id, IPC_RMID, nullptr);
  for (auto& p : procs_) {
    if (options_.after == AfterRestore::kKill) ::kill(p->pid, SIGKILL);
    if (options_.after == AfterRestore::kTerm) ::kill(p->pid, SIGTERM);
  }
  return first;
}

Result<RestoreResult> Restorer::Run() {
  auto t0 = std::chrono::steady_clock::now();
  STASIS_ASSIGN_OR_RETURN(format::ImageInfo image, reader_.Begin());
  if (options_.check_image) STASIS_RETURN_IF_ERROR(options_.check_image(image));
  STASIS_ASSIGN_OR_RETURN(format::SectionType first, reader_.Next());
  if (first != format::SectionType::kTree)
    return Status::Corrupt("context has no process tree after its header");
  STASIS_RETURN_IF_ERROR(SetUpScratch());
  self_pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0)));
  if (!self_pidfd_) return Status::FromErrno(errno, "pidfd_open of the restorer");
  STASIS_RETURN_IF_ERROR(CreateTree(reader_.tree()));
  RProc* cur = nullptr;
  for (;;) {
    STASIS_ASSIGN_OR_RETURN(format::SectionType type, reader_.Next());
    if (type == format::SectionType::kEnd) break;
    auto find = [&](uint32_t pid) -> RProc* {
      auto it = by_pid_.find(pid);
      return it == by_pid_.end() ? nullptr : it->second;
    };
    switch (type) {
      case format::SectionType::kProcess:
        cur = find(reader_.process().pid);
        if (!cur) return Status::Corrupt("process section for unknown pid");
        cur->info = reader_.process();
        cur->have_info = true;
        break;
      case format::SectionType::kMappings:
        if (!cur || cur->entry.pid != reader_.section_pid())
          return Status::Corrupt("mappings out of order");
        cur->mappings = reader_.mappings();
        if (cur->entry.flags & format::kProcZombie)
          cur->mm_built = true;  // it only has to exit again
        else
          STASIS_RETURN_IF_ERROR(BuildAddressSpace(cur));
        break;
      case format::SectionType::kFiles:
        if (!cur || cur->entry.pid != reader_.section_pid() || !cur->mm_built)
          return Status::Corrupt("files out of order");
        cur->files = reader_.files();
        if (cur->entry.flags & format::kProcZombie)
          cur->files_done = true;
        else
          STASIS_RETURN_IF_ERROR(RestoreFiles(cur));
        break;
      case format::SectionType::kThread:
        if (!cur || cur->entry.pid != reader_.section_pid())
          return Status::Corrupt("thread out of order");
        cur->threads.push_back(reader_.thread());
        if (cur->threads.size() == cur->entry.tids.size())
          STASIS_RETURN_IF_ERROR(CreateThreads(cur));
        break;
      case format::SectionType::kPages: {
        if (reader_.pages().owner.kind == format::PageOwner::kSharedMemory) {
          STASIS_RETURN_IF_ERROR(WriteSharedPages());
          break;
        }
        RProc* owner = find(static_cast<uint32_t>(reader_.pages().owner.id));
        if (owner && LazyEligible(owner)) {
          Result<format::SkippedPages> sk = reader_.SkipPageDataUnverified();
          if (sk) {
            options_.lazy->AddSection(static_cast<pid_t>(owner->entry.pid), reader_.pages().runs,
                                      sk->data_offset, sk->trailer_offset, sk->crc_seed);
            result_.lazy_bytes += reader_.pages().data_bytes;
            break;
          }
          if (sk.error().code() != ENOTSUP) return sk.error();
        }
        STASIS_RETURN_IF_ERROR(WritePages(owner));
        break;
      }
      case format::SectionType::kSharedMemory:
        STASIS_RETURN_IF_ERROR(CreateSharedMemory(reader_.shared_memory()));
        break;
      case format::SectionType::kParentPages: {
        RProc* owner = find(reader_.section_pid());
        if (!owner || !owner->mm_built) return Status::Corrupt("parent pages for a process whose memory map was not read");
        if (!reader_.parent_runs().empty()) parent_needed_[owner->entry.pid] = reader_.parent_runs();
        break;
      }
      default:
        return Status::Corrupt("unexpected section " +
                               std::string(format::SectionName(type)));
    }
  }
  if (!parent_needed_.empty()) STASIS_RETURN_IF_ERROR(ApplyParents(image));
  // The whole file is verified (but lazy page data): finish and let the
  // tree run.
  if (options_.before_run) STASIS_RETURN_IF_ERROR(options_.before_run());
  if (options_.lazy && result_.lazy_bytes) {
    for (auto& p : procs_) STASIS_RETURN_IF_ERROR(SetUpLazy(p.get()));
    STASIS_RETURN_IF_ERROR(options_.lazy->Start());
  }
  for (auto& p : procs_) STASIS_RETURN_IF_ERROR(FinishProcess(p.get()));
  if (options_.before_release) options_.before_release();
  STASIS_RETURN_IF_ERROR(Release());
  for (auto& p : procs_) result_.pids.push_back(p->pid);
  if (options_.lazy && result_.lazy_bytes) options_.lazy->StartStreaming(result_.pids);
  for (auto& p : procs_) {
    if (p->entry.ppid == 0 && !result_.root_pid) result_.root_pid = p->pid;
    if (p->entry.flags & format::kProcIsRoot) result_.root_pid = p->pid;
    if (p->entry.flags & format::kProcTask) result_.tasks.push_back({p->pid, p->entry.task});
    result_.threads += static_cast<uint32_t>(p->threads.size());
  }
  result_.wait_pid = init_ ? init_->pid : result_.root_pid;
  result_.processes = static_cast<uint32_t>(procs_.size());
  result_.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result_;
}

}  // namespace restore

using restore::Restorer;

Result<RestoreResult> Restore(ByteSource* source, const RestoreOptions& options) {
  Restorer restorer(source, options);
  return restorer.Run();
}

}  // namespace stasis::core

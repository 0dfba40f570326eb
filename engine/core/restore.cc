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
#include <functional>
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

// Waits (up to 2 s) until task `tid` of `pid` is in a stopped state.
void WaitTaskStopped(pid_t pid, pid_t tid) {
  const std::string path =
      "/proc/" + std::to_string(pid) + "/task/" + std::to_string(tid) + "/stat";
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
        if (!owner || !owner->mm_built)
          return Status::Corrupt("parent pages for a process whose memory map was not read");
        if (!reader_.parent_runs().empty())
          parent_needed_[owner->entry.pid] = reader_.parent_runs();
        break;
      }
      default:
        return Status::Corrupt("unexpected section " + std::string(format::SectionName(type)));
    }
  }
  // The finishing steps, in this order. When the first one starts, every
  // section has been read and its checksum verified (but lazy page data),
  // and every process is built but has run no instruction of its own.
  const struct {
    const char* step;
    std::function<Status()> run;
  } finish_steps[] = {
      // The pages an incremental context leaves to its parents: read from
      // each parent (whole, every checksum verified) before anything runs.
      {"parent pages", [&] { return parent_needed_.empty() ? Status::Ok() : ApplyParents(image); }},
      // The caller's last word on the whole file (a store compares size and
      // checksum with its manifest). Nothing has run: an error kills the tree.
      {"before run", [&] { return options_.before_run ? options_.before_run() : Status::Ok(); }},
      // Lazy pages: every process's missing memory is registered and the
      // server started before any process is finished, so the first fault
      // of the tree always finds a server.
      {"lazy pages",
       [&] {
         if (!options_.lazy || !result_.lazy_bytes) return Status::Ok();
         for (auto& p : procs_) STASIS_RETURN_IF_ERROR(SetUpLazy(p.get()));
         return options_.lazy->Start();
       }},
      // Each process, in tree order, by its own table (task_state.cc
      // FinishProcess): handlers, cwd, mm fields, limits, timers, threads,
      // pending signals, terminal, credentials, seccomp, the scratch page
      // unmapped, registers last. Still stopped and traced.
      {"finish processes",
       [&] {
         for (auto& p : procs_) STASIS_RETURN_IF_ERROR(FinishProcess(p.get()));
         return Status::Ok();
       }},
      // The caller's hook on the complete, still stopped tree.
      {"before release",
       [&] {
         if (options_.before_release) options_.before_release();
         return Status::Ok();
       }},
      // Zombies made, every thread detached (leaders first): the tree runs.
      // From here a failure leaves it running (released_).
      {"release", [&] { return Release(); }},
      // Lazy pages streamed in the background, now that the real pids are
      // known (result_.pids).
      {"stream lazy pages",
       [&] {
         for (auto& p : procs_) result_.pids.push_back(p->pid);
         if (options_.lazy && result_.lazy_bytes) options_.lazy->StartStreaming(result_.pids);
         return Status::Ok();
       }},
  };
  for (const auto& finish : finish_steps) STASIS_RETURN_IF_ERROR(finish.run());
  for (auto& p : procs_) {
    if (p->entry.ppid == 0 && !result_.root_pid) result_.root_pid = p->pid;
    if (p->entry.flags & format::kProcIsRoot) result_.root_pid = p->pid;
    if (p->entry.flags & format::kProcTask) result_.tasks.push_back({p->pid, p->entry.task});
    result_.threads += static_cast<uint32_t>(p->threads.size());
  }
  result_.wait_pid = init_ ? init_->pid : result_.root_pid;
  result_.processes = static_cast<uint32_t>(procs_.size());
  result_.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result_;
}

}  // namespace restore

using restore::Restorer;

Result<RestoreResult> Restore(ByteSource* source, const RestoreOptions& options) {
  Restorer restorer(source, options);
  return restorer.Run();
}

}  // namespace stasis::core

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

Result<long> Capturer::Inject(ProcState* p, Tracee* t, long nr, uint64_t a1, uint64_t a2,
                              uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6) {
  return t->Syscall(p->syscall_insn, nr, a1, a2, a3, a4, a5, a6);
}

Status Capturer::CaptureAll() {
  for (auto& p : procs_) {
    if (p->zombie) continue;
    Status s = CaptureProcess(p.get());
    if (!s.ok()) return s;
  }
  // Which sockets lead outside (and their queues), now that every process's
  // fds are known; then anything a restart could not give back fails the
  // checkpoint here, before a byte is written.
  STASIS_RETURN_IF_ERROR(ClassifySockets());
  // TCP pairs read in repair mode (fd/tcp_socket.cc); a TCP socket leading
  // outside goes through the same rule as the others.
  STASIS_RETURN_IF_ERROR(ClassifyTcpSockets());
  return RefuseUnrestorable();
}

Status Capturer::RefuseUnrestorable() {
  if (refused_sockets_.empty() && refused_files_.empty()) return Status::Ok();
  size_t more_sockets = refused_sockets_.size(), more_files = refused_files_.size();
  std::string line = more_sockets ? refused_sockets_[0] : refused_files_[0];
  (more_sockets ? more_sockets : more_files) -= 1;
  std::string more;
  if (more_sockets) more = std::to_string(more_sockets) + " more socket(s)";
  if (more_files)
    more += (more.empty() ? "" : " and ") + std::to_string(more_files) + " more file(s)";
  if (!more.empty()) line += " (and " + more + " a restart could not give back)";
  return Status::Error(ENOTSUP, line);
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
  image.created_unix_ns =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count());
  image.checkpoint_uid = ::getuid();
  image.root_pid =
      static_cast<uint32_t>(options_.tasks.empty() ? options_.target : options_.tasks.front().pid);
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
    case AfterCheckpoint::kKill:
      request.signal = SIGKILL;
      break;
    case AfterCheckpoint::kTerm:
      request.signal = SIGTERM;
      break;
    case AfterCheckpoint::kStop:
      request.signal = SIGSTOP;
      break;
    case AfterCheckpoint::kContinue:
      request.signal = options.after_signal;
      break;
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
    int threads = options.compress_threads > 0
                      ? options.compress_threads
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

// Copy-on-write snapshots (CheckpointOptions::snapshot): each process forks
// a copy that never runs, the pages are written from it after the tree is
// released, and leftovers of a killed checkpointer are reaped.
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <cstring>

#include "engine/core/capture_internal.h"
#include "engine/core/engine.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"

namespace stasis::core {
namespace capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

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
  const uint64_t kFrozenWriteBytes = options_.frozen_write_bytes;
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
  Tracee t(p->pid, p->pid, options_.ptrace_timeout_seconds);
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
      (void)Inject(p.get(), p->threads[0].get(), SYS_wait4, static_cast<uint64_t>(seen), 0, __WALL,
                   0);
    }
  }
}

}  // namespace capture
}  // namespace stasis::core

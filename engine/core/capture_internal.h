// Internal to engine/core: the capture side's shared state. Capturer (the
// checkpoint of one tree, checkpoint.cc) and ProcState (what it knows of one
// process) are declared here so that each kernel object's file (tree.cc,
// fd/pipe.cc, ...) can implement its own capture steps beside its restore
// steps. Not a public header: nothing outside engine/core includes it.
#pragma once

#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/fd.h"
#include "engine/core/agent_client.h"
#include "engine/core/dirty_track.h"
#include "engine/core/engine.h"
#include "engine/core/fd/outside_socket.h"
#include "engine/core/kernel_capture.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/core/unix_diag.h"
#include "engine/format/context_io.h"

namespace stasis::core::capture {

using format::FileDesc;
using format::Mapping;
using format::PageRun;

constexpr size_t kScratchSize = 4 * 4096;
constexpr uint64_t kPageSize = 4096;
constexpr size_t kBatchBytes = 64u << 20;  // page data per Pages section
constexpr size_t kReadChunk = 8u << 20;
constexpr uint64_t kSysvIdBase = 1ull << 48;  // shared-memory ids of SysV segments

inline double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

inline std::string Pid(pid_t p) { return "pid " + std::to_string(p); }

Result<std::vector<uint32_t>> ReadVmFlags(pid_t pid);
// In what ReadVmFlags returns, never in a context: VM_UFFD_MISSING ("um").
constexpr uint32_t kVmUffdMissing = 1u << 31;
// ... nor VM_UFFD_WP ("uw"): registered for dirty tracking (dirty_track.h).
constexpr uint32_t kVmUffdWp = 1u << 30;
bool IsZeroPage(const char* page);
bool IsDeleted(const std::string& path);
// Whether a mapping's private pages are stored (pages.cc).
bool MappingHasPages(const format::Mapping& m);
// A copy-on-write snapshot a killed checkpointer left behind (snapshot.cc).
bool IsLeftoverSnapshot(pid_t pid, pid_t parent);

// The robust futex list of thread ti->tid, read from outside (no call in it).
inline void ReadRobustList(format::ThreadInfo* ti) {
  uint64_t head = 0;
  size_t len = 0;
  if (::syscall(SYS_get_robust_list, ti->tid, &head, &len) == 0) {
    ti->robust_list = head;
    ti->robust_list_len = len;
  }
}

struct ProcState {
  pid_t pid = 0;
  // Taken before the process was checked and seized: names it for good, so
  // every signal we send and every later seize (EndSnapshots) is for this
  // process, never for one that reused its pid.
  UniqueFd pidfd;
  // AT_RANDOM (auxv) and the 16 bytes there, read at capture: every execve
  // writes 16 fresh random bytes (get_random_bytes) on the new stack, so
  // other bytes there, or a capture-time view of the memory (p->mem) that
  // can no longer be read because its mm is gone, mean the process exec'd.
  uint64_t at_random = 0;
  uint8_t at_random_bytes[16] = {};
  ProcStat stat;
  std::string status_text;
  std::vector<std::unique_ptr<Tracee>> threads;  // threads[0] is the leader
  ProcessMemory mem;
  uint64_t syscall_insn = 0;
  uint64_t scratch = 0;          // while mapped
  uint64_t scratch_address = 0;  // where it was: not part of the context
  bool was_stopped = false;
  bool zombie = false;
  // Traced by someone else (a debugger) and stopped there: captured through
  // the kernel module alone, no seize, no injected call, left as it was.
  bool unseized = false;
  // Signals caught in delivery by our stop, to re-queue on resume.
  std::vector<std::pair<Tracee*, std::vector<uint8_t>>> in_flight;
  format::ProcessInfo info;
  std::vector<Mapping> mappings;
  std::vector<MapsEntry> maps;
  std::vector<uint32_t> vmflags;
  std::vector<FileDesc> files;
  std::vector<format::ThreadInfo> thread_infos;
  KernelTask kernel;  // what /dev/stasis gave, with the kernel backend
  // The copy-on-write snapshot the pages are read from (Snapshot), or 0.
  pid_t snap = 0;
  pid_t snap_seen = 0;  // its pid as the process sees it (a tree may live in its own pid namespace)
  ProcessMemory snap_mem;
  // Dirty tracking (dirty_track.h): VM_UFFD_WP of each maps entry, the
  // stasis-track page (never part of the context) and what it said,
  // and the pages an incremental context leaves to its parent.
  std::vector<bool> vm_wp;
  uint64_t track_area = 0;
  TrackArea track{};
  bool track_valid = false;  // the page holds a TrackArea
  std::vector<PageRun> parent_runs;
  std::vector<PageRun> dirty_runs;      // the pages of incremental_maps to store
  std::set<uint64_t> incremental_maps;  // mappings (by start) PAGEMAP_SCAN listed
  bool incremental = false;             // its unchanged pages are the parent's
};

class Capturer {
 public:
  explicit Capturer(const CheckpointOptions& options) : options_(options) {}
  ~Capturer() {
    ResumeAll();
    EndSnapshots();
  }
  // Copy-on-write snapshots (CheckpointOptions::snapshot): each process
  // forks a copy that never runs; false with the reason when it cannot be
  // done (then nothing was changed and the write is done frozen).
  bool Snapshot(std::string* why_not);
  // Kills the snapshots and has each process reap its own.
  void EndSnapshots();
  void IsolateSnapshot(ProcState* p, pid_t child);
  // After Release: has p reap its snapshot `seen`, if p is still the
  // process and image we captured (see the definition).
  void ReapReleasedSnapshot(ProcState* p, pid_t seen);
  // The 16 bytes at p's AT_RANDOM, read through `mem`, are the captured ones.
  bool SameImage(ProcState* p, const ProcessMemory& mem);
  // Writes up to the processes' sections, calls `between` (release the
  // tree), then writes the rest.

  Status Freeze();
  // May the requester have `pid` checkpointed (options_.owner_*), and, when
  // a callback forwarded the checkpoint to it, may the forwarding process
  // (procfs.h CheckMayTrace)? ESRCH when it is gone.
  Status CheckOwner(pid_t pid);
  // Sends `sig` to every captured process through its pidfd.
  void SignalAll(int sig);
  // The process that asked for the checkpoint: omitted from the scope.
  pid_t Self() const { return options_.checkpointer > 0 ? options_.checkpointer : ::getpid(); }
  Result<std::vector<pid_t>> Scope() { return DiscoverScope(); }
  void SetOmitted(const std::set<pid_t>& omit) { omit_ = omit; }
  void SetExtraScopes(const std::vector<ForwardedScope>& extra) { extra_ = extra; }
  Status CaptureAll();
  // Dirty tracking (options track/parent_token), while frozen: reads and
  // resets what each process wrote since the last tracked capture, sets
  // tracking up where it is missing. Never fails the checkpoint: a process
  // it cannot track is stored whole (the reason in stats->track_note).
  void Track(uint64_t token, CheckpointStats* stats);
  Status Write(format::ContextWriter* writer, CheckpointStats* stats,
               const std::function<Status()>& between = nullptr);
  Status Release(AfterCheckpoint after);
  void ResumeAll();
  void Requeue(ProcState* p);
  Status Settle();
  // Opens /dev/stasis when the backend asks for it (kernel_capture.h).
  Status UseBackend(CaptureBackend backend) {
    STASIS_ASSIGN_OR_RETURN(kernel_, KernelCapture::Open(backend));
    return Status::Ok();
  }
  bool kernel_backend() const { return kernel_ != nullptr; }
  const std::vector<std::unique_ptr<ProcState>>& procs() const { return procs_; }
  uint64_t zero_pages_skipped() const { return zero_skipped_; }
  // An upper bound of the context's size, from the captured mappings and
  // the pagemap (zero pages are not known yet, so they count).
  Result<uint64_t> EstimateBytes();
  // Private page data this capture stores for `p` (written pages of its
  // tracked mappings, present ones elsewhere; zero pages count), counted
  // until it exceeds `enough`.
  Result<uint64_t> PageBytesToStore(ProcState* p, uint64_t enough = UINT64_MAX);

  // Internal to engine/core: the rest is shared with the files of each kind
  // of object (fd_table.cc, fd/*.cc, ...), which implement and use it.
  // The UNIX sockets of the host (sock_diag), read once per capture.
  Result<std::map<uint64_t, UnixSocketInfo>*> UnixSockets();
  Result<std::vector<pid_t>> DiscoverScope();
  Status SeizeProcess(ProcState* p, bool* added);
  Status CaptureProcess(ProcState* p);
  // The rest of CaptureProcess for a process stopped under someone else's
  // ptrace: everything from the module, nothing injected.
  Status CaptureUnseized(ProcState* p);
  // Parts of CaptureProcess: seccomp filters (seccomp.cc), the POSIX timers
  // listed and then read with the interval timers in the process (timers.cc).
  Status CaptureSeccomp(ProcState* p);
  Status ListPosixTimers(ProcState* p);
  Status ReadTimers(ProcState* p, Tracee* leader, const KernelTaskState* ks);
  Status CaptureThreads(ProcState* p);
  Status CaptureMappings(ProcState* p);
  Status CaptureFiles(ProcState* p);
  Status WritePages(ProcState* p, format::ContextWriter* writer, uint64_t* page_bytes);
  // Track() for one process; false (with *why) when it stays untracked.
  bool TrackProcess(ProcState* p, uint64_t token, std::string* why);
  Status ClassifyPipes();
  Status PeekPipe(int fd, FileDesc* f);
  Status NoteSysvSegment(uint64_t shmid, const std::string& where);
  Status NoteSharedMemory(ProcState* p, const MapsEntry& e, format::SharedMemoryKind kind,
                          const std::string& name, const std::string& open_path);
  Status WriteSharedMemory(format::ContextWriter* writer, uint64_t* page_bytes);
  struct Shm {
    format::SharedMemory info;
    pid_t pid = 0;    // a process that maps it
    MapsEntry entry;  // one of its mappings
    UniqueFd fd;      // the object itself, when map_files allows
  };
  std::map<uint64_t, Shm> shms_;
  std::optional<std::map<uint64_t, UnixSocketInfo>> unix_;
  Status ClassifySockets();
  // fd/tcp_socket.cc: pairs TCP connections, reads both ends in repair mode.
  Status ClassifyTcpSockets();
  void ClassifyPtys();
  // "task 3 (pid 4242)" for a process of a Slurm task's tree, else "pid 4242".
  std::string Who(pid_t pid) const;
  // A socket of `p` leading outside the checkpoint (fd/outside_socket.h):
  // marks `f` as saved closed with what it was, and notes a refusal when
  // MaySaveOutsideSocket says no (reported by RefuseUnrestorable).
  void NoteOutsideSocket(ProcState* p, FileDesc* f, const OutsideSocket& s);
  // A mapping or fd of `p` naming `path`: noted as a refusal when the path
  // is under one of options_.transient_dirs (`what`: "fd 12" or "" for a
  // mapping).
  void CheckTransient(ProcState* p, const std::string& what, const std::string& path);
  // Once every process is captured: fails with one line naming the first
  // object that would stop a restart (outside connections first, then files
  // of transient folders) and how many more there are.
  Status RefuseUnrestorable();
  std::vector<std::string> refused_sockets_, refused_files_;
  std::set<std::pair<pid_t, std::string>> transient_seen_;
  Status PeekSocket(pid_t pid, FileDesc* f);
  Result<long> Inject(ProcState* p, Tracee* t, long nr, uint64_t a1 = 0, uint64_t a2 = 0,
                      uint64_t a3 = 0, uint64_t a4 = 0, uint64_t a5 = 0, uint64_t a6 = 0);
  Status ReadScratch(ProcState* p, void* out, size_t n) { return p->mem.Read(p->scratch, out, n); }

  Result<std::vector<pid_t>> DiscoverOne(format::ScopeKind scope, pid_t target, bool named);

  const CheckpointOptions& options_;
  std::set<pid_t> omit_;               // opted out (libcr, cr_run --omit)
  std::vector<ForwardedScope> extra_;  // cr_forward_checkpoint()
  // Processes only a forwarded scope brought in: index into extra_.
  std::map<pid_t, size_t> forwarded_by_;
  std::vector<std::unique_ptr<ProcState>> procs_;
  std::map<pid_t, ProcState*> by_pid_;
  uint64_t next_object_id_ = 1;
  uint64_t zero_skipped_ = 0;
  bool released_ = false;
  std::unique_ptr<KernelCapture> kernel_;          // null: /proc and ptrace only
  std::map<pid_t, std::vector<pid_t>> leftovers_;  // parent -> dead snapshots
  uint64_t token_ = 0;                             // of this capture, when it set tracking up
};

}  // namespace stasis::core::capture

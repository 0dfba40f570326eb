// Internal to engine/core: the restore side's shared state. Restorer (the
// restore of one context, restore.cc) and RProc (one process being built)
// are declared here so that each kernel object's file (tree.cc,
// fd/pipe.cc, ...) can implement its own restore steps beside its capture
// steps. Not a public header: nothing outside engine/core includes it.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/fd.h"
#include "engine/core/engine.h"
#include "engine/core/inject.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/format/context_io.h"

namespace stasis::core::restore {

using format::FileDesc;
using format::Mapping;

constexpr uint64_t kPageSize = 4096;
constexpr size_t kScratchSize = 16 * 4096;
// Layout of the scratch area, shared by the restorer and the processes.
constexpr uint64_t kOffSyscall = 0;    // "syscall" instruction
constexpr uint64_t kOffArgs = 0x1000;  // structs passed to calls
constexpr uint64_t kOffAuxv = 0x2000;  // auxv for PR_SET_MM_MAP
constexpr uint64_t kOffPath = 0x4000;  // NUL-terminated paths
constexpr size_t kMaxPath = 0x8000;
constexpr uint64_t kUserTop = 0x7ffffffff000ull;

inline std::string Pid(pid_t p) { return "pid " + std::to_string(p); }

struct Interval {
  uint64_t lo, hi;
};

// Lowest gap of `size` bytes at or above `base` not touching any interval.
inline uint64_t FindFree(std::vector<Interval> busy, uint64_t size, uint64_t base) {
  std::sort(busy.begin(), busy.end(), [](auto& a, auto& b) { return a.lo < b.lo; });
  uint64_t cand = base;
  for (const Interval& iv : busy) {
    if (iv.hi <= cand) continue;
    if (iv.lo >= cand + size + kPageSize) break;
    cand = (iv.hi + kPageSize + 0xffff) & ~0xffffull;
  }
  return cand + size < kUserTop ? cand : 0;
}

struct RProc {
  format::ProcessEntry entry;
  format::ProcessInfo info;
  bool have_info = false;
  std::vector<Mapping> mappings;
  std::vector<FileDesc> files;
  std::vector<format::ThreadInfo> threads;
  std::vector<std::unique_ptr<Tracee>> tracees;  // [0] leader
  ProcessMemory mem;
  pid_t pid = 0;  // real pid
  uint64_t scratch = 0;
  bool mm_built = false;
  bool files_done = false;
  long pidfd = -1;  // the restorer's pidfd inside the process, while building
  const RestoreOptions::TaskStdio* stdio = nullptr;  // its task's, if any
};

class Restorer {
 public:
  Restorer(ByteSource* source, const RestoreOptions& options)
      : source_(source), options_(options), reader_(source) {}
  ~Restorer();
  Result<RestoreResult> Run();

  // Internal to engine/core: the rest is shared with the files of each kind
  // of object (fd_table.cc, fd/*.cc, ...), which implement and use it.
  Status SetUpScratch();
  Status CreateTree(const format::ProcessTree& tree);
  Status CreateProcess(RProc* p, RProc* parent);
  Status CreateNamespaceInit(pid_t root_in_ns);
  Result<pid_t> InjectClone3(RProc* in, uint64_t flags, int exit_signal, pid_t want,
                             const std::string& what);
  Status UnregisterInheritedRseq(RProc* p);
  Status BuildAddressSpace(RProc* p);
  Status MoveVdso(RProc* p, const std::vector<MapsEntry>& current);
  Status RestoreFiles(RProc* p);
  Result<int> RestorerFdFor(const RProc* p, const FileDesc& f);
  // The stdio an fd leading outside the checkpoint is reattached to.
  int StdioFor(const RProc* p, const FileDesc& f) const;
  Status MatchTasks(const format::ProcessTree& tree);
  Status RewriteEnvironment(RProc* p, uint64_t environ_addr);
  Status RestorePosixTimers(RProc* p);
  bool LazyEligible(const RProc* p) const;
  Status SetUpLazy(RProc* p);
  Result<UniqueFd> MakeSocket(const FileDesc& f);
  Status CreateThreads(RProc* p);
  Status CreateSharedMemory(const format::SharedMemory& shm);
  Status WriteSharedPages();
  Result<size_t> NextPageBytes(uint64_t left, std::vector<char>* buf, const char** data);
  bool in_place_ = true;
  Status WritePages(RProc* p);
  // Incremental contexts: the pages ParentPages named, from the chain of
  // parents (each read whole, every checksum verified).
  Status ApplyParents(const format::ImageInfo& image);
  std::map<uint32_t, std::vector<format::PageRun>> parent_needed_;
  Status FinishProcess(RProc* p);
  // The steps of FinishProcess (task_state.cc), in the order its table gives.
  Status FinishEnvironment(RProc* p);
  Status FinishAgentBlock(RProc* p);
  Status FinishSignalHandlers(RProc* p);
  Status FinishCwd(RProc* p);
  Status FinishMm(RProc* p);
  Status FinishLimits(RProc* p);
  Status FinishItimers(RProc* p);
  Status FinishEachThread(RProc* p);
  Status FinishPendingSignals(RProc* p);
  Status FinishTerminal(RProc* p);
  Status FinishCredentials(RProc* p);
  Status FinishCapabilities(RProc* p);
  Status FinishDumpable(RProc* p);
  Status FinishSeccomp(RProc* p);
  Status FinishPidfd(RProc* p);
  Status FinishRegisters(RProc* p);
  Status MakeZombie(RProc* p);
  Status FinishThread(RProc* p, Tracee* t, const format::ThreadInfo& ti);
  Status Release();
  void KillAll();

  Result<long> Call(RProc* p, Tracee* t, long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
                    uint64_t a4 = 0, uint64_t a5 = 0, uint64_t a6 = 0, pid_t* new_task = nullptr) {
    return t->Syscall(p->scratch + kOffSyscall, nr, a1, a2, a3, a4, a5, a6, new_task);
  }
  Result<long> Call(RProc* p, long nr, uint64_t a1 = 0, uint64_t a2 = 0, uint64_t a3 = 0,
                    uint64_t a4 = 0, uint64_t a5 = 0, uint64_t a6 = 0) {
    return Call(p, p->tracees[0].get(), nr, a1, a2, a3, a4, a5, a6);
  }
  Result<uint64_t> PutPath(RProc* p, const std::string& path);
  std::string Relocate(const std::string& path) const;

  ByteSource* source_;
  const RestoreOptions& options_;
  format::ContextReader reader_;
  std::vector<std::unique_ptr<RProc>> procs_;  // tree order
  std::set<uint64_t> agent_shm_ids_;           // libcr agent blocks (memfd "stasis-agent")
  std::map<uint32_t, RProc*> by_pid_;          // by saved pid
  uint64_t scratch_ = 0;                       // in the restorer
  UniqueFd self_pidfd_;                        // inherited by every process
  std::map<uint64_t, UniqueFd> objects_;       // object id -> restorer fd
  std::map<uint64_t, UniqueFd> shm_;           // shared memory id -> object
  std::map<uint64_t, UniqueFd> fifos_;         // FIFO inode -> read-write holder
  std::map<uint64_t, UniqueFd> sockets_;       // socket inode -> its restored end
  std::map<std::string, UniqueFd> listeners_;  // bound name -> our listening socket there
  std::map<uint64_t, std::pair<UniqueFd, UniqueFd>> ptys_;  // index -> our master, slave
  Result<int> PtyPair(const FileDesc& f);
  Result<int> ListenerAt(const std::string& name, int type);
  std::map<uint64_t, int> sysv_ids_;  // saved shmid -> new shmid
  std::vector<int> sysv_remove_;      // marked for removal at the end
  std::map<uint64_t, uint64_t> shm_size_;
  std::map<uint64_t, std::pair<void*, uint64_t>> shm_maps_;  // written through memory
  std::map<uint64_t, std::pair<UniqueFd, UniqueFd>> pipes_;  // peer id -> ends
  RestoreResult result_;
  bool released_ = false;
  // Set when pids are taken here: the tree is restored with its own pids in
  // a fresh pid namespace whose init (a fork of the restorer) reaps it.
  std::unique_ptr<RProc> init_;
};

}  // namespace stasis::core::restore

// The kernel capture backend: reads a stopped process through /dev/stasis
// (kmod/, stasis.ko) instead of /proc and ptrace, into the same pieces the
// userspace capture fills (MapsEntry, ThreadInfo fields, FileDesc sources,
// Pages sections). checkpoint.cc asks it for the memory map, registers,
// masks, pending signals and open files of each process, and for the page
// data; what the module cannot reach (signal handlers, altstacks, itimers,
// the tid address, rseq, brk, ...) the userspace core still captures.
//
// The ioctl contract is kmod/include/uapi/stasis_kmod.h, the only file
// shared with the module. A KernelCapture owns an open /dev/stasis and a
// memfd that receives page data; not thread-safe (one capture at a time).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/core/engine.h"
#include "engine/core/procfs.h"
#include "engine/core/ptrace.h"
#include "engine/format/context.h"
#include "engine/format/context_io.h"

namespace stasis::core {

// "auto", "kernel" or "user"; anything else is an error naming the value.
Result<CaptureBackend> ParseCaptureBackend(const std::string& text);
const char* CaptureBackendName(CaptureBackend backend);

struct KernelThread {
  uint32_t tid = 0;
  uint32_t state = 0;  // 1 stopped, 2 traced, 3 frozen
  uint64_t blocked = 0;
  std::vector<uint8_t> gpregs;   // struct user_regs_struct
  std::vector<uint8_t> xsave;    // NT_X86_XSTATE
  std::vector<uint8_t> pending;  // siginfo records, 128 bytes each
};

struct KernelFile {
  int fd = 0;
  bool cloexec = false;
  uint32_t f_flags = 0;  // as /proc/PID/fdinfo "flags" without O_CLOEXEC
  uint64_t pos = 0;
  struct stat st {};     // what stat(2) of /proc/PID/fd/N gives
  std::string path;      // what readlink of /proc/PID/fd/N gives
  uint64_t file_id = 0;  // equal for fds of one open file description
};

// What STASIS_IOC_TASKSTATE reports (modules that predate it: have = false,
// and the userspace core injects its calls as before).
struct KernelTaskState {
  bool have = false;
  uint64_t brk = 0;
  uint64_t itimer_real_value_ns = 0, itimer_real_interval_ns = 0;
  uint64_t timer_slack_ns = 0;
  uint32_t pdeath_signal = 0, child_subreaper = 0, dumpable = 0;
  bool cpu_itimers = false;                // ITIMER_VIRTUAL/PROF armed: read them by injection
  std::vector<format::SigAction> actions;  // signal n at [n - 1], 64
  struct ThreadState {
    uint64_t altstack_sp = 0, altstack_size = 0;
    int32_t altstack_flags = 0;
    uint64_t timer_slack_ns = 0, clear_child_tid = 0;
    uint64_t rseq = 0;
    uint32_t rseq_len = 0, rseq_sig = 0;
  };
  std::map<uint32_t, ThreadState> threads;  // by tid
  const ThreadState* ThreadOf(uint32_t tid) const {
    auto it = have ? threads.find(tid) : threads.end();
    return it == threads.end() ? nullptr : &it->second;
  }
};

// Puts what TASKSTATE reported in place of the injected calls' answers:
// brk, handlers, ITIMER_REAL (in us, truncated as getitimer does), and the
// prctl values (process); altstack, timer slack, tid address, rseq (thread).
void ApplyKernelProcessState(const KernelTaskState& state, format::ProcessInfo* info);
void ApplyKernelThreadState(const KernelTaskState::ThreadState& state, format::ThreadInfo* ti);

// One stopped process as the module sees it.
struct KernelTask {
  KernelTaskState state;
  std::vector<MapsEntry> maps;    // as /proc/PID/maps
  std::vector<uint32_t> vmflags;  // MappingFlags, as smaps VmFlags (parallel)
  std::vector<KernelThread> threads;
  std::vector<uint8_t> shared_pending;
  std::vector<KernelFile> files;  // in fd order
  const KernelThread* Thread(uint32_t tid) const;
  const KernelFile* File(int fd) const;
};

// Turns the record streams of STASIS_IOC_VMAS, _THREADS and _FILES into a
// KernelTask. Trusts no length or count in them: a short or inconsistent
// stream is an error naming the record kind.
Result<KernelTask> ParseKernelTask(pid_t pid, const std::string& vmas, const std::string& threads,
                                   const std::string& files);
// The same for STASIS_IOC_TASKSTATE's stream.
Result<KernelTaskState> ParseKernelTaskState(pid_t pid, const std::string& records);

// Puts the module's registers, xstate, mask and pending signals of thread
// ti->tid into *ti, with the rules the ptrace path applies (RegsAsCaptured;
// a SIGSTOP queued to a process that was stopped is not recorded, since the
// ptrace path consumes it while driving the thread and the process is
// restored stopped anyway).
Status ApplyKernelThread(const KernelTask& task, const StopInfo& first_stop, bool was_stopped,
                         format::ThreadInfo* ti);

class KernelCapture {
 public:
  // kUser: nullptr. kAuto: nullptr when /dev/stasis is absent or refuses
  // us (not an error), the backend otherwise. kKernel: an error naming why
  // the module cannot be used.
  static Result<std::unique_ptr<KernelCapture>> Open(CaptureBackend backend,
                                                     const std::string& device = "/dev/stasis");

  // Memory map, threads and files of a process whose every thread is
  // stopped (group stop or ptrace stop) or frozen.
  Result<KernelTask> CaptureTask(pid_t pid);

  // Writes the saved pages of the mappings `wanted` selects as Pages
  // sections of `pid`, the way the userspace core selects them: present
  // private pages; of file mappings only their anonymous (copied) pages;
  // all-zero pages of anonymous mappings skipped.
  Status WritePages(pid_t pid, const std::vector<format::Mapping>& mappings,
                    const std::function<bool(const format::Mapping&)>& wanted,
                    format::ContextWriter* writer, uint64_t* page_bytes, uint64_t* zero_pages);

  ~KernelCapture();
  KernelCapture(const KernelCapture&) = delete;
  KernelCapture& operator=(const KernelCapture&) = delete;

  // The raw ioctls, for tests: each returns the bytes the module wrote.
  Result<std::string> ReadRecords(unsigned long request, pid_t pid);

 private:
  KernelCapture(UniqueFd dev, UniqueFd memfd) : dev_(std::move(dev)), memfd_(std::move(memfd)) {}
  Status MapMemfd(uint64_t size);
  UniqueFd dev_;
  UniqueFd memfd_;  // page data and records land here, rewound per use
  // The memfd mapped once: page data is read from it in place, each batch
  // over the same pages (fresh mappings per batch cost page-table work).
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::unique_ptr<std::vector<MapsEntry>> gate_;  // [vsyscall], read once
};

}  // namespace stasis::core

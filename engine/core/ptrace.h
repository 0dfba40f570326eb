// Control of stopped threads through ptrace: seize/interrupt, registers,
// FPU state, signal masks, and running a system call inside the tracee
// ("syscall injection"), which is how the engine asks a process for state
// that only the process itself can report (signal handlers, altstack, tid
// address) and how it builds a restored process from the inside.
//
// Injection protocol: the tracee's registers are saved at the stop, all its
// signals are blocked (so no queued signal is dequeued while we drive it),
// rip points at a `syscall` instruction (in the vDSO at capture, in the
// restorer's scratch page at restore), and each call runs from
// syscall-enter stop to syscall-exit stop; the tracee never executes any
// other user instruction. Thread-compatible: one Tracee per thread, used by
// one engine thread at a time.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>
#include <sys/user.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/format/context.h"

namespace stasis::core {

using Regs = user_regs_struct;

// Kernel-internal restart codes visible in rax at a stop inside a syscall.
inline constexpr long kErestartSys = 512;
inline constexpr long kErestartNoIntr = 513;
inline constexpr long kErestartNoHand = 514;
inline constexpr long kErestartRestartBlock = 516;

// Returns regs adjusted so that a thread stopped inside an interrupted
// system call re-executes it when it runs again, without relying on the
// kernel's own restart logic (orig_rax is cleared). With
// reexecute_restartblock, ERESTART_RESTARTBLOCK re-runs the original call
// (restore: the kernel's restart block is gone); otherwise restart_syscall.
Regs FixupRestart(const Regs& regs, bool reexecute_restartblock);

// How a waited-for thread stopped.
struct StopInfo {
  enum Kind { kSyscall, kEvent, kSignal, kGroupStop, kExited, kKilled } kind = kSignal;
  int signal = 0;  // signal of a signal/group stop; exit code or killing signal
  int event = 0;   // PTRACE_EVENT_* of an event stop
};
// The registers a capture records for a thread read as `raw` whose first
// stop under us was `first_stop`: a call that a group stop made fail with
// EINTR is recorded as restartable (see FailsWithEintrOnStop in ptrace.cc).
// Both capture backends apply it.
Regs RegsAsCaptured(const Regs& raw, const StopInfo& first_stop);
// waitpid(tid, __WALL) decoded. Retries EINTR.
Result<StopInfo> WaitThread(pid_t tid);
// The same, giving up with ETIMEDOUT after `seconds` (polled: a tracee that
// never stops again, e.g. one in a frozen cgroup, cannot hold us forever).
Result<StopInfo> WaitThreadFor(pid_t tid, double seconds);

class Tracee {
 public:
  // `timeout_seconds`: see SetTimeout.
  Tracee(pid_t pid, pid_t tid, double timeout_seconds = kDefaultTimeoutSeconds)
      : pid_(pid), tid_(tid), timeout_seconds_(timeout_seconds) {}
  pid_t pid() const { return pid_; }
  pid_t tid() const { return tid_; }

  // PTRACE_SEIZE with our options, then PTRACE_INTERRUPT. Call WaitForStop
  // after seizing every thread.
  Status SeizeAndInterrupt();
  // Restore: seccomp filters installed in the task from now on do not apply
  // to the calls we inject (PTRACE_O_SUSPEND_SECCOMP, root only).
  Status SuspendSeccomp() const;
  // Capture: the task's `count` seccomp filters, oldest first (root only).
  Result<std::vector<format::SeccompFilter>> SeccompFilters(uint32_t count) const;
  // Waits for the first stop after SeizeAndInterrupt (or after an
  // auto-attach at clone/fork); records it as the thread's state.
  Status WaitForStop();
  // For a tracee that is our child and called PTRACE_TRACEME + SIGSTOP.
  Status AdoptTracedChild();
  void MarkAttached() { attached_ = true; }
  // Bounds of every wait of WaitForStop and Syscall: `seconds` per wait
  // (default 60; the engine takes CheckpointOptions/RestoreOptions::
  // ptrace_timeout_seconds) and at most
  // kMaxSignalStops signal or group stops during one injected call; past
  // either they fail with ETIMEDOUT (a process kept stopping, or never
  // stopped: its detach then happens when we exit).
  void SetTimeout(double seconds) { timeout_seconds_ = seconds; }
  static constexpr int kMaxSignalStops = 1000;
  static constexpr double kDefaultTimeoutSeconds = 60;
  void MarkDetached() { attached_ = false; }

  // Saves the current registers and signal mask and blocks all signals:
  // required before Syscall. Idempotent.
  Status PrepareForInjection();
  // Runs one system call in the tracee with rip at `syscall_insn`. Returns
  // the raw kernel return (negative errno on failure). If the call creates
  // a task that we trace (fork/clone), its pid is stored in *new_task.
  Result<long> Syscall(uint64_t syscall_insn, long nr, uint64_t a1 = 0, uint64_t a2 = 0,
                       uint64_t a3 = 0, uint64_t a4 = 0, uint64_t a5 = 0, uint64_t a6 = 0,
                       pid_t* new_task = nullptr);

  Status GetRegs(Regs* regs) const;
  Status SetRegs(const Regs& regs) const;
  Status GetXstate(std::vector<uint8_t>* xsave) const;
  Status SetXstate(const std::vector<uint8_t>& xsave) const;
  Status GetSigmask(uint64_t* mask) const;
  Status SetSigmask(uint64_t mask) const;
  // The siginfo of the signal a signal-delivery stop is about.
  Status GetSiginfo(std::vector<uint8_t>* record) const;
  // Pending signals without dequeuing them (shared: process-wide queue).
  Status PeekSiginfo(bool shared, std::vector<uint8_t>* records) const;

  // Registers and mask as they were at the stop (valid after
  // PrepareForInjection).
  const Regs& saved_regs() const { return saved_regs_; }
  uint64_t saved_sigmask() const { return saved_sigmask_; }
  bool prepared() const { return prepared_; }
  bool attached() const { return attached_; }
  const StopInfo& first_stop() const { return first_stop_; }

  // Puts back registers (with restart fix-up) and mask, then detaches.
  // `signal` is delivered on detach (SIGSTOP keeps a stopped task stopped).
  Status RestoreAndDetach(int signal = 0);
  // Puts back the registers and mask saved before the first injection while
  // the thread stays stopped: no more injections may follow (Settle is for
  // "capture done, now writing"), and a tracer death from here on is
  // harmless. Idempotent; RestoreAndDetach stays correct after it.
  Status Settle();
  // Detaches leaving registers as they are now.
  Status Detach(int signal = 0);

 private:
  pid_t pid_;
  pid_t tid_;
  bool attached_ = false;
  bool prepared_ = false;
  double timeout_seconds_;
  StopInfo first_stop_;
  Regs saved_regs_{};
  uint64_t saved_sigmask_ = 0;
};

// /proc/PID/mem of a traced process: reads and writes ignore page
// protections (FOLL_FORCE), so read-only and PROT_NONE memory is reachable.
// The options a task is seized with: PTRACE_O_TRACESYSGOOD, and as root
// PTRACE_O_SUSPEND_SECCOMP (injected calls are not filtered).
long SeizeOptions();

class ProcessMemory {
 public:
  ProcessMemory() = default;
  static Result<ProcessMemory> Open(pid_t pid, bool writable);
  Status Read(uint64_t addr, void* buf, size_t n) const;
  Status WriteThroughProc(uint64_t addr, const void* buf, size_t n) const;
  // Writes the contiguous bytes at `data` to the remote pieces in order (at
  // most IOV_MAX of them), with one process_vm_writev where it can.
  Status WriteScattered(const char* data, const std::vector<struct iovec>& remote) const;
  Status Write(uint64_t addr, const void* buf, size_t n) const;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = 0;
  UniqueFd fd_;
};

// Finds a `syscall` instruction (0f 05) inside the [vdso] of pid.
Result<uint64_t> FindVdsoSyscall(pid_t pid, const ProcessMemory& mem);

}  // namespace stasis::core

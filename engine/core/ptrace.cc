// ptrace control and syscall injection; see ptrace.h.
#include "engine/core/ptrace.h"

#include <elf.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "engine/core/procfs.h"

#ifndef PTRACE_GETSIGMASK
#define PTRACE_GETSIGMASK 0x420a
#define PTRACE_SETSIGMASK 0x420b
#endif

namespace stasis::core {
namespace {

constexpr long kTraceOptions = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACECLONE | PTRACE_O_TRACEFORK |
                               PTRACE_O_TRACEVFORK | PTRACE_O_EXITKILL;
// Options for tracees seized at capture: no EXITKILL (a dying checkpointer
// must leave its targets running), no fork tracing (they are frozen).
constexpr long kSeizeOptions = PTRACE_O_TRACESYSGOOD;
#ifndef PTRACE_O_SUSPEND_SECCOMP
#define PTRACE_O_SUSPEND_SECCOMP (1 << 21)
#endif

std::string TidName(pid_t tid) { return "thread " + std::to_string(tid); }

}  // namespace

Regs FixupRestart(const Regs& in, bool reexecute_restartblock) {
  Regs r = in;
  if (static_cast<long>(r.orig_rax) < 0) return r;
  long ret = -static_cast<long>(r.rax);
  switch (ret) {
    case kErestartSys:
    case kErestartNoIntr:
    case kErestartNoHand:
      r.rax = r.orig_rax;
      r.rip -= 2;
      break;
    case kErestartRestartBlock:
      r.rax = reexecute_restartblock ? r.orig_rax : 219 /* __NR_restart_syscall */;
      r.rip -= 2;
      break;
    default:
      break;
  }
  r.orig_rax = static_cast<unsigned long long>(-1);
  return r;
}

namespace {
StopInfo DecodeWaitStatus(int status);
}  // namespace

Result<StopInfo> WaitThread(pid_t tid) {
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(tid, &status, __WALL);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::FromErrno(errno, "wait for " + TidName(tid));
    break;
  }
  return DecodeWaitStatus(status);
}

Result<StopInfo> WaitThreadFor(pid_t tid, double seconds) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::microseconds(static_cast<long>(seconds * 1e6));
  long sleep_us = 20;
  for (int i = 0;; ++i) {
    int status = 0;
    pid_t r = ::waitpid(tid, &status, __WALL | WNOHANG);
    if (r == tid) return DecodeWaitStatus(status);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::FromErrno(errno, "wait for " + TidName(tid));
    if (Clock::now() > deadline)
      return Status::Error(ETIMEDOUT, TidName(tid) + " did not stop within " +
                                          std::to_string(static_cast<long>(seconds)) + " s");
    // A stop normally follows within microseconds: yield first, then sleep
    // longer and longer (at most 2 ms) so a slow one costs little CPU.
    if (i < 200) {
      ::sched_yield();
    } else {
      ::usleep(static_cast<useconds_t>(sleep_us));
      sleep_us = std::min<long>(sleep_us * 2, 2000);
    }
  }
}

namespace {
StopInfo DecodeWaitStatus(int status) {
  StopInfo s;
  if (WIFEXITED(status)) {
    s.kind = StopInfo::kExited;
    s.signal = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    s.kind = StopInfo::kKilled;
    s.signal = WTERMSIG(status);
  } else if (WIFSTOPPED(status)) {
    int sig = WSTOPSIG(status);
    int event = status >> 16;
    if (sig == (SIGTRAP | 0x80)) {
      s.kind = StopInfo::kSyscall;
    } else if (event == PTRACE_EVENT_STOP) {
      s.kind = StopInfo::kGroupStop;
      s.signal = sig;
    } else if (event != 0) {
      s.kind = StopInfo::kEvent;
      s.event = event;
    } else {
      s.kind = StopInfo::kSignal;
      s.signal = sig;
    }
  }
  return s;
}
}  // namespace

long SeizeOptions() {
  // As root, a seized task's seccomp filters are suspended while we trace it,
  // so that no injected call is filtered (PTRACE_O_SUSPEND_SECCOMP needs
  // CAP_SYS_ADMIN and CONFIG_CHECKPOINT_RESTORE).
  static const long extra = ::geteuid() == 0 ? PTRACE_O_SUSPEND_SECCOMP : 0;
  return kSeizeOptions | extra;
}

Status Tracee::SuspendSeccomp() const {
  if (::ptrace(PTRACE_SETOPTIONS, tid_, nullptr,
               reinterpret_cast<void*>(kTraceOptions | PTRACE_O_SUSPEND_SECCOMP)) != 0)
    return Status::FromErrno(errno, "suspend the seccomp filters of " + TidName(tid_) +
                                        " while restoring (needs CAP_SYS_ADMIN)");
  return Status::Ok();
}

Result<std::vector<format::SeccompFilter>> Tracee::SeccompFilters(uint32_t count) const {
  // Index 0 is the filter installed last: the list comes back oldest first.
  std::vector<format::SeccompFilter> out;
  for (long i = static_cast<long>(count) - 1; i >= 0; --i) {
    long n = ::ptrace(PTRACE_SECCOMP_GET_FILTER, tid_, reinterpret_cast<void*>(i), nullptr);
    if (n <= 0 || n > 4096)
      return Status::FromErrno(n < 0 ? errno : EINVAL, "read seccomp filter " + std::to_string(i) +
                                                           " of " + TidName(tid_) +
                                                           " (needs CAP_SYS_ADMIN)");
    format::SeccompFilter f;
    f.program.resize(static_cast<size_t>(n) * 8);
    if (::ptrace(PTRACE_SECCOMP_GET_FILTER, tid_, reinterpret_cast<void*>(i), f.program.data()) !=
        n)
      return Status::FromErrno(errno,
                               "read seccomp filter " + std::to_string(i) + " of " + TidName(tid_));
    struct {
      uint64_t filter_off, flags;
    } meta = {static_cast<uint64_t>(i), 0};
    if (::ptrace(PTRACE_SECCOMP_GET_METADATA, tid_, reinterpret_cast<void*>(sizeof meta), &meta) >
        0)
      f.flags = meta.flags;
    out.push_back(std::move(f));
  }
  return out;
}

Status Tracee::SeizeAndInterrupt() {
  long opts = SeizeOptions();
  if (::ptrace(PTRACE_SEIZE, tid_, nullptr, reinterpret_cast<void*>(opts)) != 0 &&
      (opts == kSeizeOptions ||
       ::ptrace(PTRACE_SEIZE, tid_, nullptr, reinterpret_cast<void*>(kSeizeOptions)) != 0))
    return Status::FromErrno(errno, "ptrace seize " + TidName(tid_));
  attached_ = true;
  if (::ptrace(PTRACE_INTERRUPT, tid_, nullptr, nullptr) != 0)
    return Status::FromErrno(errno, "ptrace interrupt " + TidName(tid_));
  return Status::Ok();
}

Status Tracee::WaitForStop() {
  for (;;) {
    STASIS_ASSIGN_OR_RETURN(StopInfo s, WaitThreadFor(tid_, timeout_seconds_));
    if (s.kind == StopInfo::kExited || s.kind == StopInfo::kKilled) {
      attached_ = false;
      return Status::Error(ESRCH, TidName(tid_) + " exited while being stopped");
    }
    if (s.kind == StopInfo::kSignal && s.signal != SIGSTOP && s.signal != SIGTRAP) {
      // A signal arrived before our interrupt: it stays queued if we
      // re-inject it at detach; remember it as the stop reason.
      first_stop_ = s;
      return Status::Ok();
    }
    first_stop_ = s;
    return Status::Ok();
  }
}

Status Tracee::AdoptTracedChild() {
  STASIS_ASSIGN_OR_RETURN(StopInfo s, WaitThread(tid_));
  if (s.kind != StopInfo::kSignal || s.signal != SIGSTOP)
    return Status::Error(ECHILD, TidName(tid_) + " did not stop as expected");
  if (::ptrace(PTRACE_SETOPTIONS, tid_, nullptr, reinterpret_cast<void*>(kTraceOptions)) != 0)
    return Status::FromErrno(errno, "ptrace setoptions " + TidName(tid_));
  attached_ = true;
  first_stop_ = s;
  return Status::Ok();
}

Status Tracee::GetRegs(Regs* regs) const {
  struct iovec iov = {regs, sizeof(*regs)};
  if (::ptrace(PTRACE_GETREGSET, tid_, reinterpret_cast<void*>(NT_PRSTATUS), &iov) != 0)
    return Status::FromErrno(errno, "get registers of " + TidName(tid_));
  return Status::Ok();
}

Status Tracee::SetRegs(const Regs& regs) const {
  Regs copy = regs;
  struct iovec iov = {&copy, sizeof(copy)};
  if (::ptrace(PTRACE_SETREGSET, tid_, reinterpret_cast<void*>(NT_PRSTATUS), &iov) != 0)
    return Status::FromErrno(errno, "set registers of " + TidName(tid_));
  return Status::Ok();
}

Status Tracee::GetXstate(std::vector<uint8_t>* xsave) const {
  xsave->assign(64 * 1024, 0);
  struct iovec iov = {xsave->data(), xsave->size()};
  if (::ptrace(PTRACE_GETREGSET, tid_, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) != 0)
    return Status::FromErrno(errno, "get FPU/AVX state of " + TidName(tid_));
  xsave->resize(iov.iov_len);
  return Status::Ok();
}

Status Tracee::SetXstate(const std::vector<uint8_t>& xsave) const {
  std::vector<uint8_t> copy = xsave;
  struct iovec iov = {copy.data(), copy.size()};
  if (::ptrace(PTRACE_SETREGSET, tid_, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) != 0)
    return Status::FromErrno(errno, "set FPU/AVX state of " + TidName(tid_));
  return Status::Ok();
}

Status Tracee::GetSigmask(uint64_t* mask) const {
  if (::ptrace(static_cast<__ptrace_request>(PTRACE_GETSIGMASK), tid_,
               reinterpret_cast<void*>(sizeof(uint64_t)), mask) != 0)
    return Status::FromErrno(errno, "get signal mask of " + TidName(tid_));
  return Status::Ok();
}

Status Tracee::SetSigmask(uint64_t mask) const {
  if (::ptrace(static_cast<__ptrace_request>(PTRACE_SETSIGMASK), tid_,
               reinterpret_cast<void*>(sizeof(uint64_t)), &mask) != 0)
    return Status::FromErrno(errno, "set signal mask of " + TidName(tid_));
  return Status::Ok();
}

Status Tracee::GetSiginfo(std::vector<uint8_t>* record) const {
  record->assign(128, 0);
  if (::ptrace(PTRACE_GETSIGINFO, tid_, nullptr, record->data()) != 0)
    return Status::FromErrno(errno, "get siginfo of " + TidName(tid_));
  return Status::Ok();
}

Status Tracee::PeekSiginfo(bool shared, std::vector<uint8_t>* records) const {
  records->clear();
  struct {
    uint64_t off;
    uint32_t flags;
    int32_t nr;
  } args = {0, shared ? 1u : 0u, 32};
  for (;;) {
    uint8_t buf[32 * 128];
    long n =
        ::ptrace(static_cast<__ptrace_request>(0x4209 /* PTRACE_PEEKSIGINFO */), tid_, &args, buf);
    if (n < 0) return Status::FromErrno(errno, "read pending signals of " + TidName(tid_));
    if (n == 0) break;
    records->insert(records->end(), buf, buf + n * 128);
    args.off += static_cast<uint64_t>(n);
    if (args.off > 100000) return Status::Error(EOVERFLOW, "too many pending signals");
  }
  return Status::Ok();
}

// System calls that fail with EINTR (not ERESTART*) when their thread is
// merely stopped, as signal(7) documents: epoll_wait and friends. When our
// own interrupt caused that, the call is re-executed instead, so neither a
// resumed nor a restored program sees an EINTR that no signal caused.
bool FailsWithEintrOnStop(long nr) {
  switch (nr) {
    case 232:  // epoll_wait
    case 281:  // epoll_pwait
    case 441:  // epoll_pwait2
    case 128:  // rt_sigtimedwait
    case 220:  // semtimedop
    case 65:   // semop
    case 208:  // io_getevents
    case 333:  // io_pgetevents
      return true;
  }
  return false;
}

Regs RegsAsCaptured(const Regs& raw, const StopInfo& first_stop) {
  Regs r = raw;
  if (first_stop.kind == StopInfo::kGroupStop && static_cast<long>(r.rax) == -EINTR &&
      FailsWithEintrOnStop(static_cast<long>(r.orig_rax)))
    r.rax = static_cast<unsigned long long>(-kErestartNoHand);
  return r;
}

Status Tracee::PrepareForInjection() {
  if (prepared_) return Status::Ok();
  STASIS_RETURN_IF_ERROR(GetRegs(&saved_regs_));
  saved_regs_ = RegsAsCaptured(saved_regs_, first_stop_);
  STASIS_RETURN_IF_ERROR(GetSigmask(&saved_sigmask_));
  STASIS_RETURN_IF_ERROR(SetSigmask(~0ull));
  prepared_ = true;
  return Status::Ok();
}

Result<long> Tracee::Syscall(uint64_t syscall_insn, long nr, uint64_t a1, uint64_t a2, uint64_t a3,
                             uint64_t a4, uint64_t a5, uint64_t a6, pid_t* new_task) {
  STASIS_RETURN_IF_ERROR(PrepareForInjection());
  Regs r = saved_regs_;
  r.rip = syscall_insn;
  r.rax = static_cast<unsigned long long>(nr);
  r.orig_rax = static_cast<unsigned long long>(-1);
  r.rdi = a1;
  r.rsi = a2;
  r.rdx = a3;
  r.r10 = a4;
  r.r8 = a5;
  r.r9 = a6;
  STASIS_RETURN_IF_ERROR(SetRegs(r));
  bool entered = false;
  int signal_stops = 0;
  for (;;) {
    if (::ptrace(PTRACE_SYSCALL, tid_, nullptr, nullptr) != 0)
      return Status::FromErrno(errno, "ptrace syscall " + TidName(tid_));
    auto waited = WaitThreadFor(tid_, timeout_seconds_);
    if (!waited) {
      // Stuck inside the call (or never scheduled): interrupt it so that the
      // caller can still put the registers back and detach; if even that
      // does not stop it, the kernel detaches it when we exit.
      if (waited.error().code() == ETIMEDOUT &&
          ::ptrace(PTRACE_INTERRUPT, tid_, nullptr, nullptr) == 0)
        (void)WaitThreadFor(tid_, 1.0);
      return waited.error();
    }
    StopInfo s = *waited;
    switch (s.kind) {
      case StopInfo::kExited:
      case StopInfo::kKilled:
        attached_ = false;
        return Status::Error(
            ESRCH, TidName(tid_) + " died during an injected system call " + std::to_string(nr));
      case StopInfo::kSyscall:
        if (!entered) {
          entered = true;
          continue;
        }
        {
          Regs out;
          STASIS_RETURN_IF_ERROR(GetRegs(&out));
          return static_cast<long>(out.rax);
        }
      case StopInfo::kEvent: {
        unsigned long msg = 0;
        if (::ptrace(PTRACE_GETEVENTMSG, tid_, nullptr, &msg) == 0 && new_task)
          *new_task = static_cast<pid_t>(msg);
        continue;
      }
      case StopInfo::kGroupStop:
      case StopInfo::kSignal:
        // A fault at our instruction (the address is not a `syscall` in
        // this image): the call cannot run, and resuming would fault again
        // forever.
        if (s.kind == StopInfo::kSignal && !entered &&
            (s.signal == SIGSEGV || s.signal == SIGBUS || s.signal == SIGILL || s.signal == SIGFPE))
          return Status::Error(EFAULT, TidName(tid_) + " faulted (signal " +
                                           std::to_string(s.signal) +
                                           ") at the injected system call " + std::to_string(nr));
        // Signals are blocked, so only SIGSTOP/SIGKILL-class stops reach
        // here; they are not forwarded while we drive the thread, but a
        // process that keeps being stopped cannot keep us here.
        if (++signal_stops > kMaxSignalStops)
          return Status::Error(ETIMEDOUT, TidName(tid_) + " kept stopping (" +
                                              std::to_string(signal_stops) +
                                              " signal stops) during the injected system call " +
                                              std::to_string(nr));
        continue;
    }
  }
}

Status Tracee::Settle() {
  if (!prepared_) return Status::Ok();
  // A later injection saves these (already fixed-up) registers again;
  // FixupRestart of fixed-up registers changes nothing.
  saved_regs_ = FixupRestart(saved_regs_, false);
  STASIS_RETURN_IF_ERROR(SetRegs(saved_regs_));
  STASIS_RETURN_IF_ERROR(SetSigmask(saved_sigmask_));
  prepared_ = false;
  return Status::Ok();
}

Status Tracee::RestoreAndDetach(int signal) {
  if (prepared_) {
    STASIS_RETURN_IF_ERROR(SetRegs(FixupRestart(saved_regs_, false)));
    STASIS_RETURN_IF_ERROR(SetSigmask(saved_sigmask_));
  }
  return Detach(signal);
}

Status Tracee::Detach(int signal) {
  if (!attached_) return Status::Ok();
  attached_ = false;
  if (::ptrace(PTRACE_DETACH, tid_, nullptr, reinterpret_cast<void*>(static_cast<long>(signal))) !=
      0)
    return Status::FromErrno(errno, "ptrace detach " + TidName(tid_));
  return Status::Ok();
}

Result<ProcessMemory> ProcessMemory::Open(pid_t pid, bool writable) {
  ProcessMemory m;
  m.pid_ = pid;
  std::string path = "/proc/" + std::to_string(pid) + "/mem";
  m.fd_.reset(::open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC));
  if (!m.fd_) return Status::FromErrno(errno, "open " + path);
  return m;
}

Status ProcessMemory::Read(uint64_t addr, void* buf, size_t n) const {
  char* p = static_cast<char*>(buf);
  // Through /proc/PID/mem, never process_vm_readv: since 5.19 the kernel
  // makes a read-only pin (which process_vm_readv takes) of an anonymous
  // page shared copy-on-write with another process copy the page first
  // (FAULT_FLAG_UNSHARE), so reading a snapshot, or a process sharing pages
  // with its fork children, would copy its memory. /proc/PID/mem only
  // references the page.
  while (n > 0) {
    ssize_t r = ::pread(fd_.get(), p, n, static_cast<off_t>(addr));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      return Status::FromErrno(r < 0 ? errno : EIO, "read memory of pid " + std::to_string(pid_) +
                                                        " at 0x" + ToHex(addr));
    p += r;
    addr += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
  return Status::Ok();
}

Status ProcessMemory::Write(uint64_t addr, const void* buf, size_t n) const {
  const char* p = static_cast<const char*>(buf);
  // process_vm_writev copies once; where it cannot write (read-only text,
  // PROT_NONE) /proc/PID/mem, which ignores protections, takes that page.
  while (n > 0) {
    struct iovec local = {const_cast<char*>(p), n};
    struct iovec remote = {reinterpret_cast<void*>(addr), n};
    ssize_t r = ::process_vm_writev(pid_, &local, 1, &remote, 1, 0);
    if (r < 0 && errno == EINTR) continue;
    size_t step;
    if (r > 0) {
      step = static_cast<size_t>(r);
    } else {
      step = std::min<size_t>(n, 4096 - addr % 4096);
      STASIS_RETURN_IF_ERROR(WriteThroughProc(addr, p, step));
    }
    p += step;
    addr += step;
    n -= step;
  }
  return Status::Ok();
}

Status ProcessMemory::WriteScattered(const char* data,
                                     const std::vector<struct iovec>& remote) const {
  size_t total = 0;
  for (const struct iovec& v : remote) total += v.iov_len;
  struct iovec local = {const_cast<char*>(data), total};
  ssize_t r;
  do {
    r = ::process_vm_writev(pid_, &local, 1, remote.data(), remote.size(), 0);
  } while (r < 0 && errno == EINTR);
  size_t done = r > 0 ? static_cast<size_t>(r) : 0;
  if (done == total) return Status::Ok();
  // Short (a read-only page on the way): the rest piece by piece, Write
  // taking what process_vm_writev cannot.
  size_t at = 0;
  for (const struct iovec& v : remote) {
    size_t end = at + v.iov_len;
    if (end > done) {
      size_t skip = done > at ? done - at : 0;
      STASIS_RETURN_IF_ERROR(
          Write(reinterpret_cast<uint64_t>(v.iov_base) + skip, data + at + skip, v.iov_len - skip));
    }
    at = end;
  }
  return Status::Ok();
}

Status ProcessMemory::WriteThroughProc(uint64_t addr, const void* buf, size_t n) const {
  const char* p = static_cast<const char*>(buf);
  while (n > 0) {
    ssize_t r = ::pwrite(fd_.get(), p, n, static_cast<off_t>(addr));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0)
      return Status::FromErrno(r < 0 ? errno : EIO, "write memory of pid " + std::to_string(pid_) +
                                                        " at 0x" + ToHex(addr));
    p += r;
    addr += static_cast<uint64_t>(r);
    n -= static_cast<size_t>(r);
  }
  return Status::Ok();
}

Result<uint64_t> FindVdsoSyscall(pid_t pid, const ProcessMemory& mem) {
  STASIS_ASSIGN_OR_RETURN(std::vector<MapsEntry> maps, ReadMaps(pid));
  for (const MapsEntry& e : maps) {
    if (e.path != "[vdso]") continue;
    std::vector<uint8_t> text(e.end - e.start);
    STASIS_RETURN_IF_ERROR(mem.Read(e.start, text.data(), text.size()));
    for (size_t i = 0; i + 1 < text.size(); ++i) {
      if (text[i] == 0x0f && text[i + 1] == 0x05) return e.start + i;
    }
  }
  return Status::Error(ENOEXEC,
                       "pid " + std::to_string(pid) + " has no vDSO with a syscall instruction");
}

}  // namespace stasis::core

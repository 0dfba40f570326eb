// The kmod tier's guest program: linked statically, it runs inside the qemu
// guest that ci/kmod_vm.sh boots (busybox initramfs, Debian's 6.1 kernel,
// stasis.ko loaded) and prints one "STASIS-TEST: PASS|FAIL <name>" line per
// test for the host to read from the serial console.
//
//   kmod_guest restore     capture a multithreaded process through the module,
//                          kill it, restore it with the userspace restorer; the
//                          restored program checks its own memory, registers
//                          and pending signals and exits 0 only if all hold
//   kmod_guest equivalent  the same stopped process captured by both backends:
//                          same mappings, pages, registers, signals and fds
//   kmod_guest hostile     bad ioctl arguments are refused with the right errno
//   kmod_guest permission  who may capture whom: root, root acting for a user
//                          through setfsuid/setfsgid (as stasisd's worker does)
//                          and the user itself, against the kernel's own rule
//   kmod_guest capture-once   one kernel capture (the load/unload loop uses it)
//   kmod_guest bench MIB   capture time of a MIB-MiB process, both backends
//
// The test process ("target") is this same binary, forked.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <signal.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/io.h"
#include "engine/core/engine.h"
#include "engine/core/kernel_capture.h"
#include "engine/core/procfs.h"
#include "engine/format/context_io.h"
#include "kmod/include/uapi/stasis_kmod.h"

namespace {

using stasis::core::CaptureBackend;

constexpr int kThreads = 3;
constexpr uint64_t kStep = 0x9E3779B97F4A7C15ull;
constexpr size_t kPatternBytes = 8u << 20;
const char* const kReadyFile = "/tmp/kmod_target.ready";
const char* const kDataFile = "/tmp/kmod_target.data";

std::string g_failure;  // first failed check of the running test

bool Check(bool ok, const std::string& what) {
  if (!ok && g_failure.empty()) g_failure = what;
  return ok;
}

int Report(const char* name) {
  if (g_failure.empty()) {
    std::printf("STASIS-TEST: PASS %s\n", name);
  } else {
    std::printf("STASIS-TEST: FAIL %s: %s\n", name, g_failure.c_str());
  }
  std::fflush(stdout);
  return g_failure.empty() ? 0 : 1;
}

// --- the target --------------------------------------------------------------

std::atomic<int> g_stop{0};
std::atomic<int> g_thread_ok{0};
std::atomic<int> g_started{0};
pthread_t g_tids[kThreads];

std::atomic<long> g_usr1_tid{0};
void OnUsr1(int) {
  g_usr1_tid.store(syscall(SYS_gettid));
  g_stop.store(1);
}

uint64_t Pattern(size_t i) { return (i * 0xff51afd7ed558ccdull) ^ (i >> 7) ^ 0x5a5a; }

// Each thread keeps two redundant counters in registers (an integer and a
// double in an xmm register) and checks them against each other when told
// to stop: a register lost or mixed up at restore breaks the relation.
void* Spin(void* arg) {
  const uint64_t id = reinterpret_cast<uintptr_t>(arg);
  // Each thread its own mask: SIGRTMIN+3+id on top of what main blocked.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGRTMIN + 3 + static_cast<int>(id));
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  g_started.fetch_add(1);
  uint64_t n = 0, a = id;
  double d = static_cast<double>(id);
  while (!g_stop.load(std::memory_order_relaxed)) {
    ++n;
    a += kStep;
    d += 1.0;
    if ((n & 0xffff) == 0) sched_yield();
  }
  bool ok = a == id + n * kStep && d == static_cast<double>(id + n) && n > 0;
  // The signal queued to this thread before the checkpoint is still pending.
  sigset_t pending;
  sigpending(&pending);
  if (id == 1) {
    siginfo_t si;
    struct timespec zero = {0, 0};
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, SIGRTMIN + 1);
    int sig = sigtimedwait(&one, &si, &zero);
    ok = ok && sig == SIGRTMIN + 1 && si.si_value.sival_int == 4242;
  }
  if (ok) g_thread_ok.fetch_add(1);
  std::printf("kmod_target: thread %ld done after %llu rounds (%s); SIGUSR1 went to %ld\n",
              static_cast<long>(syscall(SYS_gettid)), static_cast<unsigned long long>(n),
              ok ? "ok" : "BROKEN", g_usr1_tid.load());
  return nullptr;
}

// Builds the state, says ready, spins until SIGUSR1, then checks everything
// and exits 0 (all held) or 1.
[[noreturn]] void RunTarget() {
  prctl(PR_SET_NAME, "kmod_target");
  struct sigaction sa {};
  sa.sa_handler = OnUsr1;
  sigaction(SIGUSR1, &sa, nullptr);
  // Blocked before the threads exist, so they inherit it: the shared
  // SIGUSR2 and the RT signal queued to thread 1 stay pending.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGUSR2);
  for (int t = 1; t <= kThreads; ++t) sigaddset(&mask, SIGRTMIN + t);
  sigaddset(&mask, SIGUSR1);  // only main takes SIGUSR1: it must leave pause()
  pthread_sigmask(SIG_BLOCK, &mask, nullptr);
  auto* mem = static_cast<uint64_t*>(
      mmap(nullptr, kPatternBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (mem == MAP_FAILED) _exit(3);
  for (size_t i = 0; i < kPatternBytes / 8; i += 3) mem[i] = Pattern(i);  // some zero pages stay
  // A regular file open at an offset and mapped privately with one page
  // copied on write; a pipe holding data; shared anonymous memory.
  int dfd = open(kDataFile, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  char page[4096];
  for (char c : {'A', 'B', 'C'}) {
    std::memset(page, c, sizeof page);
    if (write(dfd, page, sizeof page) != sizeof page) _exit(3);
  }
  lseek(dfd, 1234, SEEK_SET);
  auto* fmap = static_cast<volatile char*>(
      mmap(nullptr, 3 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE, dfd, 0));
  if (fmap == MAP_FAILED) _exit(3);
  fmap[4096] = 'Z';      // copied: saved as a page of the mapping
  char first = fmap[0];  // present, but the file's: not saved
  int pfd[2];
  if (pipe(pfd) != 0 || write(pfd[1], "stasis-pipe-data", 16) != 16) _exit(3);
  auto* shm = static_cast<uint32_t*>(
      mmap(nullptr, 64 << 10, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (shm == MAP_FAILED) _exit(3);
  for (uint32_t i = 0; i < (64 << 10) / 4; ++i) shm[i] = i * 2654435761u;
  for (int t = 0; t < kThreads; ++t)
    pthread_create(&g_tids[t], nullptr, Spin,
                   reinterpret_cast<void*>(static_cast<uintptr_t>(t + 1)));
  while (g_started.load() < kThreads) sched_yield();
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr);
  union sigval v;
  v.sival_int = 4242;
  pthread_sigqueue(g_tids[0], SIGRTMIN + 1, v);
  kill(getpid(), SIGUSR2);
  int fd = open(kReadyFile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  close(fd);
  // Not pause(): a handled signal that arrives just after a restore can
  // run before a pause() the engine restarts (its restart fix-up re-executes
  // the call where the kernel would return EINTR), and pause() then waits
  // forever. A short sleep restarts harmlessly.
  while (!g_stop.load()) usleep(2000);
  for (int t = 0; t < kThreads; ++t) pthread_join(g_tids[t], nullptr);
  bool ok = g_thread_ok.load() == kThreads;
  for (size_t i = 0; ok && i < kPatternBytes / 8; ++i) ok = mem[i] == (i % 3 == 0 ? Pattern(i) : 0);
  const bool mem_ok = ok;
  sigset_t pending;
  sigpending(&pending);
  const bool sig_ok = sigismember(&pending, SIGUSR2);
  const bool file_ok = lseek(dfd, 0, SEEK_CUR) == 1234 && first == 'A' && fmap[0] == 'A' &&
                       fmap[4096] == 'Z' && fmap[8192] == 'C';
  char buf[17] = {0};
  const bool pipe_ok = read(pfd[0], buf, 16) == 16 && std::string(buf) == "stasis-pipe-data";
  bool shm_ok = true;
  for (uint32_t i = 0; i < (64 << 10) / 4; ++i) shm_ok = shm_ok && shm[i] == i * 2654435761u;
  ok = mem_ok && sig_ok && file_ok && pipe_ok && shm_ok;
  std::printf(
      "kmod_target: %s (threads ok %d/%d, memory %d, signals %d, file %d, pipe %d, "
      "shared %d)\n",
      ok ? "state intact" : "STATE BROKEN", g_thread_ok.load(), kThreads, mem_ok, sig_ok, file_ok,
      pipe_ok, shm_ok);
  std::fflush(stdout);
  _exit(ok ? 0 : 1);
}

// Forks the target and waits until it is ready, then stops it (SIGSTOP).
pid_t StartStoppedTarget() {
  unlink(kReadyFile);
  pid_t pid = fork();
  if (pid == 0) RunTarget();
  for (int i = 0; i < 3000 && access(kReadyFile, F_OK) != 0; ++i) usleep(10000);
  kill(pid, SIGSTOP);
  int status = 0;
  waitpid(pid, &status, WUNTRACED);
  return pid;
}

void KillTarget(pid_t pid) {
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

stasis::Result<stasis::core::CheckpointStats> CaptureTo(pid_t pid, CaptureBackend backend,
                                                        stasis::ByteSink* sink,
                                                        stasis::core::AfterCheckpoint after) {
  stasis::core::CheckpointOptions opt;
  opt.target = pid;
  opt.scope = stasis::format::kScopeTree;
  opt.after = after;
  opt.capture_backend = backend;
  opt.tool_argv = {"kmod_guest"};
  return stasis::core::Checkpoint(opt, sink);
}

// --- restore -------------------------------------------------------------------

// One capture through `backend` that kills the process, then a restore:
// returns the restored root (our child, same pid), or 0 after a failed Check.
pid_t CaptureKillRestore(pid_t pid, bool user, int cycle) {
  stasis::StringSink sink;
  auto stats = CaptureTo(pid, user ? CaptureBackend::kUser : CaptureBackend::kKernel, &sink,
                         stasis::core::AfterCheckpoint::kKill);
  // Reap the original (its pid is restored): we are its parent and, from
  // the capture, still the tracer of its threads, whose zombies only a
  // __WALL wait collects.
  for (int i = 0; i < 100; ++i) {
    pid_t r = waitpid(-1, nullptr, __WALL);
    if (r == pid || (r < 0 && errno == ECHILD)) break;
  }
  const std::string c = "cycle " + std::to_string(cycle) + ": ";
  if (!Check(stats.has_value(),
             c + "capture: " + (stats.has_value() ? "" : stats.error().message())))
    return 0;
  Check(stats->kernel_backend != user, c + "the capture did not use the backend asked for");
  Check(stats->threads == kThreads + 1,
        c + "captured " + std::to_string(stats->threads) + " threads");
  std::printf("kmod_capture_restore: cycle %d: captured %u threads, %.1f MiB in %.3f s (%s)\n",
              cycle, stats->threads, stats->page_bytes / 1048576.0, stats->total_seconds,
              stats->kernel_backend ? "kernel" : "user");
  if (const char* save = std::getenv("STASIS_KMOD_SAVE")) {  // for stasis show
    FILE* f = std::fopen(save, "w");
    if (f) {
      std::fwrite(sink.bytes().data(), 1, sink.bytes().size(), f);
      std::fclose(f);
    }
  }
  stasis::MemorySource source(sink.bytes().data(), sink.bytes().size());
  stasis::core::RestoreOptions ropt;
  auto restored = stasis::core::Restore(&source, ropt);
  if (!Check(restored.has_value(),
             c + "restore: " + (restored.has_value() ? "" : restored.error().message())))
    return 0;
  if (!Check(
          restored->root_pid == pid && restored->wait_pid == pid && !restored->in_new_pid_namespace,
          c + "restored under another pid " + std::to_string(restored->root_pid))) {
    kill(restored->wait_pid, SIGKILL);
    waitpid(restored->wait_pid, nullptr, 0);
    return 0;
  }
  return pid;
}

// Two checkpoint/restart cycles (the restored program runs in between),
// then the program checks its own state.
int TestRestore() {
  // STASIS_KMOD_BACKEND=user runs the same test without the module (a
  // control run on a machine that has none).
  const char* env = std::getenv("STASIS_KMOD_BACKEND");
  const bool user = env && std::string(env) == "user";
  pid_t pid = StartStoppedTarget();
  std::printf("kmod_capture_restore: target %d stopped\n", pid);
  for (int cycle = 1; cycle <= 2; ++cycle) {
    if (cycle > 1) {  // let the restored program run, then stop it again
      kill(pid, SIGCONT);
      usleep(300000);
      kill(pid, SIGSTOP);
      int st = 0;
      waitpid(pid, &st, WUNTRACED);
      if (!Check(WIFSTOPPED(st), "the restored program did not stop for cycle 2 (wait status " +
                                     std::to_string(st) + ")"))
        return Report("kmod_capture_restore");
    }
    if (CaptureKillRestore(pid, user, cycle) == 0) return Report("kmod_capture_restore");
  }
  usleep(200000);  // let it run a little after the restore
  kill(pid, SIGCONT);
  kill(pid, SIGUSR1);
  int status = 0;
  pid_t got = 0;
  for (int i = 0; i < 600 && got == 0; ++i) {  // 60 s
    got = waitpid(pid, &status, WNOHANG);
    if (got == 0) usleep(100000);
  }
  if (got == 0) {
    Check(false, "the restored program did not finish within 60 s of SIGUSR1");
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return Report("kmod_capture_restore");
  }
  Check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
        "the restored program reports a broken state (wait status " + std::to_string(status) + ")");
  return Report("kmod_capture_restore");
}

// --- equivalence ----------------------------------------------------------------

std::vector<stasis::format::PageRun> Merge(std::vector<stasis::format::PageRun> runs) {
  std::vector<stasis::format::PageRun> out;
  for (const auto& r : runs) {
    if (!out.empty() && out.back().start + out.back().npages * 4096 == r.start)
      out.back().npages += r.npages;
    else
      out.push_back(r);
  }
  return out;
}

int TestEquivalent() {
  pid_t pid = StartStoppedTarget();
  // A first capture leaves threads that were inside a system call with
  // their restart already applied (rip back on the syscall instruction):
  // the same program state, other register bytes. So one capture settles
  // that, and the two compared captures see identical tasks.
  stasis::StringSink warmup_sink, user_sink, kernel_sink;
  auto w =
      CaptureTo(pid, CaptureBackend::kUser, &warmup_sink, stasis::core::AfterCheckpoint::kContinue);
  // STASIS_KMOD_BACKEND=user: a control run, user against user.
  const char* env = std::getenv("STASIS_KMOD_BACKEND");
  const bool control = env && std::string(env) == "user";
  auto k = CaptureTo(pid, control ? CaptureBackend::kUser : CaptureBackend::kKernel, &kernel_sink,
                     stasis::core::AfterCheckpoint::kContinue);
  auto u =
      CaptureTo(pid, CaptureBackend::kUser, &user_sink, stasis::core::AfterCheckpoint::kContinue);
  Check(w.has_value(), "first capture: " + (w.has_value() ? "" : w.error().message()));
  // STASIS_IOC_TASKSTATE on its own: the handlers, brk, itimer, prctl
  // values and altstacks the kernel capture above took from it instead of
  // injected calls (compared with the user capture's below).
  std::optional<stasis::core::KernelTaskState> state;
  if (!control) {  // the target is still stopped: the captures left it so
    auto kcap = stasis::core::KernelCapture::Open(CaptureBackend::kKernel);
    auto recs = kcap ? (*kcap)->ReadRecords(STASIS_IOC_TASKSTATE, pid)
                     : stasis::Result<std::string>(kcap.error());
    auto parsed = recs ? stasis::core::ParseKernelTaskState(pid, *recs)
                       : stasis::Result<stasis::core::KernelTaskState>(recs.error());
    if (Check(parsed.has_value(), "TASKSTATE: " + (parsed ? "" : parsed.error().message())))
      state = *parsed;
  }
  KillTarget(pid);
  if (!Check(u.has_value(), "user capture: " + (u.has_value() ? "" : u.error().message())) ||
      !Check(k.has_value(), "kernel capture: " + (k.has_value() ? "" : k.error().message())))
    return Report("kmod_equivalent");
  Check(!u->kernel_backend && k->kernel_backend != control,
        "the backends were not the ones asked for");
  stasis::MemorySource us(user_sink.bytes().data(), user_sink.bytes().size());
  stasis::MemorySource ks(kernel_sink.bytes().data(), kernel_sink.bytes().size());
  auto uc = stasis::format::ReadContext(&us, true);
  auto kc = stasis::format::ReadContext(&ks, true);
  if (!Check(uc.has_value() && kc.has_value(), "a context does not decode"))
    return Report("kmod_equivalent");
  {
    stasis::MemorySource ws(warmup_sink.bytes().data(), warmup_sink.bytes().size());
    auto wc = stasis::format::ReadContext(&ws, true);
    for (const auto* c : {&*wc, &*kc, &*uc}) {
      std::printf("  pending per thread:");
      for (const auto& t : c->processes[0].threads) {
        std::printf(" %u:%zu", t.tid, t.pending.size() / 128);
        for (size_t o = 0; o + 128 <= t.pending.size(); o += 128) {
          int32_t w[3];
          std::memcpy(w, &t.pending[o], sizeof w);
          std::printf("(sig %d code %d)", w[0], w[2]);
        }
      }
      std::printf(" shared:%zu\n", c->processes[0].info.pending_shared.size() / 128);
    }
  }
  Check(uc->processes.size() == 1 && kc->processes.size() == 1, "process count differs");
  if (!g_failure.empty()) return Report("kmod_equivalent");
  const auto& a = uc->processes[0];
  const auto& b = kc->processes[0];
  Check(a.mappings.size() == b.mappings.size(), "mapping count " +
                                                    std::to_string(a.mappings.size()) + " vs " +
                                                    std::to_string(b.mappings.size()));
  for (size_t i = 0; i < a.mappings.size() && i < b.mappings.size(); ++i)
    Check(a.mappings[i] == b.mappings[i], "mapping " + std::to_string(i) + " differs (" +
                                              a.mappings[i].path + " / " + b.mappings[i].path +
                                              ")");
  Check(Merge(a.page_runs) == Merge(b.page_runs), "page runs differ");
  if (a.page_data != b.page_data && a.page_data.size() == b.page_data.size()) {
    // Name the first differing byte by its address in the process.
    size_t off = 0;
    while (a.page_data[off] == b.page_data[off]) ++off;
    uint64_t page = off / 4096, addr = 0;
    for (const auto& r : Merge(a.page_runs)) {
      if (page < r.npages) {
        addr = r.start + page * 4096 + off % 4096;
        break;
      }
      page -= r.npages;
    }
    std::printf("  first differing byte at address %#llx\n", static_cast<unsigned long long>(addr));
  }
  Check(a.page_data == b.page_data, "page data differs");
  Check(a.page_bytes > kPatternBytes / 2, "too few pages saved: " + std::to_string(a.page_bytes));
  Check(a.threads.size() == b.threads.size(), "thread count differs");
  for (size_t i = 0; i < a.threads.size() && i < b.threads.size(); ++i) {
    const auto& x = a.threads[i];
    const auto& y = b.threads[i];
    const std::string t = "thread " + std::to_string(x.tid) + ": ";
    if (x.gpregs != y.gpregs && x.gpregs.size() == y.gpregs.size())
      for (size_t off = 0; off + 8 <= x.gpregs.size(); off += 8)
        if (std::memcmp(&x.gpregs[off], &y.gpregs[off], 8) != 0)
          std::printf("  thread %u: register at offset %zu differs\n", x.tid, off);
    Check(x.gpregs == y.gpregs, t + "general registers differ");
    Check(x.xsave == y.xsave, t + "xsave state differs");
    Check(x.sigmask == y.sigmask, t + "signal mask differs");
    if (x.pending != y.pending) {
      std::printf("  thread %u: pending %zu bytes (user) vs %zu (kernel)\n", x.tid,
                  x.pending.size(), y.pending.size());
      for (size_t off = 0; off < x.pending.size() && off < y.pending.size(); ++off)
        if (x.pending[off] != y.pending[off])
          std::printf("    byte %zu: %02x vs %02x\n", off, x.pending[off], y.pending[off]);
    }
    Check(x.pending == y.pending, t + "pending signals differ");
    Check(x == y, t + "another thread field differs");
  }
  Check(a.info.pending_shared == b.info.pending_shared, "shared pending signals differ");
  Check(!a.info.pending_shared.empty(), "the shared SIGUSR2 is not pending in the context");
  Check(a.info == b.info, "process info differs");
  if (state) {
    Check(state->have && state->actions == a.info.sigactions,
          "TASKSTATE handlers differ from the injected calls'");
    Check(a.info.sigactions.size() > SIGUSR1 && a.info.sigactions[SIGUSR1 - 1].handler > 1,
          "the program's SIGUSR1 handler is not in the context");
    Check(state->brk == a.info.mm.brk && state->dumpable == a.info.dumpable &&
              state->timer_slack_ns == a.info.timerslack_ns,
          "TASKSTATE brk/dumpable/timerslack differ from the injected calls'");
    for (const auto& t : a.threads) {
      auto it = state->threads.find(t.tid);
      const bool same = it != state->threads.end() && it->second.altstack_sp == t.altstack_sp &&
                        it->second.altstack_size == t.altstack_size &&
                        static_cast<uint32_t>(it->second.altstack_flags) == t.altstack_flags &&
                        it->second.timer_slack_ns == t.timerslack_ns &&
                        it->second.clear_child_tid == t.clear_tid_address &&
                        it->second.rseq == t.rseq_address && it->second.rseq_len == t.rseq_length &&
                        it->second.rseq_sig == t.rseq_signature;
      Check(same, "TASKSTATE of thread " + std::to_string(t.tid) +
                      " differs from the injected calls' and ptrace's");
      if (it != state->threads.end() && t.rseq_address == 0)
        std::printf("  thread %u: no rseq\n", t.tid);
    }
    std::printf(
        "kmod_equivalent: TASKSTATE gave %zu handlers, brk %#llx, %zu threads' altstack, timer "
        "slack, "
        "tid address and rseq, as the injected calls and ptrace\n",
        state->actions.size(), static_cast<unsigned long long>(state->brk), state->threads.size());
  }
  Check(a.files.size() == b.files.size(), "fd count differs");
  for (size_t i = 0; i < a.files.size() && i < b.files.size(); ++i)
    Check(a.files[i] == b.files[i], "fd " + std::to_string(a.files[i].fd) + " differs");
  std::printf("kmod_equivalent: %zu mappings, %zu threads, %zu fds, %.1f MiB of pages compared\n",
              a.mappings.size(), a.threads.size(), a.files.size(), a.page_bytes / 1048576.0);
  return Report("kmod_equivalent");
}

// --- hostile arguments ---------------------------------------------------------

int Ioctl(int fd, unsigned long req, void* arg) {
  errno = 0;
  return ioctl(fd, req, arg) == 0 ? 0 : errno;
}

void Expect(int got, int want, const std::string& what) {
  std::printf("  %-48s %s (want %s)\n", what.c_str(), got ? strerror(got) : "ok",
              want ? strerror(want) : "ok");
  Check(got == want, what + ": got " + (got ? strerror(got) : "success") + ", want " +
                         (want ? strerror(want) : "success"));
}

stasis_task_req TaskReq(pid_t pid, int fd) {
  stasis_task_req r{};
  r.size = sizeof r;
  r.pid = pid;
  r.fd = fd;
  return r;
}

// Runs fn in a child that switched to uid (keeping the open device fd);
// returns fn's errno result.
template <typename Fn>
int AsUser(uid_t uid, Fn fn) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return -1;
  pid_t c = fork();
  if (c == 0) {
    close(pipefd[0]);
    int r = -1;
    if (setresgid(uid, uid, uid) == 0 && setresuid(uid, uid, uid) == 0) r = fn();
    (void)!write(pipefd[1], &r, sizeof r);
    _exit(0);
  }
  close(pipefd[1]);
  int r = -1;
  if (read(pipefd[0], &r, sizeof r) != sizeof r) r = -1;
  close(pipefd[0]);
  waitpid(c, nullptr, 0);
  return r;
}

int TestHostile() {
  signal(SIGPIPE, SIG_IGN);
  int dev = open("/dev/stasis", O_RDWR | O_CLOEXEC);
  if (!Check(dev >= 0, std::string("open /dev/stasis: ") + strerror(errno)))
    return Report("kmod_hostile");
  struct stat st;
  fstat(dev, &st);
  Check((st.st_mode & 0777) == 0600, "/dev/stasis is not mode 0600");
  int out = memfd_create("out", MFD_CLOEXEC);
  int ro = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
  pid_t stopped = StartStoppedTarget();

  // Positive control first: a good request succeeds.
  stasis_task_req r = TaskReq(stopped, out);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), 0, "good VMAS request");
  Check(r.count > 5, "VMAS gave only " + std::to_string(r.count) + " records");
  Expect(AsUser(1000, [] { return open("/dev/stasis", O_RDWR) < 0 ? errno : 0; }), EACCES,
         "open /dev/stasis as uid 1000");
  Expect(Ioctl(dev, STASIS_IOC_VMAS, nullptr), EFAULT, "NULL argument");
  Expect(Ioctl(dev, STASIS_IOC_VMAS, reinterpret_cast<void*>(1)), EFAULT, "pointer 0x1");
  Expect(Ioctl(dev, STASIS_IOC_THREADS, reinterpret_cast<void*>(0xffff800000000000ull)), EFAULT,
         "kernel-half pointer");
  r = TaskReq(stopped, out);
  r.size = 8;
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), EINVAL, "size field too small");
  r.size = 0xffffffffu;
  Expect(Ioctl(dev, STASIS_IOC_FILES, &r), EINVAL, "size field huge");
  r = TaskReq(stopped, out);
  r.reserved[3] = 1;
  Expect(Ioctl(dev, STASIS_IOC_THREADS, &r), EINVAL, "reserved field set");
  r = TaskReq(stopped, out);
  r.flags = 1;
  Expect(Ioctl(dev, STASIS_IOC_THREADS, &r), EINVAL, "unknown flags");
  r = TaskReq(stopped, -1);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), EBADF, "fd -1");
  r = TaskReq(stopped, 100000);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), EBADF, "fd 100000 (not open)");
  r = TaskReq(stopped, ro);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), EBADF, "fd opened read-only");
  r = TaskReq(stopped, dev);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), EINVAL, "output into /dev/stasis itself");
  r = TaskReq(0, out);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), EINVAL, "pid 0");
  r = TaskReq(-5, out);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), EINVAL, "pid -5");
  r = TaskReq(4000000, out);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), ESRCH, "pid that does not exist");
  r = TaskReq(2, out);
  Expect(Ioctl(dev, STASIS_IOC_VMAS, &r), ESRCH, "kernel thread (pid 2)");
  Expect(Ioctl(dev, _IOWR(STASIS_IOC_MAGIC, 99, struct stasis_task_req), &r), ENOTTY,
         "unknown ioctl number");

  // A running task is refused.
  pid_t running = fork();
  if (running == 0) {
    for (;;) {
    }
  }
  usleep(100000);
  r = TaskReq(running, out);
  Expect(Ioctl(dev, STASIS_IOC_THREADS, &r), EBUSY, "running task (THREADS)");
  r = TaskReq(running, out);
  Expect(Ioctl(dev, STASIS_IOC_TASKSTATE, &r), EBUSY, "running task (TASKSTATE)");
  r = TaskReq(running, -1);
  Expect(Ioctl(dev, STASIS_IOC_TASKSTATE, &r), EBADF, "bad fd (TASKSTATE)");
  stasis_pages_req p{};
  p.size = sizeof p;
  p.pid = running;
  p.fd = out;
  p.start = 0x400000;
  p.end = 0x401000;
  p.max_bytes = 4096;
  Expect(Ioctl(dev, STASIS_IOC_PAGES, &p), EBUSY, "running task (PAGES)");
  KillTarget(running);

  // Frozen by the cgroup v2 freezer: accepted while frozen, EBUSY once thawed.
  if (mkdir("/sys/fs/cgroup/kmod", 0755) == 0 || errno == EEXIST) {
    pid_t spin = fork();
    if (spin == 0) {
      for (;;) {
      }
    }
    auto put = [](const std::string& file, const std::string& text) {
      int fd = open(file.c_str(), O_WRONLY | O_CLOEXEC);
      bool ok = fd >= 0 && write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      if (fd >= 0) close(fd);
      return ok;
    };
    bool frozen = put("/sys/fs/cgroup/kmod/cgroup.procs", std::to_string(spin)) &&
                  put("/sys/fs/cgroup/kmod/cgroup.freeze", "1");
    for (int i = 0; frozen && i < 200; ++i) {  // wait for "frozen 1" in cgroup.events
      char ev[256] = {0};
      int fd = open("/sys/fs/cgroup/kmod/cgroup.events", O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        (void)!read(fd, ev, sizeof ev - 1);
        close(fd);
      }
      if (std::strstr(ev, "frozen 1")) break;
      usleep(10000);
    }
    Check(frozen, "could not freeze a task with the cgroup v2 freezer");
    r = TaskReq(spin, out);
    Expect(Ioctl(dev, STASIS_IOC_THREADS, &r), 0, "task frozen by the cgroup v2 freezer");
    put("/sys/fs/cgroup/kmod/cgroup.freeze", "0");
    usleep(100000);
    r = TaskReq(spin, out);
    Expect(Ioctl(dev, STASIS_IOC_THREADS, &r), EBUSY, "the same task thawed (running)");
    KillTarget(spin);
  } else {
    Check(false, std::string("mkdir /sys/fs/cgroup/kmod: ") + strerror(errno));
  }

  // PAGES argument checks, on the stopped target's first mapping.
  auto vmas = stasis::core::KernelCapture::Open(CaptureBackend::kKernel);
  uint64_t vstart = 0, vend = 0;
  if (vmas.has_value() && *vmas) {
    auto task = (*vmas)->CaptureTask(stopped);
    if (task.has_value() && !task->maps.empty()) {
      vstart = task->maps[0].start;
      vend = task->maps[0].end;
    }
  }
  Check(vend > vstart, "could not read the target's first mapping");
  auto pages = [&](uint64_t start, uint64_t end, uint64_t max, uint32_t flags) {
    stasis_pages_req q{};
    q.size = sizeof q;
    q.pid = stopped;
    q.fd = out;
    q.start = start;
    q.end = end;
    q.max_bytes = max;
    q.flags = flags;
    return Ioctl(dev, STASIS_IOC_PAGES, &q);
  };
  Expect(pages(vstart, vend, 1 << 20, 0), 0, "good PAGES request");
  Expect(pages(vstart, vend, 1ull << 40, 0), EINVAL, "PAGES max_bytes 1 TiB");
  Expect(pages(vstart, vend, 0, 0), EINVAL, "PAGES max_bytes 0");
  Expect(pages(vstart + 1, vend, 1 << 20, 0), EINVAL, "PAGES unaligned start");
  Expect(pages(vend, vstart, 1 << 20, 0), EINVAL, "PAGES start after end");
  Expect(pages(vstart, vend + (1ull << 40), 1 << 20, 0), EINVAL, "PAGES range past its VMA");
  Expect(pages(0xfffffffffffff000ull, 0xfffffffffffff000ull + 4096 * 0, 1 << 20, 0), EINVAL,
         "PAGES empty range at the top");
  Expect(pages(0x7ffffffff000ull, 0x800000001000ull, 1 << 20, 0), EINVAL,
         "PAGES end beyond user space");
  Expect(pages(vstart, vend, 1 << 20, 0x80), EINVAL, "PAGES unknown flag");
  {
    int pp[2];
    pipe(pp);
    close(pp[0]);
    stasis_task_req w = TaskReq(stopped, pp[1]);
    Expect(Ioctl(dev, STASIS_IOC_VMAS, &w), EPIPE, "output pipe without reader");
    close(pp[1]);
  }

  // Another user's stopped process: refused to uid 2000, allowed to its owner.
  pid_t other = fork();
  if (other == 0) {
    if (setresgid(1000, 1000, 1000) != 0 || setresuid(1000, 1000, 1000) != 0) _exit(2);
    prctl(PR_SET_DUMPABLE, 1);  // a uid change clears it, as for ptrace
    raise(SIGSTOP);
    _exit(0);
  }
  waitpid(other, nullptr, WUNTRACED);
  Expect(AsUser(2000,
                [&] {
                  stasis_task_req q = TaskReq(other, out);
                  return Ioctl(dev, STASIS_IOC_THREADS, &q);
                }),
         EPERM, "pid of another user (uid 2000 -> uid 1000)");
  Expect(AsUser(1000,
                [&] {
                  stasis_task_req q = TaskReq(other, out);
                  return Ioctl(dev, STASIS_IOC_THREADS, &q);
                }),
         0, "the owner's own stopped process (uid 1000)");
  Expect(AsUser(2000,
                [&] {
                  stasis_task_req q = TaskReq(stopped, out);
                  return Ioctl(dev, STASIS_IOC_FILES, &q);
                }),
         EPERM, "root's process from uid 2000");
  KillTarget(other);
  KillTarget(stopped);
  close(dev);
  return Report("kmod_hostile");
}

// --- permission ---------------------------------------------------------------

// The targets: stopped processes of uid 1000 (or not) that differ from
// "uid 1000, gid 1000, dumpable, no capability" in one thing each.
struct PermTarget {
  const char* what;
  uid_t uid, suid;
  gid_t gid;
  bool dumpable;
  uint32_t permitted;   // capability bits (first word) kept in the permitted set
  bool userns = false;  // then in a user namespace of its own (owned by uid)
  pid_t pid = 0;
  uint64_t start = 0, end = 0;  // its first mapping, for PAGES
};

constexpr uid_t kUser = 1000;
constexpr uid_t kOtherUser = 2000;

void StartPermTarget(PermTarget* t) {
  pid_t pid = fork();
  if (pid == 0) {
    // Capabilities survive the uid change only with keepcaps (or a root
    // saved uid); capset then keeps just what the target should hold.
    prctl(PR_SET_KEEPCAPS, 1);
    if (setgroups(0, nullptr) != 0 || setresgid(t->gid, t->gid, t->gid) != 0 ||
        setresuid(t->uid, t->uid, t->suid) != 0)
      _exit(2);
    __user_cap_header_struct h{};
    h.version = _LINUX_CAPABILITY_VERSION_3;
    __user_cap_data_struct d[2]{};
    d[0].permitted = t->permitted;
    if (syscall(SYS_capset, &h, d) != 0) _exit(3);
    // A uid change made it non-dumpable; the targets set it as they want.
    if (prctl(PR_SET_DUMPABLE, t->dumpable ? 1 : 0) != 0) _exit(4);
    // All capabilities, in a namespace the user owns (dumpability stays).
    if (t->userns && unshare(CLONE_NEWUSER) != 0) _exit(5);
    raise(SIGSTOP);
    for (;;) pause();
  }
  int st = 0;
  waitpid(pid, &st, WUNTRACED);
  if (!Check(WIFSTOPPED(st), std::string("target '") + t->what + "' did not start (wait status " +
                                 std::to_string(st) + ")"))
    return;
  t->pid = pid;
  auto maps = stasis::core::ReadFileToString("/proc/" + std::to_string(pid) + "/maps");
  if (maps) std::sscanf(maps->c_str(), "%lx-%lx", &t->start, &t->end);
  auto status = stasis::core::ReadFileToString("/proc/" + std::to_string(pid) + "/status");
  std::string ids;
  for (const char* key : {"Uid:", "Gid:", "CapPrm:"}) {
    size_t at = status ? status->find(key) : std::string::npos;
    if (at != std::string::npos) ids += " " + status->substr(at, status->find('\n', at) - at);
  }
  for (char& c : ids)
    if (c == '\t') c = ' ';
  std::printf("  target %d: %s:%s\n", pid, t->what, ids.c_str());
}

// Every per-task ioctl on t, as the calling process; their errno if they
// all agree, else -2.
int CaptureErrno(int dev, int out, const PermTarget& t) {
  int first = -1;
  for (unsigned long req :
       {STASIS_IOC_VMAS, STASIS_IOC_THREADS, STASIS_IOC_FILES, STASIS_IOC_TASKSTATE}) {
    stasis_task_req r = TaskReq(t.pid, out);
    int e = Ioctl(dev, req, &r);
    if (first >= 0 && e != first) return -2;
    first = e;
  }
  stasis_pages_req p{};
  p.size = sizeof p;
  p.pid = t.pid;
  p.fd = out;
  p.start = t.start;
  p.end = t.end;
  p.max_bytes = 1 << 20;
  int e = Ioctl(dev, STASIS_IOC_PAGES, &p);
  return e == first ? first : -2;
}

// The kernel's own verdict for the calling process: /proc/PID/environ is
// opened with PTRACE_MODE_READ_FSCREDS (same uids/gids/dumpable/capability
// rule as ATTACH, and no Yama). 0 or the errno.
int KernelVerdict(const PermTarget& t) {
  int fd = open(("/proc/" + std::to_string(t.pid) + "/environ").c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  close(fd);
  return 0;
}

// Runs `become` then `body` in a child (keeping the open fds); returns
// body's numbers, or an empty vector if `become` failed.
template <typename Become, typename Body>
std::vector<int> InChild(Become become, Body body) {
  int pipefd[2];
  if (pipe(pipefd) != 0) return {};
  pid_t c = fork();
  if (c == 0) {
    close(pipefd[0]);
    std::vector<int> r;
    if (become()) r = body();
    (void)!write(pipefd[1], r.data(), r.size() * sizeof(int));
    _exit(0);
  }
  close(pipefd[1]);
  std::vector<int> r;
  int v;
  while (read(pipefd[0], &v, sizeof v) == sizeof v) r.push_back(v);
  close(pipefd[0]);
  waitpid(c, nullptr, 0);
  return r;
}

bool HasEffectiveCap(int cap) {
  __user_cap_header_struct h{};
  h.version = _LINUX_CAPABILITY_VERSION_3;
  __user_cap_data_struct d[2]{};
  if (syscall(SYS_capget, &h, d) != 0) return false;
  return d[cap / 32].effective & (1u << (cap % 32));
}

std::string ErrName(int e) {
  return e == 0 ? "ok" : e == -2 ? "ioctls disagree" : e < 0 ? "no result" : strerror(e);
}

// Root, root acting for uid 1000 (setgroups + setfsgid + setfsuid, keeping
// CAP_SYS_PTRACE: what stasisd's worker does) and uid 1000 itself, against
// processes that differ from uid 1000's own in uid, gid, dumpability,
// saved uid or capabilities. Root may capture all; the other two exactly
// what the kernel lets uid 1000 trace: its own plain process.
int TestPermission() {
  signal(SIGPIPE, SIG_IGN);
  int dev = open("/dev/stasis", O_RDWR | O_CLOEXEC);
  if (!Check(dev >= 0, std::string("open /dev/stasis: ") + strerror(errno)))
    return Report("kmod_permission");
  int out = memfd_create("out", MFD_CLOEXEC);
  PermTarget targets[] = {
      {"uid 1000 gid 1000, dumpable (the user's own)", kUser, kUser, kUser, true, 0},
      {"uid 1000, gid 2000 (setresgid)", kUser, kUser, kOtherUser, true, 0},
      {"uid 1000 gid 1000, not dumpable (PR_SET_DUMPABLE 0)", kUser, kUser, kUser, false, 0},
      {"uid 2000, gid 1000 (another user)", kOtherUser, kOtherUser, kUser, true, 0},
      {"uid 1000 gid 1000, CAP_NET_RAW permitted (keepcaps)", kUser, kUser, kUser, true,
       1u << CAP_NET_RAW},
      {"uid 1000 gid 1000, saved uid 0 (a set-user-id program)", kUser, 0, kUser, true, 0},
      {"uid 1000 gid 1000, in a user namespace uid 1000 owns", kUser, kUser, kUser, true, 0, true},
  };
  constexpr size_t kTargets = sizeof targets / sizeof targets[0];
  for (PermTarget& t : targets) StartPermTarget(&t);
  bool started = true;
  for (const PermTarget& t : targets) started = started && t.pid > 0 && t.end > t.start;
  if (!Check(started, "a target did not start or has no mapping")) {
    for (const PermTarget& t : targets)
      if (t.pid > 0) KillTarget(t.pid);
    return Report("kmod_permission");
  }

  // Each caller: per target the ioctls' errno, then the kernel's verdict.
  auto run_all = [&] {
    std::vector<int> r;
    for (const PermTarget& t : targets) {
      r.push_back(CaptureErrno(dev, out, t));
      r.push_back(KernelVerdict(t));
    }
    return r;
  };
  // want: root may capture everything; uid 1000 what the kernel lets it
  // trace (its own process, also inside a user namespace it owns); root
  // acting for uid 1000 only its own process outside user namespaces (the
  // module does not recompute namespace ownership for it: refused, stricter).
  enum Caller { kRoot, kActing, kUserItself };
  auto report = [&](const char* caller, const std::vector<int>& r, Caller who, bool vs_kernel) {
    std::printf(" %s:\n", caller);
    if (!Check(r.size() == 2 * kTargets, std::string(caller) + ": could not take that identity"))
      return;
    for (size_t i = 0; i < kTargets; ++i) {
      const bool may = who == kRoot || i == 0 || (who == kUserItself && targets[i].userns);
      const int want = may ? 0 : EPERM;
      const int got = r[2 * i], kernel = r[2 * i + 1];
      std::printf("  %-56s %-16s (want %s; kernel: %s)\n", targets[i].what, ErrName(got).c_str(),
                  ErrName(want).c_str(), kernel == 0 ? "may read" : "refuses");
      Check(got == want, std::string(caller) + ", " + targets[i].what + ": got " + ErrName(got) +
                             ", want " + ErrName(want));
      if (vs_kernel)
        Check((got == 0) == (kernel == 0), std::string(caller) + ", " + targets[i].what +
                                               ": the module and the kernel disagree");
    }
  };

  report("root (fsuid 0, CAP_SYS_PTRACE)", InChild([] { return true; }, run_all), kRoot, true);

  // What stasisd's worker does before it captures (TakeFsIdentity).
  int open_errno = -1;
  std::vector<int> acting = InChild(
      [&] {
        gid_t groups[] = {kUser};
        if (setgroups(1, groups) != 0) return false;
        setfsgid(kUser);
        setfsuid(kUser);
        return setfsuid(static_cast<uid_t>(-1)) == static_cast<int>(kUser) &&
               setfsgid(static_cast<gid_t>(-1)) == static_cast<int>(kUser) &&
               HasEffectiveCap(CAP_SYS_PTRACE) && !HasEffectiveCap(CAP_DAC_OVERRIDE);
      },
      [&] {
        std::vector<int> r = run_all();
        // The device itself, opened in this state: setfsuid dropped
        // CAP_DAC_OVERRIDE from the effective set, and it is 0600 root.
        int fd = open("/dev/stasis", O_RDWR | O_CLOEXEC);
        r.push_back(fd >= 0 ? 0 : errno);
        if (fd >= 0) close(fd);
        return r;
      });
  if (acting.size() == 2 * kTargets + 1) {
    open_errno = acting.back();
    acting.pop_back();
  }
  // The kernel's verdict is not compared here: its FSCREDS rule lets the
  // held CAP_SYS_PTRACE through, which is exactly what the module must not.
  report("root acting for uid 1000 (fsuid/fsgid 1000, CAP_SYS_PTRACE held)", acting, kActing,
         false);
  Expect(open_errno, EACCES, "open /dev/stasis with fsuid 1000 (as stasisd's worker)");

  report("uid 1000 itself (no capability)",
         InChild(
             [] {
               return setgroups(0, nullptr) == 0 && setresgid(kUser, kUser, kUser) == 0 &&
                      setresuid(kUser, kUser, kUser) == 0;
             },
             run_all),
         kUserItself, true);

  for (const PermTarget& t : targets) KillTarget(t.pid);
  close(out);
  close(dev);
  return Report("kmod_permission");
}

// --- one capture, benchmark ----------------------------------------------------

int CaptureOnce() {
  pid_t pid = StartStoppedTarget();
  stasis::StringSink sink;
  auto s = CaptureTo(pid, CaptureBackend::kKernel, &sink, stasis::core::AfterCheckpoint::kContinue);
  KillTarget(pid);
  if (!s.has_value()) std::fprintf(stderr, "capture-once: %s\n", s.error().message().c_str());
  return s.has_value() && s->kernel_backend ? 0 : 1;
}

// A process holding `mib` MiB of non-zero anonymous memory, captured to
// /dev/null by each backend in turn (twice each, alternating).
int Bench(uint64_t mib) {
  int ready[2];
  if (pipe(ready) != 0) return 1;
  pid_t pid = fork();
  if (pid == 0) {
    size_t n = mib << 20;
    auto* m = static_cast<uint8_t*>(
        mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (m == MAP_FAILED) _exit(2);
    for (size_t i = 0; i < n; i += 512) m[i] = static_cast<uint8_t>(i >> 12 | 1);
    char c = 1;
    (void)!write(ready[1], &c, 1);
    for (;;) pause();
  }
  char c;
  if (read(ready[0], &c, 1) != 1) return 1;
  kill(pid, SIGSTOP);
  waitpid(pid, nullptr, WUNTRACED);
  std::map<std::string, std::vector<double>> times;
  int rc = 0;
  for (int round = 0; round < 2; ++round) {
    for (CaptureBackend b : {CaptureBackend::kUser, CaptureBackend::kKernel}) {
      stasis::FdSink sink(stasis::UniqueFd(open("/dev/null", O_WRONLY | O_CLOEXEC)), "/dev/null");
      auto s = CaptureTo(pid, b, &sink, stasis::core::AfterCheckpoint::kContinue);
      const char* name = stasis::core::CaptureBackendName(b);
      if (!s.has_value()) {
        std::printf("bench: %s backend failed: %s\n", name, s.error().message().c_str());
        rc = 1;
        continue;
      }
      std::printf(
          "bench: %s backend: %llu MiB process, %.1f MiB of pages, total %.3f s "
          "(pause %.3f s), %.0f MiB/s\n",
          name, static_cast<unsigned long long>(mib), s->page_bytes / 1048576.0, s->total_seconds,
          s->pause_seconds, s->page_bytes / 1048576.0 / s->total_seconds);
      times[name].push_back(s->total_seconds);
    }
  }
  KillTarget(pid);
  std::fflush(stdout);
  return rc;
}

}  // namespace

// --- a process under a debugger ----------------------------------------------

// The target stopped and held by a "debugger" (a child that PTRACE_SEIZEs
// every thread): the engine cannot seize it, so it captures it through the
// module alone (no injected call), leaves it to its debugger, and the
// context restores and passes the program's own checks.
int TestTraced() {
  pid_t pid = StartStoppedTarget();
  int ready[2];
  if (!Check(::pipe(ready) == 0, "pipe")) return Report("kmod_traced");
  pid_t dbg = fork();
  if (dbg == 0) {
    std::vector<long> tids;
    if (DIR* d = opendir(("/proc/" + std::to_string(pid) + "/task").c_str())) {
      while (struct dirent* e = readdir(d))
        if (e->d_name[0] != '.') tids.push_back(std::atol(e->d_name));
      closedir(d);
    }
    bool ok = !tids.empty();
    for (long t : tids) ok = ok && ::ptrace(PTRACE_SEIZE, t, nullptr, nullptr) == 0;
    char c = ok ? 'y' : 'n';
    if (::write(ready[1], &c, 1) != 1) _exit(1);
    for (;;) pause();
  }
  char c = 0;
  Check(::read(ready[0], &c, 1) == 1 && c == 'y', "the debugger could not seize the target");
  usleep(100000);  // seized stopped threads move to their trap stop
  stasis::StringSink sink;
  auto stats =
      CaptureTo(pid, CaptureBackend::kKernel, &sink, stasis::core::AfterCheckpoint::kContinue);
  // The debugger still holds it, stopped: nothing of ours was left in it.
  auto status = stasis::core::ReadFileToString("/proc/" + std::to_string(pid) + "/status");
  Check(status && status->find("TracerPid:\t" + std::to_string(dbg)) != std::string::npos,
        "the debugger lost the target");
  ::kill(dbg, SIGKILL);
  ::waitpid(dbg, nullptr, 0);
  KillTarget(pid);
  if (!Check(stats.has_value(),
             "capture under a debugger: " + (stats ? "" : stats.error().message())))
    return Report("kmod_traced");
  Check(stats->kernel_backend && stats->threads == kThreads + 1,
        "captured " + std::to_string(stats->threads) + " threads, kernel backend " +
            std::to_string(stats->kernel_backend));
  std::printf("kmod_traced: captured %u threads, %.1f MiB while pid %d's debugger held it\n",
              stats->threads, stats->page_bytes / 1048576.0, pid);
  stasis::MemorySource source(sink.bytes().data(), sink.bytes().size());
  stasis::core::RestoreOptions ropt;
  auto restored = stasis::core::Restore(&source, ropt);
  if (!Check(restored.has_value(), "restore: " + (restored ? "" : restored.error().message())))
    return Report("kmod_traced");
  pid_t r = restored->wait_pid;
  usleep(200000);
  kill(r, SIGCONT);
  kill(restored->root_pid, SIGUSR1);
  int st = 0;
  pid_t got = 0;
  for (int i = 0; i < 600 && got == 0; ++i) {
    got = waitpid(r, &st, WNOHANG);
    if (got == 0) usleep(100000);
  }
  if (got == 0) {
    kill(r, SIGKILL);
    waitpid(r, &st, 0);
    Check(false, "the restored program did not finish within 60 s of SIGUSR1");
  } else {
    Check(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "the restored program reports a broken state (wait status " + std::to_string(st) + ")");
  }
  return Report("kmod_traced");
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "restore") return TestRestore();
  if (cmd == "equivalent") return TestEquivalent();
  if (cmd == "hostile") return TestHostile();
  if (cmd == "permission") return TestPermission();
  if (cmd == "traced") return TestTraced();
  if (cmd == "capture-once") return CaptureOnce();
  if (cmd == "bench" && argc > 2) return Bench(std::strtoull(argv[2], nullptr, 10));
  std::fprintf(
      stderr,
      "usage: kmod_guest restore|equivalent|hostile|permission|traced|capture-once|bench MIB\n");
  return 2;
}

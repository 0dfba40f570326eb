// Tracee's bounds (issue 23, finding 5): an injected call that cannot run
// or never returns fails within its deadline, and the child is left
// running as it was.
#include "engine/core/ptrace.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>

namespace stasis::core {
namespace {

class Child {
 public:
  Child() {
    pid_ = ::fork();
    if (pid_ == 0) {
      for (;;) ::usleep(1000);
    }
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st;
      ::waitpid(pid_, &st, __WALL);
    }
  }
  pid_t pid() const { return pid_; }
  bool Running() const {
    int st;
    return ::waitpid(pid_, &st, WNOHANG | __WALL) == 0;
  }

 private:
  pid_t pid_ = -1;
};

TEST(Tracee, FaultAtTheInjectedInstructionFailsAtOnce) {
  Child c;
  ASSERT_GT(c.pid(), 0);
  Tracee t(c.pid(), c.pid());
  ASSERT_TRUE(t.SeizeAndInterrupt().ok());
  ASSERT_TRUE(t.WaitForStop().ok());
  // No `syscall` instruction there (the page is not mapped): the thread
  // faults before the call; resuming it would fault forever.
  auto r = t.Syscall(0x10000, SYS_getpid);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), EFAULT) << r.error().message();
  EXPECT_TRUE(t.RestoreAndDetach(0).ok());
  ::usleep(20000);
  EXPECT_TRUE(c.Running());
}

TEST(Tracee, ACallThatNeverReturnsTimesOut) {
  Child c;
  ASSERT_GT(c.pid(), 0);
  Tracee t(c.pid(), c.pid());
  t.SetTimeout(0.3);
  ASSERT_TRUE(t.SeizeAndInterrupt().ok());
  ASSERT_TRUE(t.WaitForStop().ok());
  auto mem = ProcessMemory::Open(c.pid(), false);
  ASSERT_TRUE(mem) << mem.error().message();
  auto insn = FindVdsoSyscall(c.pid(), *mem);
  ASSERT_TRUE(insn) << insn.error().message();
  auto pid = t.Syscall(*insn, SYS_getpid);
  ASSERT_TRUE(pid) << pid.error().message();
  EXPECT_EQ(*pid, c.pid());
  const auto t0 = std::chrono::steady_clock::now();
  auto r = t.Syscall(*insn, SYS_pause);  // all signals blocked: forever
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), ETIMEDOUT) << r.error().message();
  EXPECT_LT(took, 3.0);
  // Interrupted on the timeout: still stopped, so it can be put back.
  EXPECT_TRUE(t.RestoreAndDetach(0).ok());
  ::usleep(20000);
  EXPECT_TRUE(c.Running());
}

}  // namespace
}  // namespace stasis::core

// Parsers of /proc text (engine/core/procfs.h) fed the kernel's own formats.
#include "engine/core/procfs.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

namespace stasis::core {
namespace {

TEST(ParsePosixTimers, EveryNotificationKind) {
  // As Linux 6.x prints them: a SIGEV_SIGNAL timer, a SIGEV_NONE one and
  // glibc's SIGEV_THREAD (a signal to its helper thread, SIGEV_THREAD_ID).
  const char* text =
      "ID: 0\nsignal: 37/0000000000000abc\nnotify: signal/pid.4242\nClockID: 1\n"
      "ID: 1\nsignal: 0/0000000000000000\nnotify: none/pid.4242\nClockID: 0\n"
      "ID: 7\nsignal: 32/00007f12345678a0\nnotify: signal/tid.4250\nClockID: 1\n";
  auto timers = ParsePosixTimers(text);
  ASSERT_TRUE(timers) << timers.error().message();
  ASSERT_EQ(timers->size(), 3u);
  EXPECT_EQ((*timers)[0].id, 0);
  EXPECT_EQ((*timers)[0].signo, 37u);
  EXPECT_EQ((*timers)[0].sigval, 0xabcu);
  EXPECT_EQ((*timers)[0].notify, static_cast<uint32_t>(SIGEV_SIGNAL));
  EXPECT_EQ((*timers)[0].clock, 1);
  EXPECT_EQ((*timers)[1].notify, static_cast<uint32_t>(SIGEV_NONE));
  EXPECT_EQ((*timers)[1].clock, 0);
  EXPECT_EQ((*timers)[2].id, 7);
  EXPECT_EQ((*timers)[2].notify, static_cast<uint32_t>(SIGEV_SIGNAL | SIGEV_THREAD_ID));
  EXPECT_EQ((*timers)[2].tid, 4250u);
  EXPECT_EQ((*timers)[2].sigval, 0x7f12345678a0u);
}

TEST(ParsePosixTimers, RefusesWhatItCannotRead) {
  EXPECT_FALSE(static_cast<bool>(ParsePosixTimers("signal: 1/0\n")));  // a field before any ID
  EXPECT_FALSE(static_cast<bool>(ParsePosixTimers("ID: x\n")));
  EXPECT_FALSE(static_cast<bool>(ParsePosixTimers("ID: 1\nnotify: thread/pid.3\n")));
  EXPECT_FALSE(static_cast<bool>(ParsePosixTimers("ID: 1\nnonsense\n")));
  auto none = ParsePosixTimers("");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

// The kernel's ptrace rule as stasisd applies it for a user (issue 23).
std::string StatusText(const char* uid, const char* gid, const char* capprm) {
  return std::string("Name:\tx\nUid:\t") + uid + "\nGid:\t" + gid +
         "\nCapInh:\t0000000000000000\nCapPrm:\t" + capprm + "\nCapEff:\t" + capprm + "\n";
}

TEST(MayTraceFromStatus, TheKernelsWholeRule) {
  TraceCreds a;
  a.uid = 1001;
  a.gid = 1001;
  const char* none = "0000000000000000";
  EXPECT_TRUE(
      MayTraceFromStatus(7, StatusText("1001\t1001\t1001\t1001", "1001\t1001\t1001\t1001", none),
                         1001, 1001, a)
          .ok());
  // Another uid in any slot (a setuid program keeps the real uid).
  Status s = MayTraceFromStatus(7, StatusText("1001\t0\t0\t0", "1001\t1001\t1001\t1001", none), 0,
                                1001, a);
  EXPECT_EQ(s.code(), EPERM);
  EXPECT_NE(s.message().find("pid 7 belongs to uid 0, not to uid 1001"), std::string::npos)
      << s.message();
  // A group the user lacks (User=a Group=shadow), in any slot.
  s = MayTraceFromStatus(7, StatusText("1001\t1001\t1001\t1001", "1001\t42\t42\t42", none), 1001,
                         42, a);
  EXPECT_EQ(s.code(), EPERM);
  EXPECT_NE(s.message().find("runs with gid 42, not gid 1001"), std::string::npos) << s.message();
  // Not dumpable: /proc/PID/status is root's.
  s = MayTraceFromStatus(7, StatusText("1001\t1001\t1001\t1001", "1001\t1001\t1001\t1001", none), 0,
                         0, a);
  EXPECT_EQ(s.code(), EPERM);
  EXPECT_NE(s.message().find("not dumpable"), std::string::npos) << s.message();
  // A capability the requester lacks (ambient CAP_NET_RAW); one it has too.
  const std::string cap =
      StatusText("1001\t1001\t1001\t1001", "1001\t1001\t1001\t1001", "0000000000002000");
  s = MayTraceFromStatus(7, cap, 1001, 1001, a);
  EXPECT_EQ(s.code(), EPERM);
  EXPECT_NE(s.message().find("holds capabilities (CapPrm 2000)"), std::string::npos) << s.message();
  TraceCreds with_cap = a;
  with_cap.cap_permitted = 0x3000;
  EXPECT_TRUE(MayTraceFromStatus(7, cap, 1001, 1001, with_cap).ok());
  // CAP_SYS_PTRACE passes anything; an unset gid (-1) matches nothing.
  TraceCreds root;
  root.cap_sys_ptrace = true;
  EXPECT_TRUE(MayTraceFromStatus(7, cap, 0, 0, root).ok());
  TraceCreds no_gid = a;
  no_gid.gid = static_cast<gid_t>(-1);
  EXPECT_EQ(MayTraceFromStatus(7, cap, 1001, 1001, no_gid).code(), EPERM);
  // Unreadable status text: refused, not passed.
  EXPECT_FALSE(MayTraceFromStatus(7, "Name:\tx\n", 1001, 1001, a).ok());
}

TEST(CheckMayTrace, OwnProcessAndGone) {
  auto me = ReadTraceCreds(::getpid());
  ASSERT_TRUE(me) << me.error().message();
  me->cap_sys_ptrace = false;
  me->cap_permitted = ~0ull;
  EXPECT_TRUE(CheckMayTrace(::getpid(), *me).ok());
  EXPECT_EQ(CheckMayTrace(0x3fffffff, *me).code(), ESRCH);
}

}  // namespace
}  // namespace stasis::core

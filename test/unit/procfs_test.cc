// Parsers of /proc text (engine/core/procfs.h) fed the kernel's own formats.
#include "engine/core/procfs.h"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace stasis::core

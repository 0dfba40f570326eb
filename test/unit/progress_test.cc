// The progress line's text and rate (engine/cli/progress.h): what
// cr_checkpoint and cr_restart draw on a terminal.
#include "engine/cli/progress.h"

#include <gtest/gtest.h>

namespace stasis::cli {
namespace {

constexpr uint64_t kMiB = 1 << 20;

TEST(ProgressLine, DoneOfEstimateWithRateAndTimeLeft) {
  EXPECT_EQ(ProgressLine("cr_checkpoint", 412 * kMiB, 1229 * kMiB, true, 380.0 * kMiB),
            "cr_checkpoint: 412.0 MiB of ~1.2 GiB, 380 MiB/s, ~2 s left");
}

TEST(ProgressLine, ExactTotalHasNoTilde) {
  EXPECT_EQ(ProgressLine("cr_restart", 100 * kMiB, 300 * kMiB, false, 50.0 * kMiB),
            "cr_restart: 100.0 MiB of 300.0 MiB, 50 MiB/s, ~4 s left");
}

TEST(ProgressLine, NoRateYet) {
  EXPECT_EQ(ProgressLine("cr_restart", 3 * kMiB / 2, 300 * kMiB, false, 0),
            "cr_restart: 1.5 MiB of 300.0 MiB");
}

TEST(ProgressLine, UnknownTotalOrPassedEstimate) {
  EXPECT_EQ(ProgressLine("cr_checkpoint", 10 * kMiB, 0, true, 2.5 * kMiB),
            "cr_checkpoint: 10.0 MiB, 2.5 MiB/s");
  // The resident-memory estimate was too small: no total, no time left.
  EXPECT_EQ(ProgressLine("cr_checkpoint", 600 * kMiB, 500 * kMiB, true, 100.0 * kMiB),
            "cr_checkpoint: 600.0 MiB, 100 MiB/s");
  // Done: no time left.
  EXPECT_EQ(ProgressLine("cr_restart", 300 * kMiB, 300 * kMiB, false, 100.0 * kMiB),
            "cr_restart: 300.0 MiB of 300.0 MiB, 100 MiB/s");
}

TEST(ProgressLine, LongTimesInMinutesAndHours) {
  // 9 GiB left at 10 MiB/s: 922 s.
  EXPECT_EQ(ProgressLine("cr_checkpoint", 1024 * kMiB, 10 * 1024 * kMiB, true, 10.0 * kMiB),
            "cr_checkpoint: 1.0 GiB of ~10.0 GiB, 10 MiB/s, ~15 min left");
  // 99 GiB at 1 MiB/s: 28 h 10 min.
  EXPECT_EQ(ProgressLine("cr_checkpoint", 1024 * kMiB, 100 * 1024 * kMiB, true, 1.0 * kMiB),
            "cr_checkpoint: 1.0 GiB of ~100.0 GiB, 1.0 MiB/s, ~28 h 10 min left");
}

TEST(RateMeter, OverTheLastWindow) {
  RateMeter m(3);
  EXPECT_EQ(m.Rate(), 0);
  m.Add(0, 0);
  EXPECT_EQ(m.Rate(), 0);
  m.Add(0.05, 50 * kMiB);  // too soon after the first sample to tell
  EXPECT_EQ(m.Rate(), 0);
  m.Add(1, 100 * kMiB);
  EXPECT_DOUBLE_EQ(m.Rate(), 100.0 * kMiB);
  // Slower from t=2 on: after the window, only the slow part counts.
  m.Add(2, 200 * kMiB);
  for (int t = 3; t <= 8; ++t) m.Add(t, 200 * kMiB + (t - 2) * 10 * kMiB);
  EXPECT_DOUBLE_EQ(m.Rate(), 10.0 * kMiB);
}

}  // namespace
}  // namespace stasis::cli

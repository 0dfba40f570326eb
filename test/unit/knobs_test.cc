// The engine's knobs from the environment (daemon/config.h
// KnobsFromEnvironment): what the tools and stasisd hand the engine, which
// itself reads no environment (ci/check_layering.py).
#include <gtest/gtest.h>
#include <stdlib.h>

#include "engine/core/engine.h"
#include "engine/daemon/config.h"

namespace stasis::daemon {
namespace {

class KnobsTest : public ::testing::Test {
 protected:
  void SetUp() override { Clear(); }
  void TearDown() override { Clear(); }
  static void Clear() {
    for (const char* name :
         {"STASIS_FROZEN_WRITE_BYTES", "STASIS_PTRACE_TIMEOUT", "STASIS_TIMER_IDS"})
      ::unsetenv(name);
  }
};

TEST_F(KnobsTest, UnsetLeavesTheDefaults) {
  core::CheckpointOptions c;
  KnobsFromEnvironment(&c);
  EXPECT_EQ(c.frozen_write_bytes, 256u << 20);
  EXPECT_EQ(c.ptrace_timeout_seconds, 60);
  core::RestoreOptions r;
  KnobsFromEnvironment(&r);
  EXPECT_EQ(r.ptrace_timeout_seconds, 60);
  EXPECT_FALSE(r.timer_ids_by_count);
}

TEST_F(KnobsTest, VariablesReachTheOptions) {
  ::setenv("STASIS_FROZEN_WRITE_BYTES", "0", 1);
  ::setenv("STASIS_PTRACE_TIMEOUT", "2.5", 1);
  ::setenv("STASIS_TIMER_IDS", "count", 1);
  core::CheckpointOptions c;
  KnobsFromEnvironment(&c);
  EXPECT_EQ(c.frozen_write_bytes, 0u);
  EXPECT_EQ(c.ptrace_timeout_seconds, 2.5);
  core::RestoreOptions r;
  KnobsFromEnvironment(&r);
  EXPECT_EQ(r.ptrace_timeout_seconds, 2.5);
  EXPECT_TRUE(r.timer_ids_by_count);
}

TEST_F(KnobsTest, BadValuesAreIgnored) {
  ::setenv("STASIS_PTRACE_TIMEOUT", "-3", 1);
  ::setenv("STASIS_TIMER_IDS", "id", 1);
  core::RestoreOptions r;
  KnobsFromEnvironment(&r);
  EXPECT_EQ(r.ptrace_timeout_seconds, 60);
  EXPECT_FALSE(r.timer_ids_by_count);
}

}  // namespace
}  // namespace stasis::daemon

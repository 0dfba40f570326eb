// --checkpoint intervals: Slurm's time formats and unit suffixes.
#include "spank/interval.h"

#include <gtest/gtest.h>

namespace stasis::spank {
namespace {

TEST(Interval, SlurmFormsAndSuffixes) {
  const std::pair<const char*, uint64_t> good[] = {{"30", 1800},
                                                   {"30:00", 1800},
                                                   {"1:00:00", 3600},
                                                   {"1-0", 86400},
                                                   {"1-2:30", 95400},
                                                   {"1-0:00:10", 86410},
                                                   {"0:45", 45},
                                                   {"90s", 90},
                                                   {"30m", 1800},
                                                   {"2h", 7200},
                                                   {"1d", 86400},
                                                   {"1h30m", 5400},
                                                   {"365-0", 365 * 86400ull}};
  for (const auto& [text, seconds] : good) {
    auto r = ParseInterval(text);
    ASSERT_TRUE(r.has_value()) << text << ": " << r.error().message();
    EXPECT_EQ(*r, seconds) << text;
  }
}

TEST(Interval, RefusesWithTheFormsInTheMessage) {
  for (const char* bad : {"", "0", "0:00", "-1", "abc", "30x", "1:60", "1:00:60", "1-24", "1-", "m",
                          "2h-", "30 m", "1:2:3:4", "999999999999", "367d", "1.5h"}) {
    auto r = ParseInterval(bad);
    ASSERT_FALSE(r.has_value()) << "'" << bad << "' was accepted as " << *r;
    EXPECT_EQ(r.error().code(), EINVAL);
    EXPECT_NE(r.error().message().find("30m"), std::string::npos) << r.error().message();
  }
}

TEST(Interval, FormatsBack) {
  EXPECT_EQ(FormatInterval(5400), "1h30m");
  EXPECT_EQ(FormatInterval(45), "45s");
  EXPECT_EQ(FormatInterval(86400 + 61), "1d1m1s");
}

}  // namespace
}  // namespace stasis::spank

// Checkpoint intervals as users write them: Slurm's time formats
// ("30" minutes, "30:00" minutes:seconds, "1:00:00", "1-0" days-hours,
// "1-0:30", "1-0:30:00") plus unit suffixes ("90s", "30m", "2h", "1d").
// Shared by the SPANK plugin (--checkpoint) and the scontrol wrapper.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/base/status.h"

namespace stasis::spank {

// Seconds, > 0. EINVAL with a message naming the text and the accepted
// forms otherwise (0, negative, empty, garbage, or over a year).
Result<uint64_t> ParseInterval(std::string_view text);

// "1h30m", "45s", "2d": the way the plugin reports an interval back.
std::string FormatInterval(uint64_t seconds);

}  // namespace stasis::spank

// Small helpers shared by the command-line tools: one-line errors and
// number parsing. Every tool prints "<tool>: <what failed>" on stderr and
// exits non-zero; nothing else is printed on failure.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/base/status.h"

namespace stasis::cli {

[[noreturn]] inline void Die(const char* tool, const std::string& message, int code = 1) {
  std::fprintf(stderr, "%s: %s\n", tool, message.c_str());
  std::exit(code);
}

[[noreturn]] inline void Usage(const char* tool, const char* usage) {
  std::fprintf(stderr, "%s: %s\nusage: %s\n", tool, "bad arguments", usage);
  std::exit(2);
}

// Parses a positive decimal integer; false on anything else.
inline bool ParsePositive(const std::string& s, long* out) {
  if (s.empty() || s.size() > 18) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  *out = std::strtol(s.c_str(), nullptr, 10);
  return *out > 0;
}

}  // namespace stasis::cli

// Small helpers shared by the command-line tools: one-line errors and
// number parsing. Every tool prints "<tool>: <what failed>" on stderr and
// exits non-zero; nothing else is printed on failure.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "engine/base/status.h"

namespace stasis::cli {

// Set while a progress line (progress.h) may be on the terminal: erases it
// and stops its thread, so a message starts on a clean line.
inline void (*g_end_progress)() = nullptr;

[[noreturn]] inline void Die(const char* tool, const std::string& message, int code = 1) {
  if (g_end_progress) g_end_progress();
  std::fprintf(stderr, "%s: %s\n", tool, message.c_str());
  std::exit(code);
}

[[noreturn]] inline void Usage(const char* tool, const char* usage) {
  if (g_end_progress) g_end_progress();
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

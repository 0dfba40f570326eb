// See interval.h.
#include "spank/interval.h"

#include <vector>

namespace stasis::spank {
namespace {

constexpr uint64_t kMaxSeconds = 366ull * 24 * 3600;

bool Digits(std::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 9) return false;
  uint64_t r = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    r = r * 10 + static_cast<uint64_t>(c - '0');
  }
  *v = r;
  return true;
}

std::vector<std::string_view> SplitColons(std::string_view s) {
  std::vector<std::string_view> out;
  size_t start = 0;
  for (;;) {
    size_t c = s.find(':', start);
    out.push_back(
        s.substr(start, c == std::string_view::npos ? std::string_view::npos : c - start));
    if (c == std::string_view::npos) return out;
    start = c + 1;
  }
}

// Slurm's forms; false if `s` is none of them.
bool SlurmTime(std::string_view s, uint64_t* seconds) {
  uint64_t days = 0;
  bool have_days = false;
  size_t dash = s.find('-');
  if (dash != std::string_view::npos) {
    if (!Digits(s.substr(0, dash), &days)) return false;
    have_days = true;
    s = s.substr(dash + 1);
  }
  auto parts = SplitColons(s);
  if (parts.size() > 3) return false;
  std::vector<uint64_t> v;
  for (auto p : parts) {
    uint64_t x;
    if (!Digits(p, &x)) return false;
    v.push_back(x);
  }
  uint64_t h = 0, m = 0, sec = 0;
  if (have_days) {  // days-hours[:minutes[:seconds]]
    h = v[0];
    if (v.size() > 1) m = v[1];
    if (v.size() > 2) sec = v[2];
  } else if (v.size() == 1) {  // minutes
    m = v[0];
  } else if (v.size() == 2) {  // minutes:seconds
    m = v[0];
    sec = v[1];
  } else {  // hours:minutes:seconds
    h = v[0];
    m = v[1];
    sec = v[2];
  }
  if ((v.size() > 1 || have_days) && (m >= 60 || sec >= 60)) return false;
  if (have_days && h >= 24) return false;
  *seconds = ((days * 24 + h) * 60 + m) * 60 + sec;
  return true;
}

// "90s", "30m", "2h", "1d", and sums like "1h30m".
bool Suffixed(std::string_view s, uint64_t* seconds) {
  uint64_t total = 0;
  bool any = false;
  while (!s.empty()) {
    size_t i = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    uint64_t n;
    if (i == 0 || i == s.size() || !Digits(s.substr(0, i), &n)) return false;
    uint64_t unit;
    switch (s[i]) {
      case 's':
        unit = 1;
        break;
      case 'm':
        unit = 60;
        break;
      case 'h':
        unit = 3600;
        break;
      case 'd':
        unit = 86400;
        break;
      default:
        return false;
    }
    total += n * unit;
    any = true;
    s = s.substr(i + 1);
  }
  *seconds = total;
  return any;
}

}  // namespace

Result<uint64_t> ParseInterval(std::string_view text) {
  uint64_t seconds = 0;
  bool ok = !text.empty() && (SlurmTime(text, &seconds) || Suffixed(text, &seconds));
  if (!ok || seconds == 0 || seconds > kMaxSeconds)
    return Status::Error(EINVAL,
                         "'" + std::string(text.substr(0, 64)) +
                             "' is not a checkpoint interval (use minutes like 30, 30:00, "
                             "1:00:00, 1-0, or 90s, 30m, 2h, 1d; more than 0, at most a year)");
  return seconds;
}

std::string FormatInterval(uint64_t s) {
  std::string out;
  if (s >= 86400) out += std::to_string(s / 86400) + "d", s %= 86400;
  if (s >= 3600) out += std::to_string(s / 3600) + "h", s %= 3600;
  if (s >= 60) out += std::to_string(s / 60) + "m", s %= 60;
  if (s || out.empty()) out += std::to_string(s) + "s";
  return out;
}

}  // namespace stasis::spank

// stasis.yaml reader; see config.h.
#include "engine/daemon/config.h"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

namespace stasis::daemon {
namespace {

// "FILE:LINE: key 'K': what"
Status Bad(const std::string& file, const YAML::Node& node, const std::string& key,
           const std::string& what) {
  return Status::Error(
      EINVAL, file + ":" + std::to_string(node.Mark().line + 1) + ": key '" + key + "': " + what);
}

Status AbsolutePath(const std::string& file, const std::string& key, const YAML::Node& v,
                    std::string* out) {
  if (!v.IsScalar()) return Bad(file, v, key, "expected a path");
  std::string s = v.Scalar();
  if (s.empty() || s[0] != '/') return Bad(file, v, key, "'" + s + "' is not an absolute path");
  if (s.size() > 4000) return Bad(file, v, key, "path is too long");
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  *out = s;
  return Status::Ok();
}

Status Integer(const std::string& file, const std::string& key, const YAML::Node& v, uint64_t lo,
               uint64_t hi, uint64_t* out) {
  if (!v.IsScalar()) return Bad(file, v, key, "expected an integer");
  const std::string& s = v.Scalar();
  if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos)
    return Bad(file, v, key, "'" + s + "' is not a whole number");
  uint64_t n = std::stoull(s);
  if (n < lo || n > hi)
    return Bad(file, v, key,
               s + " is out of range (" + std::to_string(lo) + ".." + std::to_string(hi) + ")");
  *out = n;
  return Status::Ok();
}

}  // namespace

bool ParseBytes(const std::string& text, uint64_t* out) {
  if (text.empty() || text.size() > 20) return false;
  size_t digits = text.find_first_not_of("0123456789");
  if (digits == 0) return false;
  std::string num = text.substr(0, digits);
  std::string unit = digits == std::string::npos ? "" : text.substr(digits);
  if (!unit.empty() && (unit.back() == 'B' || unit.back() == 'b')) unit.pop_back();
  if (!unit.empty() && unit.back() == 'i') unit.pop_back();
  int shift = 0;
  if (unit.empty())
    shift = 0;
  else if (unit == "K" || unit == "k")
    shift = 10;
  else if (unit == "M" || unit == "m")
    shift = 20;
  else if (unit == "G" || unit == "g")
    shift = 30;
  else if (unit == "T" || unit == "t")
    shift = 40;
  else
    return false;
  uint64_t n = std::stoull(num);
  if (n > (UINT64_MAX >> shift)) return false;
  *out = n << shift;
  return true;
}

LogLevel ParseLogLevelOr(const std::string& text, LogLevel fallback, bool* ok) {
  static const std::map<std::string, LogLevel> kLevels = {{"error", LogLevel::kError},
                                                          {"warn", LogLevel::kWarn},
                                                          {"info", LogLevel::kInfo},
                                                          {"debug", LogLevel::kDebug}};
  auto it = kLevels.find(text);
  *ok = it != kLevels.end();
  return *ok ? it->second : fallback;
}

Result<Config> LoadConfig(const std::string& path, bool missing_ok) {
  Config c;
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT && missing_ok) return c;
    return Status::FromErrno(errno, "configuration " + path);
  }
  if (!S_ISREG(st.st_mode)) return Status::Error(EINVAL, path + ": not a regular file");
  std::ifstream in(path);
  if (!in) return Status::FromErrno(errno, "open configuration " + path);
  std::stringstream text;
  text << in.rdbuf();
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    return Status::Error(EINVAL, path + ":" + std::to_string(e.mark.line + 1) + ": " + e.msg);
  }
  c.path = path;
  if (root.IsNull()) return c;  // an empty file: all defaults
  if (!root.IsMap())
    return Status::Error(EINVAL, path + ":" + std::to_string(root.Mark().line + 1) +
                                     ": expected a mapping of keys to values");
  bool roots_given = false;
  using Setter = std::function<Status(const std::string&, const YAML::Node&)>;
  const std::map<std::string, Setter> keys = {
      {"socket", [&](const std::string& k,
                     const YAML::Node& v) { return AbsolutePath(path, k, v, &c.socket); }},
      {"state_dir", [&](const std::string& k,
                        const YAML::Node& v) { return AbsolutePath(path, k, v, &c.state_dir); }},
      {"checkpoint_root",
       [&](const std::string& k, const YAML::Node& v) {
         return AbsolutePath(path, k, v, &c.checkpoint_root);
       }},
      {"allowed_roots",
       [&](const std::string& k, const YAML::Node& v) {
         if (!v.IsSequence()) return Bad(path, v, k, "expected a list of absolute folders");
         c.allowed_roots.clear();
         for (const YAML::Node& e : v) {
           std::string dir;
           STASIS_RETURN_IF_ERROR(AbsolutePath(path, k, e, &dir));
           c.allowed_roots.push_back(dir);
         }
         roots_given = true;
         return Status::Ok();
       }},
      {"retention",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 1, 1000, &n));
         c.retention = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"max_concurrent",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 1, 1024, &n));
         c.max_concurrent = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"max_queued",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 65536, &n));
         c.max_queued = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"bandwidth_limit",
       [&](const std::string& k, const YAML::Node& v) {
         if (!v.IsScalar() || !ParseBytes(v.Scalar(), &c.bandwidth_limit))
           return Bad(path, v, k,
                      "'" + (v.IsScalar() ? v.Scalar() : std::string("?")) +
                          "' is not a byte rate (like 500M, 2G or 0)");
         return Status::Ok();
       }},
      {"callback_timeout",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 86400, &n));
         c.callback_timeout = static_cast<double>(n);
         return Status::Ok();
       }},
      {"max_connections_per_user",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 1, 65536, &n));
         c.max_connections_per_user = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"max_running_per_user",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 1024, &n));
         c.max_running_per_user = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"max_queued_per_user",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 65536, &n));
         c.max_queued_per_user = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"limit_root",
       [&](const std::string& k, const YAML::Node& v) {
         std::string s = v.IsScalar() ? v.Scalar() : "";
         if (s == "true")
           c.limit_root = true;
         else if (s == "false")
           c.limit_root = false;
         else
           return Bad(path, v, k, "'" + s + "' is not true or false");
         return Status::Ok();
       }},
      {"idle_timeout",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 86400, &n));
         c.idle_timeout = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"max_callback_timeout",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 86400, &n));
         c.max_callback_timeout = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"max_time_limit",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 31 * 86400, &n));
         c.max_time_limit = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"hold_timeout",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 1, 86400, &n));
         c.hold_timeout = static_cast<uint32_t>(n);
         return Status::Ok();
       }},
      {"restart_timeout",
       [&](const std::string& k, const YAML::Node& v) {
         uint64_t n;
         STASIS_RETURN_IF_ERROR(Integer(path, k, v, 0, 86400, &n));
         c.restart_timeout = n;
         return Status::Ok();
       }},
      {"capture_backend",
       [&](const std::string& k, const YAML::Node& v) {
         std::string s = v.IsScalar() ? v.Scalar() : "";
         if (s == "auto")
           c.capture_backend = core::CaptureBackend::kAuto;
         else if (s == "kernel")
           c.capture_backend = core::CaptureBackend::kKernel;
         else if (s == "user")
           c.capture_backend = core::CaptureBackend::kUser;
         else
           return Bad(path, v, k, "'" + s + "' is not auto, kernel or user");
         return Status::Ok();
       }},
      {"log",
       [&](const std::string& k, const YAML::Node& v) {
         std::string s = v.IsScalar() ? v.Scalar() : "";
         if (s == "stderr")
           c.log = LogTarget::kStderr;
         else if (s == "syslog")
           c.log = LogTarget::kSyslog;
         else
           return Bad(path, v, k, "'" + s + "' is not stderr or syslog");
         return Status::Ok();
       }},
      {"log_level",
       [&](const std::string& k, const YAML::Node& v) {
         bool ok = false;
         c.log_level = ParseLogLevelOr(v.IsScalar() ? v.Scalar() : "", c.log_level, &ok);
         if (!ok) return Bad(path, v, k, "expected error, warn, info or debug");
         return Status::Ok();
       }},
  };
  std::set<std::string> seen;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (!it->first.IsScalar())
      return Status::Error(EINVAL, path + ":" + std::to_string(it->first.Mark().line + 1) +
                                       ": keys must be plain words");
    std::string key = it->first.Scalar();
    if (!seen.insert(key).second) return Bad(path, it->first, key, "appears twice");
    auto k = keys.find(key);
    if (k == keys.end()) return Bad(path, it->first, key, "unknown key (see stasis.yaml(5))");
    if (it->second.IsNull()) return Bad(path, it->first, key, "has no value");
    STASIS_RETURN_IF_ERROR(k->second(key, it->second));
  }
  if (!roots_given) {
    // The default list follows a configured checkpoint_root.
    c.allowed_roots[0] = c.checkpoint_root;
  }
  return c;
}

namespace {

double PtraceTimeoutFromEnvironment(double fallback) {
  const char* e = std::getenv("STASIS_PTRACE_TIMEOUT");
  double v = e ? std::strtod(e, nullptr) : 0;
  return v > 0 ? v : fallback;
}

}  // namespace

void KnobsFromEnvironment(core::CheckpointOptions* opt) {
  if (const char* e = std::getenv("STASIS_FROZEN_WRITE_BYTES"))
    opt->frozen_write_bytes = std::strtoull(e, nullptr, 10);
  opt->ptrace_timeout_seconds = PtraceTimeoutFromEnvironment(opt->ptrace_timeout_seconds);
}

void KnobsFromEnvironment(core::RestoreOptions* opt) {
  opt->ptrace_timeout_seconds = PtraceTimeoutFromEnvironment(opt->ptrace_timeout_seconds);
  const char* ids = std::getenv("STASIS_TIMER_IDS");
  if (ids && std::strcmp(ids, "count") == 0) opt->timer_ids_by_count = true;
}

}  // namespace stasis::daemon

// stasisd's configuration: /etc/stasis/stasis.yaml (stasis.yaml(5)). Every
// key is optional; an unknown key or a bad value is an error naming the
// file, the line and the key, and stasisd does not start.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/status.h"
#include "engine/core/engine.h"

namespace stasis::daemon {

enum class LogTarget { kStderr, kSyslog };
enum class LogLevel { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

struct Config {
  std::string path;  // the file this came from ("" = built-in defaults)
  std::string socket = "/run/stasis/stasisd.sock";
  std::string state_dir = "/run/stasis/state";
  std::string checkpoint_root = "/var/lib/stasis/checkpoints";
  // Folders under which users may write and read context files (root is
  // not limited). Empty in the file = only checkpoint_root.
  std::vector<std::string> allowed_roots = {"/var/lib/stasis/checkpoints", "/tmp", "/home",
                                            "/scratch"};
  uint32_t retention = 2;
  uint32_t max_concurrent = 2;
  uint32_t max_queued = 256;
  uint64_t bandwidth_limit = 0;  // bytes/s per request, 0 = unlimited
  double callback_timeout = 60;  // seconds, 0 = unbounded
  // What one user may hold (root is exempt unless limit_root): connections,
  // running requests (0 = max_concurrent - 1, at least 1, so that one user
  // never holds every slot), queued requests.
  uint32_t max_connections_per_user = 32;
  uint32_t max_running_per_user = 0;
  uint32_t max_queued_per_user = 16;
  bool limit_root = false;
  // Seconds a connection with no request in progress stays open; 0 = forever.
  uint32_t idle_timeout = 60;
  // Caps on what a client may ask for, seconds (0 = no cap): its
  // callback_timeout_ms, its time_limit_ms (also the limit of a request that
  // names none), and how long a held checkpoint waits for the client's
  // commit or proceed with its processes frozen (then they resume and the
  // request fails with ETIMEDOUT).
  uint32_t max_callback_timeout = 600;
  uint32_t max_time_limit = 86400;
  uint32_t hold_timeout = 300;
  // Seconds a restart may take until its tree runs (a context on a file
  // that never answers, say); then the worker gives up with ETIMEDOUT.
  // 0 = unbounded.
  uint64_t restart_timeout = 1800;
  // capture_backend: auto (the kernel module when /dev/stasis is there),
  // kernel (the module or fail), user (ptrace and /proc only).
  core::CaptureBackend capture_backend = core::CaptureBackend::kAuto;
  LogTarget log = LogTarget::kStderr;
  LogLevel log_level = LogLevel::kInfo;

  // max_running_per_user with its default applied.
  uint32_t RunningPerUser() const {
    if (max_running_per_user) return max_running_per_user;
    return max_concurrent > 1 ? max_concurrent - 1 : 1;
  }
};

// Reads and validates `path`. A missing file is an error unless
// `missing_ok` (the built-in defaults are used then).
Result<Config> LoadConfig(const std::string& path, bool missing_ok);

// "200M" -> 209715200 (K, M, G, T are powers of 1024; a plain number is
// bytes). False on anything else.
bool ParseBytes(const std::string& text, uint64_t* out);

LogLevel ParseLogLevelOr(const std::string& text, LogLevel fallback, bool* ok);

// The engine's tuning and test knobs from this process's environment (the
// tool's, or stasisd's for its workers): STASIS_FROZEN_WRITE_BYTES (bytes),
// STASIS_PTRACE_TIMEOUT (seconds, > 0), STASIS_TIMER_IDS=count. A variable
// that is unset or unparsable leaves the option as it is.
void KnobsFromEnvironment(core::CheckpointOptions* opt);
void KnobsFromEnvironment(core::RestoreOptions* opt);

}  // namespace stasis::daemon

// stasisd's server: the socket, the request table, the queue and the
// workers. One thread, one poll loop; the work itself runs in forked
// workers (worker.h), at most Config::max_concurrent at a time.
#pragma once

#include <string>
#include <string_view>

#include "engine/daemon/config.h"

namespace stasis::daemon {

// Logging: one line per event, to stderr or syslog, filtered by level.
// Log escapes control bytes and non-UTF-8 bytes (EscapeForLog), so a line
// is one line whatever it holds.
void InitLog(const Config& config);
void Log(LogLevel level, const std::string& line);
std::string EscapeForLog(std::string_view text);

// Runs until SIGTERM or SIGINT (then stops accepting, waits for running
// requests, exits 0). Returns non-zero if it cannot start.
int RunServer(const Config& config);

}  // namespace stasis::daemon

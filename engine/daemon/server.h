// stasisd's server: the socket, the request table, the queue and the
// workers. One thread, one poll loop; the work itself runs in forked
// workers (worker.h), at most Config::max_concurrent at a time.
#pragma once

#include "engine/daemon/config.h"

namespace stasis::daemon {

// Logging: one line per event, to stderr or syslog, filtered by level.
void InitLog(const Config& config);
void Log(LogLevel level, const std::string& line);

// Runs until SIGTERM or SIGINT (then stops accepting, waits for running
// requests, exits 0). Returns non-zero if it cannot start.
int RunServer(const Config& config);

}  // namespace stasis::daemon

// stasisd: the node-local engine service (stasisd(8)). Reads
// /etc/stasis/stasis.yaml, listens on its Unix socket and runs checkpoint
// and restart requests in workers. Runs in the foreground (systemd
// Type=simple, or a test).
#include <unistd.h>

#include <cstdio>
#include <string>

#include "engine/base/install_paths.h"
#include "engine/daemon/config.h"
#include "engine/daemon/server.h"

namespace {

const char* kUsage =
    "stasisd [-c|--config FILE] [--socket PATH] [--state-dir DIR] [--max-concurrent N] "
    "[--log-level error|warn|info|debug] [--check-config]";

[[noreturn]] void Die(const std::string& msg, int code = 1) {
  std::fprintf(stderr, "stasisd: %s\n", msg.c_str());
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace stasis::daemon;
  // The site configuration of this install: /etc/stasis/stasis.yaml for
  // prefix /usr, else PREFIX/etc/stasis/stasis.yaml (a moved prefix too).
  std::string config_path = stasis::SiteConfigPath(STASIS_REL_SBIN_TO_PREFIX);
  bool config_given = false, check_only = false;
  std::string socket, state_dir, level, max_concurrent;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(std::string("bad arguments\nusage: ") + kUsage, 2);
      return argv[++i];
    };
    if (a == "-c" || a == "--config") {
      config_path = next();
      config_given = true;
    } else if (a == "--socket")
      socket = next();
    else if (a == "--state-dir")
      state_dir = next();
    else if (a == "--max-concurrent")
      max_concurrent = next();
    else if (a == "--log-level")
      level = next();
    else if (a == "--check-config")
      check_only = true;
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n", kUsage);
      return 0;
    } else
      Die("unknown argument '" + a + "'\nusage: " + kUsage, 2);
  }
  // The default file may be absent (built-in defaults); a named one may not.
  auto config = LoadConfig(config_path, !config_given && !check_only);
  if (!config) Die(config.error().message());
  if (check_only) {
    std::printf("%s: ok\n", config_path.c_str());
    return 0;
  }
  if (!socket.empty()) {
    if (socket[0] != '/') Die("--socket needs an absolute path", 2);
    config->socket = socket;
  }
  if (!state_dir.empty()) {
    if (state_dir[0] != '/') Die("--state-dir needs an absolute path", 2);
    config->state_dir = state_dir;
  }
  if (!max_concurrent.empty()) {
    uint64_t n = 0;
    if (!ParseBytes(max_concurrent, &n) || n < 1 || n > 1024)
      Die("--max-concurrent needs a number from 1 to 1024", 2);
    config->max_concurrent = static_cast<uint32_t>(n);
  }
  if (!level.empty()) {
    bool ok = false;
    config->log_level = ParseLogLevelOr(level, config->log_level, &ok);
    if (!ok) Die("--log-level needs error, warn, info or debug", 2);
  }
  if (::geteuid() != 0)
    std::fprintf(stderr, "stasisd: not running as root: it can serve only uid %u\n",
                 static_cast<unsigned>(::geteuid()));
  InitLog(*config);
  return RunServer(*config);
}

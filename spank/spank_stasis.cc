// spank_stasis.so: stasis in Slurm, enabled by one plugstack.conf line
//   optional /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_stasis.so
//       [default_dir=DIR] [min_interval=TIME] [keep=N] [socket=PATH]
// (on one line; TIME in the forms of --checkpoint, a bare number is minutes).
// It adds --checkpoint=<interval>, --checkpoint-dir=<dir> and
// --restart-from=<dir> (also --restart-dir) to sbatch, srun and salloc.
//
// This first part checks the options where the user types them (a bad
// interval is refused at submission) and hands them to the job's steps as
// STASIS_CHECKPOINT_INTERVAL (seconds), STASIS_CHECKPOINT_DIR and
// STASIS_RESTART_FROM. Taking the checkpoints (a helper step per epoch) and
// restarting from them build on these (see docs/design.md).
// spank.h declares the plugin's entry points without extern "C".
extern "C" {
#include <slurm/spank.h>
}

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "spank/interval.h"

// SPANK_PLUGIN(stasis, 1), spelled out: in C++ a const at namespace scope
// has internal linkage, and slurmstepd must find these by name.
extern "C" {
extern const char plugin_name[] = "stasis";
extern const char plugin_type[] = "spank";
extern const unsigned int plugin_version = SLURM_VERSION_NUMBER;
extern const unsigned int spank_plugin_version = 1;
}

namespace {

// Site settings from the plugstack.conf line.
struct Site {
  std::string default_dir;
  uint64_t min_interval = 60;
  uint32_t keep = 2;
  std::string socket;
} g_site;

// What the user asked for (option callbacks run twice in remote context:
// every one of them only overwrites).
struct Asked {
  uint64_t interval = 0;
  std::string dir;
  std::string restart_from;
} g_asked;

bool g_site_ok = true;

int OnCheckpoint(int, const char* optarg, int) {
  auto seconds = stasis::spank::ParseInterval(optarg ? optarg : "");
  if (!seconds) {
    slurm_error("stasis: --checkpoint: %s", seconds.error().message().c_str());
    return -1;
  }
  if (*seconds < g_site.min_interval) {
    slurm_error("stasis: --checkpoint=%s is shorter than this site's minimum interval (%s)", optarg,
                stasis::spank::FormatInterval(g_site.min_interval).c_str());
    return -1;
  }
  g_asked.interval = *seconds;
  return 0;
}

int OnCheckpointDir(int, const char* optarg, int) {
  if (!optarg || !*optarg) {
    slurm_error("stasis: --checkpoint-dir needs a folder");
    return -1;
  }
  g_asked.dir = optarg;
  return 0;
}

int OnRestartFrom(int, const char* optarg, int) {
  if (!optarg || !*optarg) {
    slurm_error("stasis: --restart-from needs a job or epoch folder");
    return -1;
  }
  g_asked.restart_from = optarg;
  return 0;
}

struct spank_option g_options[] = {
    {const_cast<char*>("checkpoint"), const_cast<char*>("interval"),
     const_cast<char*>("Checkpoint every step of the job at this interval (30, 30:00, 1:00:00, 1-0, "
                       "30m, 2h) and before preemption or the time limit [stasis]"),
     1, 0, OnCheckpoint},
    {const_cast<char*>("checkpoint-dir"), const_cast<char*>("dir"),
     const_cast<char*>("Write checkpoints under <dir>/<jobid>/<epoch>/ [stasis]"), 1, 0, OnCheckpointDir},
    {const_cast<char*>("restart-from"), const_cast<char*>("dir"),
     const_cast<char*>("Restart the step's tasks from the newest complete epoch of a job folder, or "
                       "from an epoch folder [stasis]"),
     1, 0, OnRestartFrom},
    {const_cast<char*>("restart-dir"), const_cast<char*>("dir"),
     const_cast<char*>("The same as --restart-from (Slurm's old name) [stasis]"), 1, 0, OnRestartFrom},
    SPANK_OPTIONS_TABLE_END};

bool ParseSiteArg(const std::string& arg) {
  size_t eq = arg.find('=');
  std::string key = arg.substr(0, eq), value = eq == std::string::npos ? "" : arg.substr(eq + 1);
  if (key == "default_dir" && !value.empty() && value[0] == '/') {
    g_site.default_dir = value;
  } else if (key == "min_interval") {
    auto s = stasis::spank::ParseInterval(value);
    if (!s) return false;
    g_site.min_interval = *s;
  } else if (key == "keep") {
    char* end = nullptr;
    long n = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end || n < 1 || n > 1000) return false;
    g_site.keep = static_cast<uint32_t>(n);
  } else if (key == "socket" && !value.empty() && value[0] == '/') {
    g_site.socket = value;
  } else {
    return false;
  }
  return true;
}

}  // namespace

extern "C" int slurm_spank_init(spank_t sp, int ac, char** av) {
  for (int i = 0; i < ac; ++i) {
    if (!ParseSiteArg(av[i])) {
      slurm_error("stasis: plugstack.conf: bad argument '%s' (default_dir=/abs, min_interval=TIME, "
                  "keep=1..1000, socket=/abs)", av[i]);
      g_site_ok = false;
      return -1;
    }
  }
  spank_context_t ctx = spank_context();
  if (ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE && ctx != S_CTX_ALLOCATOR) return 0;
  for (struct spank_option* o = g_options; o->name; ++o)
    if (spank_option_register(sp, o) != ESPANK_SUCCESS) {
      slurm_error("stasis: cannot register --%s", o->name);
      return -1;
    }
  return 0;
}

// In each step (slurmstepd, as the user's job): the options become the
// environment the stasis tools in the step read.
extern "C" int slurm_spank_user_init(spank_t sp, int, char**) {
  if (!spank_remote(sp) || !g_site_ok) return 0;
  if (g_asked.interval) {
    spank_setenv(sp, "STASIS_CHECKPOINT_INTERVAL", std::to_string(g_asked.interval).c_str(), 1);
    std::string dir = !g_asked.dir.empty() ? g_asked.dir : g_site.default_dir;
    if (!dir.empty()) spank_setenv(sp, "STASIS_CHECKPOINT_DIR", dir.c_str(), 1);
    spank_setenv(sp, "STASIS_CHECKPOINT_KEEP", std::to_string(g_site.keep).c_str(), 1);
  }
  if (!g_asked.restart_from.empty()) spank_setenv(sp, "STASIS_RESTART_FROM", g_asked.restart_from.c_str(), 1);
  if (!g_site.socket.empty()) spank_setenv(sp, "STASIS_SOCKET", g_site.socket.c_str(), 1);
  return 0;
}

// spank_stasis.so: stasis in Slurm, enabled by one plugstack.conf line
//   optional /usr/lib/x86_64-linux-gnu/slurm-wlm/spank_stasis.so
//       [default_dir=DIR] [min_interval=TIME] [keep=N] [socket=PATH]
//       [final_lead=TIME] [tool=PATH] [ticker_log=DIR]
// (on one line; TIME in the forms of --checkpoint, a bare number is minutes;
// %h in socket= is the node's hostname; final_lead: the final epoch this
// long before the job's time limit, default 2m; tool: stasis-step).
// It adds --checkpoint=<interval>, --checkpoint-dir=<dir> and
// --restart-from=<dir> (also --restart-dir) to sbatch, srun and salloc.
//
// It checks the options where the user types them (a bad interval is
// refused at submission), hands them to the job's steps as environment,
// starts the periodic ticker in the batch step of a --checkpoint job and
// turns the tasks of a --restart-from step (or of a requeued --checkpoint
// job) into restarts. docs/design.md "Slurm integration" has the whole.
// spank.h declares the plugin's entry points without extern "C".
extern "C" {
#include <slurm/spank.h>
}

#include <fcntl.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include "engine/base/install_paths.h"
#include "spank/interval.h"

// SPANK_PLUGIN(stasis, 1), spelled out: in C++ a const at namespace scope
// has internal linkage, and slurmstepd must find these by name. Slurm reads
// plugin_name/type/version; spank_plugin_version (which it never looks up)
// stays local like everything else but the hooks (spank_stasis.lds).
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
  std::string tool = STASIS_STEP_TOOL;         // stasis-step
  std::string pmix_agent = STASIS_PMIX_AGENT;  // libstasis_pmix.so, "" = none
  std::string ticker_log;                      // folder for ticker-<job>.log ("" = none)
  uint64_t final_lead = 120;                   // final epoch this long before the time limit
  std::string compress;                        // page compression of epochs ("" = none)
  uint32_t incremental = 0;  // a full epoch every N, the rest incremental (0 = off)
} g_site;

// What the user asked for (option callbacks run twice in remote context:
// every one of them only overwrites).
struct Asked {
  uint64_t interval = 0;
  std::string dir;
  std::string restart_from;
} g_asked;

bool g_site_ok = true;

// Runs the body of a hook or option callback: no C++ exception (a
// std::bad_alloc from a std::string, say) crosses into slurmstepd, srun or
// slurmd, which are C. It is logged with the plugin's prefix and the hook
// fails instead.
template <typename Body>
int Guarded(const char* where, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    slurm_error("stasis: %s: %s", where, e.what());
  } catch (...) {
    slurm_error("stasis: %s: unknown exception", where);
  }
  return -1;
}

int OnCheckpointBody(const char* optarg) {
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

int OnCheckpointDirBody(const char* optarg) {
  if (!optarg || !*optarg) {
    slurm_error("stasis: --checkpoint-dir needs a folder");
    return -1;
  }
  g_asked.dir = optarg;
  return 0;
}

int OnRestartFromBody(const char* optarg) {
  if (!optarg || !*optarg) {
    slurm_error("stasis: --restart-from needs a job or epoch folder");
    return -1;
  }
  g_asked.restart_from = optarg;
  return 0;
}

int OnCheckpoint(int, const char* optarg, int) {
  return Guarded("--checkpoint", [&] { return OnCheckpointBody(optarg); });
}
int OnCheckpointDir(int, const char* optarg, int) {
  return Guarded("--checkpoint-dir", [&] { return OnCheckpointDirBody(optarg); });
}
int OnRestartFrom(int, const char* optarg, int) {
  return Guarded("--restart-from", [&] { return OnRestartFromBody(optarg); });
}

struct spank_option g_options[] = {
    {const_cast<char*>("checkpoint"), const_cast<char*>("interval"),
     const_cast<char*>(
         "Checkpoint every step of the job at this interval (30, 30:00, 1:00:00, 1-0, "
         "30m, 2h) and before preemption or the time limit [stasis]"),
     1, 0, OnCheckpoint},
    {const_cast<char*>("checkpoint-dir"), const_cast<char*>("dir"),
     const_cast<char*>("Write checkpoints under <dir>/<jobid>/<epoch>/ [stasis]"), 1, 0,
     OnCheckpointDir},
    {const_cast<char*>("restart-from"), const_cast<char*>("dir"),
     const_cast<char*>(
         "Restart the step's tasks from the newest complete epoch of a job folder, or "
         "from an epoch folder [stasis]"),
     1, 0, OnRestartFrom},
    {const_cast<char*>("restart-dir"), const_cast<char*>("dir"),
     const_cast<char*>("The same as --restart-from (Slurm's old name) [stasis]"), 1, 0,
     OnRestartFrom},
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
  } else if (key == "tool" && !value.empty() && value[0] == '/') {
    g_site.tool = value;
  } else if (key == "compress" && (value == "none" || value == "lz4" || value == "zstd" ||
                                   value.rfind("lz4:", 0) == 0 || value.rfind("zstd:", 0) == 0)) {
    g_site.compress = value == "none" ? "" : value;
  } else if (key == "incremental") {
    char* end = nullptr;
    long n = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end || n < 0 || n == 1 || n > 1000) return false;
    g_site.incremental = static_cast<uint32_t>(n);
  } else if (key == "pmix_agent" && (value == "none" || (!value.empty() && value[0] == '/'))) {
    g_site.pmix_agent = value == "none" ? "" : value;
  } else if (key == "final_lead") {
    auto s = stasis::spank::ParseInterval(value);
    if (!s) return false;
    g_site.final_lead = *s;
  } else if (key == "ticker_log" && !value.empty() && value[0] == '/') {
    g_site.ticker_log = value;
  } else {
    return false;
  }
  return true;
}

// Slurm's id of the batch step (SLURM_BATCH_SCRIPT in 22.05).
constexpr uint32_t kBatchStep = 0xfffffffb;

// %h in a site path: this node's hostname (one stasisd socket per node
// when several nodes share a file system, as the test cluster's do).
std::string ExpandHost(std::string path) {
  size_t at = path.find("%h");
  if (at == std::string::npos) return path;
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  return path.replace(at, 2, host);
}

// The batch step of a --checkpoint job: `stasis-step ticker` as the user,
// in the job's environment, a child of this slurmstepd (Slurm ends it with
// the job). user_init runs with the user's euid and root's real uid.
void StartTicker(spank_t sp) {
  uint32_t job = 0;
  char** env = nullptr;
  if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_ENV, &env) != ESPANK_SUCCESS)
    return;
  uid_t uid = ::geteuid();
  gid_t gid = ::getegid();
  std::string log = g_site.ticker_log.empty()
                        ? "/dev/null"
                        : g_site.ticker_log + "/ticker-" + std::to_string(job) + ".log";
  std::string interval = std::to_string(g_asked.interval), jobid = std::to_string(job);
  std::string lead = std::to_string(g_site.final_lead);
  pid_t pid = ::fork();
  if (pid < 0) {
    slurm_error("stasis: cannot start the checkpoint ticker: %m");
    return;
  }
  if (pid > 0) return;
  // The child: become the user for good, then stasis-step.
  if (::seteuid(0) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0)
    ::_exit(126);
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  int null = ::open("/dev/null", O_RDONLY);
  if (null >= 0) ::dup2(null, 0);
  if (fd >= 0) {
    ::dup2(fd, 1);
    ::dup2(fd, 2);
  }
  for (int i = 3; i < 1024; ++i) ::close(i);
  ::setpgid(0, 0);
  const char* args[] = {g_site.tool.c_str(), "ticker",     "--job",
                        jobid.c_str(),       "--interval", interval.c_str(),
                        "--final-lead",      lead.c_str(), nullptr};
  ::execve(args[0], const_cast<char* const*>(args), env);
  ::_exit(127);
}

// Steps of a --checkpoint job that completed (every task of every node
// exited 0) are marked in the job folder, one file per node:
// <dir>/<job>/.step-<step>.node<i> holding the step's node count (the
// store's listing ignores names that are not epoch numbers). A requeued job
// whose script reaches such a step again does not run it a second time:
// the job comes back where it stopped, not at its last epoch of a step that
// had finished.
std::string StepMarker(const std::string& dir, uint32_t job, uint32_t step, uint32_t node) {
  return dir + "/" + std::to_string(job) + "/.step-" + std::to_string(step) + ".node" +
         std::to_string(node);
}

std::string JobDir(spank_t sp) {
  char dir[4096] = {0};
  if (spank_getenv(sp, "STASIS_CHECKPOINT_DIR", dir, sizeof dir) != ESPANK_SUCCESS &&
      spank_getenv(sp, "SLURM_SUBMIT_DIR", dir, sizeof dir) != ESPANK_SUCCESS)
    return "";
  return dir;
}

// Were all nodes of `step` marked done (the count each marker names)?
bool StepDone(const std::string& dir, uint32_t job, uint32_t step) {
  int fd = ::open(StepMarker(dir, job, step, 0).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return false;
  char buf[32] = {0};
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  long nodes = n > 0 ? std::strtol(buf, nullptr, 10) : 0;
  if (nodes < 1 || nodes > 100000) return false;
  for (long i = 1; i < nodes; ++i)
    if (::access(StepMarker(dir, job, step, static_cast<uint32_t>(i)).c_str(), F_OK) != 0)
      return false;
  return true;
}

struct TaskTally {
  uint32_t exited = 0, failed = 0;
} g_tally;

// Tasks of `srun --mpi=pmix` steps get libstasis_pmix.so preloaded, so the
// PMIx event handlers a program registers hear of each checkpoint
// (pmix/include/stasis_pmix.h). A task that never calls PMIx_Init only
// carries the preload. Restarted tasks are restored with it already loaded.
void PreloadPmixAgent(spank_t sp, uint32_t step) {
  if (step == kBatchStep) return;
  char mpi[64] = {0};
  if (spank_getenv(sp, "SLURM_MPI_TYPE", mpi, sizeof mpi) != ESPANK_SUCCESS ||
      std::strncmp(mpi, "pmix", 4) != 0)
    return;
  // OpenPMIx's ds21 data store maps shared-memory files of the step's PMIx
  // server (<SlurmdSpoolDir>/pmix.J.S/pmix_dstor_ds21_*), which are gone
  // once the step ends: an epoch of a task mapping them could not be
  // restarted and is refused. The hash store keeps the job's data in the
  // client's own memory instead; measured at no cost to MPI_Init (an Open
  // MPI 4.1 srun of 4 ranks on 2 nodes: 0.73 s either way). A user's own
  // choice of PMIX_MCA_gds is kept.
  char gds[64] = {0};
  if (spank_getenv(sp, "PMIX_MCA_gds", gds, sizeof gds) != ESPANK_SUCCESS)
    spank_setenv(sp, "PMIX_MCA_gds", "hash", 0);
  if (g_site.pmix_agent.empty()) return;
  if (::access(g_site.pmix_agent.c_str(), R_OK) != 0) {
    slurm_error("stasis: pmix_agent %s: %m; PMIx handlers will not hear of checkpoints",
                g_site.pmix_agent.c_str());
    return;
  }
  char old[4096] = {0};
  std::string preload = g_site.pmix_agent;
  if (spank_getenv(sp, "LD_PRELOAD", old, sizeof old) == ESPANK_SUCCESS && old[0]) {
    if (std::strstr(old, g_site.pmix_agent.c_str())) return;
    preload += std::string(":") + old;
  }
  spank_setenv(sp, "LD_PRELOAD", preload.c_str(), 1);
}

// stasis-step and libstasis_pmix.so installed with this plugin (found from
// the plugin's own folder, so a moved prefix still works), else the
// configured paths; plugstack.conf's tool= and pmix_agent= override both.
void FindInstalledHelpers() {
  const std::string dir = stasis::ObjectDir(reinterpret_cast<const void*>(&FindInstalledHelpers));
  std::string tool = stasis::ExistingPath(dir, "../" STASIS_REL_LIB_TO_BIN "/stasis-step", X_OK);
  if (!tool.empty()) g_site.tool = tool;
  std::string agent = stasis::ExistingPath(dir, "../libstasis_pmix.so", R_OK);
  if (!agent.empty()) g_site.pmix_agent = agent;
}

int Init(spank_t sp, int ac, char** av) {
  FindInstalledHelpers();
  for (int i = 0; i < ac; ++i) {
    if (!ParseSiteArg(av[i])) {
      slurm_error(
          "stasis: plugstack.conf: bad argument '%s' (default_dir=/abs, min_interval=TIME, "
          "keep=1..1000, socket=/abs, tool=/abs, ticker_log=/abs, final_lead=TIME, "
          "pmix_agent=/abs|none, compress=none|lz4|zstd[:N], incremental=0|2..1000)",
          av[i]);
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
int UserInit(spank_t sp) {
  if (!spank_remote(sp) || !g_site_ok) return 0;
  // The folder and retention also serve `scontrol checkpoint` of a job
  // submitted without --checkpoint.
  std::string dir = !g_asked.dir.empty() ? g_asked.dir : g_site.default_dir;
  if (!dir.empty()) spank_setenv(sp, "STASIS_CHECKPOINT_DIR", dir.c_str(), 1);
  spank_setenv(sp, "STASIS_CHECKPOINT_KEEP", std::to_string(g_site.keep).c_str(), 1);
  if (!g_site.compress.empty())
    spank_setenv(sp, "STASIS_CHECKPOINT_COMPRESS", g_site.compress.c_str(), 1);
  if (g_site.incremental)
    spank_setenv(sp, "STASIS_CHECKPOINT_INCREMENTAL", std::to_string(g_site.incremental).c_str(),
                 1);
  if (g_asked.interval)
    spank_setenv(sp, "STASIS_CHECKPOINT_INTERVAL", std::to_string(g_asked.interval).c_str(), 1);
  if (!g_asked.restart_from.empty())
    spank_setenv(sp, "STASIS_RESTART_FROM", g_asked.restart_from.c_str(), 1);
  if (!g_site.socket.empty())
    spank_setenv(sp, "STASIS_SOCKET", ExpandHost(g_site.socket).c_str(), 1);
  uint32_t step = 0;
  if (g_asked.interval && spank_get_item(sp, S_JOB_STEPID, &step) == ESPANK_SUCCESS &&
      step == kBatchStep)
    StartTicker(sp);
  return 0;
}

// In each task, as the user, just before exec: a task of a step started
// with --restart-from becomes stasis-step's restart of that task (argv[0]
// replaced: argc cannot change; stasis-step ignores the rest).
int TaskInit(spank_t sp) {
  if (!spank_remote(sp) || !g_site_ok) return 0;
  uint32_t job = 0, step = 0;
  if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS)
    return 0;
  // Auto-resume: a --checkpoint job that Slurm requeued (preemption,
  // scontrol requeue, a node failure) runs its script again; each of its
  // steps resumes from the job's newest complete epoch when there is one.
  if (g_asked.restart_from.empty()) PreloadPmixAgent(sp, step);
  char restarts[32] = {0};
  bool requeued =
      spank_getenv(sp, "SLURM_RESTART_COUNT", restarts, sizeof restarts) == ESPANK_SUCCESS &&
      std::atoi(restarts) > 0;
  // The batch step too: its script's own processes resume from the newest
  // complete epoch of step "batch" (taken when no srun ran in it).
  if (g_asked.restart_from.empty() && g_asked.interval && requeued) {
    std::string dir = JobDir(sp);
    if (dir.empty()) return 0;
    std::string from = dir + "/" + std::to_string(job);
    spank_setenv(sp, "STASIS_RESTART_FROM", from.c_str(), 1);
    spank_setenv(sp, "STASIS_RESTART_AUTO", "1", 1);
    if (step != kBatchStep && StepDone(dir, job, step))
      spank_setenv(sp, "STASIS_RESTART_DONE", "1", 1);
  } else if (g_asked.restart_from.empty()) {
    return 0;
  } else if (step == kBatchStep) {
    slurm_error(
        "stasis: --restart-from restarts srun steps; the batch script itself starts afresh");
    return 0;
  }
  int argc = 0;
  char** argv = nullptr;
  if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1 || !argv) {
    slurm_error("stasis: cannot read the task's command line to restart it");
    return -1;
  }
  std::string id = std::to_string(job) + "." + std::to_string(step);
  spank_setenv(sp, "STASIS_RESTART_TASK", id.c_str(), 1);
  spank_setenv(sp, "STASIS_RESTART_ARGV0", argv[0], 1);
  argv[0] = strdup(g_site.tool.c_str());
  return 0;
}

// Counts the local tasks of a step that ended, and how many did not exit 0.
int TaskExit(spank_t sp) {
  if (!spank_remote(sp) || !g_site_ok || !g_asked.interval) return 0;
  int status = 0;
  if (spank_get_item(sp, S_TASK_EXIT_STATUS, &status) != ESPANK_SUCCESS) return 0;
  g_tally.exited++;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) g_tally.failed++;
  return 0;
}

// At the end of a step of a --checkpoint job whose local tasks all exited
// 0: this node's marker, written as the job's user.
int Exit(spank_t sp) {
  if (!spank_remote(sp) || !g_site_ok || !g_asked.interval) return 0;
  uint32_t job = 0, step = 0, node = 0, nodes = 0, local = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  if (spank_get_item(sp, S_JOB_ID, &job) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_STEPID, &step) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_NODEID, &node) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_NNODES, &nodes) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_LOCAL_TASK_COUNT, &local) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_UID, &uid) != ESPANK_SUCCESS ||
      spank_get_item(sp, S_JOB_GID, &gid) != ESPANK_SUCCESS)
    return 0;
  if (step >= 0xfffffff0u || local == 0 || g_tally.exited != local || g_tally.failed != 0) return 0;
  // Not our own helper steps (epochs, scontrol checkpoint enable/disable):
  // they run stasis-step itself.
  int argc = 0;
  char** argv = nullptr;
  if (spank_get_item(sp, S_JOB_ARGV, &argc, &argv) != ESPANK_SUCCESS || argc < 1 || !argv ||
      !argv[0] || std::strstr(argv[0], "stasis-step"))
    return 0;
  std::string dir = JobDir(sp);
  if (dir.empty()) return 0;
  std::string jobdir = dir + "/" + std::to_string(job), marker = StepMarker(dir, job, step, node);
  std::string text = std::to_string(nodes) + "\n";
  pid_t pid = ::fork();
  if (pid < 0) return 0;
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 ||
        ::setresuid(uid, uid, uid) != 0)
      ::_exit(1);
    ::mkdir(jobdir.c_str(), 0700);
    int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) ::_exit(1);
    bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::_exit(ok && ::close(fd) == 0 ? 0 : 1);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return 0;
}

}  // namespace

// The entry points slurmstepd, srun and slurmd find by name (the only
// symbols spank_stasis.lds exports, with plugin_name/type/version).
extern "C" int slurm_spank_init(spank_t sp, int ac, char** av) {
  return Guarded("slurm_spank_init", [&] { return Init(sp, ac, av); });
}

extern "C" int slurm_spank_user_init(spank_t sp, int, char**) {
  return Guarded("slurm_spank_user_init", [&] { return UserInit(sp); });
}

extern "C" int slurm_spank_task_init(spank_t sp, int, char**) {
  return Guarded("slurm_spank_task_init", [&] { return TaskInit(sp); });
}

extern "C" int slurm_spank_task_exit(spank_t sp, int, char**) {
  return Guarded("slurm_spank_task_exit", [&] { return TaskExit(sp); });
}

extern "C" int slurm_spank_exit(spank_t sp, int, char**) {
  return Guarded("slurm_spank_exit", [&] { return Exit(sp); });
}

// cr_restart: restore a process tree from a context file (BLCR's
// cr_restart). cr_restart stays the parent of the restored tree's root and
// exits with its exit status (128+N if it was killed by signal N); signals
// sent to cr_restart are passed on to the restored root.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "engine/agent/agent_abi.h"
#include "engine/agent/stasis_agent.h"
#include "engine/cli/cli_common.h"
#include "engine/core/context_file.h"
#include "engine/core/engine.h"

namespace {

const char* kUsage =
    "cr_restart [--no-restore-pid] [--stop|--kill|--term|--cont] [--relocate OLD=NEW]... "
    "[--omit-maybe|--omit-always|--omit-never] [-v] [-f] FILE";

volatile sig_atomic_t g_root = 0;

void Forward(int sig) {
  if (g_root > 0) ::kill(g_root, sig);
}

}  // namespace

int main(int argc, char** argv) {
  using stasis::cli::Die;
  stasis::core::RestoreOptions opt;
  std::string file;
  bool verbose = false;
  // BLCR's --omit-*: is this cr_restart part of later checkpoints of the
  // job it restored? maybe (default): only when a request names it (its pid
  // or the tree it roots); always: never saved; never: saved like any other
  // process of the tree.
  unsigned omit = STASIS_AGENT_F_OMIT_UNLESS_TARGET;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) stasis::cli::Usage("cr_restart", kUsage);
      return argv[++i];
    };
    if (a == "-f" || a == "--file") file = next();
    else if (a == "--no-restore-pid") opt.restore_pids = false;
    else if (a == "--restore-pid") opt.restore_pids = true;
    else if (a == "--stop") opt.after = stasis::core::AfterRestore::kStop;
    else if (a == "--kill") opt.after = stasis::core::AfterRestore::kKill;
    else if (a == "--term") opt.after = stasis::core::AfterRestore::kTerm;
    else if (a == "--cont" || a == "--run") opt.after = stasis::core::AfterRestore::kRun;
    else if (a == "--relocate" || a.rfind("--relocate=", 0) == 0) {
      std::string spec = a == "--relocate" ? next() : a.substr(11);
      size_t eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
        Die("cr_restart", "--relocate needs OLD=NEW, got '" + spec + "'", 2);
      opt.relocate.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
    } else if (a == "--omit-maybe") omit = STASIS_AGENT_F_OMIT_UNLESS_TARGET;
    else if (a == "--omit-always") omit = STASIS_AGENT_F_OMIT;
    else if (a == "--omit-never") omit = 0;
    else if (a == "-v" || a == "--verbose") verbose = true;
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n", kUsage);
      return 0;
    } else if (a[0] == '-') stasis::cli::Usage("cr_restart", kUsage);
    else if (file.empty()) file = a;
    else stasis::cli::Usage("cr_restart", kUsage);
  }
  if (file.empty()) stasis::cli::Usage("cr_restart", kUsage);
  auto source = stasis::core::OpenContextForRead(file);
  if (!source) Die("cr_restart", source.error().message());
  char cwd[4096];
  opt.source_path = file[0] == '/' || !::getcwd(cwd, sizeof cwd) ? file : std::string(cwd) + "/" + file;
  // Marked before the restore, so no checkpoint of the job can catch us
  // unmarked; the restored processes inherit neither the fd nor the mapping.
  if (omit && stasis_agent_set_omit(omit) != 0)
    Die("cr_restart", std::string("cannot set up --omit: ") + std::strerror(errno));
  auto result = stasis::core::Restore(source->get(), opt);
  if (!result) Die("cr_restart", file + ": " + result.error().message());
  source->reset();  // nothing of the context stays open while we wait
  g_root = result->root_pid;
  if (verbose)
    std::fprintf(stderr, "cr_restart: restored %u processes, %u threads, %.1f MiB in %.3f s%s\n",
                 result->processes, result->threads, result->page_bytes / 1048576.0,
                 result->seconds,
                 result->in_new_pid_namespace ? " (pids taken here: in a new pid namespace)" : "");
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = Forward;
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM})
    ::sigaction(sig, &sa, nullptr);
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(result->wait_pid, &status, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) Die("cr_restart", std::string("wait for restored process: ") + std::strerror(errno));
    break;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

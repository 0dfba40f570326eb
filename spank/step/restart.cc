// restart task (argv rewritten by spank_stasis.so, STASIS_RESTART_TASK
// set): every task of a step started with --restart-from, or of a requeued
// --checkpoint job, runs this. Local task 0 of each node restores the
// node's context (node i of the old step on node i of the new one), the
// other local tasks hand it their stdio and wait; each restored task's
// processes write to their own task's stdio, and each task exits with its
// restored root's status.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/core/engine.h"
#include "engine/core/procfs.h"
#include "engine/daemon/config.h"
#include "engine/store/store.h"
#include "spank/slurm_util.h"
#include "spank/step/common.h"
#include "spank/step/restorer_socket.h"
#include "spank/step/subcommands.h"

namespace stasis::step {
namespace {

pid_t g_root = 0;
void Forward(int sig) {
  if (g_root > 0) ::kill(g_root, sig);
}

void ForwardSignals() {
  struct sigaction sa {};
  sa.sa_handler = Forward;
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT})
    ::sigaction(sig, &sa, nullptr);
}

[[noreturn]] void ExitLike(int status) {
  if (WIFSIGNALED(status)) {
    ::signal(WTERMSIG(status), SIG_DFL);
    ::kill(::getpid(), WTERMSIG(status));
    ::_exit(128 + WTERMSIG(status));
  }
  ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

struct TaskEnv {
  std::string job, step, dir;
  uint32_t node = 0, local = 0, global = 0, nnodes = 0, ntasks = 0, local_count = 0;
};

Result<TaskEnv> ReadTaskEnv() {
  TaskEnv t;
  if (IsBatchRestart()) {
    // The batch script: one task on the batch node, no step variables.
    t.job = Env("SLURM_JOB_ID");
    t.step = "batch";
    t.dir = Env("STASIS_RESTART_FROM");
    t.nnodes = t.ntasks = t.local_count = 1;
    if (t.job.empty() || t.dir.empty())
      return Status::Error(EINVAL, "not the batch step of a requeued job");
    return t;
  }
  t.job = Env("SLURM_JOB_ID");
  t.step = Env("SLURM_STEP_ID", Env("SLURM_STEPID"));
  t.dir = Env("STASIS_RESTART_FROM");
  auto num = [](const char* name, uint32_t* out) {
    std::string v = Env(name);
    if (v.empty()) return false;
    *out = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 10));
    return true;
  };
  if (t.job.empty() || t.step.empty() || !num("SLURM_NODEID", &t.node) ||
      !num("SLURM_LOCALID", &t.local) || !num("SLURM_PROCID", &t.global) ||
      !num("SLURM_STEP_NUM_NODES", &t.nnodes) || !num("SLURM_STEP_NUM_TASKS", &t.ntasks))
    return Status::Error(EINVAL,
                         "not a task of a Slurm step (SLURM_JOB_ID, SLURM_NODEID, ... missing)");
  if (t.dir.empty()) return Status::Error(EINVAL, "STASIS_RESTART_FROM is not set");
  STASIS_ASSIGN_OR_RETURN(t.local_count,
                          stasis::spank::TasksOnNode(Env("SLURM_STEP_TASKS_PER_NODE"), t.node));
  return t;
}

// The variables a restored task takes from the task it now is: Slurm's and
// PMIx's (its ids, its node, the new step's PMIx server).
bool IsStepVariable(const std::string& name) {
  return name.rfind("SLURM", 0) == 0 || name.rfind("PMIX_", 0) == 0 || name.rfind("PMI_", 0) == 0;
}

std::string StepEnvironment() {
  std::string out;
  for (char** e = environ; e && *e; ++e) {
    std::string kv = *e;
    size_t eq = kv.find('=');
    if (eq == std::string::npos || !IsStepVariable(kv.substr(0, eq))) continue;
    out += kv;
    out.push_back('\0');
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ParseStepEnvironment(const std::string& block) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [k, v] : stasis::spank::ParseEnviron(block))
    if (IsStepVariable(k)) out.emplace_back(k, v);
  return out;
}

// Local task 0: gathers every local task's stdio, restores the node's
// context, tells each task its restored root, reaps the roots and tells
// each task its root's status. Answers "roots" for later checkpoints.
int RunRestorer(const TaskEnv& t) {
  const std::string name = RestorerName(t.job, t.step);
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  struct sockaddr_un addr;
  socklen_t len = AbstractAddr(name, &addr);
  if (!listener || ::bind(listener.get(), reinterpret_cast<struct sockaddr*>(&addr), len) != 0 ||
      ::listen(listener.get(), 64) != 0)
    Die("node " + std::to_string(t.node) +
        ": cannot open the restorer's socket: " + std::strerror(errno));

  // The epoch and the node's file, with the store's checks; the counts of
  // the old step against ours before anything starts.
  auto sel = store::SelectForRestart(store::DefaultEnv(), t.dir, t.node, store::Access::Caller());
  if (!sel) Die(sel.error().message());
  // Total tasks and nodes of the checkpointed step.
  uint32_t old_tasks = 0;
  for (const auto& n : sel->epoch.manifest.nodes)
    old_tasks += static_cast<uint32_t>(n.tasks.size());
  uint32_t old_nodes = static_cast<uint32_t>(sel->epoch.manifest.nodes.size());
  if (old_nodes != t.nnodes || old_tasks != t.ntasks)
    Die("the checkpoint in " + sel->epoch.path + " has " + std::to_string(old_nodes) +
        " node(s) and " + std::to_string(old_tasks) + " task(s); this step has " +
        std::to_string(t.nnodes) + " node(s) and " + std::to_string(t.ntasks) + " task(s)");
  if (sel->node.tasks.size() != t.local_count)
    Die("node " + std::to_string(t.node) + " of the checkpoint ran " +
        std::to_string(sel->node.tasks.size()) + " task(s); this step runs " +
        std::to_string(t.local_count) + " on " + Env("SLURMD_NODENAME", "it"));

  // Gather: our own stdio, then every other local task's.
  struct Local {
    uint32_t global = 0, local = 0;
    UniqueFd conn;
    std::vector<UniqueFd> stdio;
    std::string env;  // NUL-separated NAME=value
    pid_t root = 0;
  };
  std::vector<Local> locals(1);
  locals[0].global = t.global;
  locals[0].local = t.local;
  locals[0].env = StepEnvironment();
  for (int fd : {0, 1, 2}) locals[0].stdio.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
  auto gather_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (locals.size() < t.local_count) {
    struct pollfd p {
      listener.get(), POLLIN, 0
    };
    if (::poll(&p, 1, 200) <= 0) {
      if (std::chrono::steady_clock::now() > gather_deadline)
        Die("node " + std::to_string(t.node) + ": only " + std::to_string(locals.size()) + " of " +
            std::to_string(t.local_count) + " local tasks reached the restorer in 60 s");
      continue;
    }
    UniqueFd c(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    Local l;
    auto msg = RecvMsg(c.get(), &l.stdio);
    if (!msg || l.stdio.size() != 3) continue;
    size_t nul = msg->find('\0');
    std::istringstream in(msg->substr(0, nul));
    std::string word;
    in >> word >> l.global >> l.local;
    if (word != "task") continue;
    if (nul != std::string::npos) l.env = msg->substr(nul + 1);
    l.conn = std::move(c);
    locals.push_back(std::move(l));
  }
  std::sort(locals.begin(), locals.end(),
            [](const Local& a, const Local& b) { return a.local < b.local; });

  // The k-th task of the old node becomes our k-th local task.
  std::vector<uint32_t> old_ids = sel->node.tasks;
  std::sort(old_ids.begin(), old_ids.end());
  core::RestoreOptions ropt;
  daemon::KnobsFromEnvironment(&ropt);
  ropt.restore_pids = ::geteuid() == 0;
  for (size_t k = 0; k < locals.size(); ++k) {
    core::RestoreOptions::TaskStdio s;
    s.task = old_ids[k];
    s.stdin_fd = locals[k].stdio[0].get();
    s.stdout_fd = locals[k].stdio[1].get();
    s.stderr_fd = locals[k].stdio[2].get();
    s.env = ParseStepEnvironment(locals[k].env);
    ropt.task_stdio.push_back(s);
  }
  // The batch script: Slurm wrote it anew into its spool for the requeued
  // job (same path, same content, another inode); bash reads it on fd 255.
  if (t.step == "batch" && !Env("STASIS_RESTART_ARGV0").empty())
    ropt.rewritten_ok.push_back(Env("STASIS_RESTART_ARGV0"));
  // Its output files, opened again by Slurm for the requeued job (per
  // --open-mode): the restored processes write through the new open files.
  if (t.step == "batch" && !locals.empty())
    for (int i : {1, 2}) {
      auto link = core::ReadLink("/proc/self/fd/" + std::to_string(i));
      if (link && !link->empty() && (*link)[0] == '/')
        ropt.reattach_files.emplace_back(*link, locals[0].stdio[i].get());
    }
  ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  Result<core::RestoreResult> restored = Status::Error(EIO, "not restored");
  Status s = store::RestoreFromFolder(
      store::DefaultEnv(), t.dir, t.node, store::Access::Caller(),
      [&](const std::string& note) {
        if (t.node == 0) std::fprintf(stderr, "%s: %s\n", kTool, note.c_str());
      },
      [&](store::PreparedRestart& prep) -> Status {
        core::RestoreOptions o = ropt;
        o.check_image = prep.check_image;
        o.before_run = prep.before_run;
        o.source_path = prep.path;
        restored = core::Restore(prep.source.get(), o);
        return restored ? Status::Ok() : restored.error().Prefixed(prep.path);
      });
  if (!s.ok()) {
    for (auto& l : locals)
      if (l.conn) (void)SendMsg(l.conn.get(), "failed " + s.message());
    Die("node " + std::to_string(t.node) + ": " + s.message());
  }
  std::map<pid_t, size_t> by_root;
  for (const auto& r : restored->tasks) {
    auto it = std::find(old_ids.begin(), old_ids.end(), r.task);
    if (it == old_ids.end()) continue;
    size_t k = static_cast<size_t>(it - old_ids.begin());
    locals[k].root = r.pid;
    by_root[r.pid] = k;
    if (locals[k].conn) (void)SendMsg(locals[k].conn.get(), "root " + std::to_string(r.pid));
  }
  for (auto& l : locals) l.stdio.clear();
  g_root = locals[0].root;
  ForwardSignals();

  // Serve "roots" and reap until every restored task has ended.
  int own_status = 0;
  size_t alive = by_root.size();
  std::vector<UniqueFd> askers;
  while (alive > 0) {
    int st = 0;
    pid_t w;
    while ((w = ::waitpid(-1, &st, WNOHANG)) > 0) {
      auto it = by_root.find(w);
      if (it == by_root.end()) continue;  // an orphan we adopted
      Local& l = locals[it->second];
      if (l.conn) (void)SendMsg(l.conn.get(), "exit " + std::to_string(st));
      if (it->second == 0) own_status = st;
      l.root = 0;
      by_root.erase(it);
      --alive;
    }
    struct pollfd p {
      listener.get(), POLLIN, 0
    };
    if (::poll(&p, 1, 100) > 0) {
      UniqueFd c(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!c) continue;
      struct pollfd q {
        c.get(), POLLIN, 0
      };
      if (::poll(&q, 1, 2000) <= 0) continue;
      auto msg = RecvMsg(c.get());
      if (!msg || *msg != "roots") continue;
      std::string reply;
      // A later checkpoint names the tasks by this step's task ids.
      for (const auto& l : locals)
        if (l.root > 0) reply += std::to_string(l.global) + " " + std::to_string(l.root) + "\n";
      (void)SendMsg(c.get(), reply);
    }
  }
  ExitLike(own_status);
}

// Any other local task: hand our stdio to the restorer, wait for our root,
// exit with its status.
int RunRestartProxy(const TaskEnv& t) {
  const std::string name = RestorerName(t.job, t.step);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  Result<UniqueFd> conn = Status::Error(ECONNREFUSED, "");
  for (;;) {
    conn = ConnectRestorer(name);
    if (conn) break;
    if (std::chrono::steady_clock::now() > deadline)
      Die("task " + std::to_string(t.global) +
          ": no restorer on this node after 60 s: " + conn.error().message());
    ::usleep(20000);
  }
  UniqueFd c = std::move(*conn);
  std::string hello = "task " + std::to_string(t.global) + " " + std::to_string(t.local);
  hello.push_back('\0');
  hello += StepEnvironment();
  if (Status s = SendMsg(c.get(), hello, {0, 1, 2}); !s.ok()) Die(s.message());
  ForwardSignals();
  for (;;) {
    auto msg = RecvMsg(c.get());
    if (!msg) Die("task " + std::to_string(t.global) + ": the node's restorer went away");
    std::istringstream in(*msg);
    std::string word;
    in >> word;
    if (word == "failed") std::exit(1);  // the restorer printed why
    if (word == "root") {
      long pid = 0;
      in >> pid;
      g_root = static_cast<pid_t>(pid);
    } else if (word == "exit") {
      int st = 0;
      in >> st;
      ExitLike(st);
    }
  }
}

// A requeued --checkpoint job (auto-resume) with nothing to resume from:
// the task runs its own command from the start.
[[noreturn]] void RunOriginal(char** argv) {
  std::string argv0 = Env("STASIS_RESTART_ARGV0");
  ::unsetenv("STASIS_RESTART_TASK");
  ::unsetenv("STASIS_RESTART_FROM");
  ::unsetenv("STASIS_RESTART_ARGV0");
  ::unsetenv("STASIS_RESTART_AUTO");
  if (argv0.empty()) Die("the task's own command is unknown (STASIS_RESTART_ARGV0)");
  argv[0] = argv0.data();
  ::execvp(argv[0], argv);
  Die("cannot run " + argv0 + ": " + std::strerror(errno), 127);
}

}  // namespace

int RunRestartTask(char** argv) {
  auto t = ReadTaskEnv();
  if (!t) Die(t.error().message());
  if (Env("STASIS_RESTART_AUTO") == "1" && Env("STASIS_RESTART_DONE") == "1") {
    // The plugin found this step marked done on every node before the
    // requeue: it is not run a second time.
    if (t->global == 0)
      std::fprintf(stderr,
                   "%s: requeued job %s: step %s completed before the requeue; not run again\n",
                   kTool, t->job.c_str(), t->step.c_str());
    return 0;
  }
  if (Env("STASIS_RESTART_AUTO") == "1") {
    // A requeued job's script runs its steps again: each resumes from the
    // newest complete epoch of the same step, or starts afresh.
    std::string why = "no complete epoch of step " + t->step;
    std::string chosen;
    auto folder =
        store::JobFolder::Open(store::DefaultEnv(), t->dir, false, store::Access::Caller());
    if (!folder) why = folder.error().message();
    auto epochs = folder ? folder->List() : Result<std::vector<store::EpochInfo>>(folder.error());
    if (epochs) {
      for (auto it = epochs->rbegin(); it != epochs->rend() && chosen.empty(); ++it)
        if (it->state == store::EpochState::kComplete && it->manifest.step == t->step)
          chosen = it->path;
    }
    if (chosen.empty()) {
      if (t->global == 0)
        std::fprintf(
            stderr,
            "%s: requeued job %s: nothing to resume step %s from in %s (%s); starting afresh\n",
            kTool, t->job.c_str(), t->step.c_str(), t->dir.c_str(), why.c_str());
      RunOriginal(argv);
    }
    if (t->global == 0)
      std::fprintf(stderr, "%s: requeued job %s: resuming step %s from %s\n", kTool, t->job.c_str(),
                   t->step.c_str(), chosen.c_str());
    t->dir = chosen;
  }
  return t->local == 0 ? RunRestorer(*t) : RunRestartProxy(*t);
}

}  // namespace stasis::step

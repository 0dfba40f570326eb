// stasis-step checkpoint JOB[.STEP] [--dir ROOT] [--keep N] [--vacate]
//                                   [--final] [--timeout SECONDS]
// The coordinator (a user, scontrol checkpoint, the ticker): one epoch of
// each running step of the job (or of STEP), by starting a helper step
// `srun --overlap --jobid=JOB -N<n> --ntasks-per-node=1 --mpi=pmix
// stasis-step node ...` on the step's nodes (node.cc). Slurm decides who
// may: only the job's owner or root can start a step in a job.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/status.h"
#include "spank/slurm_util.h"
#include "spank/step/common.h"
#include "spank/step/subcommands.h"

namespace stasis::step {
namespace {

struct StepInfo {
  std::string step, nodelist;
};

Result<std::vector<StepInfo>> RunningSteps(const std::string& job) {
  STASIS_ASSIGN_OR_RETURN(std::string out,
                          RunCapture({"squeue", "-h", "-s", "-j", job, "-o", "%i|%j|%N"}));
  std::vector<StepInfo> steps;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, name, nodes;
    if (!std::getline(f, id, '|') || !std::getline(f, name, '|') || !std::getline(f, nodes))
      continue;
    std::string j, s;
    if (!stasis::spank::ParseJobStep(id, &j, &s) || j != job) continue;
    // The extern step and our own helper steps are not checkpointed. The
    // batch script's own processes are, when no srun runs in it (RunNode
    // checks on its node; that step's own epochs cover it meanwhile).
    if (s == "extern" || s == "interactive" || name == "stasis-ckpt") continue;
    steps.push_back({s, nodes});
  }
  // The batch script first: a vacate or requeue kills the steps' tasks,
  // and the script, no longer waiting in srun, would run on into its next
  // command before its own epoch (it is skipped anyway while srun runs).
  std::stable_partition(steps.begin(), steps.end(),
                        [](const StepInfo& x) { return x.step == "batch"; });
  return steps;
}

// Runs one epoch of one step: the helper step on its nodes. Returns the
// helper step's exit status (0: every node committed).
int CheckpointStep(const std::string& self, const CheckpointArgs& a, const StepInfo& s) {
  auto hosts = RunCapture({"scontrol", "show", "hostnames", s.nodelist});
  if (!hosts) {
    std::fprintf(stderr, "%s: %s\n", kTool, hosts.error().message().c_str());
    return 1;
  }
  int n = 0;
  std::istringstream in(*hosts);
  std::string h;
  while (in >> h) ++n;
  char t0[64];
  std::snprintf(t0, sizeof t0, "%.6f", Now());
  std::vector<std::string> argv = {"srun",
                                   "--overlap",
                                   "--jobid=" + a.job,
                                   "-N" + std::to_string(n),
                                   "-n" + std::to_string(n),
                                   "--ntasks-per-node=1",
                                   "-w",
                                   s.nodelist,
                                   "--mpi=pmix",
                                   "-J",
                                   "stasis-ckpt",
                                   "-Q",
                                   "--kill-on-bad-exit=0",
                                   "--time=" + std::to_string(a.timeout / 60 + 2),
                                   self,
                                   "node",
                                   "--job",
                                   a.job,
                                   "--step",
                                   s.step,
                                   "--timeout",
                                   std::to_string(a.timeout),
                                   "--t0",
                                   t0};
  if (!a.root.empty()) argv.insert(argv.end(), {"--dir", a.root});
  if (a.keep) argv.insert(argv.end(), {"--keep", std::to_string(a.keep)});
  if (a.vacate) argv.push_back("--vacate");
  if (a.final) argv.push_back("--final");
  pid_t pid = ::fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    std::vector<char*> v;
    for (auto& x : argv) v.push_back(x.data());
    v.push_back(nullptr);
    ::execvp("srun", v.data());
    std::fprintf(stderr, "%s: cannot run srun: %s\n", kTool, std::strerror(errno));
    ::_exit(127);
  }
  // The nodes bound their own waits; this bounds a helper step that never
  // starts or never ends.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(a.timeout + 30);
  int st = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &st, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return 1;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGINT);
      ::usleep(200000);
      ::kill(pid, SIGINT);
      ::sleep(2);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      std::fprintf(stderr, "%s: step %s.%s: the epoch timed out after %d s\n", kTool, a.job.c_str(),
                   s.step.c_str(), a.timeout);
      return 1;
    }
    ::usleep(20000);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace

int RunCheckpoint(const CheckpointArgs& a) {
  std::vector<StepInfo> steps;
  auto running = RunningSteps(a.job);
  if (!running) Die(running.error().message());
  for (const auto& s : *running)
    if (a.step.empty() || s.step == a.step) {
      if (s.step == "batch" && a.batch_script > 0 && !SlurmClientIn(a.batch_script).empty())
        continue;
      steps.push_back(s);
    }
  if (steps.empty()) {
    std::fprintf(stderr, "%s: job %s has no running step%s to checkpoint\n", kTool, a.job.c_str(),
                 a.step.empty() ? "" : (" " + a.step).c_str());
    return 1;
  }
  int rc = 0;
  const std::string self = SelfPath();
  for (const auto& s : steps) {
    int r = CheckpointStep(self, a, s);
    if (r != 0) {
      std::fprintf(stderr, "%s: step %s.%s: epoch not taken (status %d)\n", kTool, a.job.c_str(),
                   s.step.c_str(), r);
      rc = 1;
    }
  }
  return rc;
}

}  // namespace stasis::step

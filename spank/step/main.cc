// stasis-step: checkpoints and restarts of Slurm job steps, on top of the
// engine, the store and stasisd. The plugin (spank_stasis.so) execs it, the
// scontrol wrapper and users run it. One file per subcommand; this one only
// dispatches on argv[1] (or on STASIS_RESTART_TASK, which the plugin sets):
//
//   checkpoint JOB[.STEP]  checkpoint.cc  one epoch of each running step: a
//                                         helper step of `node` on its nodes
//   node                   node.cc        one helper task of an epoch; the
//                                         fences are epoch.h's state table
//   ticker                 ticker.cc      periodic and final epochs of a job
//   control, control-local control.cc     scontrol checkpoint enable/disable/error
//   (restart task)         restart.cc     a task of a --restart-from step
//
// docs/design.md "Slurm integration" draws the whole; docs/protocol.md
// "Epochs between stasis-step instances" the fences and their PMIx keys.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "engine/cli/cli_common.h"
#include "spank/slurm_util.h"
#include "spank/step/common.h"
#include "spank/step/subcommands.h"

namespace stasis::step {
namespace {

// clang-format off
const char* const kUsage =
    "stasis-step checkpoint JOB[.STEP] [--dir ROOT] [--keep N] [--vacate] [--final] [--timeout SECONDS]\n"
    "       stasis-step ticker --job JOB --interval SECONDS [--final-lead SECONDS]\n"
    "       stasis-step control JOB --op enable|disable|error [--dir ROOT]\n"
    "       stasis-step node --job JOB --step STEP [--dir ROOT] [--keep N] [--vacate] [--final] [--timeout S] (in a helper step)";
// clang-format on

}  // namespace

int Main(int argc, char** argv) {
  // A task of a --restart-from step: spank_stasis.so rewrote its command.
  const std::string restart = Env("STASIS_RESTART_TASK");
  if (!restart.empty() &&
      (restart == Env("SLURM_JOB_ID") + "." + Env("SLURM_STEP_ID", Env("SLURM_STEPID")) ||
       IsBatchRestart()))
    return RunRestartTask(argv);
  if (argc < 2) stasis::cli::Usage(kTool, kUsage);
  std::string mode = argv[1];
  CheckpointArgs a;
  NodeOptions n;
  uint64_t interval = 0, final_lead = 0;
  std::string jobstep, op;
  for (int i = 2; i < argc; ++i) {
    std::string x = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) stasis::cli::Usage(kTool, kUsage);
      return argv[++i];
    };
    long v = 0;
    if (x == "--dir")
      a.root = n.root = next();
    else if (x == "--keep") {
      if (!stasis::cli::ParsePositive(next(), &v)) Die("--keep: not a positive number");
      a.keep = n.keep = static_cast<uint32_t>(v);
    } else if (x == "--vacate")
      a.vacate = n.vacate = true;
    else if (x == "--final")
      a.final = n.final = true;
    else if (x == "--timeout") {
      if (!stasis::cli::ParsePositive(next(), &v))
        Die("--timeout: not a positive number of seconds");
      a.timeout = n.timeout = static_cast<int>(v);
    } else if (x == "--job")
      a.job = n.job = next();
    else if (x == "--step")
      n.step = next();
    else if (x == "--op")
      op = next();
    else if (x == "--t0")
      n.t0 = std::strtod(next().c_str(), nullptr);
    else if (x == "--interval") {
      if (!stasis::cli::ParsePositive(next(), &v))
        Die("--interval: not a positive number of seconds");
      interval = static_cast<uint64_t>(v);
    } else if (x == "--final-lead") {
      if (!stasis::cli::ParsePositive(next(), &v))
        Die("--final-lead: not a positive number of seconds");
      final_lead = static_cast<uint64_t>(v);
    } else if (x[0] != '-' && jobstep.empty())
      jobstep = x;
    else
      stasis::cli::Usage(kTool, kUsage);
  }
  if (mode == "node") {
    if (n.job.empty() || n.step.empty()) stasis::cli::Usage(kTool, kUsage);
    return RunNode(n);
  }
  if (mode == "checkpoint") {
    if (!stasis::spank::ParseJobStep(jobstep, &a.job, &a.step))
      Die("'" + jobstep + "' is not a job id (JOB or JOB.STEP)");
    return RunCheckpoint(a);
  }
  if (mode == "control") {
    // stasis-step control JOB enable|disable|error [--dir ROOT]
    std::string job, step;
    if (!stasis::spank::ParseJobStep(jobstep, &a.job, &step))
      Die("'" + jobstep + "' is not a job id");
    if (op != "enable" && op != "disable" && op != "error")
      Die("--op must be enable, disable or error");
    return RunControl(a, op);
  }
  if (mode == "control-local") {
    if (a.job.empty() || (op != "enable" && op != "disable" && op != "error"))
      stasis::cli::Usage(kTool, kUsage);
    return RunControlLocal(a.job, op, a.root);
  }
  if (mode == "ticker") {
    if (a.job.empty() || !interval) stasis::cli::Usage(kTool, kUsage);
    return RunTicker(a.job, interval, final_lead);
  }
  stasis::cli::Usage(kTool, kUsage);
}

}  // namespace stasis::step

int main(int argc, char** argv) { return stasis::step::Main(argc, argv); }

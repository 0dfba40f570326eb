// The subcommands of stasis-step, one file each, dispatched by main.cc.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

namespace stasis::step {

// node: one helper task of an epoch (node.cc).
struct NodeOptions {
  std::string job, step;
  std::string root;   // checkpoint root ("" = the tasks' STASIS_CHECKPOINT_DIR or submit dir)
  uint32_t keep = 0;  // 0 = the tasks' STASIS_CHECKPOINT_KEEP, else 2
  bool vacate = false;
  bool final = false;  // the job is about to end: PMIX_JCTRL_PREEMPT_ALERT first
  int timeout = 300;
  double t0 = 0;  // when the epoch was triggered (unix seconds)
};
int RunNode(NodeOptions opt);

// checkpoint: the coordinator (checkpoint.cc); the ticker runs it too.
struct CheckpointArgs {
  std::string job, step, root;
  uint32_t keep = 0;
  bool vacate = false;
  bool final = false;
  int timeout = 300;
  // The ticker, a sibling of the batch script on its node: the script's
  // pid, to skip its helper step while a Slurm client runs in it (RunNode
  // would find the same and take no epoch).
  pid_t batch_script = 0;
};
int RunCheckpoint(const CheckpointArgs& a);

// control and control-local: scontrol checkpoint enable/disable/error
// (control.cc).
int RunControl(const CheckpointArgs& a, const std::string& op);
int RunControlLocal(const std::string& job, const std::string& op, const std::string& dir);

// ticker: periodic epochs and a final one (ticker.cc).
int RunTicker(const std::string& job, uint64_t interval, uint64_t final_lead);

// restart task: each task of a --restart-from step (restart.cc).
int RunRestartTask(char** argv);

// main.cc: the dispatch on argv[1] (or on STASIS_RESTART_TASK).
int Main(int argc, char** argv);

}  // namespace stasis::step

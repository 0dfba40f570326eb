// Helpers every stasis-step subcommand shares: errors, the environment,
// running a Slurm command, the job folder's switch files. Nothing here
// knows PMIx or the epoch protocol (epoch_wire.h, pmix_client.h).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "engine/base/status.h"
#include "engine/store/store.h"

namespace stasis::step {

extern const char* const kTool;  // "stasis-step", the prefix of every message
// Slurm's id of the batch step (SLURM_BATCH_SCRIPT in 22.05), as the plugin
// writes it in STASIS_RESTART_TASK.
extern const char* const kBatchStepId;

[[noreturn]] void Die(const std::string& message, int code = 1);
// The variable's value, or `fallback` when it is unset or empty.
std::string Env(const char* name, const std::string& fallback = "");
// Is this the batch step's task that the plugin made a restart?
bool IsBatchRestart();
double Now();  // unix seconds
Result<std::string> ReadAll(int fd);
// /proc/PID/<what> of a process of the job.
Result<std::string> ReadProcFile(pid_t pid, const char* what);
// Runs a command (no shell) and returns its stdout; stderr passes through.
// Fails with the command's own exit status in the message.
Result<std::string> RunCapture(const std::vector<std::string>& argv, int* exit_status = nullptr);
// This program's own path (the helper steps run it again).
std::string SelfPath();
// A Slurm client (srun, salloc, sbatch, sattach, scontrol...) in the tree of
// `root`, as "srun (pid N)", or "".
std::string SlurmClientIn(pid_t root);

// Per-job switches in the job folder (scontrol checkpoint disable/enable/
// error): ".disabled" stops epochs; ".last-error" holds the last failed
// epoch's message. Plain files of the job's owner, never followed links.
constexpr const char* kDisabled = ".disabled";
constexpr const char* kLastError = ".last-error";
bool JobDisabled(const store::JobFolder& job);
Status WriteJobFile(const store::JobFolder& job, const char* name, const std::string& text);

}  // namespace stasis::step

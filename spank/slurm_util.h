// What stasis-step needs to know of Slurm, read the way a user's own tools
// would (Slurm's commands as the caller, the task's environment, the
// restart step's variables): parsed here so the parsing is unit-tested.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/base/status.h"

namespace stasis::spank {

// One row of `scontrol listpids JOB.STEP` that heads a task (LOCALID and
// GLOBALID given); the rows of the tasks' descendants ("-") are skipped.
struct ListedTask {
  pid_t pid = 0;
  uint32_t local_id = 0;
  uint32_t global_id = 0;
};
Result<std::vector<ListedTask>> ParseListPids(const std::string& output, const std::string& job,
                                              const std::string& step);

// SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE ("2(x3),1"): the task
// count of node `node` (0-based).
Result<uint32_t> TasksOnNode(const std::string& spec, uint32_t node);

// "5" or "5.0" or "5.batch": job and step ("" when not given).
bool ParseJobStep(const std::string& text, std::string* job, std::string* step);

// NUL-separated KEY=VALUE (/proc/PID/environ) as a map.
std::map<std::string, std::string> ParseEnviron(const std::string& raw);

}  // namespace stasis::spank

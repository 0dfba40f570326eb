// What stasis-step needs to know of Slurm, read the way a user's own tools
// would (Slurm's commands as the caller, the task's environment, the
// restart step's variables): parsed here so the parsing is unit-tested.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
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

// An epoch refused for a connection names its peer by address only ("...
// fd 15: TCP A -> PEER is connected to <who>; it would come back closed
// ..."); the step knows who some peers are. NameRefusedPeer adds " (what)"
// after <who> when `what_of(PEER, on_other_host)` says something
// (on_other_host: the engine found no peer on this host); the message is
// returned unchanged when it names no connection.
std::string NameRefusedPeer(
    std::string message,
    const std::function<std::string(const std::string& peer, bool on_other_host)>& what_of);

// The NodeName whose NodeAddr is `addr` in `scontrol -o show node` output,
// or "".
std::string NodeWithAddress(const std::string& show_node, const std::string& addr);

}  // namespace stasis::spank

// The engine's side of the libcr agent handshake (engine/agent/agent_abi.h):
// before a scope is frozen, every process that runs libcr's agent gets to
// run its checkpoint callbacks, to opt out (CR_CHECKPOINT_OMIT, cr_run
// --omit) or to cancel the checkpoint (TEMP/PERM failure); afterwards each
// learns whether it continues or the checkpoint failed. The restorer marks
// restored agent blocks as restarted (MarkRestarted).
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/core/procfs.h"
#include "engine/format/context.h"

namespace stasis::core {

class ProcessMemory;

// A scope a callback added with cr_forward_checkpoint(), and the process
// whose agent asked for it with its credentials then: the processes it
// adds must be ones that process could trace itself (CheckMayTrace), so an
// agent never widens a checkpoint beyond its own reach.
struct ForwardedScope {
  format::ScopeKind scope = format::kScopeTree;
  pid_t target = 0;
  pid_t by = 0;
  TraceCreds by_creds;
};

struct AgentRequest {
  pid_t requester = 0;
  pid_t target = 0;
  format::ScopeKind scope = format::kScopeTree;
  int signal = 0;              // sent after the checkpoint, 0 if none
  std::string dest;            // context file path, for cr_get_checkpoint_info
  double timeout_seconds = 0;  // for the callbacks; 0 = unbounded (BLCR)
  bool final = false;          // the job is about to end (STASIS_AGENT_RQ_FINAL)
};

class AgentSession {
 public:
  explicit AgentSession(AgentRequest request);
  ~AgentSession();  // an unfinished session tells its agents the checkpoint failed
  AgentSession(const AgentSession&) = delete;
  AgentSession& operator=(const AgentSession&) = delete;

  // Runs the callback phase for `pids` (processes seen for the first time).
  // The caller has checked every one of them (may the requester trace it?)
  // and pinned it by a pidfd in `pidfds_for_perm` before: this opens,
  // writes and wakes their agent blocks (only while that pidfd is alive,
  // so a pid reused since the check is not touched). On a callback's
  // TEMP/PERM failure returns CR_ETEMPFAIL/CR_EPERMFAIL (or the callback's
  // own code), having told every agent; on PERM the processes of
  // `pidfds_for_perm` (checked ones, each named by its pidfd so a reused
  // pid is never hit) were killed, as BLCR does.
  // An agent block is used only when its memfd is sealed against shrinking
  // (F_SEAL_SHRINK, as libcr seals it): a block the process could shrink
  // under our mapping would kill us with SIGBUS. An unsealed one refuses
  // the checkpoint (EPERM naming the pid), docs/design.md.
  Status Prepare(const std::vector<pid_t>& pids, const std::map<pid_t, UniqueFd>& pidfds_for_perm);

  // Processes that opted out, and scopes callbacks added with
  // cr_forward_checkpoint().
  const std::set<pid_t>& omitted() const { return omitted_; }
  const std::vector<ForwardedScope>& forwarded() const { return forwarded_; }

  // Ends the handshake: code 0 = the checkpoint is taken (callbacks return
  // 0), else it failed with that code (callbacks return -code).
  void Finish(int code);

 private:
  struct Agent;
  // Null when pid has no agent block of its own; an error when it has one
  // that cannot be used safely (not sealed).
  static Result<std::unique_ptr<Agent>> FindAgentBlock(pid_t pid);
  AgentRequest request_;
  std::vector<std::unique_ptr<Agent>> agents_;
  std::set<pid_t> omitted_;
  std::vector<ForwardedScope> forwarded_;
};

// After a restore, before the process runs: if `pid` has an agent block
// mapped at [start, end) (the memfd "stasis-agent"), tell it that it was
// restarted, by `requester` from `source`.
Status MarkRestarted(pid_t pid, ProcessMemory* mem, uint64_t start, pid_t requester,
                     const std::string& source);

// Where the process behind the agent block at `start` keeps `environ`
// (0 if unknown: an older agent, not a block).
uint64_t AgentEnvironAddress(ProcessMemory* mem, uint64_t start);

// For `cr_checkpoint --libcr-request`: writes the outcome of libcr's
// cr_request_checkpoint() (0 or a positive error code, and a message) into
// the requester's agent block, open at `block_fd`, and wakes its
// cr_poll_checkpoint(). Like the engine, only into a sealed block.
void ReportRequestResult(int block_fd, int code, const std::string& message);

// BLCR's cr_scope_t value for a scope.
int BlcrScope(format::ScopeKind scope);

}  // namespace stasis::core

// One node's walk through the epoch state table (epoch_table.h) over PMIx:
// what it publishes at each fence, what it reads back, and which event that
// makes. node.cc drives it from the engine's hooks (quiesced, frozen,
// written) and, once the capture has returned, Finish() walks whatever
// fences are left, so every node answers every fence whatever happened.
// Not thread-safe; one per helper task.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/base/status.h"
#include "spank/step/epoch_table.h"
#include "spank/step/epoch_wire.h"
#include "spank/step/pmix_client.h"

namespace stasis::step {

class EpochProtocol {
 public:
  // Rank 0 commits the epoch with the reports of every node, in node order,
  // once all are good (the MANIFEST); its failure aborts the epoch.
  using CommitFn = std::function<Status(const std::vector<NodeReport>&)>;
  // `pmix` outlives this; every fence waits at most `timeout` seconds.
  EpochProtocol(Pmix* pmix, int timeout, CommitFn commit);

  EpochState state() const { return state_; }
  // Requested: joins the epoch fence, rank 0 publishing `rank0_value`
  // (the fields of stasis.epoch). Returns rank 0's fields; epoch=0 in them
  // ends the walk (not_started). A PMIx failure is returned as is.
  Result<Fields> Allocate(const std::string& rank0_value);

  // This node cannot go on (no tasks, no folder...): joins the rest saying
  // `why`. Kept until the node's part of a state would start.
  void Fail(const Status& why);
  // This node's part of `s` is done: joins its fence (and the verdict after
  // a good report), publishing `report` at the report fence. Ok while the
  // epoch goes on; else why it does not, and the node is in an abort state.
  Status Reached(EpochState s, const NodeReport* report = nullptr);
  // After the capture returned `outcome`: walks every fence left (saying
  // why, when `outcome` failed) to a terminal state. Ok when committed.
  // `report` is what a failed node reports (ok and message are set here).
  Status Finish(const Status& outcome, NodeReport report);

  // Seconds between the last node's end of its callbacks and now, as read
  // at the quiesce fence.
  double proceed_after_last_quiesce() const { return lag_; }

 private:
  // Joins the current state's fence and moves on by the table.
  void JoinFence();
  // Publishes this state's value (if this rank does) and joins the fence.
  Status PublishAndFence(const std::string& value);
  // What rank 0 says at the verdict fence when the epoch aborts.
  std::string AbortReason() const;
  void Move(EpochEvent e);

  Pmix* pmix_;
  int timeout_;
  CommitFn commit_;
  EpochState state_ = EpochState::kRequested;
  Status why_ = Status::Ok();  // this node's failure, once it has one
  bool pending_failure_ = false;
  NodeReport report_;
  std::vector<NodeReport> reports_;  // rank 0, after the report fence
  Status reports_read_ = Status::Ok();
  double lag_ = 0;
};

}  // namespace stasis::step

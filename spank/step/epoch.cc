// One node's walk through the epoch state table over PMIx (epoch.h). Every
// fence is joined through JoinFence(), which publishes what the table says
// the state publishes, reads what it must and moves by the table; nothing
// else here joins a fence.
#include "spank/step/epoch.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "spank/step/common.h"

namespace stasis::step {

EpochProtocol::EpochProtocol(Pmix* pmix, int timeout, CommitFn commit)
    : pmix_(pmix), timeout_(timeout), commit_(std::move(commit)) {}

void EpochProtocol::Move(EpochEvent e) {
  if (auto next = NextState(state_, e)) {
    state_ = *next;
    return;
  }
  // No such row: the unit test rules this out. Never loop: abort.
  if (why_.ok())
    why_ = Status::Error(EPROTO,
                         std::string("epoch protocol: no transition from ") + StateName(state_));
  state_ = EpochState::kAborted;
}

Status EpochProtocol::PublishAndFence(const std::string& value) {
  const EpochStateInfo& info = StateInfo(state_);
  Status put = Status::Ok();
  if (info.publisher == Publisher::kEveryRank ||
      (info.publisher == Publisher::kRankZero && pmix_->rank() == 0))
    put = pmix_->Put(info.key, value);
  // Joined even when the put failed: the other nodes wait for this one.
  Status fence = pmix_->Fence(timeout_);
  return put.ok() ? fence : put;
}

Result<Fields> EpochProtocol::Allocate(const std::string& rank0_value) {
  if (state_ != EpochState::kRequested)
    return Status::Error(EPROTO,
                         std::string("epoch protocol: allocate in state ") + StateName(state_));
  Status s = PublishAndFence(rank0_value);
  Result<std::string> text = s.ok() ? pmix_->Get(0, StateInfo(state_).key) : Result<std::string>(s);
  if (!text) {
    why_ = text.error();
    Move(EpochEvent::kFenceFailed);
    return text.error();
  }
  Fields fields = DecodeFields(*text);
  Move(std::strtoull(fields["epoch"].c_str(), nullptr, 10) == 0 ? EpochEvent::kFenceFailed
                                                                : EpochEvent::kFenceOk);
  return fields;
}

std::string EpochProtocol::AbortReason() const {
  if (!reports_read_.ok()) return reports_read_.message();
  for (const auto& r : reports_)
    if (!r.ok) return "node " + std::to_string(r.node) + " (" + r.host + "): " + r.message;
  return why_.message();
}

void EpochProtocol::JoinFence() {
  const EpochStateInfo& info = StateInfo(state_);
  const bool healthy = info.healthy;
  // What this state publishes (epoch_table.cc has it in words).
  std::string value;
  switch (info.fence) {
    case Fence::kQuiesce: {
      char t[64];
      std::snprintf(t, sizeof t, "%.6f", Now());
      value = healthy ? std::string("1 ") + t : "0 " + why_.message();
      break;
    }
    case Fence::kFrozen:
      value = healthy ? std::string("1") : "0 " + why_.message();
      break;
    case Fence::kReport: {
      NodeReport r = report_;
      if (!healthy) {
        r.ok = false;
        r.message = why_.message();
      }
      value = EncodeReport(r);
      break;
    }
    case Fence::kVerdict:
      value = healthy ? std::string("commit") : "abort " + AbortReason();
      break;
    case Fence::kEpoch:  // Allocate()
    case Fence::kNone:
      Move(EpochEvent::kFenceFailed);
      return;
  }
  Status s = PublishAndFence(value);

  // What it reads back. A node that already failed reads only what rank 0
  // needs to say why at the verdict.
  switch (info.fence) {
    case Fence::kQuiesce: {
      double last = 0;
      for (uint32_t r = 0; healthy && s.ok() && r < pmix_->size(); ++r) {
        auto v = pmix_->Get(r, info.key);
        if (!v) {
          s = v.error();
        } else if (v->rfind("1 ", 0) != 0) {
          s = Status::Error(ECANCELED, "helper rank " + std::to_string(r) + " could not quiesce: " +
                                           (v->size() > 2 ? v->substr(2) : *v));
        } else {
          last = std::max(last, std::strtod(v->c_str() + 2, nullptr));
        }
      }
      if (healthy && s.ok()) lag_ = Now() - last;
      break;
    }
    case Fence::kFrozen:
      for (uint32_t r = 0; healthy && s.ok() && r < pmix_->size(); ++r) {
        auto v = pmix_->Get(r, info.key);
        if (!v)
          s = v.error();
        else if (*v != "1")
          s = Status::Error(ECANCELED, "helper rank " + std::to_string(r) + " could not freeze: " +
                                           (v->size() > 2 ? v->substr(2) : *v));
      }
      break;
    case Fence::kReport:
      // Rank 0 reads every report: the commit, or the reason of the abort.
      if (pmix_->rank() == 0) {
        reports_.clear();
        reports_read_ = s;
        for (uint32_t r = 0; reports_read_.ok() && r < pmix_->size(); ++r) {
          auto text = pmix_->Get(r, info.key);
          if (!text)
            reports_read_ = text.error();
          else
            reports_.push_back(DecodeReport(*text));
        }
        s = reports_read_;
      }
      break;
    case Fence::kVerdict:
      if (healthy && s.ok()) {
        auto v = pmix_->Get(0, info.key);
        if (!v)
          s = v.error();
        else if (*v != "commit")
          s = Status::Error(ECANCELED, v->size() > 6 ? v->substr(6) : *v);
      }
      break;
    case Fence::kEpoch:
    case Fence::kNone:
      break;
  }
  if (healthy && !s.ok()) why_ = s;
  Move(s.ok() ? EpochEvent::kFenceOk : EpochEvent::kFenceFailed);

  // Entering durable: rank 0 commits the epoch (the MANIFEST) if every
  // report is good; else it aborts it at the verdict fence.
  if (state_ == EpochState::kDurable && pmix_->rank() == 0) {
    Status c = Status::Ok();
    for (const auto& r : reports_)
      if (c.ok() && !r.ok)
        c = Status::Error(EIO,
                          "node " + std::to_string(r.node) + " (" + r.host + "): " + r.message);
    std::vector<NodeReport> sorted = reports_;
    std::sort(sorted.begin(), sorted.end(),
              [](const NodeReport& a, const NodeReport& b) { return a.node < b.node; });
    for (size_t i = 0; c.ok() && i < sorted.size(); ++i)
      if (sorted[i].node != i)
        c = Status::Error(
            EINVAL, "node indexes of the step are not 0.." + std::to_string(sorted.size() - 1));
    if (c.ok()) c = commit_(sorted);
    if (!c.ok()) {
      why_ = c;
      Move(EpochEvent::kLocalFailure);
    }
  }
}

Status EpochProtocol::Reached(EpochState s, const NodeReport* report) {
  if (state_ != s)
    return Status::Error(EPROTO, std::string("epoch protocol: ") + StateName(s) +
                                     " reached in state " + StateName(state_));
  if (report) report_ = *report;
  JoinFence();
  // The verdict needs nothing more of the engine: joined at once, as the
  // report fence is (the tasks stay frozen until it).
  while (state_ == EpochState::kDurable || state_ == EpochState::kAbortVerdict) JoinFence();
  return StateInfo(state_).healthy ? Status::Ok() : why_;
}

Status EpochProtocol::Finish(const Status& outcome, NodeReport report) {
  if (!outcome.ok())
    why_ = outcome;
  else if (state_ != EpochState::kCommitted && why_.ok())
    why_ = Status::Error(EIO, "no result");
  report_ = std::move(report);
  if (!IsTerminal(state_) && StateInfo(state_).healthy) Move(EpochEvent::kLocalFailure);
  while (!IsTerminal(state_)) JoinFence();
  return state_ == EpochState::kCommitted ? outcome : why_;
}

}  // namespace stasis::step

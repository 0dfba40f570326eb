// The epoch protocol's state and transition tables (epoch_table.h). Read
// them top to bottom: the first five states are an epoch that goes well,
// the abort_* states are the same fences walked by a node that failed.
#include "spank/step/epoch_table.h"

namespace stasis::step {
namespace {

using S = EpochState;
using E = EpochEvent;
using F = Fence;
using P = Publisher;

// clang-format off
constexpr EpochStateInfo kStates[] = {
//  state            name             fence        key               who          healthy  value
  {S::kRequested,    "requested",     F::kEpoch,   "stasis.epoch",   P::kRankZero,  true,  "epoch=N, jobdir, keep; epoch=0 and error= when none"},
  {S::kQuiescing,    "quiescing",     F::kQuiesce, "stasis.quiesce", P::kEveryRank, true,  "1 <unix time the callbacks ended>"},
  {S::kFrozen,       "frozen",        F::kFrozen,  "stasis.frozen",  P::kEveryRank, true,  "1"},
  {S::kWriting,      "writing",       F::kReport,  "stasis.report",  P::kEveryRank, true,  "report ok=1, node, host, tasks, argv, size, crc"},
  {S::kDurable,      "durable",       F::kVerdict, "stasis.verdict", P::kRankZero,  true,  "commit (the MANIFEST is durable)"},
  {S::kAbortQuiesce, "abort_quiesce", F::kQuiesce, "stasis.quiesce", P::kEveryRank, false, "0 <why>"},
  {S::kAbortFrozen,  "abort_frozen",  F::kFrozen,  "stasis.frozen",  P::kEveryRank, false, "0 <why>"},
  {S::kAbortReport,  "abort_report",  F::kReport,  "stasis.report",  P::kEveryRank, false, "report ok=0, message=<why>"},
  {S::kAbortVerdict, "abort_verdict", F::kVerdict, "stasis.verdict", P::kRankZero,  false, "abort <first failed node's why>"},
  {S::kCommitted,    "committed",     F::kNone,    "",               P::kNobody,    true,  ""},
  {S::kAborted,      "aborted",       F::kNone,    "",               P::kNobody,    false, ""},
  {S::kNotStarted,   "not_started",   F::kNone,    "",               P::kNobody,    false, ""},
};

// A local failure moves a node to the abort twin of the fence it has not
// joined yet; a failed fence to the abort twin of the next one. Requested
// takes no local failure: rank 0 publishes its own as epoch=0, and another
// rank's is carried to the quiesce fence (only rank 0 decides there).
constexpr EpochTransition kTransitions[] = {
//  state            event              next
  {S::kRequested,    E::kFenceOk,       S::kQuiescing},
  {S::kRequested,    E::kFenceFailed,   S::kNotStarted},
  {S::kQuiescing,    E::kFenceOk,       S::kFrozen},
  {S::kQuiescing,    E::kLocalFailure,  S::kAbortQuiesce},
  {S::kQuiescing,    E::kFenceFailed,   S::kAbortFrozen},
  {S::kFrozen,       E::kFenceOk,       S::kWriting},
  {S::kFrozen,       E::kLocalFailure,  S::kAbortFrozen},
  {S::kFrozen,       E::kFenceFailed,   S::kAbortReport},
  {S::kWriting,      E::kFenceOk,       S::kDurable},
  {S::kWriting,      E::kLocalFailure,  S::kAbortReport},
  {S::kWriting,      E::kFenceFailed,   S::kAbortVerdict},
  {S::kDurable,      E::kFenceOk,       S::kCommitted},
  {S::kDurable,      E::kLocalFailure,  S::kAbortVerdict},  // rank 0 could not commit
  {S::kDurable,      E::kFenceFailed,   S::kAborted},
  {S::kAbortQuiesce, E::kFenceOk,       S::kAbortFrozen},
  {S::kAbortQuiesce, E::kFenceFailed,   S::kAbortFrozen},
  {S::kAbortFrozen,  E::kFenceOk,       S::kAbortReport},
  {S::kAbortFrozen,  E::kFenceFailed,   S::kAbortReport},
  {S::kAbortReport,  E::kFenceOk,       S::kAbortVerdict},
  {S::kAbortReport,  E::kFenceFailed,   S::kAbortVerdict},
  {S::kAbortVerdict, E::kFenceOk,       S::kAborted},
  {S::kAbortVerdict, E::kFenceFailed,   S::kAborted},
};
// clang-format on

static_assert(sizeof kStates / sizeof kStates[0] == kEpochStateCount);

}  // namespace

const EpochStateInfo& StateInfo(EpochState s) {
  // The rows are in enum order (the unit test checks).
  return kStates[static_cast<size_t>(s)];
}

const char* StateName(EpochState s) { return StateInfo(s).name; }

const char* FenceName(Fence f) {
  switch (f) {
    case Fence::kEpoch:
      return "epoch";
    case Fence::kQuiesce:
      return "quiesce";
    case Fence::kFrozen:
      return "frozen";
    case Fence::kReport:
      return "report";
    case Fence::kVerdict:
      return "verdict";
    case Fence::kNone:
      break;
  }
  return "none";
}

bool IsTerminal(EpochState s) { return StateInfo(s).fence == Fence::kNone; }

std::optional<EpochState> NextState(EpochState s, EpochEvent e) {
  for (const auto& t : kTransitions)
    if (t.state == s && t.event == e) return t.next;
  return std::nullopt;
}

const EpochStateInfo* EpochStates(size_t* count) {
  *count = sizeof kStates / sizeof kStates[0];
  return kStates;
}

const EpochTransition* EpochTransitions(size_t* count) {
  *count = sizeof kTransitions / sizeof kTransitions[0];
  return kTransitions;
}

}  // namespace stasis::step

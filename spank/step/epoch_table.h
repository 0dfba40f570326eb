// The epoch protocol between the helper tasks of one epoch (stasis-step
// node, one per node of the step) as one table of states and transitions,
// after flux-core's broker state machine. Pure data: no PMIx here, so the
// unit tests walk every path (test/unit/epoch_table_test.cc); epoch.h drives
// it over PMIx. docs/protocol.md "Epochs between stasis-step instances" is
// the same table in prose, with the keys and their encoding.
//
//   rank 0          rank 1..n-1
//   requested ----- requested      fence epoch:   rank 0 allocates the epoch
//   quiescing ----- quiescing      fence quiesce: callbacks done, nothing frozen
//   frozen -------- frozen         fence frozen:  every node frozen and captured
//   writing ------- writing        fence report:  every node file durable (or why not)
//   durable ------- durable        fence verdict: rank 0 commits the MANIFEST
//   committed       committed      (tasks resume, or end with --vacate)
//
// A node that fails, or learns at a fence that another one did, leaves the
// healthy column for its abort_* twin and still joins every later fence,
// publishing its failure there: no node ever waits for an answer that does
// not come. That "every node answers every fence" holds is a property of
// the table, checked by the unit test, not of the code around it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

namespace stasis::step {

// The five PMIx fences of an epoch, in order.
enum class Fence : uint8_t { kEpoch, kQuiesce, kFrozen, kReport, kVerdict, kNone };

enum class EpochState : uint8_t {
  kRequested,     // the epoch fence: rank 0 publishes the epoch it allocated
  kQuiescing,     // the node's tasks run their callbacks; then the quiesce fence
  kFrozen,        // the tasks are frozen and captured; then the frozen fence
  kWriting,       // the node file is being made durable; then the report fence
  kDurable,       // every file durable: rank 0 commits; then the verdict fence
  kAbortQuiesce,  // failed before the quiesce fence: joins it saying why
  kAbortFrozen,   // joins the frozen fence saying this node failed
  kAbortReport,   // joins the report fence with a failed report
  kAbortVerdict,  // joins the verdict fence (rank 0 publishes "abort <why>")
  kCommitted,     // terminal: the MANIFEST is durable; tasks run on (or end)
  kAborted,       // terminal: no MANIFEST; tasks resume untouched
  kNotStarted,    // terminal: rank 0 allocated no epoch; no other fence
};
inline constexpr size_t kEpochStateCount = 12;

enum class EpochEvent : uint8_t {
  kLocalFailure,  // this node cannot go on, before it joined the state's fence
  kFenceOk,       // the fence passed and every value read says go on
  kFenceFailed,   // the fence failed, or a value read says some node failed
};
inline constexpr size_t kEpochEventCount = 3;

enum class Publisher : uint8_t { kNobody, kEveryRank, kRankZero };

// One row of the state table: what a node in `state` does at its fence.
struct EpochStateInfo {
  EpochState state;
  const char* name;
  Fence fence;          // the fence this state ends with (kNone: terminal)
  const char* key;      // the PMIx key published before the fence
  Publisher publisher;  // who publishes it
  bool healthy;         // publishes success (else this node's failure)
  const char* value;    // what the value says (docs/protocol.md has the bytes)
};

// One row of the transition table.
struct EpochTransition {
  EpochState state;
  EpochEvent event;
  EpochState next;
};

const EpochStateInfo& StateInfo(EpochState s);
const char* StateName(EpochState s);
const char* FenceName(Fence f);
bool IsTerminal(EpochState s);
// The next state; nullopt when the table has no such row (an event a state
// does not take, e.g. a local failure once the node already failed).
std::optional<EpochState> NextState(EpochState s, EpochEvent e);

// The tables themselves, for the unit test and docs.
const EpochStateInfo* EpochStates(size_t* count);
const EpochTransition* EpochTransitions(size_t* count);

}  // namespace stasis::step

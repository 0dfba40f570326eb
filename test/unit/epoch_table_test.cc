// The epoch protocol's state table (spank/step/epoch_table.h): walks every
// path a node can take and checks that each ends in a terminal state and
// joins every fence, in order, exactly once; and the key=value codec the
// nodes exchange (spank/step/epoch_wire.h).
#include "spank/step/epoch_table.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "spank/step/epoch_wire.h"

namespace stasis::step {
namespace {

const EpochEvent kAllEvents[] = {EpochEvent::kLocalFailure, EpochEvent::kFenceOk,
                                 EpochEvent::kFenceFailed};

std::vector<EpochState> AllStates() {
  std::vector<EpochState> out;
  for (size_t i = 0; i < kEpochStateCount; ++i) out.push_back(static_cast<EpochState>(i));
  return out;
}

// The events a node in `s` can meet: a fence's two outcomes, and a local
// failure where the node's own work happens (the healthy fence states but
// requested, whose local failures ride to the quiesce fence).
std::vector<EpochEvent> EventsOf(EpochState s) {
  if (IsTerminal(s)) return {};
  if (!StateInfo(s).healthy || s == EpochState::kRequested)
    return {EpochEvent::kFenceOk, EpochEvent::kFenceFailed};
  return {EpochEvent::kLocalFailure, EpochEvent::kFenceOk, EpochEvent::kFenceFailed};
}

struct Path {
  std::vector<EpochState> states;
  std::vector<Fence> joined;  // fences joined, in order
};

// Every path from `s`, depth first; fails the test on a missing row or a
// path longer than the table (a cycle).
void Walk(Path path, std::vector<Path>* out) {
  const EpochState s = path.states.back();
  ASSERT_LE(path.states.size(), kEpochStateCount) << "a cycle through " << StateName(s);
  if (IsTerminal(s)) {
    out->push_back(path);
    return;
  }
  for (EpochEvent e : EventsOf(s)) {
    auto next = NextState(s, e);
    ASSERT_TRUE(next.has_value()) << StateName(s) << " takes event " << static_cast<int>(e);
    Path p = path;
    // A local failure happens before the node joins the state's fence; a
    // fence outcome, after.
    if (e != EpochEvent::kLocalFailure) p.joined.push_back(StateInfo(s).fence);
    p.states.push_back(*next);
    Walk(p, out);
  }
}

std::vector<Path> AllPaths() {
  std::vector<Path> paths;
  Walk(Path{{EpochState::kRequested}, {}}, &paths);
  return paths;
}

std::string Describe(const Path& p) {
  std::string out;
  for (EpochState s : p.states) out += std::string(out.empty() ? "" : " -> ") + StateName(s);
  return out;
}

TEST(EpochTable, RowsAreInEnumOrderAndNamed) {
  size_t n = 0;
  const EpochStateInfo* states = EpochStates(&n);
  ASSERT_EQ(n, kEpochStateCount);
  std::set<std::string> names;
  for (size_t i = 0; i < n; ++i) {
    EXPECT_EQ(static_cast<size_t>(states[i].state), i);
    EXPECT_TRUE(names.insert(states[i].name).second) << states[i].name;
    // A state with a fence publishes under a stasis.* key; a terminal does not.
    if (states[i].fence == Fence::kNone) {
      EXPECT_EQ(states[i].publisher, Publisher::kNobody) << states[i].name;
    } else {
      EXPECT_EQ(std::string(states[i].key).rfind("stasis.", 0), 0u) << states[i].name;
      EXPECT_NE(states[i].publisher, Publisher::kNobody) << states[i].name;
    }
  }
}

TEST(EpochTable, EveryStateTakesExactlyItsEvents) {
  for (EpochState s : AllStates()) {
    std::vector<EpochEvent> takes = EventsOf(s);
    for (EpochEvent e : kAllEvents) {
      bool expected = std::find(takes.begin(), takes.end(), e) != takes.end();
      EXPECT_EQ(NextState(s, e).has_value(), expected)
          << StateName(s) << " event " << static_cast<int>(e);
    }
  }
  size_t n = 0;
  const EpochTransition* rows = EpochTransitions(&n);
  std::set<std::pair<int, int>> seen;
  for (size_t i = 0; i < n; ++i)
    EXPECT_TRUE(
        seen.insert({static_cast<int>(rows[i].state), static_cast<int>(rows[i].event)}).second)
        << "two rows for " << StateName(rows[i].state);
}

TEST(EpochTable, EveryPathEndsInATerminalState) {
  std::vector<Path> paths = AllPaths();
  ASSERT_FALSE(paths.empty());
  std::set<EpochState> ends;
  for (const auto& p : paths) ends.insert(p.states.back());
  EXPECT_EQ(ends, (std::set<EpochState>{EpochState::kCommitted, EpochState::kAborted,
                                        EpochState::kNotStarted}));
}

TEST(EpochTable, EveryPathJoinsEveryFenceOnceInOrder) {
  const std::vector<Fence> all = {Fence::kEpoch, Fence::kQuiesce, Fence::kFrozen, Fence::kReport,
                                  Fence::kVerdict};
  for (const auto& p : AllPaths()) {
    if (p.states.back() == EpochState::kNotStarted) {
      // Rank 0 allocated nothing: every node read it at the epoch fence.
      EXPECT_EQ(p.joined, std::vector<Fence>{Fence::kEpoch}) << Describe(p);
    } else {
      EXPECT_EQ(p.joined, all) << Describe(p);
    }
  }
}

TEST(EpochTable, EveryStateIsReachable) {
  std::set<EpochState> reached;
  for (const auto& p : AllPaths())
    for (EpochState s : p.states) reached.insert(s);
  for (EpochState s : AllStates()) EXPECT_TRUE(reached.count(s)) << StateName(s);
}

TEST(EpochTable, FailureIsStickyAndOnlyAHealthyWalkCommits) {
  for (const auto& p : AllPaths()) {
    bool failed = false;
    for (EpochState s : p.states) {
      if (!StateInfo(s).healthy) failed = true;
      if (failed) {
        EXPECT_FALSE(StateInfo(s).healthy) << Describe(p);
      }
    }
    if (p.states.back() == EpochState::kCommitted) {
      EXPECT_FALSE(failed) << Describe(p);
    }
  }
}

TEST(EpochTable, AFailedNodePublishesItsFailureAtEveryFenceLeft) {
  // Each abort state joins the same fence, under the same key, as its
  // healthy twin, so the other nodes read a failure where they wait.
  const std::pair<EpochState, EpochState> twins[] = {
      {EpochState::kQuiescing, EpochState::kAbortQuiesce},
      {EpochState::kFrozen, EpochState::kAbortFrozen},
      {EpochState::kWriting, EpochState::kAbortReport},
      {EpochState::kDurable, EpochState::kAbortVerdict}};
  for (const auto& [ok, failed] : twins) {
    EXPECT_EQ(StateInfo(ok).fence, StateInfo(failed).fence) << StateName(failed);
    EXPECT_EQ(std::string(StateInfo(ok).key), StateInfo(failed).key) << StateName(failed);
    EXPECT_EQ(StateInfo(ok).publisher, StateInfo(failed).publisher) << StateName(failed);
    EXPECT_EQ(NextState(ok, EpochEvent::kLocalFailure), failed) << StateName(ok);
  }
}

TEST(EpochWire, EscapesSeparatorsAndControlBytes) {
  EXPECT_EQ(Escape("a b=c%d\n\x7f"), "a%20b%3Dc%25d%0A%7F");
  EXPECT_EQ(Unescape("a%20b%3Dc%25d%0A%7F"), "a b=c%d\n\x7f");
  const std::string bytes("x\0y\xff", 4);
  EXPECT_EQ(Unescape(Escape(bytes)), bytes);
}

TEST(EpochWire, FieldsRoundTrip) {
  Fields f = {{"epoch", "7"}, {"error", "node 0 (n1): no space\nleft"}, {"jobdir", "/p fs/1"}};
  EXPECT_EQ(EncodeFields(f),
            "epoch=7\nerror=node%200%20(n1):%20no%20space%0Aleft\njobdir=/p%20fs/1\n");
  EXPECT_EQ(DecodeFields(EncodeFields(f)), f);
}

TEST(EpochWire, ReportRoundTrip) {
  NodeReport r;
  r.ok = true;
  r.message = "";
  r.node = 3;
  r.host = "n4";
  r.tasks = {6, 7};
  r.argv = {"/bin/prog", "--name", "two words", ""};
  r.size = 1ull << 33;
  r.crc = 0xdeadbeef;
  NodeReport back = DecodeReport(EncodeReport(r));
  EXPECT_EQ(back.ok, r.ok);
  EXPECT_EQ(back.node, r.node);
  EXPECT_EQ(back.host, r.host);
  EXPECT_EQ(back.tasks, r.tasks);
  // An empty argument does not survive the space-separated list (as ever).
  EXPECT_EQ(back.argv, (std::vector<std::string>{"/bin/prog", "--name", "two words"}));
  EXPECT_EQ(back.size, r.size);
  EXPECT_EQ(back.crc, r.crc);

  NodeReport failed;
  failed.message = "step 5.0 has no task on this node";
  NodeReport fb = DecodeReport(EncodeReport(failed));
  EXPECT_FALSE(fb.ok);
  EXPECT_EQ(fb.message, failed.message);
}

TEST(EpochWire, ReportMatchesTheDocs) {
  // docs/protocol.md "Encoding" shows this report byte for byte.
  NodeReport r;
  r.ok = true;
  r.node = 1;
  r.host = "n2";
  r.tasks = {2, 3};
  r.argv = {"/work/count_task", "60"};
  r.size = 28672;
  r.crc = 3735928559u;
  EXPECT_EQ(EncodeReport(r),
            "argv=/work/count_task%2060\ncrc=3735928559\nhost=n2\nmessage=\nnode=1\nok=1\n"
            "size=28672\ntasks=2,3\n");
  r.argv = {"a b"};
  EXPECT_EQ(DecodeFields(EncodeReport(r))["argv"], "a%20b");
  EXPECT_NE(EncodeReport(r).find("argv=a%2520b\n"), std::string::npos);
}

}  // namespace
}  // namespace stasis::step

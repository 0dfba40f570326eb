// What stasis-step reads of Slurm: scontrol listpids, tasks-per-node lists,
// job.step ids, a task's environment.
#include "spank/slurm_util.h"

#include <gtest/gtest.h>

namespace stasis::spank {
namespace {

TEST(SlurmUtil, ListPidsKeepsTaskRootsOfTheStep) {
  const char* out =
      "PID      JOBID    STEPID   LOCALID GLOBALID\n"
      "4101     7        0        0       2       \n"
      "4102     7        0        1       3       \n"
      "4150     7        0        -       -       \n"
      "4200     7        1        0       0       \n"
      "4001     7        batch    0       0       \n";
  auto tasks = ParseListPids(out, "7", "0");
  ASSERT_TRUE(tasks) << tasks.error().message();
  ASSERT_EQ(tasks->size(), 2u);
  EXPECT_EQ((*tasks)[0].pid, 4101);
  EXPECT_EQ((*tasks)[0].global_id, 2u);
  EXPECT_EQ((*tasks)[1].local_id, 1u);
  EXPECT_EQ((*tasks)[1].global_id, 3u);
  auto batch = ParseListPids(out, "7", "batch");
  ASSERT_TRUE(batch);
  ASSERT_EQ(batch->size(), 1u);
  EXPECT_EQ((*batch)[0].pid, 4001);
  auto none = ParseListPids(out, "8", "0");
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST(SlurmUtil, ListPidsRefusesWhatItCannotRead) {
  EXPECT_FALSE(ParseListPids("", "7", "0"));
  EXPECT_FALSE(ParseListPids("slurm_load_jobs error: Invalid job id\n", "7", "0"));
  auto bad = ParseListPids("PID JOBID STEPID LOCALID GLOBALID\nx1 7 0 0 0\n", "7", "0");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("x1 7 0 0 0"), std::string::npos);
}

TEST(SlurmUtil, TasksOnNode) {
  EXPECT_EQ(*TasksOnNode("2(x2)", 0), 2u);
  EXPECT_EQ(*TasksOnNode("2(x2)", 1), 2u);
  EXPECT_FALSE(TasksOnNode("2(x2)", 2));
  EXPECT_EQ(*TasksOnNode("3,1", 1), 1u);
  EXPECT_EQ(*TasksOnNode("4(x3),2,1(x2)", 3), 2u);
  EXPECT_EQ(*TasksOnNode("4(x3),2,1(x2)", 5), 1u);
  for (const char* bad : {"", "x", "2(x0)", "2(x", "-1", "2(y2)"})
    EXPECT_FALSE(TasksOnNode(bad, 0)) << bad;
}

TEST(SlurmUtil, JobStep) {
  std::string j, s;
  ASSERT_TRUE(ParseJobStep("42", &j, &s));
  EXPECT_EQ(j, "42");
  EXPECT_EQ(s, "");
  ASSERT_TRUE(ParseJobStep("42.3", &j, &s));
  EXPECT_EQ(s, "3");
  ASSERT_TRUE(ParseJobStep("42.batch", &j, &s));
  for (const char* bad : {"", "0", "x", "42.", "42.x", "-1", "42.3.4", "4 2"})
    EXPECT_FALSE(ParseJobStep(bad, &j, &s)) << bad;
}

TEST(SlurmUtil, Environ) {
  std::string raw("A=1\0SLURM_NODEID=1\0EMPTY=\0junk\0B=x=y", 36);
  auto env = ParseEnviron(raw);
  EXPECT_EQ(env["A"], "1");
  EXPECT_EQ(env["SLURM_NODEID"], "1");
  EXPECT_EQ(env["EMPTY"], "");
  EXPECT_EQ(env["B"], "x=y");
  EXPECT_EQ(env.count("junk"), 0u);
}

TEST(SlurmUtil, NameRefusedPeer) {
  const std::string local =
      "cannot checkpoint task 0 (pid 7) fd 15: TCP 127.0.0.1:3 -> 127.0.0.1:45 is connected to a "
      "process outside the checkpoint; it would come back closed (and 2 more socket(s); x)";
  const std::string remote =
      "cannot checkpoint task 1 (pid 8) fd 18: TCP 10.250.0.11:60911 -> 10.250.0.12:1026 is "
      "connected to a process on another host; it would come back closed";
  std::vector<std::pair<std::string, bool>> asked;
  auto what = [&](const std::string& peer, bool other) -> std::string {
    asked.emplace_back(peer, other);
    if (peer == "127.0.0.1:45") return "slurmstepd";
    return other ? "node " + NodeWithAddress(
                                 "NodeName=n1 NodeAddr=10.250.0.11 CPUs=2\n"
                                 "NodeName=n2 Arch=x NodeAddr=10.250.0.12 CPUs=2\n",
                                 peer.substr(0, peer.rfind(':')))
                 : "";
  };
  EXPECT_EQ(NameRefusedPeer(local, what),
            "cannot checkpoint task 0 (pid 7) fd 15: TCP 127.0.0.1:3 -> 127.0.0.1:45 is connected "
            "to a process outside the checkpoint (slurmstepd); it would come back closed (and 2 "
            "more socket(s); x)");
  EXPECT_EQ(NameRefusedPeer(remote, what),
            "cannot checkpoint task 1 (pid 8) fd 18: TCP 10.250.0.11:60911 -> 10.250.0.12:1026 is "
            "connected to a process on another host (node n2); it would come back closed");
  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[0], std::make_pair(std::string("127.0.0.1:45"), false));
  EXPECT_EQ(asked[1], std::make_pair(std::string("10.250.0.12:1026"), true));
  // Not a refused connection: unchanged, nobody asked.
  const std::string file = "cannot checkpoint task 0 (pid 7) fd 3: /x/pmix.1.0/f, in /x/pmix.1.0";
  EXPECT_EQ(NameRefusedPeer(file, what), file);
  EXPECT_EQ(asked.size(), 2u);
  EXPECT_EQ(NodeWithAddress("NodeName=n1 NodeAddr=10.250.0.11\n", "10.250.0.9"), "");
}

}  // namespace
}  // namespace stasis::spank

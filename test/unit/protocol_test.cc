// Unit tests of the engine protocol (engine/format/protocol.h): round trips
// of every op and reply with non-default fields, and refusal, with a named
// reason, of every kind of bad packet stasisd may receive.
#include "engine/format/protocol.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

#include "test/unit/test_util.h"

namespace stasis::format::proto {
namespace {

Request FullCheckpoint() {
  Request r;
  r.op = Op::kCheckpoint;
  r.target = 4242;
  r.scope = 2;
  r.after = 1;
  r.flags = kFlagSaveExe | kFlagCloseSockets;
  r.after_signal = 10;
  r.requester = 4243;
  r.write_mode = kWriteBackup;
  r.time_limit_ms = 5000;
  r.callback_timeout_ms = 700;
  r.path = "/scratch/u/ckpt.4242";
  r.argv = {"cr_checkpoint", "--pgid", "4242"};
  return r;
}

// A checkpoint into a store node file, held until the client's commit.
Request HeldCheckpoint() {
  Request r = FullCheckpoint();
  r.path.clear();
  r.attached = kAttachDest;
  r.flags |= kFlagHold;
  r.job = "4711";
  r.epoch = 3;
  r.node = 2;
  return r;
}

Reply FullReply() {
  Reply r;
  r.code = EBUSY;
  r.kind = kReplyExited;
  r.message = "busy";
  r.request_id = 77;
  r.processes = 3;
  r.threads = 9;
  r.bytes = 1 << 20;
  r.page_bytes = 1 << 19;
  r.pause_us = 11;
  r.total_us = 22;
  r.callbacks_us = 33;
  r.root_pid = 555;
  r.new_pid_namespace = 1;
  r.exit_status = 0x0900;
  r.server = "stasisd 0.1.0 protocol 1";
  r.pids = {555, 556};
  r.crc32c = 0xdeadbeef;
  r.snapshot = 1;
  r.snapshot_note = "pid 7 has private memory a fork does not copy";
  RequestInfo i;
  i.id = 5;
  i.op = 2;
  i.state = kStateRunning;
  i.uid = 1001;
  i.client_pid = 99;
  i.target = 555;
  i.code = -1;
  i.bytes = 12;
  i.elapsed_ms = 13;
  i.path = "/tmp/x";
  i.message = "m";
  r.requests = {i, i};
  r.files = {{"/tmp/a", 10, -5, 1001}};
  return r;
}

TEST(Protocol, CompressionTravelsOnlyWhenSet) {
  Request r = FullCheckpoint();
  auto plain = EncodeRequest(r);
  ASSERT_TRUE(plain);
  r.compress = 2;
  r.compress_level = 3;
  auto bytes = EncodeRequest(r);
  ASSERT_TRUE(bytes);
  EXPECT_GT(bytes->size(), plain->size());
  auto back = DecodeRequest(*bytes);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->compress, 2u);
  EXPECT_EQ(back->compress_level, 3u);
  r.compress = 7;
  auto bad = EncodeRequest(r);
  if (bad) {
    EXPECT_FALSE(DecodeRequest(*bad));
  }
}

TEST(Protocol, RequestRoundTrip) {
  Request r = FullCheckpoint();
  auto bytes = EncodeRequest(r);
  ASSERT_TRUE(bytes) << bytes.error().message();
  auto back = DecodeRequest(*bytes);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, r);

  Request rs;
  rs.op = Op::kRestart;
  rs.path = "/scratch/ctx";
  rs.attached = kAttachStdio;
  rs.flags = kFlagNoRestorePid;
  rs.relocate = {"/old=/new", "/a=/b"};
  auto b2 = EncodeRequest(rs);
  ASSERT_TRUE(b2);
  auto back2 = DecodeRequest(*b2);
  ASSERT_TRUE(back2) << back2.error().message();
  EXPECT_EQ(*back2, rs);
  EXPECT_EQ(AttachedFdCount(rs.attached), 3);
}

TEST(Protocol, ReplyRoundTrip) {
  Reply r = FullReply();
  auto bytes = EncodeReply(r);
  ASSERT_TRUE(bytes) << bytes.error().message();
  auto back = DecodeReply(*bytes);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, r);
}

TEST(Protocol, EveryOpRoundTrips) {
  for (Op op : {Op::kPing, Op::kStatus, Op::kCancel, Op::kList, Op::kDelete}) {
    Request r;
    r.op = op;
    if (op == Op::kCancel || op == Op::kStatus) r.request_id = 3;
    if (op == Op::kList || op == Op::kDelete) r.path = "/tmp";
    auto bytes = EncodeRequest(r);
    ASSERT_TRUE(bytes) << OpName(op);
    auto back = DecodeRequest(*bytes);
    ASSERT_TRUE(back) << OpName(op) << ": " << back.error().message();
    EXPECT_EQ(back->op, op);
    EXPECT_EQ(*back, r);
  }
}

std::string Encoded(const Request& r) {
  auto b = EncodeRequest(r);
  EXPECT_TRUE(b);
  return b ? *b : std::string();
}

void ExpectRefused(const std::string& packet, int code, const std::string& words) {
  auto r = DecodeRequest(packet);
  ASSERT_FALSE(r) << "accepted a bad packet expecting '" << words << "'";
  EXPECT_EQ(r.error().code(), code) << r.error().message();
  EXPECT_NE(r.error().message().find(words), std::string::npos) << r.error().message();
}

TEST(Protocol, RefusesBadHeaders) {
  std::string good = Encoded(FullCheckpoint());
  ExpectRefused("", EBADMSG, "shorter than the 12-byte header");
  ExpectRefused(good.substr(0, 7), EBADMSG, "shorter than");
  std::string bad_magic = good;
  bad_magic[0] ^= 1;
  ExpectRefused(bad_magic, EBADMSG, "bad magic");
  std::string v2 = good;
  v2[4] = 2;
  ExpectRefused(v2, EPROTO, "protocol version 2 is not supported");
  std::string bad_op = good;
  bad_op[6] = 99;
  ExpectRefused(bad_op, EBADMSG, "unknown operation 99");
  ExpectRefused(good.substr(0, good.size() - 3), EBADMSG, "truncated");
  ExpectRefused(good + "xx", EBADMSG, "truncated");
  ExpectRefused(good + std::string(kMaxMessageSize, 'x'), EMSGSIZE, "over the limit");
}

TEST(Protocol, RefusesBadFields) {
  std::string good = Encoded(FullCheckpoint());
  // Field "target" (first) with length 5 instead of 4: the length runs into
  // the next field, which then is cut short or mis-sized.
  std::string bad_len = good;
  bad_len[kHeaderSize + 4] = 5;
  auto r = DecodeRequest(bad_len);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), EBADMSG);
  // Tag 0.
  std::string tag0 = good;
  tag0[kHeaderSize] = 0;
  ExpectRefused(tag0, EBADMSG, "tag 0");
  // A field claiming more bytes than are left.
  std::string runs_past = good;
  runs_past[kHeaderSize + 7] = 0x40;
  ExpectRefused(runs_past, EBADMSG, "claims");
}

TEST(Protocol, TaskCheckpointRoundTripAndChecks) {
  Request r;
  r.op = Op::kCheckpoint;
  r.target = 4101;
  r.attached = kAttachDest;
  r.flags = kFlagHold;
  r.job = "7";
  r.step = "0";
  r.epoch = 3;
  r.node = 1;
  r.task_pids = {4101, 4102};
  r.task_ids = {2, 3};
  auto bytes = EncodeRequest(r);
  ASSERT_TRUE(bytes) << bytes.error().message();
  auto back = DecodeRequest(*bytes);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, r);
  Request bad = r;
  bad.task_ids = {2};
  ExpectRefused(Encoded(bad), EBADMSG, "2 task pids but 1 task ids");
  bad = r;
  bad.target = 4102;
  ExpectRefused(Encoded(bad), EBADMSG, "the target is the first task's pid");
  bad = r;
  bad.task_pids[1] = 0;
  ExpectRefused(Encoded(bad), EBADMSG, "task pid 0 is out of range");
  bad = r;
  bad.step = "0\n";
  ExpectRefused(Encoded(bad), EBADMSG, "step id contains a control character");
  bad = r;
  bad.flags = 0;
  bad.attached = 0;
  bad.path = "/x";
  ExpectRefused(Encoded(bad), EBADMSG, "a store identity is for held checkpoints");
  Request barrier = r;
  barrier.flags |= kFlagBarrier;
  auto bb = EncodeRequest(barrier);
  ASSERT_TRUE(bb) << bb.error().message();
  bad = barrier;
  bad.flags = kFlagBarrier;
  ExpectRefused(Encoded(bad), EBADMSG, "a barrier is for held checkpoints");
  Request go;
  go.op = Op::kProceed;
  auto gb = EncodeRequest(go);
  ASSERT_TRUE(gb);
  auto gback = DecodeRequest(*gb);
  ASSERT_TRUE(gback) << gback.error().message();
  EXPECT_EQ(gback->op, Op::kProceed);
  go.attached = kAttachDest;
  ExpectRefused(Encoded(go), EBADMSG, "proceed: takes no fds");
}

// A Slurm epoch's honest policy: the flag and the step's transient folders
// travel, and malformed folder lists are refused.
TEST(Protocol, TransientFoldersAndCloseUnconnected) {
  Request r;
  r.op = Op::kCheckpoint;
  r.target = 4101;
  r.attached = kAttachDest;
  r.flags = kFlagHold | kFlagCloseUnconnected;
  r.job = "7";
  r.step = "0";
  r.epoch = 3;
  r.transient_dirs = {"/var/spool/slurmd/pmix.7.0"};
  r.transient_notes = {"the PMIx server folder of step 7.0, removed when the step ends"};
  auto bytes = EncodeRequest(r);
  ASSERT_TRUE(bytes) << bytes.error().message();
  auto back = DecodeRequest(*bytes);
  ASSERT_TRUE(back) << back.error().message();
  EXPECT_EQ(*back, r);
  Request bad = r;
  bad.transient_notes.clear();
  ExpectRefused(Encoded(bad), EBADMSG, "1 transient folders but 0 notes");
  bad = r;
  bad.transient_dirs = {"relative/pmix.7.0"};
  ExpectRefused(Encoded(bad), EBADMSG, "is not an absolute path");
  bad = r;
  bad.transient_dirs = {"/var/spool/slurmd/pmix.7.0/"};
  ExpectRefused(Encoded(bad), EBADMSG, "without a trailing slash");
  bad = r;
  bad.transient_notes = {"two\nlines"};
  ExpectRefused(Encoded(bad), EBADMSG, "not one line of text");
}

TEST(Protocol, RefusesNonsenseRequests) {
  Request r = FullCheckpoint();
  r.target = 0;
  ExpectRefused(Encoded(r), EBADMSG, "no target pid");
  r = FullCheckpoint();
  r.scope = 9;
  ExpectRefused(Encoded(r), EBADMSG, "unknown scope 9");
  r = FullCheckpoint();
  r.path.clear();
  ExpectRefused(Encoded(r), EBADMSG, "no destination");
  r = FullCheckpoint();
  r.attached = kAttachDest;
  ExpectRefused(Encoded(r), EBADMSG, "both a destination path and an fd");
  r = FullCheckpoint();
  r.flags = 1u << 30;
  ExpectRefused(Encoded(r), EBADMSG, "unknown flags 0x40000000");
  Request rs;
  rs.op = Op::kRestart;
  ExpectRefused(Encoded(rs), EBADMSG, "no context file");
  rs.path = "/x";
  rs.relocate = {"nonsense"};
  ExpectRefused(Encoded(rs), EBADMSG, "not OLD=NEW");
  Request c;
  c.op = Op::kCancel;
  ExpectRefused(Encoded(c), EBADMSG, "no request id");
  Request d;
  d.op = Op::kDelete;
  ExpectRefused(Encoded(d), EBADMSG, "delete: no path");
  // A reply sent as a request.
  auto reply = EncodeReply(FullReply());
  ASSERT_TRUE(reply);
  ExpectRefused(*reply, EBADMSG, "a reply is not a request");
  // And a request read as a reply.
  auto as_reply = DecodeReply(Encoded(FullCheckpoint()));
  ASSERT_FALSE(as_reply);
  EXPECT_NE(as_reply.error().message().find("expected a reply, got checkpoint"), std::string::npos);
}

TEST(Protocol, EncoderRefusesOversizedMessages) {
  Request r = FullCheckpoint();
  r.argv.assign(100, std::string(4000, 'a'));  // 400 KB
  auto b = EncodeRequest(r);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code(), EMSGSIZE);
  r.argv.assign(1, std::string(5000, 'a'));
  b = EncodeRequest(r);
  ASSERT_FALSE(b);
  EXPECT_NE(b.error().message().find("argv"), std::string::npos) << b.error().message();
}

TEST(Protocol, PeekOpNamesTheOp) {
  auto op = PeekOp(Encoded(FullCheckpoint()));
  ASSERT_TRUE(op);
  EXPECT_EQ(*op, Op::kCheckpoint);
}

// The seed corpus of engine/format/fuzz/protocol_corpus: one packet per op
// and a full reply; a golden test of the protocol's v1 bytes. Regenerate
// with STASIS_UPDATE_FUZZ_CORPUS=1 after an intended change.
TEST(ProtocolCorpus, SeedsAreWhatTheEncoderProduces) {
  std::vector<std::pair<std::string, std::string>> seeds;
  seeds.emplace_back("checkpoint.seed", Encoded(FullCheckpoint()));
  Request rs;
  rs.op = Op::kRestart;
  rs.path = "/scratch/ctx";
  rs.attached = kAttachStdio;
  rs.relocate = {"/old=/new"};
  seeds.emplace_back("restart.seed", Encoded(rs));
  Request st;
  st.op = Op::kStatus;
  seeds.emplace_back("status.seed", Encoded(st));
  seeds.emplace_back("held_checkpoint.seed", Encoded(HeldCheckpoint()));
  Request commit;
  commit.op = Op::kCommit;
  seeds.emplace_back("commit.seed", Encoded(commit));
  auto reply = EncodeReply(FullReply());
  ASSERT_TRUE(reply);
  seeds.emplace_back("reply.seed", *reply);
  for (const auto& [name, bytes] : seeds)
    testing::ExpectGoldenFile(std::string(STASIS_PROTOCOL_CORPUS_DIR) + "/" + name, bytes,
                              "the protocol encoder");
}

TEST(Protocol, HeldCheckpointAndCommit) {
  Request r = HeldCheckpoint();
  auto back = DecodeRequest(Encoded(r));
  ASSERT_TRUE(back.has_value()) << back.error().message();
  EXPECT_EQ(*back, r);
  Request commit;
  commit.op = Op::kCommit;
  auto c = DecodeRequest(Encoded(commit));
  ASSERT_TRUE(c.has_value()) << c.error().message();
  EXPECT_STREQ(OpName(c->op), "commit");
  // Held needs the node file's fd; an identity needs held; no control bytes.
  Request no_fd = r;
  no_fd.attached = 0;
  no_fd.path = "/x";
  Request not_held = r;
  not_held.flags &= ~kFlagHold;
  Request bad_job = r;
  bad_job.job = "47\n11";
  Request commit_fd = commit;
  commit_fd.attached = kAttachDest;
  for (const auto& [bad, words] :
       std::vector<std::pair<Request, std::string>>{{no_fd, "needs its destination fd"},
                                                    {not_held, "store identity is for held"},
                                                    {bad_job, "control character"},
                                                    {commit_fd, "takes no fds"}}) {
    auto d = DecodeRequest(Encoded(bad));
    ASSERT_FALSE(d.has_value()) << words;
    EXPECT_NE(d.error().message().find(words), std::string::npos) << d.error().message();
  }
}

TEST(Protocol, RestartFromAStoreFolderCarriesTheNode) {
  Request r;
  r.op = Op::kRestart;
  r.path = "/scratch/ckpt/4711";
  r.flags = kFlagNode;
  r.node = 3;
  r.attached = kAttachStdio;
  auto bytes = EncodeRequest(r);
  ASSERT_TRUE(bytes.has_value());
  auto back = DecodeRequest(*bytes);
  ASSERT_TRUE(back.has_value()) << back.error().message();
  EXPECT_EQ(*back, r);
  // A node index means nothing to a checkpoint.
  Request c = FullCheckpoint();
  c.flags |= kFlagNode;
  auto cbytes = EncodeRequest(c);
  ASSERT_TRUE(cbytes.has_value());
  auto refused = DecodeRequest(*cbytes);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("node index is for restart"), std::string::npos);
}

}  // namespace
}  // namespace stasis::format::proto

// Unit tests of the checkpoint store (engine/store): the commit protocol
// under injected faults (every operation failing, ENOSPC at every step, a
// crash before every step followed by the loss of unsynced data, the Nth
// write failing), corruption of every kind, and symlink and permission
// attacks on the folders. The contexts are real encoded contexts
// (test/unit/test_util) carrying their store identity.
#include "engine/store/store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <thread>

#include "engine/format/context_io.h"
#include "engine/format/crc32c.h"
#include "test/store/fault_env.h"
#include "test/unit/test_util.h"

namespace stasis::store {
namespace {

namespace fs = std::filesystem;
using test::FaultEnv;
using test::OpKind;

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/stasis-store-test.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void WriteAll(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

Access Me() {
  Access a;
  a.uid = ::geteuid();
  return a;
}

// A node's context: the small sample with the store identity set.
// `image` (when set) edits the Image: incremental chains.
using ImageTweak = std::function<void(format::ImageInfo*)>;
std::string NodeContext(const std::string& job, uint64_t epoch, uint32_t node,
                        const ImageTweak& image = nullptr) {
  format::Context ctx = format::testing::MakeSmallContext();
  ctx.image.job = job;
  ctx.image.epoch = epoch;
  ctx.image.node_index = node;
  if (image) image(&ctx.image);
  return format::testing::Encode(ctx);
}

struct WriteResult {
  Status status;
  bool committed = false;
  uint64_t epoch = 0;
};

// What cr_checkpoint --dir does, for `nodes` nodes, through `env`.
WriteResult WriteEpoch(Env* env, const std::string& job_path, uint32_t nodes, uint32_t keep,
                       size_t chunk = 8u << 20, const ImageTweak& image = nullptr) {
  WriteResult r;
  auto job = JobFolder::Open(env, job_path, true, Me());
  if (!job) return {job.error()};
  WriteOptions wo;
  wo.chunk = chunk;
  auto w = EpochWriter::Begin(&*job, wo);
  if (!w) return {w.error()};
  r.epoch = (*w)->epoch();
  format::Manifest m;
  m.uid = ::geteuid();
  for (uint32_t i = 0; i < nodes; ++i) {
    auto sink = (*w)->CreateNodeFile(i);
    if (!sink) return {sink.error(), false, r.epoch};
    std::string bytes = NodeContext(job->job(), r.epoch, i, image);
    if (Status s = (*w)->CheckSpace(bytes.size()); !s.ok()) return {s, false, r.epoch};
    if (Status s = (*sink)->Write(bytes.data(), bytes.size()); !s.ok()) return {s, false, r.epoch};
    auto file = (*sink)->Finish();
    if (!file) return {file.error(), false, r.epoch};
    format::ManifestNode n;
    n.index = i;
    n.host = "node" + std::to_string(i);
    n.file = EpochWriter::NodeFileName(i);
    n.tasks = {i};
    n.argv = {"./a.out", "--size", "1"};
    m.nodes.push_back(n);
    m.files.push_back(*file);
  }
  if (Status s = (*w)->Commit(&m); !s.ok()) return {s, false, r.epoch};
  r.committed = true;
  auto removed = Prune(&*job, keep);
  if (!removed) return {removed.error(), true, r.epoch};
  return r;
}

// The invariants after any fault: no epoch is corrupt, the newest complete
// epoch verifies, and a restart selects it.
void ExpectRecoverable(const std::string& job_path, uint64_t want_newest,
                       const std::string& context) {
  auto job = JobFolder::Open(DefaultEnv(), job_path, false, Me());
  ASSERT_TRUE(job.has_value()) << context << ": " << job.error().message();
  auto epochs = job->List();
  ASSERT_TRUE(epochs.has_value()) << context;
  uint64_t newest = 0;
  for (const auto& e : *epochs) {
    EXPECT_NE(e.state, EpochState::kCorrupt)
        << context << ": epoch " << e.epoch << ": " << e.problem;
    if (e.state == EpochState::kComplete) {
      newest = e.epoch;
      auto problems = VerifyEpoch(*job, e);
      ASSERT_TRUE(problems.has_value());
      EXPECT_TRUE(problems->empty()) << context << ": epoch " << e.epoch << ": " << (*problems)[0];
    }
  }
  // want_newest 0: either (a crash after the rename, before the folder's
  // fsync, with no power loss: the kernel still has the new name).
  if (want_newest)
    EXPECT_EQ(newest, want_newest) << context;
  else
    EXPECT_TRUE(newest == 1 || newest == 2) << context;
  auto sel = SelectForRestart(DefaultEnv(), job_path, 0, Me());
  ASSERT_TRUE(sel.has_value()) << context << ": " << sel.error().message();
  EXPECT_EQ(sel->epoch.epoch, newest) << context;
}

// The operations of one clean epoch write (after epoch 1 exists); with
// `no_rename_flags`, on a file system that refuses rename flags.
int CountOps(uint32_t nodes, uint32_t keep, size_t chunk = 8u << 20, bool no_rename_flags = false) {
  TempDir dir;
  std::string job = dir.path() + "/job";
  EXPECT_TRUE(WriteEpoch(DefaultEnv(), job, nodes, keep, chunk).status.ok());
  FaultEnv env(DefaultEnv());
  if (no_rename_flags) env.RefuseRenameFlags();
  EXPECT_TRUE(WriteEpoch(&env, job, nodes, keep, chunk).status.ok());
  return env.ops();
}

TEST(Store, CommitListSelectRestart) {
  TempDir dir;
  std::string job = dir.path() + "/1234";
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 2, 5).status.ok());
  struct stat st;
  ASSERT_EQ(::stat(job.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(::stat((job + "/2/node1.ctx").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto sel = SelectForRestart(DefaultEnv(), job, 1, Me());
  ASSERT_TRUE(sel.has_value()) << sel.error().message();
  EXPECT_TRUE(sel->chose_newest);
  EXPECT_EQ(sel->epoch.epoch, 2u);
  EXPECT_EQ(sel->file_path, job + "/2/node1.ctx");
  EXPECT_EQ(sel->epoch.manifest.job, "1234");
  VerifyingSource source(std::make_unique<FdSource>(std::move(sel->fd), "n"), "node1.ctx",
                         sel->file.size, sel->file.crc32c);
  auto ctx = format::ReadContext(&source, false);
  ASSERT_TRUE(ctx.has_value()) << ctx.error().message();
  EXPECT_TRUE(CheckContextIdentity(ctx->image, sel->epoch.manifest, 1, "node1.ctx").ok());
  EXPECT_TRUE(source.Finish().ok());
  // An epoch folder names itself; several nodes need a choice.
  auto by_epoch = SelectForRestart(DefaultEnv(), job + "/1", 0, Me());
  ASSERT_TRUE(by_epoch.has_value()) << by_epoch.error().message();
  EXPECT_FALSE(by_epoch->chose_newest);
  EXPECT_EQ(by_epoch->epoch.epoch, 1u);
  auto ambiguous = SelectForRestart(DefaultEnv(), job, std::nullopt, Me());
  ASSERT_FALSE(ambiguous.has_value());
  EXPECT_NE(ambiguous.error().message().find("--node"), std::string::npos);
}

TEST(Store, RetentionKeepsTheNewestComplete) {
  TempDir dir;
  std::string job = dir.path() + "/j";
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(job)) left.insert(e.path().filename());
  EXPECT_EQ(left, (std::set<std::string>{"3", "4"}));
  // An incomplete epoch newer than the newest complete one may still be
  // being written: kept. Older ones go.
  fs::create_directory(job + "/2");
  fs::create_directory(job + "/5");
  auto jf = JobFolder::Open(DefaultEnv(), job, false, Me());
  ASSERT_TRUE(jf.has_value());
  auto removed = Prune(&*jf, 1);
  ASSERT_TRUE(removed.has_value()) << removed.error().message();
  EXPECT_EQ(*removed, (std::vector<uint64_t>{2, 3}));
  EXPECT_TRUE(fs::exists(job + "/5"));
  EXPECT_FALSE(Prune(&*jf, 0).has_value());
}

// A shared file system with a server down hides the files on it (GlusterFS
// answers ENOENT): such an epoch lists corrupt, but retention must not
// remove it while it is among the newest `keep`, nor anything older while a
// kept node file cannot be read; once the file is back, the normal rule.
TEST(Store, RetentionSparesAnEpochWhoseFilesAreUnreachable) {
  TempDir dir;
  std::string job = dir.path() + "/j";
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());
  fs::rename(job + "/2/node0.ctx", dir.path() + "/away");        // its brick is down
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());  // epoch 3, keep 2
  EXPECT_TRUE(fs::exists(job + "/2/MANIFEST"));
  EXPECT_TRUE(fs::exists(job + "/1/MANIFEST"));
  fs::rename(dir.path() + "/away", job + "/2/node0.ctx");  // back
  ExpectRecoverable(job, 3, "after the server came back");
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());  // epoch 4
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(job)) left.insert(e.path().filename());
  EXPECT_EQ(left, (std::set<std::string>{"3", "4"}));
}

// Incremental epochs: each node file names the same node's file of an
// older epoch ("../<epoch>/node<i>.ctx") and that file's token.
TEST(Incremental, ChooseParentRetentionAndVerify) {
  TempDir dir;
  std::string job = dir.path() + "/j";
  // 1 full, 2 <- 1, 3 <- 2, 4 full, 5 <- 4 (tokens 101..105); no pruning yet.
  auto write = [&](uint64_t parent, uint32_t keep) {
    return WriteEpoch(DefaultEnv(), job, 1, keep, 8u << 20, [&](format::ImageInfo* im) {
      im->token = 100 + im->epoch;
      im->step = "0";
      if (parent) {
        im->parent = "../" + std::to_string(parent) + "/node0.ctx";
        im->parent_token = 100 + parent;
      }
    });
  };
  ASSERT_TRUE(write(0, 100).committed);
  ASSERT_TRUE(write(1, 100).committed);
  ASSERT_TRUE(write(2, 100).committed);
  auto jf = JobFolder::Open(DefaultEnv(), job, false, Me());
  ASSERT_TRUE(jf.has_value());
  // After 3 (a chain of 3), a full one every 3 means full; every 4: against 3.
  ParentChoice c = ChooseParent(*jf, 4, 0, "0", 3);
  EXPECT_EQ(c.epoch, 0u);
  EXPECT_EQ(c.why_full, "a full epoch every 3");
  c = ChooseParent(*jf, 4, 0, "0", 4);
  EXPECT_EQ(c.epoch, 3u);
  EXPECT_EQ(c.recorded, "../3/node0.ctx");
  EXPECT_EQ(c.token, 103u);
  EXPECT_EQ(ChooseParent(*jf, 4, 0, "1", 4).why_full, "epoch 3 is of step 0");
  EXPECT_EQ(ChooseParent(*jf, 4, 0, "0", 1).why_full, "incremental epochs are off");
  EXPECT_EQ(ChooseParent(*jf, 1, 0, "0", 4).why_full, "no complete epoch before it");
  EXPECT_NE(ChooseParent(*jf, 4, 1, "0", 4).why_full.find("node1.ctx"), std::string::npos);
  // Retention keeps what the kept epochs need: keep 1 after epoch 3 keeps 1-3.
  auto removed = Prune(&*jf, 1);
  ASSERT_TRUE(removed.has_value());
  EXPECT_TRUE(removed->empty());
  ASSERT_TRUE(write(0, 1).committed);  // 4, full: 1-3 go
  ASSERT_TRUE(write(4, 1).committed);  // 5 <- 4: 4 stays
  std::set<std::string> left;
  for (const auto& e : fs::directory_iterator(job)) left.insert(e.path().filename());
  EXPECT_EQ(left, (std::set<std::string>{"4", "5"}));
  // Verify follows the chain: a missing or replaced parent is named.
  auto epochs = jf->List();
  ASSERT_TRUE(epochs.has_value());
  auto problems = VerifyEpoch(*jf, epochs->back());
  ASSERT_TRUE(problems.has_value());
  EXPECT_TRUE(problems->empty());
  fs::rename(job + "/4/node0.ctx", job + "/x.ctx");
  problems = VerifyEpoch(*jf, epochs->back());
  ASSERT_EQ(problems->size(), 1u);
  EXPECT_NE((*problems)[0].find("its parent in epoch 4"), std::string::npos) << (*problems)[0];
  fs::rename(job + "/x.ctx", job + "/4/node0.ctx");
  // The recorded form only: no absolute paths, no climbing out.
  EXPECT_EQ(ParentEpochOf("../12/node3.ctx"), 12u);
  EXPECT_EQ(ParentEpochOf("../x/node0.ctx"), 0u);
  EXPECT_EQ(ParentEpochOf("/abs/4/node0.ctx"), 0u);
  EXPECT_EQ(ParentEpochOf("../4/../../etc/node0.ctx"), 0u);
  EXPECT_EQ(ParentEpochOf("../4/node0.ctx.bak"), 0u);
  EXPECT_EQ(ParentEpochOf("../4/nodeX.ctx"), 0u);
}

// Both commit mechanisms: renameat2(RENAME_NOREPLACE), and link + unlink
// where the file system refuses rename flags (GlusterFS FUSE, NFS).
class StoreCommitFaults : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Commit, StoreCommitFaults, ::testing::Values(false, true),
                         [](const auto& info) {
                           return info.param ? "LinkNoRenameFlags" : "RenameNoReplace";
                         });

TEST_P(StoreCommitFaults, EveryOperationFailing) {
  const bool no_flags = GetParam();
  for (uint32_t keep : {1u, 2u}) {
    int total = CountOps(2, keep, 8u << 20, no_flags);
    ASSERT_GT(total, 10);
    for (int err : {ENOSPC, EIO}) {
      for (int n = 1; n <= total; ++n) {
        TempDir dir;
        std::string job = dir.path() + "/job";
        ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 2, keep).status.ok());
        FaultEnv env(DefaultEnv());
        if (no_flags) env.RefuseRenameFlags();
        env.FailAt(n, err);
        WriteResult r = WriteEpoch(&env, job, 2, keep);
        std::string what = "keep " + std::to_string(keep) + ", " + std::strerror(err) + " at " +
                           env.log()[static_cast<size_t>(n) - 1];
        EXPECT_FALSE(r.status.ok()) << what;
        EXPECT_EQ(r.status.code(), err) << what << ": " << r.status.message();
        ExpectRecoverable(job, r.committed ? 2 : 1, what);
        // A failed epoch leaves nothing behind (cleanup ran).
        if (!r.committed) {
          EXPECT_FALSE(fs::exists(job + "/2")) << what;
        }
      }
    }
  }
}

TEST_P(StoreCommitFaults, CrashBeforeEveryOperationThenPowerLoss) {
  const bool no_flags = GetParam();
  for (uint32_t keep : {1u, 2u}) {
    int total = CountOps(2, keep, 8u << 20, no_flags);
    for (bool power_loss : {false, true}) {
      for (int n = 1; n <= total; ++n) {
        TempDir dir;
        std::string job = dir.path() + "/job";
        ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 2, keep).status.ok());
        FaultEnv env(DefaultEnv());
        if (no_flags) env.RefuseRenameFlags();
        env.CrashAt(n);
        WriteResult r = WriteEpoch(&env, job, 2, keep);
        std::string what = std::string(power_loss ? "power loss" : "crash") + " before " +
                           env.log()[static_cast<size_t>(n) - 1] + " (keep " +
                           std::to_string(keep) + ")";
        EXPECT_FALSE(r.status.ok()) << what;
        if (power_loss) {
          ASSERT_TRUE(env.DropUnsyncedData().ok()) << what;
        }
        // Durable once the folder holding MANIFEST was fsynced.
        ExpectRecoverable(job, r.committed ? 2 : power_loss ? 1 : 0, what);
      }
    }
  }
}

// Without rename flags (GlusterFS FUSE, NFS): MANIFEST is linked into place
// and the temporary name removed, in that order, after the refused rename.
TEST(NoRenameFlags, CommitLinksThenRemovesTheTemporaryName) {
  TempDir dir;
  std::string job = dir.path() + "/j";
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());
  FaultEnv env(DefaultEnv());
  env.RefuseRenameFlags();
  WriteResult r = WriteEpoch(&env, job, 2, 2);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  // "<n> <kind> <names...>" of every operation naming the MANIFEST.
  std::vector<std::string> commit;
  for (const auto& line : env.log()) {
    if (line.find("MANIFEST") == std::string::npos) continue;
    std::string rest = line.substr(line.find(' ') + 1);
    if (rest.rfind("write ", 0) == 0) rest = rest.substr(0, rest.rfind(' '));  // no byte count
    commit.push_back(rest);
  }
  EXPECT_EQ(commit,
            (std::vector<std::string>{"create .MANIFEST.tmp", "write .MANIFEST.tmp",
                                      "fsync .MANIFEST.tmp", "rename .MANIFEST.tmp MANIFEST",
                                      "link .MANIFEST.tmp MANIFEST", "remove .MANIFEST.tmp"}));
  struct stat st;
  EXPECT_NE(::lstat((job + "/2/.MANIFEST.tmp").c_str(), &st), 0);
  ASSERT_EQ(::lstat((job + "/2/MANIFEST").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 1u);
  ExpectRecoverable(job, 2, "committed by link");
}

// An NFS client that resends a link whose reply was lost gets EEXIST for
// its own link: the name is the file it wrote (same inode), so the commit
// goes on.
TEST(NoRenameFlags, AResentLinkIsRecognisedAsOurOwn) {
  TempDir dir;
  std::string job = dir.path() + "/j";
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());
  FaultEnv env(DefaultEnv());
  env.RefuseRenameFlags();
  env.ReplayLinks();
  WriteResult r = WriteEpoch(&env, job, 1, 2);
  ASSERT_TRUE(r.status.ok()) << r.status.message();
  EXPECT_FALSE(fs::exists(job + "/2/.MANIFEST.tmp"));
  ExpectRecoverable(job, 2, "resent link");
}

// A MANIFEST that is not ours (another writer, a planted file) is never
// replaced, with or without rename flags, and the commit fails naming it.
TEST(NoRenameFlags, AnExistingManifestIsNeverReplaced) {
  for (bool no_flags : {false, true}) {
    TempDir dir;
    std::string job_path = dir.path() + "/j";
    FaultEnv env(DefaultEnv());
    if (no_flags) env.RefuseRenameFlags();
    auto job = JobFolder::Open(&env, job_path, true, Me());
    ASSERT_TRUE(job.has_value());
    auto w = EpochWriter::Begin(&*job, WriteOptions());
    ASSERT_TRUE(w.has_value());
    auto sink = (*w)->CreateNodeFile(0);
    ASSERT_TRUE(sink.has_value());
    std::string bytes = NodeContext(job->job(), 1, 0);
    ASSERT_TRUE((*sink)->Write(bytes.data(), bytes.size()).ok());
    auto file = (*sink)->Finish();
    ASSERT_TRUE(file.has_value());
    WriteAll(job_path + "/1/MANIFEST", "planted\n");
    format::Manifest m;
    m.uid = ::geteuid();
    format::ManifestNode n;
    n.host = "h";
    n.file = file->name;
    n.tasks = {0};
    n.argv = {"a"};
    m.nodes.push_back(n);
    m.files.push_back(*file);
    Status s = (*w)->Commit(&m);
    EXPECT_EQ(s.code(), EEXIST) << no_flags << ": " << s.message();
    if (no_flags) {
      EXPECT_NE(s.message().find("not replacing it"), std::string::npos) << s.message();
    }
    w->reset();  // the failed epoch is cleaned up; the foreign MANIFEST stays
    EXPECT_EQ(ReadAll(job_path + "/1/MANIFEST"), "planted\n") << no_flags;
    EXPECT_FALSE(fs::exists(job_path + "/1/.MANIFEST.tmp")) << no_flags;
  }
}

// A crash between the link and the removal of the temporary name leaves a
// complete epoch with a second name for its MANIFEST: it lists complete,
// verifies, restarts, and retention removes it whole later.
TEST(NoRenameFlags, CrashBetweenLinkAndUnlink) {
  TempDir dir;
  std::string job = dir.path() + "/j";
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 1).status.ok());
  int unlink_op = 0;
  {
    TempDir probe;
    ASSERT_TRUE(WriteEpoch(DefaultEnv(), probe.path() + "/j", 1, 1).status.ok());
    FaultEnv env(DefaultEnv());
    env.RefuseRenameFlags();
    ASSERT_TRUE(WriteEpoch(&env, probe.path() + "/j", 1, 1).status.ok());
    for (size_t i = 0; i < env.log().size(); ++i)
      if (env.log()[i].find("remove .MANIFEST.tmp") != std::string::npos)
        unlink_op = static_cast<int>(i) + 1;
  }
  ASSERT_GT(unlink_op, 0);
  FaultEnv env(DefaultEnv());
  env.RefuseRenameFlags();
  env.CrashAt(unlink_op);
  WriteResult r = WriteEpoch(&env, job, 1, 1);
  EXPECT_FALSE(r.status.ok());
  ASSERT_TRUE(fs::exists(job + "/2/.MANIFEST.tmp"));
  ASSERT_TRUE(fs::exists(job + "/2/MANIFEST"));
  ExpectRecoverable(job, 2, "crash between link and unlink");
  auto jf = JobFolder::Open(DefaultEnv(), job, false, Me());
  ASSERT_TRUE(jf.has_value());
  auto info = jf->Inspect(2);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, EpochState::kComplete) << info->problem;
  // Later epochs prune it: epoch 2 goes whole, the leftover name with it.
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 1).status.ok());
  EXPECT_FALSE(fs::exists(job + "/2"));
  ExpectRecoverable(job, 3, "after retention");
}

TEST(StoreFaults, NthWriteFails) {
  int writes = 0;
  {
    TempDir dir;
    FaultEnv env(DefaultEnv());
    ASSERT_TRUE(WriteEpoch(&env, dir.path() + "/j", 1, 2, 4096).status.ok());
    for (const auto& line : env.log()) writes += line.find(" write ") != std::string::npos;
  }
  ASSERT_GT(writes, 3);
  for (int k = 1; k <= writes; ++k) {
    TempDir dir;
    std::string job = dir.path() + "/j";
    ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2, 4096).status.ok());
    FaultEnv env(DefaultEnv());
    env.FailNth(OpKind::kWrite, k, EIO);
    WriteResult r = WriteEpoch(&env, job, 1, 2, 4096);
    EXPECT_EQ(r.status.code(), EIO) << "write " << k;
    ExpectRecoverable(job, 1, "write " + std::to_string(k) + " failed");
  }
}

TEST(StoreFaults, NoSpaceFailsBeforeTheFirstWrite) {
  TempDir dir;
  std::string job = dir.path() + "/j";
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());
  FaultEnv env(DefaultEnv());
  env.SetFreeBytes(512 * 1024);
  WriteResult r = WriteEpoch(&env, job, 1, 2);
  ASSERT_EQ(r.status.code(), ENOSPC);
  EXPECT_NE(r.status.message().find("needed"), std::string::npos) << r.status.message();
  EXPECT_NE(r.status.message().find("0.5 MiB free"), std::string::npos) << r.status.message();
  for (const auto& line : env.log()) EXPECT_EQ(line.find(" write "), std::string::npos) << line;
  ExpectRecoverable(job, 1, "ENOSPC");
  EXPECT_FALSE(fs::exists(job + "/2"));
}

// --- corruption -------------------------------------------------------------------

class Corruption : public ::testing::Test {
 protected:
  void SetUp() override {
    job_ = dir_.path() + "/77";
    ASSERT_TRUE(WriteEpoch(DefaultEnv(), job_, 2, 5).status.ok());
    ASSERT_TRUE(WriteEpoch(DefaultEnv(), job_, 2, 5).status.ok());
  }
  // Problems verify finds in epoch 2, and what a restart of `node` says.
  std::vector<std::string> Verify() {
    auto job = JobFolder::Open(DefaultEnv(), job_, false, Me());
    EXPECT_TRUE(job.has_value());
    auto e = job->Inspect(2);
    EXPECT_TRUE(e.has_value());
    if (e->state == EpochState::kCorrupt) return {e->problem};
    auto problems = VerifyEpoch(*job, *e);
    EXPECT_TRUE(problems.has_value());
    return *problems;
  }
  std::string Restart(uint32_t node) {
    auto sel = SelectForRestart(DefaultEnv(), job_ + "/2", node, Me());
    if (!sel) return sel.error().message();
    VerifyingSource source(std::make_unique<FdSource>(std::move(sel->fd), "f"), sel->file.name,
                           sel->file.size, sel->file.crc32c);
    auto ctx = format::ReadContext(&source, false);
    if (!ctx) return sel->file.name + ": " + ctx.error().message();
    if (Status s = CheckContextIdentity(ctx->image, sel->epoch.manifest, node, sel->file.name);
        !s.ok())
      return s.message();
    if (Status s = source.Finish(); !s.ok()) return s.message();
    return "";
  }
  void ExpectRefused(const std::string& file, const std::string& what) {
    auto problems = Verify();
    ASSERT_FALSE(problems.empty()) << what;
    EXPECT_NE(problems[0].find(file), std::string::npos) << what << ": " << problems[0];
    std::string refused = Restart(file == "node0.ctx" ? 0 : 1);
    EXPECT_NE(refused, "") << what;
    EXPECT_NE(refused.find(file), std::string::npos) << what << ": " << refused;
    // The job folder still restarts: from epoch 1.
    auto sel = SelectForRestart(DefaultEnv(), job_, 0, Me(), 2);
    ASSERT_TRUE(sel.has_value());
    EXPECT_EQ(sel->epoch.epoch, 1u);
  }
  TempDir dir_;
  std::string job_;
};

TEST_F(Corruption, EveryFlippedByteIsFound) {
  std::string path = job_ + "/2/node1.ctx";
  std::string good = ReadAll(path);
  for (size_t pos = 0; pos < good.size(); pos += 97) {
    std::string bad = good;
    bad[pos] ^= 0x20;
    WriteAll(path, bad);
    ExpectRefused("node1.ctx", "byte " + std::to_string(pos));
    if (HasFailure()) return;
  }
  std::string bad = good;
  bad.back() ^= 1;
  WriteAll(path, bad);
  ExpectRefused("node1.ctx", "last byte");
}

TEST_F(Corruption, SectionIsNamed) {
  std::string path = job_ + "/2/node0.ctx";
  std::string bytes = ReadAll(path);
  auto thread = format::testing::FindSection(bytes, format::SectionType::kThread);
  bytes[thread.offset + thread.size - 1] ^= 1;
  WriteAll(path, bytes);
  auto problems = Verify();
  ASSERT_FALSE(problems.empty());
  EXPECT_NE(problems[0].find("node0.ctx: Thread section"), std::string::npos) << problems[0];
}

TEST_F(Corruption, TruncatedAndAppended) {
  std::string path = job_ + "/2/node0.ctx";
  std::string good = ReadAll(path);
  WriteAll(path, good.substr(0, good.size() - 100));
  ExpectRefused("node0.ctx", "truncated");
  WriteAll(path, good + "x");
  ExpectRefused("node0.ctx", "appended");
}

TEST_F(Corruption, SwappedNodeFiles) {
  std::string a = ReadAll(job_ + "/2/node0.ctx"), b = ReadAll(job_ + "/2/node1.ctx");
  ASSERT_EQ(a.size(), b.size());  // the sizes cannot give it away
  WriteAll(job_ + "/2/node0.ctx", b);
  WriteAll(job_ + "/2/node1.ctx", a);
  ExpectRefused("node0.ctx", "swapped");
  // Even with a manifest rewritten to match the swapped files' checksums,
  // the contexts' own identity refuses them.
  auto job = JobFolder::Open(DefaultEnv(), job_, false, Me());
  auto e = job->Inspect(2);
  format::Manifest m = e->manifest;
  std::swap(m.files[0].crc32c, m.files[1].crc32c);
  auto bytes = format::EncodeManifest(m);
  ASSERT_TRUE(bytes.has_value());
  WriteAll(job_ + "/2/MANIFEST", *bytes);
  std::string refused = Restart(0);
  EXPECT_NE(refused.find("node 1"), std::string::npos) << refused;
  EXPECT_NE(refused.find("swapped"), std::string::npos) << refused;
}

TEST_F(Corruption, FileFromAnotherEpoch) {
  fs::copy_file(job_ + "/1/node0.ctx", job_ + "/2/node0.ctx", fs::copy_options::overwrite_existing);
  ExpectRefused("node0.ctx", "from epoch 1");
}

TEST_F(Corruption, EditedManifest) {
  std::string path = job_ + "/2/MANIFEST";
  std::string m = ReadAll(path);
  size_t at = m.find("tasks=1");
  ASSERT_NE(at, std::string::npos);
  m[at + 6] = '5';
  WriteAll(path, m);
  auto problems = Verify();
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_NE(problems[0].find("MANIFEST line"), std::string::npos) << problems[0];
  EXPECT_NE(problems[0].find("checksum"), std::string::npos) << problems[0];
  auto sel = SelectForRestart(DefaultEnv(), job_, 0, Me());
  ASSERT_TRUE(sel.has_value());
  EXPECT_EQ(sel->epoch.epoch, 1u);
  EXPECT_EQ(sel->skipped.size(), 1u);
  EXPECT_FALSE(SelectForRestart(DefaultEnv(), job_ + "/2", 0, Me()).has_value());
}

TEST_F(Corruption, EpochCopiedToAnotherNumber) {
  fs::copy(job_ + "/1", job_ + "/3");
  auto job = JobFolder::Open(DefaultEnv(), job_, false, Me());
  auto e = job->Inspect(3);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->state, EpochState::kCorrupt);
  EXPECT_NE(e->problem.find("epoch 1"), std::string::npos) << e->problem;
}

// --- symlink and permission attacks ---------------------------------------------------

TEST(StoreAttacks, JobFolderSymlinkIsRefused) {
  TempDir dir;
  fs::create_directory(dir.path() + "/victim");
  fs::create_directory_symlink(dir.path() + "/victim", dir.path() + "/job");
  WriteResult r = WriteEpoch(DefaultEnv(), dir.path() + "/job", 1, 2);
  EXPECT_EQ(r.status.code(), ELOOP) << r.status.message();
  EXPECT_TRUE(fs::is_empty(dir.path() + "/victim"));
  EXPECT_FALSE(SelectForRestart(DefaultEnv(), dir.path() + "/job/1", 0, Me()).has_value());
}

TEST(StoreAttacks, OpenFolderIsRefused) {
  TempDir dir;
  std::string job = dir.path() + "/job";
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 2).status.ok());
  ::chmod(job.c_str(), 0777);
  WriteResult r = WriteEpoch(DefaultEnv(), job, 1, 2);
  EXPECT_EQ(r.status.code(), EPERM);
  EXPECT_NE(r.status.message().find("writable by group or others"), std::string::npos);
  EXPECT_FALSE(SelectForRestart(DefaultEnv(), job, 0, Me()).has_value());
}

TEST(StoreAttacks, PlantedLinksInsideAnEpoch) {
  TempDir dir;
  std::string job = dir.path() + "/job";
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 5).status.ok());
  WriteAll(dir.path() + "/victim", "precious");
  // A node file replaced by a link; a MANIFEST replaced by a link; an
  // epoch folder replaced by a link to another one.
  fs::remove(job + "/3/node0.ctx");
  fs::create_symlink(job + "/1/node0.ctx", job + "/3/node0.ctx");
  fs::rename(job + "/2", dir.path() + "/moved");
  fs::create_directory_symlink(dir.path() + "/moved", job + "/2");
  auto jf = JobFolder::Open(DefaultEnv(), job, false, Me());
  auto epochs = jf->List();
  ASSERT_TRUE(epochs.has_value());
  ASSERT_EQ(epochs->size(), 3u);
  EXPECT_EQ((*epochs)[0].state, EpochState::kComplete);
  EXPECT_EQ((*epochs)[1].state, EpochState::kCorrupt);
  EXPECT_NE((*epochs)[1].problem.find("symbolic link"), std::string::npos);
  EXPECT_EQ((*epochs)[2].state, EpochState::kCorrupt);
  EXPECT_NE((*epochs)[2].problem.find("symbolic link"), std::string::npos);
  auto sel = SelectForRestart(DefaultEnv(), job, 0, Me());
  ASSERT_TRUE(sel.has_value());
  EXPECT_EQ(sel->epoch.epoch, 1u);
  // A planted .MANIFEST.tmp link: the commit refuses to write through it.
  auto w = EpochWriter::Begin(&*jf, WriteOptions{});
  ASSERT_TRUE(w.has_value());
  fs::create_symlink(dir.path() + "/victim", (*w)->path() + "/.MANIFEST.tmp");
  auto sink = (*w)->CreateNodeFile(0);
  std::string bytes = NodeContext("job", (*w)->epoch(), 0);
  ASSERT_TRUE((*sink)->Write(bytes.data(), bytes.size()).ok());
  auto file = (*sink)->Finish();
  format::Manifest m;
  format::ManifestNode n;
  n.host = "h";
  n.file = "node0.ctx";
  n.tasks = {0};
  m.nodes = {n};
  m.files = {*file};
  EXPECT_EQ((*w)->Commit(&m).code(), EEXIST);
  EXPECT_EQ(ReadAll(dir.path() + "/victim"), "precious");
  // Prune removes the planted links themselves, never what they point at.
  w->reset();
  auto removed = Prune(&*jf, 1);
  ASSERT_TRUE(removed.has_value()) << removed.error().message();
  EXPECT_TRUE(fs::exists(dir.path() + "/moved/MANIFEST"));
  EXPECT_EQ(ReadAll(dir.path() + "/victim"), "precious");
}

TEST(StoreAttacks, OtherOwnersAreRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to give files away";
  TempDir dir;
  std::string job = dir.path() + "/job";
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 5).status.ok());
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), job, 1, 5).status.ok());
  // A node file that is not ours.
  ASSERT_EQ(::chown((job + "/2/node0.ctx").c_str(), 4321, 4321), 0);
  Access strict = Me();  // root, but acting for uid 0 only
  auto sel = SelectForRestart(DefaultEnv(), job + "/2", 0, strict);
  ASSERT_FALSE(sel.has_value());
  EXPECT_NE(sel.error().message().find("belongs to uid 4321"), std::string::npos)
      << sel.error().message();
  auto fallback = SelectForRestart(DefaultEnv(), job, 0, strict);
  ASSERT_TRUE(fallback.has_value());
  EXPECT_EQ(fallback->epoch.epoch, 1u);
  // A job folder that is not ours: nothing is written into it.
  ASSERT_EQ(::chown(job.c_str(), 4321, 4321), 0);
  WriteResult r = WriteEpoch(DefaultEnv(), job, 1, 5);
  EXPECT_EQ(r.status.code(), EPERM) << r.status.message();
  EXPECT_FALSE(fs::exists(job + "/3"));
}

}  // namespace
}  // namespace stasis::store

namespace stasis::store {
namespace {

// Several nodes write one epoch (the Slurm helper step's contract): the
// coordinator allocates the epoch, the others join it and keep their files,
// the coordinator commits a MANIFEST naming every node's file.
TEST(StoreNodes, NodesJoinAndTheCoordinatorCommits) {
  TempDir dir;
  std::string path = dir.path() + "/9000";
  auto coordinator_job = JobFolder::Open(DefaultEnv(), path, true, Me());
  ASSERT_TRUE(coordinator_job.has_value());
  auto coordinator = EpochWriter::Begin(&*coordinator_job, WriteOptions{});
  ASSERT_TRUE(coordinator.has_value());
  uint64_t epoch = (*coordinator)->epoch();
  format::Manifest m;
  m.uid = ::geteuid();
  for (uint32_t node = 0; node < 3; ++node) {
    // Each node opens the job folder and the epoch on its own.
    auto job = JobFolder::Open(DefaultEnv(), path, false, Me());
    ASSERT_TRUE(job.has_value());
    std::unique_ptr<EpochWriter> joined;
    EpochWriter* w = coordinator->get();
    if (node > 0) {
      auto j = EpochWriter::Join(&*job, epoch, WriteOptions{});
      ASSERT_TRUE(j.has_value()) << j.error().message();
      joined = std::move(*j);
      joined->Keep();
      w = joined.get();
    }
    auto sink = w->CreateNodeFile(node);
    ASSERT_TRUE(sink.has_value());
    std::string bytes = NodeContext("9000", epoch, node);
    ASSERT_TRUE((*sink)->Write(bytes.data(), bytes.size()).ok());
    auto file = (*sink)->Finish();
    ASSERT_TRUE(file.has_value());
    format::ManifestNode n;
    n.index = node;
    n.host = "n" + std::to_string(node);
    n.file = file->name;
    n.tasks = {2 * node, 2 * node + 1};
    m.nodes.push_back(n);
    m.files.push_back(*file);
  }  // the joined writers go away: their files stay
  ASSERT_TRUE((*coordinator)->Commit(&m).ok());
  ExpectRecoverable(path, 1, "three nodes");
  for (uint32_t node = 0; node < 3; ++node) {
    auto sel = SelectForRestart(DefaultEnv(), path, node, Me());
    ASSERT_TRUE(sel.has_value());
    EXPECT_EQ(sel->node.tasks, (std::vector<uint32_t>{2 * node, 2 * node + 1}));
  }
}

// A node that never wrote its file: the coordinator's commit is refused and
// the epoch is left incomplete (never corrupt) for retention to remove.
TEST(StoreNodes, AMissingNodeFileIsNeverCommitted) {
  TempDir dir;
  std::string path = dir.path() + "/9001";
  ASSERT_TRUE(WriteEpoch(DefaultEnv(), path, 1, 2).status.ok());
  auto job = JobFolder::Open(DefaultEnv(), path, false, Me());
  auto coordinator = EpochWriter::Begin(&*job, WriteOptions{});
  ASSERT_TRUE(coordinator.has_value());
  uint64_t epoch = (*coordinator)->epoch();
  auto other = EpochWriter::Join(&*job, epoch, WriteOptions{});
  ASSERT_TRUE(other.has_value());
  (*other)->Keep();
  auto sink = (*other)->CreateNodeFile(1);  // node 1 writes
  std::string bytes = NodeContext("9001", epoch, 1);
  ASSERT_TRUE((*sink)->Write(bytes.data(), bytes.size()).ok());
  auto f1 = (*sink)->Finish();
  other->reset();
  format::Manifest m;
  for (uint32_t node = 0; node < 2; ++node) {
    format::ManifestNode n;
    n.index = node;
    n.host = "h";
    n.file = EpochWriter::NodeFileName(node);
    n.tasks = {node};
    m.nodes.push_back(n);
  }
  m.files = {{"node0.ctx", 100, 0}, *f1};  // node 0 never wrote
  Status s = (*coordinator)->Commit(&m);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("node0.ctx"), std::string::npos) << s.message();
  coordinator->reset();
  ExpectRecoverable(path, 1, "a node missing");
  auto after = job->List();
  ASSERT_EQ(after->size(), 2u);
  EXPECT_EQ((*after)[1].state, EpochState::kIncomplete);
}

}  // namespace
}  // namespace stasis::store

// --- the pipelined write and read paths (issue 9) ----------------------------------

namespace stasis::store {
namespace {

using format::Context;
using format::ContextReader;
using format::SectionType;

#define ASSERT_OK(expr)                    \
  do {                                     \
    Status s_ = (expr);                    \
    ASSERT_TRUE(s_.ok()) << s_.ToString(); \
  } while (0)
#define EXPECT_OK(expr)                    \
  do {                                     \
    Status s_ = (expr);                    \
    EXPECT_TRUE(s_.ok()) << s_.ToString(); \
  } while (0)

std::string TempFile(const char* tag) {
  const char* tmp = getenv("TMPDIR");
  std::string path = std::string(tmp ? tmp : "/tmp") + "/stasis-" + tag + "-XXXXXX";
  int fd = mkstemp(path.data());
  EXPECT_GE(fd, 0);
  close(fd);
  return path;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Every byte of page data, in file order, read with ReadPageDataInPlace when
// `in_place` (else ReadPageData).
std::string AllPageData(ByteSource* source, bool in_place) {
  ContextReader reader(source);
  EXPECT_TRUE(reader.Begin());
  std::string out;
  for (;;) {
    auto type = reader.Next();
    EXPECT_TRUE(type) << type.error().ToString();
    if (!type || *type == SectionType::kEnd) break;
    if (*type != SectionType::kPages) continue;
    uint64_t left = reader.pages().data_bytes;
    while (left > 0) {
      if (in_place) {
        const char* data = nullptr;
        auto got =
            reader.ReadPageDataInPlace(&data, static_cast<size_t>(std::min<uint64_t>(left, 20000)));
        EXPECT_TRUE(got) << got.error().ToString();
        if (!got) return out;
        out.append(data, *got);
        left -= *got;
      } else {
        std::string buf(static_cast<size_t>(std::min<uint64_t>(left, 20000)), '\0');
        EXPECT_OK(reader.ReadPageData(buf.data(), buf.size()));
        out += buf;
        left -= buf.size();
      }
    }
  }
  return out;
}

TEST(Pipelined, SinkWritesEveryChunkInOrderWithItsChecksum) {
  std::string path = TempFile("sink");
  std::string want;
  WriteOptions wo;
  wo.chunk = 16384;
  wo.depth = 2;
  for (WriteStrategy strategy :
       {WriteStrategy::kDirect, WriteStrategy::kStreaming, WriteStrategy::kBuffered}) {
    want.clear();
    wo.strategy = strategy;
    int fd = open(path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    NodeFileSink sink(WrapFd(UniqueFd(fd), path, strategy), wo);
    auto put = [&](const std::string& bytes) {
      ASSERT_OK(sink.Write(bytes.data(), bytes.size()));
      want += bytes;
    };
    auto lend = [&](size_t n, uint32_t seed) {
      size_t size = 0;
      char* b = sink.Borrow(&size);
      ASSERT_NE(b, nullptr);
      ASSERT_EQ(size, wo.chunk);
      ASSERT_LE(n, size);
      ASSERT_EQ(reinterpret_cast<uintptr_t>(b) % 4096, 0u);
      std::string bytes = format::testing::PseudoRandomBytes(n, seed);
      std::memcpy(b, bytes.data(), n);
      ASSERT_OK(sink.WriteBorrowed(b, n));
      want += bytes;
    };
    put(format::testing::PseudoRandomBytes(4096, 1));
    lend(3 * 4096, 2);
    put(format::testing::PseudoRandomBytes(100, 3));  // leaves the file unaligned
    lend(0, 4);                                       // given back unused
    put(format::testing::PseudoRandomBytes(4096 - 100, 5));
    for (uint32_t i = 0; i < 20; ++i) lend(8192, 10 + i);  // more than the buffers
    put(format::testing::PseudoRandomBytes(50000, 6));     // several chunks
    lend(4096, 7);
    put(format::testing::PseudoRandomBytes(77, 8));  // an unaligned end
    auto f = sink.Finish();
    ASSERT_TRUE(f) << f.error().ToString();
    EXPECT_EQ(f->size, want.size());
    EXPECT_EQ(f->crc32c, format::Crc32c(0, want.data(), want.size()));
    EXPECT_TRUE(Slurp(path) == want) << "strategy " << static_cast<int>(strategy);
  }
  unlink(path.c_str());
}

TEST(Pipelined, PrefetchSourceReadsInPlaceAndByCopy) {
  std::string path = TempFile("prefetch");
  Context ctx = format::testing::MakeFullContext();
  std::string bytes = format::testing::Encode(ctx, 3);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  MemorySource memory(bytes.data(), bytes.size());
  std::string pages = AllPageData(&memory, false);
  ASSERT_GT(pages.size(), 3u * 4096);
  // Chunks much smaller than the page data: in-place reads and the trailer
  // read after them cross chunk boundaries everywhere.
  for (size_t chunk : {4096u, 8192u, 12288u, 1u << 20}) {
    PrefetchSource in_place(UniqueFd(open(path.c_str(), O_RDONLY | O_CLOEXEC)), path, chunk, 1);
    EXPECT_TRUE(AllPageData(&in_place, true) == pages) << "chunk " << chunk;
    PrefetchSource copy(UniqueFd(open(path.c_str(), O_RDONLY | O_CLOEXEC)), path, chunk, 2);
    auto got = format::ReadContext(&copy, true);
    ASSERT_TRUE(got) << got.error().ToString();
    ctx.file_bytes = bytes.size();
    EXPECT_TRUE(*got == ctx) << "chunk " << chunk;
  }
  // A pipe (no O_DIRECT, no offsets) and a truncated file.
  int p[2];
  ASSERT_EQ(pipe(p), 0);
  std::thread feeder([&] {
    (void)!write(p[1], bytes.data(), bytes.size() < 65536 ? bytes.size() : 65536);
    if (bytes.size() > 65536) (void)!write(p[1], bytes.data() + 65536, bytes.size() - 65536);
    close(p[1]);
  });
  PrefetchSource piped(UniqueFd(p[0]), "pipe", 8192, 2);
  EXPECT_TRUE(AllPageData(&piped, true) == pages);
  feeder.join();
  ASSERT_EQ(truncate(path.c_str(), static_cast<off_t>(bytes.size() / 2)), 0);
  PrefetchSource cut(UniqueFd(open(path.c_str(), O_RDONLY | O_CLOEXEC)), path, 8192, 2);
  auto bad = format::ReadContext(&cut, true);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("truncated"), std::string::npos) << bad.error().message();
  unlink(path.c_str());
}

}  // namespace
}  // namespace stasis::store

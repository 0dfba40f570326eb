// stasis-step node --job J --step S [...]: one helper task of an epoch,
// inside the helper step `checkpoint` starts on the step's nodes. It finds
// the step's tasks on its node (scontrol listpids), joins the epoch rank 0
// allocated, has its node's stasisd (or, without one, this process) write
// node<i>.ctx and hold the tasks frozen, then meets the other nodes in PMIx
// fences: rank 0 writes the MANIFEST only when every node's file is
// durable, and every node resumes (or, --vacate, ends) its tasks only after
// that. Any failure or timeout: no MANIFEST, every node resumes, the
// previous epoch stays the newest. docs/protocol.md has the fences.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/core/engine.h"
#include "engine/core/procfs.h"
#include "engine/daemon/client.h"
#include "engine/daemon/config.h"
#include "engine/epoch/epoch_checkpoint.h"
#include "engine/format/context_io.h"
#include "engine/format/manifest.h"
#include "engine/store/store.h"
#include "spank/slurm_util.h"
#include "spank/step/common.h"
#include "spank/step/epoch.h"
#include "spank/step/epoch_table.h"
#include "spank/step/epoch_wire.h"
#include "spank/step/pmix_client.h"
#include "spank/step/restorer_socket.h"
#include "spank/step/subcommands.h"

namespace stasis::step {
namespace {

// The step's task roots on this node, with the task ids they head. A task
// that is a restart proxy (this program) is asked by its node's restorer
// which restored process heads it.
Result<std::vector<core::TaskRoot>> LocalTasks(const std::string& job, const std::string& step,
                                               std::map<std::string, std::string>* task_env) {
  // scontrol takes no "J.batch": the batch step's lines come with the job's.
  STASIS_ASSIGN_OR_RETURN(
      std::string listed,
      RunCapture({"scontrol", "listpids", step == "batch" ? job : job + "." + step}));
  STASIS_ASSIGN_OR_RETURN(std::vector<stasis::spank::ListedTask> tasks,
                          stasis::spank::ParseListPids(listed, job, step));
  if (tasks.empty())
    return Status::Error(ESRCH, "step " + job + "." + step + " has no task on this node");
  auto environ = ReadProcFile(tasks[0].pid, "environ");
  if (!environ) return environ.error();
  *task_env = stasis::spank::ParseEnviron(*environ);
  std::vector<core::TaskRoot> out;
  if (task_env->count("STASIS_RESTART_TASK")) {
    STASIS_ASSIGN_OR_RETURN(UniqueFd s, ConnectRestorer(RestorerName(job, step)));
    STASIS_RETURN_IF_ERROR(SendMsg(s.get(), "roots"));
    STASIS_ASSIGN_OR_RETURN(std::string reply, RecvMsg(s.get()));
    std::istringstream in(reply);
    long task = 0, pid = 0;
    while (in >> task >> pid) out.push_back({static_cast<pid_t>(pid), static_cast<uint32_t>(task)});
    if (out.empty())
      return Status::Error(ESRCH,
                           "the restored tasks of step " + job + "." + step + " have all ended");
    return out;
  }
  for (const auto& t : tasks) out.push_back({t.pid, t.global_id});
  return out;
}

using TaskEnvironment = std::map<std::string, std::string>;  // NAME -> value

// Rank 0: opens (or creates) the job folder, refuses when checkpoints are
// disabled, and begins the next epoch. Returns the fields of stasis.epoch
// (epoch=0 and error= when there is none).
Fields AllocateEpoch(const NodeOptions& opt, TaskEnvironment& tenv, Status s,
                     const std::string& host, std::optional<store::JobFolder>* folder,
                     std::unique_ptr<store::EpochWriter>* writer) {
  std::string root = opt.root;
  if (root.empty())
    root = tenv.count("STASIS_CHECKPOINT_DIR") ? tenv["STASIS_CHECKPOINT_DIR"]
                                               : tenv["SLURM_SUBMIT_DIR"];
  if (s.ok() && root.empty())
    s = Status::Error(EINVAL, "no checkpoint folder: give --dir (ImageDir=)");
  uint32_t keep = opt.keep;
  if (!keep && tenv.count("STASIS_CHECKPOINT_KEEP"))
    keep = static_cast<uint32_t>(std::strtoul(tenv["STASIS_CHECKPOINT_KEEP"].c_str(), nullptr, 10));
  if (!keep) keep = 2;
  std::string jobdir = root + "/" + opt.job;
  if (s.ok()) {
    ::mkdir(root.c_str(), 0700);  // the root may be new; the store checks it
    auto j = store::JobFolder::Open(store::DefaultEnv(), jobdir, true, store::Access::Caller());
    if (!j)
      s = j.error();
    else
      folder->emplace(std::move(*j));
  }
  if (s.ok() && JobDisabled(**folder))
    s = Status::Error(EPERM, "checkpoints of job " + opt.job +
                                 " are disabled (scontrol checkpoint enable " + opt.job + ")");
  if (s.ok()) {
    auto w = store::EpochWriter::Begin(&**folder, {});
    if (!w)
      s = w.error();
    else
      *writer = std::move(*w);
  }
  Fields f;
  f["epoch"] = s.ok() ? std::to_string((*writer)->epoch()) : "0";
  f["error"] = s.ok() ? "" : "node 0 (" + host + "): " + s.message();
  f["jobdir"] = jobdir;
  f["keep"] = std::to_string(keep);
  return f;
}

// Every other rank: opens the job folder and, when this node has no
// failure yet (`local`), joins the epoch rank 0 began. Returns the node's
// failure, if any.
Status JoinEpoch(const std::string& jobdir, uint64_t epoch, const Status& local,
                 std::optional<store::JobFolder>* folder,
                 std::unique_ptr<store::EpochWriter>* writer) {
  auto j = store::JobFolder::Open(store::DefaultEnv(), jobdir, false, store::Access::Caller());
  if (!j) return j.error();
  folder->emplace(std::move(*j));
  if (!local.ok()) return local;
  auto w = store::EpochWriter::Join(&**folder, epoch, {});
  if (!w) return w.error();
  *writer = std::move(*w);
  return Status::Ok();
}

// Rank 0, once every report is good (epoch.cc checked them, in node
// order): the MANIFEST, which makes the epoch complete.
Status CommitManifest(store::EpochWriter* writer, const NodeOptions& opt,
                      const std::vector<NodeReport>& reports) {
  stasis::format::Manifest m;
  m.job = opt.job;
  m.step = opt.step;
  m.uid = ::geteuid();
  for (const auto& r : reports) {
    stasis::format::ManifestNode n;
    n.index = r.node;
    n.host = r.host;
    n.file = store::EpochWriter::NodeFileName(n.index);
    n.tasks = r.tasks;
    n.argv = r.argv;
    m.nodes.push_back(n);
    stasis::format::ManifestFile f;
    f.name = n.file;
    f.size = r.size;
    f.crc32c = r.crc;
    m.files.push_back(f);
  }
  return writer->Commit(&m);
}

// The step's PMIx server folder on this node (Slurm's pmix plugin exports
// PMIX_SERVER_TMPDIR=<SlurmdSpoolDir>/pmix.J.S/ to every task; OpenPMIx's
// ds21 and ds12 data stores map files under it), or "" when the tasks have
// none. Only a folder named after this very step is taken.
std::string StepPmixFolder(const NodeOptions& opt, TaskEnvironment& tenv) {
  std::string dir = tenv.count("PMIX_SERVER_TMPDIR") ? tenv["PMIX_SERVER_TMPDIR"] : "";
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::string name = "pmix." + opt.job + "." + opt.step;
  if (dir.size() <= name.size() + 1 || dir[0] != '/' ||
      dir.compare(dir.size() - name.size() - 1, std::string::npos, "/" + name) != 0)
    return "";
  return dir;
}

// A refused connection's line names its peer by address; the step knows
// two of them: its PMIx server (slurmstepd, PMIX_SERVER_URI4 in the tasks'
// environment) and its nodes (NodeAddr, asked of slurmctld only then).
std::string NamePeers(const std::string& message, const NodeOptions& opt, TaskEnvironment& tenv) {
  return stasis::spank::NameRefusedPeer(
      message, [&](const std::string& peer, bool other_host) -> std::string {
        std::string uri = tenv.count("PMIX_SERVER_URI4") ? tenv["PMIX_SERVER_URI4"] : "";
        size_t scheme = uri.find("://");
        if (scheme != std::string::npos && uri.substr(scheme + 3) == peer)
          return "slurmstepd: the PMIx server of step " + opt.job + "." + opt.step;
        const std::string nodes = tenv.count("SLURM_STEP_NODELIST") ? tenv["SLURM_STEP_NODELIST"]
                                                                    : tenv["SLURM_JOB_NODELIST"];
        if (!other_host || nodes.empty()) return "";
        auto shown = RunCapture({"scontrol", "-o", "show", "node", nodes});
        if (!shown) return "";
        std::string node = stasis::spank::NodeWithAddress(*shown, peer.substr(0, peer.rfind(':')));
        return node.empty() ? "" : "node " + node + " of this step";
      });
}

// The engine's options for this node's capture. `parent_note` says, for an
// incremental epoch, against which epoch (or why this one is full).
core::CheckpointOptions CaptureOptions(const NodeOptions& opt, uint64_t epoch, uint32_t node,
                                       TaskEnvironment& tenv, const store::JobFolder* folder,
                                       std::string* parent_note) {
  core::CheckpointOptions copt;
  daemon::KnobsFromEnvironment(&copt);
  copt.job = opt.job;
  copt.step = opt.step;
  copt.epoch = epoch;
  copt.node_index = node;
  copt.after = opt.vacate ? core::AfterCheckpoint::kKill : core::AfterCheckpoint::kContinue;
  copt.tool_argv = {kTool, "checkpoint", opt.job + "." + opt.step};
  copt.settle_before_write = true;
  // An epoch that cannot be restarted is never called complete. A socket
  // leading outside the node's checkpoint that is listening or was never
  // connected is saved as closed (every `srun --mpi=pmix` task inherits
  // slurmstepd's PMIx listener); a connection (to another rank, to the PMIx
  // server) would come back closed, so it fails the epoch, naming it, and
  // the job runs on. Files of the step's PMIx server folder go with the
  // step: a task that maps or holds one fails the epoch too.
  copt.outside_sockets = core::OutsideSockets::kCloseUnconnected;
  if (auto dir = StepPmixFolder(opt, tenv); !dir.empty())
    copt.transient_dirs.push_back({dir, "the PMIx server folder of step " + opt.job + "." +
                                            opt.step + ", removed when the step ends"});
  copt.final = opt.final || opt.vacate;
  // The site's page compression (plugstack.conf compress=), as the plugin
  // exported it to the tasks; a value this build cannot read is ignored.
  if (tenv.count("STASIS_CHECKPOINT_COMPRESS"))
    (void)stasis::format::ParseCompression(tenv["STASIS_CHECKPOINT_COMPRESS"], &copt.compress,
                                           &copt.compress_level);
  // Incremental epochs (plugstack.conf incremental=N): this node's file
  // against its file of the previous epoch, a full one every N. Each node
  // chooses for itself; the engine still checks each process's tracking.
  if (tenv.count("STASIS_CHECKPOINT_INCREMENTAL") && folder) {
    const uint32_t every = static_cast<uint32_t>(
        std::strtoul(tenv["STASIS_CHECKPOINT_INCREMENTAL"].c_str(), nullptr, 10));
    if (every > 1) {
      store::ParentChoice parent = store::ChooseParent(*folder, epoch, node, opt.step, every);
      copt.track = true;
      copt.parent_token = parent.token;
      copt.parent = parent.recorded;
      *parent_note = parent.epoch ? "incremental against epoch " + std::to_string(parent.epoch)
                                  : "full: " + parent.why_full;
    }
  }
  return copt;
}

// What a capture gives back: the engine's figures, and when the tasks ran
// again (after the frozen fence with a snapshot, else after the verdict).
struct Captured {
  core::CheckpointStats stats;
  double resumed_at = 0;
};

// Through the node's stasisd: a held checkpoint into our node file. Its
// three stops (quiesced, frozen, written) are where this node reaches the
// quiesce, frozen and report fences.
Result<Captured> CaptureThroughDaemon(const core::CheckpointOptions& copt,
                                      const std::string& socket, store::NodeFileSink* sink,
                                      int timeout, EpochProtocol* meet, NodeReport* mine) {
  Captured c;
  stasis::cli::HeldHooks hooks;
  hooks.on_quiesced = [meet]() { return meet->Reached(EpochState::kQuiescing); };
  // With a snapshot the tasks run again as soon as "proceed" is sent.
  hooks.on_frozen = [meet, &c]() {
    Status s = meet->Reached(EpochState::kFrozen);
    c.resumed_at = Now();
    return s;
  };
  hooks.on_written = [meet, mine](uint64_t bytes, uint32_t crc32c) {
    mine->ok = true;
    mine->size = bytes;
    mine->crc = crc32c;
    return meet->Reached(EpochState::kWriting, mine);
  };
  auto st = stasis::cli::HeldThroughDaemon(copt, socket, sink->fd(),
                                           static_cast<uint64_t>(timeout) * 1000, hooks);
  if (!st) return st.error();
  c.stats = *st;
  if (!c.stats.snapshot || c.resumed_at == 0) c.resumed_at = Now();
  return c;
}

// No stasisd: this process captures (same user) and holds the tasks in the
// engine's finalize step until the verdict; the same three fences.
Result<Captured> CaptureInProcess(core::CheckpointOptions copt, store::NodeFileSink* sink,
                                  EpochProtocol* meet, NodeReport* mine) {
  Captured c;
  struct Ctx {
    store::NodeFileSink* sink;
    NodeReport* mine;
    EpochProtocol* meet;
  } ctx{sink, mine, meet};
  copt.after_callbacks = [meet]() { return meet->Reached(EpochState::kQuiescing); };
  // As through stasisd: every node frozen before any runs on.
  copt.before_release = [meet, &c](bool snapshot, const std::string&) {
    Status s = meet->Reached(EpochState::kFrozen);
    if (snapshot) c.resumed_at = Now();
    return s;
  };
  auto st = core::Checkpoint(
      copt, sink,
      [](void* arg) -> Status {
        auto* x = static_cast<Ctx*>(arg);
        auto file = x->sink->Finish();
        if (!file) return file.error();
        x->mine->ok = true;
        x->mine->size = file->size;
        x->mine->crc = file->crc32c;
        return x->meet->Reached(EpochState::kWriting, x->mine);
      },
      &ctx);
  if (!st) return st.error();
  c.stats = *st;
  if (!c.stats.snapshot || c.resumed_at == 0) c.resumed_at = Now();
  return c;
}

// The node's line in the helper step's output (the ticker log).
void PrintCommitted(const NodeOptions& opt, const NodeReport& mine, uint64_t epoch,
                    const Captured& c, const std::string& parent_note, double lag, uint32_t nodes) {
  const core::CheckpointStats& stats = c.stats;
  std::string snapshot = stats.snapshot ? " (written from a snapshot)"
                         : stats.snapshot_note.empty()
                             ? ""
                             : " (no snapshot: " + stats.snapshot_note + ")";
  std::string parent;
  if (!parent_note.empty())
    parent = "; " + parent_note +
             (stats.incremental
                  ? ", " + std::to_string(stats.parent_page_bytes >> 20) + " MiB left to it"
                  : "") +
             (stats.track_note.empty() ? "" : " (" + stats.track_note + ")");
  std::printf(
      "node %u (%s): epoch %llu: %u processes, %.1f MiB, paused %.3f s%s, trigger to resumed "
      "%.3f s; froze %.3f s after the last of %u nodes quiesced%s\n",
      mine.node, mine.host.c_str(), static_cast<unsigned long long>(epoch), stats.processes,
      static_cast<double>(stats.bytes) / (1 << 20), stats.pause_seconds, snapshot.c_str(),
      opt.t0 > 0 ? c.resumed_at - opt.t0 : stats.total_seconds, lag, nodes, parent.c_str());
}

}  // namespace

int RunNode(NodeOptions opt) {
  Pmix pmix;
  if (Status s = pmix.Init(); !s.ok()) Die(s.message());
  char hostbuf[256] = {0};
  ::gethostname(hostbuf, sizeof hostbuf - 1);
  const std::string host = hostbuf;
  NodeReport mine;
  mine.host = host;

  // This node's tasks, and what their environment says of the checkpoint
  // folder (the plugin exported it) and of this node's index in the step.
  TaskEnvironment tenv;
  auto tasks = LocalTasks(opt.job, opt.step, &tenv);
  Status local = tasks ? Status::Ok() : tasks.error();
  if (tasks && opt.step == "batch") {
    // The batch script running srun (a step, checkpointed on its own) or
    // another Slurm client: its connections cannot be restored; no epoch.
    std::string client;
    for (const auto& t : *tasks)
      if (client.empty()) client = SlurmClientIn(t.pid);
    if (!client.empty()) {
      std::printf(
          "step batch of job %s: not checkpointed now: the script runs %s (its steps have "
          "their own epochs)\n",
          opt.job.c_str(), client.c_str());
      return 0;
    }
  }
  if (tasks) {
    mine.node = static_cast<uint32_t>(std::strtoul(tenv["SLURM_NODEID"].c_str(), nullptr, 10));
    for (const auto& t : *tasks) mine.tasks.push_back(t.task);
    std::sort(mine.tasks.begin(), mine.tasks.end());
    if (auto argv = core::ReadArgv(tasks->front().pid)) mine.argv = *argv;
  }

  // The epoch fence: rank 0 allocates the epoch; everyone learns its number
  // and folder. From here on `meet` joins every fence (epoch_table.h).
  std::optional<store::JobFolder> folder;
  std::unique_ptr<store::EpochWriter> writer;
  EpochProtocol meet(&pmix, opt.timeout, [&](const std::vector<NodeReport>& reports) {
    return CommitManifest(writer.get(), opt, reports);
  });
  std::string rank0_value;
  if (pmix.rank() == 0)
    rank0_value = EncodeFields(AllocateEpoch(opt, tenv, local, host, &folder, &writer));
  auto allocated = meet.Allocate(rank0_value);
  if (!allocated) Die(allocated.error().message());
  Fields ef = *allocated;
  uint64_t epoch = std::strtoull(ef["epoch"].c_str(), nullptr, 10);
  if (epoch == 0) {
    if (pmix.rank() == 0) {
      std::fprintf(stderr, "%s: epoch not started: %s\n", kTool, ef["error"].c_str());
      if (folder) (void)WriteJobFile(*folder, kLastError, ef["error"] + "\n");
    }
    return 1;
  }
  const std::string jobdir = ef["jobdir"];
  if (pmix.rank() != 0) local = JoinEpoch(jobdir, epoch, local, &folder, &writer);
  if (writer) writer->Keep();  // rank 0 commits or removes the epoch, not our destructor

  std::string parent_note;
  core::CheckpointOptions copt = CaptureOptions(
      opt, epoch, mine.node, tenv, folder && local.ok() ? &*folder : nullptr, &parent_note);
  if (tasks) copt.tasks = *tasks;
  store::NodeFileSink* sink = nullptr;
  if (local.ok()) {
    auto s = writer->CreateNodeFile(mine.node);
    if (!s)
      local = s.error();
    else
      sink = *s;
  }

  // The capture, whose hooks reach the quiesce, frozen, report and verdict
  // fences; then whatever happened, this node answers every fence left.
  Result<Captured> captured = local;
  if (local.ok()) {
    stasis::daemon::DaemonChoice daemon = stasis::daemon::ChooseDaemon(false, "");
    captured = daemon.socket.empty()
                   ? CaptureInProcess(copt, sink, &meet, &mine)
                   : CaptureThroughDaemon(copt, daemon.socket, sink, opt.timeout, &meet, &mine);
  }
  if (!captured && captured.error().code() == ENOTSUP)
    captured = Status::Error(ENOTSUP, NamePeers(captured.error().message(), opt, tenv));
  Status outcome = meet.Finish(captured ? Status::Ok() : captured.error(), mine);
  if (!outcome.ok()) {
    std::fprintf(stderr, "%s: node %u (%s): epoch %llu aborted: %s\n", kTool, mine.node,
                 host.c_str(), static_cast<unsigned long long>(epoch), outcome.message().c_str());
    if (pmix.rank() == 0 && folder) {
      (void)store::RemoveEpoch(&*folder, epoch);
      (void)WriteJobFile(
          *folder, kLastError,
          "epoch " + std::to_string(epoch) + " aborted: " + outcome.message() + "\n");
    }
    return 1;
  }
  PrintCommitted(opt, mine, epoch, *captured, parent_note, meet.proceed_after_last_quiesce(),
                 pmix.size());
  if (pmix.rank() == 0) {
    uint32_t keep = static_cast<uint32_t>(std::strtoul(ef["keep"].c_str(), nullptr, 10));
    auto removed = store::Prune(&*folder, keep ? keep : 2);
    std::printf("epoch %llu of job %s step %s complete in %s/%llu\n",
                static_cast<unsigned long long>(epoch), opt.job.c_str(), opt.step.c_str(),
                jobdir.c_str(), static_cast<unsigned long long>(epoch));
    if (!removed)
      std::fprintf(stderr, "%s: retention: %s\n", kTool, removed.error().message().c_str());
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace stasis::step

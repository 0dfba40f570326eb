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
#include "engine/cli/epoch_checkpoint.h"
#include "engine/core/engine.h"
#include "engine/core/procfs.h"
#include "engine/daemon/client.h"
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
  std::map<std::string, std::string> tenv;
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
          "step batch of job %s: not checkpointed now: the script runs %s (its steps have their "
          "own "
          "epochs)\n",
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

  // Rank 0 allocates the epoch; everyone learns its number and folder.
  std::optional<store::JobFolder> folder;
  std::unique_ptr<store::EpochWriter> writer;
  store::EpochWriter* writer_raw = nullptr;
  // Rank 0 commits with every node's report (epoch.h checked them).
  EpochProtocol meet(&pmix, opt.timeout, [&](const std::vector<NodeReport>& reports) {
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
    return writer_raw->Commit(&m);
  });
  std::string rank0_value;
  if (pmix.rank() == 0) {
    Fields f;
    Status s = local;
    std::string root = opt.root;
    if (root.empty())
      root = tenv.count("STASIS_CHECKPOINT_DIR") ? tenv["STASIS_CHECKPOINT_DIR"]
                                                 : tenv["SLURM_SUBMIT_DIR"];
    if (s.ok() && root.empty())
      s = Status::Error(EINVAL, "no checkpoint folder: give --dir (ImageDir=)");
    uint32_t keep = opt.keep;
    if (!keep && tenv.count("STASIS_CHECKPOINT_KEEP"))
      keep =
          static_cast<uint32_t>(std::strtoul(tenv["STASIS_CHECKPOINT_KEEP"].c_str(), nullptr, 10));
    if (!keep) keep = 2;
    std::string jobdir = root + "/" + opt.job;
    if (s.ok()) {
      ::mkdir(root.c_str(), 0700);  // the root may be new; the store checks it
      auto j = store::JobFolder::Open(store::DefaultEnv(), jobdir, true, store::Access::Caller());
      if (!j)
        s = j.error();
      else
        folder.emplace(std::move(*j));
    }
    if (s.ok() && JobDisabled(*folder))
      s = Status::Error(EPERM, "checkpoints of job " + opt.job +
                                   " are disabled (scontrol checkpoint enable " + opt.job + ")");
    if (s.ok()) {
      auto w = store::EpochWriter::Begin(&*folder, {});
      if (!w)
        s = w.error();
      else
        writer = std::move(*w);
    }
    f["epoch"] = s.ok() ? std::to_string(writer->epoch()) : "0";
    f["error"] = s.ok() ? "" : "node 0 (" + host + "): " + s.message();
    f["jobdir"] = jobdir;
    f["keep"] = std::to_string(keep);
    rank0_value = EncodeFields(f);
  }
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
  if (pmix.rank() != 0) {
    auto j = store::JobFolder::Open(store::DefaultEnv(), jobdir, false, store::Access::Caller());
    if (!j)
      local = j.error();
    else
      folder.emplace(std::move(*j));
    if (local.ok()) {
      auto w = store::EpochWriter::Join(&*folder, epoch, {});
      if (!w)
        local = w.error();
      else
        writer = std::move(*w);
    }
  }
  if (writer) {
    writer->Keep();  // rank 0 commits or removes the epoch, not our destructor
    writer_raw = writer.get();
  }

  core::CheckpointOptions copt;
  copt.job = opt.job;
  copt.step = opt.step;
  copt.epoch = epoch;
  copt.node_index = mine.node;
  copt.after = opt.vacate ? core::AfterCheckpoint::kKill : core::AfterCheckpoint::kContinue;
  copt.tool_argv = {kTool, "checkpoint", opt.job + "." + opt.step};
  copt.settle_before_write = true;
  // Sockets to outside the job come back closed instead of refusing the
  // epoch: every `srun --mpi=pmix` task inherits slurmstepd's PMIx TCP
  // listener, and a PMIx connection that a program did not drop in its
  // PMIX_JCTRL_CHECKPOINT handler cannot be restored anyway.
  copt.close_outside_sockets = true;
  copt.final = opt.final || opt.vacate;
  // The site's page compression (plugstack.conf compress=), as the plugin
  // exported it to the tasks; a value this build cannot read is ignored.
  if (tenv.count("STASIS_CHECKPOINT_COMPRESS"))
    (void)stasis::format::ParseCompression(tenv["STASIS_CHECKPOINT_COMPRESS"], &copt.compress,
                                           &copt.compress_level);
  if (tasks) copt.tasks = *tasks;
  // Incremental epochs (plugstack.conf incremental=N): this node's file
  // against its file of the previous epoch, a full one every N. Each node
  // chooses for itself; the engine still checks each process's tracking.
  std::string parent_note;
  if (tenv.count("STASIS_CHECKPOINT_INCREMENTAL") && folder && local.ok()) {
    const uint32_t every = static_cast<uint32_t>(
        std::strtoul(tenv["STASIS_CHECKPOINT_INCREMENTAL"].c_str(), nullptr, 10));
    if (every > 1) {
      store::ParentChoice parent = store::ChooseParent(*folder, epoch, mine.node, opt.step, every);
      copt.track = true;
      copt.parent_token = parent.token;
      copt.parent = parent.recorded;
      parent_note = parent.epoch ? "incremental against epoch " + std::to_string(parent.epoch)
                                 : "full: " + parent.why_full;
    }
  }

  store::NodeFileSink* sink = nullptr;
  if (local.ok()) {
    auto s = writer->CreateNodeFile(mine.node);
    if (!s)
      local = s.error();
    else
      sink = *s;
  }
  double resumed_at = 0;
  core::CheckpointStats stats;
  Status outcome = local;
  stasis::daemon::DaemonChoice daemon = stasis::daemon::ChooseDaemon(false, "");
  if (outcome.ok() && !daemon.socket.empty()) {
    // Through the node's stasisd: a held checkpoint into our node file,
    // with the barrier between quiesce and freeze.
    stasis::cli::HeldHooks hooks;
    hooks.on_quiesced = [&meet]() { return meet.Reached(EpochState::kQuiescing); };
    // With a snapshot the tasks run again as soon as "proceed" is sent.
    hooks.on_frozen = [&meet, &resumed_at]() {
      Status s = meet.Reached(EpochState::kFrozen);
      resumed_at = Now();
      return s;
    };
    hooks.on_written = [&](uint64_t bytes, uint32_t crc32c) {
      mine.ok = true;
      mine.size = bytes;
      mine.crc = crc32c;
      return meet.Reached(EpochState::kWriting, &mine);
    };
    auto st = stasis::cli::HeldThroughDaemon(copt, daemon.socket, sink->fd(),
                                             static_cast<uint64_t>(opt.timeout) * 1000, hooks);
    if (st) {
      stats = *st;
      if (!stats.snapshot || resumed_at == 0) resumed_at = Now();
    } else {
      outcome = st.error();
    }
  } else if (outcome.ok()) {
    // No stasisd: this process captures (same user) and holds the tasks in
    // the finalize step until the verdict.
    struct Ctx {
      store::NodeFileSink* sink;
      NodeReport* mine;
      EpochProtocol* meet;
    } ctx{sink, &mine, &meet};
    copt.after_callbacks = [&meet]() { return meet.Reached(EpochState::kQuiescing); };
    // As through stasisd: every node frozen before any runs on.
    copt.before_release = [&meet, &resumed_at](bool snapshot, const std::string&) {
      Status s = meet.Reached(EpochState::kFrozen);
      if (snapshot) resumed_at = Now();
      return s;
    };
    auto st = core::Checkpoint(
        copt, sink,
        [](void* arg) -> Status {
          auto* c = static_cast<Ctx*>(arg);
          auto file = c->sink->Finish();
          if (!file) return file.error();
          c->mine->ok = true;
          c->mine->size = file->size;
          c->mine->crc = file->crc32c;
          return c->meet->Reached(EpochState::kWriting, c->mine);
        },
        &ctx);
    if (st) {
      stats = *st;
      if (!stats.snapshot || resumed_at == 0) resumed_at = Now();
    } else {
      outcome = st.error();
    }
  }
  // Whatever happened, this node answers every fence left (epoch_table.h).
  outcome = meet.Finish(outcome, mine);
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
  std::printf(
      "node %u (%s): epoch %llu: %u processes, %.1f MiB, paused %.3f s%s, trigger to resumed %.3f "
      "s; "
      "froze %.3f s after the last of %u nodes quiesced%s\n",
      mine.node, host.c_str(), static_cast<unsigned long long>(epoch), stats.processes,
      static_cast<double>(stats.bytes) / (1 << 20), stats.pause_seconds,
      stats.snapshot                ? " (written from a snapshot)"
      : stats.snapshot_note.empty() ? ""
                                    : (" (no snapshot: " + stats.snapshot_note + ")").c_str(),
      opt.t0 > 0 ? resumed_at - opt.t0 : stats.total_seconds, meet.proceed_after_last_quiesce(),
      pmix.size(),
      parent_note.empty()
          ? ""
          : ("; " + parent_note +
             (stats.incremental
                  ? ", " + std::to_string(stats.parent_page_bytes >> 20) + " MiB left to it"
                  : "") +
             (stats.track_note.empty() ? "" : " (" + stats.track_note + ")"))
                .c_str());
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

// cr_checkpoint --dir; see epoch_checkpoint.h.
#include "engine/epoch/epoch_checkpoint.h"

#include <unistd.h>

#include "engine/core/procfs.h"
#include "engine/daemon/client.h"

namespace stasis::cli {

format::proto::Request CheckpointRequest(const core::CheckpointOptions& opt) {
  namespace proto = format::proto;
  proto::Request req;
  req.op = proto::Op::kCheckpoint;
  req.target = static_cast<uint32_t>(opt.tasks.empty() ? opt.target : opt.tasks.front().pid);
  req.scope = static_cast<uint32_t>(opt.tasks.empty() ? opt.scope : format::kScopeTree);
  for (const core::TaskRoot& t : opt.tasks) {
    req.task_pids.push_back(static_cast<uint32_t>(t.pid));
    req.task_ids.push_back(t.task);
  }
  req.after = static_cast<uint32_t>(opt.after);
  req.flags =
      (opt.save_exe ? proto::kFlagSaveExe : 0) | (opt.save_private ? proto::kFlagSavePrivate : 0) |
      (opt.save_shared ? proto::kFlagSaveShared : 0) |
      (opt.outside_sockets == core::OutsideSockets::kCloseAll ? proto::kFlagCloseSockets : 0) |
      (opt.outside_sockets == core::OutsideSockets::kCloseUnconnected ? proto::kFlagCloseUnconnected
                                                                      : 0) |
      (opt.final ? proto::kFlagFinal : 0) | (opt.track || opt.parent_token ? proto::kFlagTrack : 0);
  req.parent_token = opt.parent_token;
  req.parent = opt.parent;
  for (const auto& d : opt.transient_dirs) {
    req.transient_dirs.push_back(d.path);
    req.transient_notes.push_back(d.note);
  }
  req.after_signal = static_cast<uint32_t>(opt.after_signal);
  req.compress = opt.compress;
  req.compress_level = static_cast<uint32_t>(opt.compress_level);
  req.requester = static_cast<uint32_t>(opt.requester);
  for (size_t i = 0; i < opt.tool_argv.size() && i < proto::kMaxArgs; ++i)
    req.argv.push_back(opt.tool_argv[i].substr(0, proto::kMaxArgLength));
  return req;
}

core::CheckpointStats StatsFromReply(const format::proto::Reply& reply) {
  core::CheckpointStats stats;
  stats.processes = reply.processes;
  stats.threads = reply.threads;
  stats.bytes = reply.bytes;
  stats.page_bytes = reply.page_bytes;
  stats.pause_seconds = reply.pause_us / 1e6;
  stats.total_seconds = reply.total_us / 1e6;
  stats.callbacks_seconds = reply.callbacks_us / 1e6;
  stats.snapshot = reply.snapshot != 0;
  stats.snapshot_note = reply.snapshot_note;
  stats.parent_page_bytes = reply.parent_bytes;
  stats.incremental = reply.parent_bytes != 0;
  stats.track_note = reply.track_note;
  for (uint32_t p : reply.pids) stats.pids.push_back(static_cast<pid_t>(p));
  return stats;
}

Result<core::CheckpointStats> HeldThroughDaemon(const core::CheckpointOptions& opt,
                                                const std::string& socket, int node_fd,
                                                uint64_t time_limit_ms, const HeldHooks& hooks) {
  namespace proto = format::proto;
  proto::Request r = CheckpointRequest(opt);
  r.flags |= proto::kFlagHold | (hooks.on_quiesced ? proto::kFlagBarrier : 0) |
             (hooks.on_frozen ? proto::kFlagSnapshot : 0);
  r.attached = proto::kAttachDest;
  r.job = opt.job;
  r.step = opt.step;
  r.epoch = opt.epoch;
  r.node = opt.node_index;
  r.time_limit_ms = time_limit_ms;
  r.callback_timeout_ms = time_limit_ms;
  auto client = daemon::Client::Connect(socket);
  if (!client) return client.error();
  STASIS_RETURN_IF_ERROR((*client)->Send(r, {node_fd}));
  for (;;) {
    auto reply = (*client)->Receive();
    if (!reply && reply.error().code() == EINTR) continue;
    if (!reply) return reply.error().Prefixed("stasisd at " + socket);
    if (reply->code != 0) return Status::Error(reply->code, reply->message);
    if (reply->kind == proto::kReplyQueued) continue;
    proto::Request next;
    if (reply->kind == proto::kReplyQuiesced && hooks.on_quiesced) {
      STASIS_RETURN_IF_ERROR(hooks.on_quiesced());  // hanging up aborts: nothing is frozen
      next.op = proto::Op::kProceed;
    } else if (reply->kind == proto::kReplyFrozen && hooks.on_frozen) {
      STASIS_RETURN_IF_ERROR(hooks.on_frozen());  // hanging up aborts: the tree resumes
      next.op = proto::Op::kProceed;
    } else if (reply->kind == proto::kReplyWritten) {
      STASIS_RETURN_IF_ERROR(hooks.on_written(reply->bytes, reply->crc32c));  // hang-up resumes
      next.op = proto::Op::kCommit;
    } else {
      return StatsFromReply(*reply);
    }
    STASIS_RETURN_IF_ERROR((*client)->Send(next));
  }
}

Result<EpochOutcome> CheckpointToEpoch(core::CheckpointOptions opt, const EpochRequest& req) {
  store::Env* env = req.env ? req.env : store::DefaultEnv();
  store::Access access;
  access.uid = ::geteuid();
  auto job = store::JobFolder::Open(env, req.dir, true, access);
  if (!job) return job.error();
  auto epoch = store::EpochWriter::Begin(&*job, req.write);
  if (!epoch) return epoch.error();
  store::EpochWriter* writer = epoch->get();
  auto node_sink = writer->CreateNodeFile(0);
  if (!node_sink) return node_sink.error();
  opt.job = job->job();
  opt.epoch = writer->epoch();
  opt.node_index = 0;
  opt.dest = writer->path() + "/" + store::EpochWriter::NodeFileName(0);
  std::string parent_note;
  if (req.full_every > 1) {
    store::ParentChoice parent =
        store::ChooseParent(*job, writer->epoch(), 0, opt.step, req.full_every);
    opt.track = true;
    if (parent.epoch) {
      opt.parent_token = parent.token;
      opt.parent = parent.recorded;
      parent_note = "incremental against epoch " + std::to_string(parent.epoch);
    } else {
      parent_note = "full (" + parent.why_full + ")";
    }
  }
  // The caller's own before_write (cr_checkpoint's progress line) too.
  opt.before_write = [writer, theirs = opt.before_write](uint64_t bytes) {
    if (theirs) STASIS_RETURN_IF_ERROR(theirs(bytes));
    return writer->CheckSpace(bytes);
  };
  // A checkpointer killed while writing (a time limit, a crash) must leave
  // processes that continue unharmed.
  opt.settle_before_write = true;

  format::Manifest manifest;
  manifest.uid = ::geteuid();
  format::ManifestNode node;
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  node.host = host[0] ? host : "localhost";
  node.file = store::EpochWriter::NodeFileName(0);
  node.tasks = {0};
  if (auto argv = core::ReadArgv(opt.target)) node.argv = std::move(*argv);
  manifest.nodes.push_back(node);

  struct Commit {
    store::EpochWriter* writer;
    store::NodeFileSink* sink;
    format::Manifest* manifest;
  } commit{writer, *node_sink, &manifest};
  auto finalize = [](void* arg) -> Status {
    auto* c = static_cast<Commit*>(arg);
    auto file = c->sink->Finish();
    if (!file) return file.error();
    c->manifest->files = {*file};
    return c->writer->Commit(c->manifest);
  };
  Result<core::CheckpointStats> stats = Status::Ok();
  if (!req.daemon_socket.empty()) {
    HeldHooks hooks;
    // One node: nobody else to wait for before the tree runs on.
    if (opt.snapshot) hooks.on_frozen = []() { return Status::Ok(); };
    hooks.on_written = [&](uint64_t bytes, uint32_t crc32c) {
      format::ManifestFile file;
      file.name = store::EpochWriter::NodeFileName(opt.node_index);
      file.size = bytes;
      file.crc32c = crc32c;
      manifest.files = {file};
      return writer->Commit(&manifest);
    };
    stats = HeldThroughDaemon(opt, req.daemon_socket, (*node_sink)->fd(), req.time_limit_ms, hooks);
  } else {
    std::unique_ptr<ByteSink> wrapped;
    ByteSink* sink = *node_sink;
    if (req.wrap_sink) {
      wrapped = req.wrap_sink(sink);
      sink = wrapped.get();
    }
    stats = core::Checkpoint(opt, sink, finalize, &commit);
  }
  if (!stats) return stats.error();  // ~EpochWriter removes the new epoch
  EpochOutcome out;
  out.stats = *stats;
  out.epoch = writer->epoch();
  out.path = writer->path();
  out.parent_note = parent_note;
  auto removed = store::Prune(&*job, req.keep);
  if (removed)
    out.removed = *removed;
  else
    out.retention = removed.error();
  return out;
}

}  // namespace stasis::cli

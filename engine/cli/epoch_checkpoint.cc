// cr_checkpoint --dir; see epoch_checkpoint.h.
#include "engine/cli/epoch_checkpoint.h"

#include <unistd.h>

#include "engine/core/procfs.h"

namespace stasis::cli {

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
  opt.before_write = [writer](uint64_t bytes) { return writer->CheckSpace(bytes); };
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
  if (auto cmdline = core::ReadFileToString("/proc/" + std::to_string(opt.target) + "/cmdline")) {
    for (size_t i = 0; i < cmdline->size();) {
      size_t end = cmdline->find('\0', i);
      if (end == std::string::npos) end = cmdline->size();
      node.argv.push_back(cmdline->substr(i, end - i));
      i = end + 1;
    }
  }
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
  std::unique_ptr<ByteSink> wrapped;
  ByteSink* sink = *node_sink;
  if (req.wrap_sink) {
    wrapped = req.wrap_sink(sink);
    sink = wrapped.get();
  }
  auto stats = core::Checkpoint(opt, sink, finalize, &commit);
  if (!stats) return stats.error();  // ~EpochWriter removes the new epoch
  EpochOutcome out;
  out.stats = *stats;
  out.epoch = writer->epoch();
  out.path = writer->path();
  auto removed = store::Prune(&*job, req.keep);
  if (removed) out.removed = *removed;
  else out.retention = removed.error();
  return out;
}

}  // namespace stasis::cli

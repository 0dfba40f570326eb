// A checkpoint that becomes the next epoch of a job folder in the
// checkpoint store (cr_checkpoint --dir; later the Slurm helper per node).
// One node (node 0), everything in this process: the node file, the space
// check before any byte is written, the MANIFEST (so --kill/--term only act
// once it is durable), then retention. The Env is a parameter so the fault
// tests drive the same code the tool runs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/base/io.h"
#include "engine/base/status.h"
#include "engine/core/engine.h"
#include "engine/format/protocol.h"
#include "engine/store/store.h"

namespace stasis::cli {

struct EpochRequest {
  std::string dir;  // the job folder: <root>/<jobid>
  uint32_t keep = 2;
  store::WriteOptions write;
  store::Env* env = nullptr;  // nullptr = store::DefaultEnv()
  // Wraps the node file's sink (cr_checkpoint's --time deadline).
  std::function<std::unique_ptr<ByteSink>(ByteSink*)> wrap_sink;
  // Non-empty: stasisd at this socket captures and writes the node file this
  // process created (a held checkpoint: the processes stay frozen until our
  // MANIFEST is durable); the folders and the MANIFEST stay ours.
  std::string daemon_socket;
  uint64_t time_limit_ms = 0;  // for stasisd
  // Incremental epochs (cr_checkpoint --incremental=N): every capture
  // tracks; a full context every `full_every` epochs, the others against
  // the previous epoch (store::ChooseParent). 0 or 1: off.
  uint32_t full_every = 0;
};

// The engine protocol's checkpoint request for `opt` (no destination yet),
// and the statistics a final checkpoint reply carries.
format::proto::Request CheckpointRequest(const core::CheckpointOptions& opt);
core::CheckpointStats StatsFromReply(const format::proto::Reply& reply);

// A held checkpoint through stasisd into `node_fd` (the node file this
// process created): stasisd captures, writes and holds the processes frozen.
// `on_quiesced` (set: the barrier flag) runs once every callback is done and
// nothing is frozen yet; `on_written` gets the file's size and CRC32C once it
// is durable and must make the epoch durable (the MANIFEST). Either failing
// hangs up: stasisd resumes the processes untouched. Otherwise the commit
// is sent and stasisd's final statistics returned.
// `on_frozen` (set: the snapshot flag) runs once the processes are frozen
// and captured, before they may run again while their pages are written.
struct HeldHooks {
  std::function<Status()> on_quiesced;
  std::function<Status()> on_frozen;
  std::function<Status(uint64_t bytes, uint32_t crc32c)> on_written;
};
Result<core::CheckpointStats> HeldThroughDaemon(const core::CheckpointOptions& opt,
                                                const std::string& socket, int node_fd,
                                                uint64_t time_limit_ms, const HeldHooks& hooks);

struct EpochOutcome {
  core::CheckpointStats stats;
  uint64_t epoch = 0;
  std::string path;               // the epoch folder
  std::vector<uint64_t> removed;  // by retention
  Status retention;               // retention's failure (the epoch is complete anyway)
  std::string parent_note;        // incremental epochs: against which epoch, or why full
};

// `opt.dest` and the store identity (job, epoch, node) are filled in here.
Result<EpochOutcome> CheckpointToEpoch(core::CheckpointOptions opt, const EpochRequest& req);

}  // namespace stasis::cli

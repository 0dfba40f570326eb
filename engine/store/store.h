// The checkpoint store on the parallel file system (design brief, contract
// 2): <root>/<jobid>/<epoch>/ holding one context file per node and a
// MANIFEST (format/manifest.h). An epoch exists for restart only once its
// MANIFEST is in place; a failure at any moment leaves the previous
// complete epoch intact and selectable.
//
// Commit protocol of one epoch (every step through the Env):
//   1. mkdir <job>/<N> (N = newest number + 1), fsync <job>
//   2. every node writes node<i>.ctx, fsyncs it          (EpochWriter/NodeFileSink)
//   3. the coordinator writes .MANIFEST.tmp, fsyncs it,
//      renames it to MANIFEST (never replacing), fsyncs <job>/<N>; where the
//      file system has no rename flags (GlusterFS FUSE, NFS): links it to
//      MANIFEST (link(2) never replaces), removes .MANIFEST.tmp, fsyncs
//   4. retention: older epochs are removed MANIFEST first (then fsync), so a
//      crash while removing leaves an incomplete epoch, never a corrupt one.
// Folders are 0700 and files 0600, created by the process's fs identity
// (stasisd's workers take the user's); everything below the job folder is
// opened with O_NOFOLLOW from its parent's fd, and a folder or file that does
// not belong to the user is refused.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/io.h"
#include "engine/base/status.h"
#include "engine/format/context.h"
#include "engine/format/manifest.h"
#include "engine/store/env.h"

namespace stasis::store {

// Who the store acts for: every folder and file it reads or writes must
// belong to `uid`; with `any_owner` (root inspecting a user's checkpoints)
// any owner is accepted for reading.
struct Access {
  uid_t uid = 0;
  bool any_owner = false;
  static Access Caller();  // the effective uid; root may read anyone's
};

enum class EpochState { kComplete, kIncomplete, kCorrupt };
const char* EpochStateName(EpochState state);

struct EpochInfo {
  uint64_t epoch = 0;
  std::string path;  // <job folder>/<epoch>
  EpochState state = EpochState::kIncomplete;
  std::string problem;        // why it is incomplete or corrupt
  format::Manifest manifest;  // valid when state != kIncomplete and the MANIFEST parsed
  bool have_manifest = false;
  // Corrupt only because a file its MANIFEST names is not there: on a
  // shared file system that may be a server down (GlusterFS says ENOENT
  // for a file on a brick it cannot reach), so retention spares it.
  bool file_missing = false;
  uint64_t bytes = 0;     // sizes of the files present
  int64_t time_unix = 0;  // the manifest's time, else the folder's mtime
};

// The folder of one job's epochs.
class JobFolder {
 public:
  // Opens `path` (<root>/<jobid>). With `create`, a missing job folder is
  // created (0700; its parent must exist). The folder must be a real
  // folder (not a symlink), belong to `access.uid` and not be writable by
  // group or others.
  static Result<JobFolder> Open(Env* env, const std::string& path, bool create, Access access);

  // Every epoch folder, oldest first, with its state. Checks manifests and
  // file sizes and owners, not checksums (that is VerifyEpoch).
  Result<std::vector<EpochInfo>> List() const;
  Result<EpochInfo> Inspect(uint64_t epoch) const;

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }
  const std::string& job() const { return job_; }  // the folder's name
  Env* env() const { return env_; }
  const Access& access() const { return access_; }

 private:
  Env* env_ = nullptr;
  UniqueFd fd_;
  std::string path_, job_;
  Access access_;
};

struct WriteOptions {
  // Direct by default: measured in the real checkpoint (bench/checkpoint.py),
  // the page-cache copy of streaming costs the capture thread more than
  // O_DIRECT's synchronous chunks cost the writer thread (docs/design.md).
  WriteStrategy strategy = WriteStrategy::kDirect;
  uint64_t bandwidth = 0;   // bytes per second, 0 = unlimited
  size_t chunk = 8u << 20;  // bytes per write(2), aligned
  size_t depth = 3;         // chunks in flight (pipelined writer)
};

// One node's context file being written: buffered into aligned chunks,
// checksummed (CRC32C of the whole file, for the manifest), throttled.
//
// Pipelined: a full chunk is handed to a writer thread (started with the
// first chunk) that checksums and appends it while the caller fills the next
// one; at most `depth` chunks are in flight. A write error is kept and
// returned by the next Write, Sync or Finish: once one chunk failed, nothing
// after it is written.
class NodeFileSink : public ByteSink {
 public:
  NodeFileSink(std::unique_ptr<WritableFile> file, const WriteOptions& options);
  ~NodeFileSink() override;
  Status Write(const void* data, size_t n) override;
  Status Sync() override;
  uint64_t Offset() const override { return offset_; }
  // Flushes and fsyncs; returns the manifest's entry for the file.
  Result<format::ManifestFile> Finish();
  int fd() const { return file_->fd(); }
  char* Borrow(size_t* size) override;
  Status WriteBorrowed(char* buffer, size_t n) override;
  // Seconds the caller spent waiting for a free chunk (the disk was the
  // bottleneck) since the sink was made.
  double stalled_seconds() const { return stalled_; }

 private:
  struct Chunk {
    char* data = nullptr;
    size_t used = 0;
  };
  Status Submit();                 // hands `current_` to the writer thread
  Status TakeFree(char** buffer);  // waits for a free buffer
  Status Drain();                  // waits until every submitted chunk is written
  Status Failed();                 // the writer's first error, if any
  void WriterLoop();
  std::unique_ptr<WritableFile> file_;
  WriteOptions options_;
  std::vector<char*> buffers_;
  Chunk current_;
  uint64_t offset_ = 0;
  double stalled_ = 0;
  // Shared with the writer thread, under mu_.
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> queue_;
  std::vector<char*> free_;
  bool busy_ = false, stop_ = false;
  Status error_;
  uint32_t crc_ = 0;
  uint64_t flushed_ = 0;
  double start_ = 0;
  std::thread writer_;
};

// Writes one epoch. Not committed = removed again (best effort) when
// destroyed: a failed checkpoint leaves no new folder behind, an
// interrupted one leaves an incomplete folder that List shows and Prune
// removes.
class EpochWriter {
 public:
  // Allocates the next epoch of the job (mkdir <newest+1>).
  static Result<std::unique_ptr<EpochWriter>> Begin(JobFolder* job, const WriteOptions& options);
  // Joins an epoch another node allocated (multi-node checkpoints).
  static Result<std::unique_ptr<EpochWriter>> Join(JobFolder* job, uint64_t epoch,
                                                   const WriteOptions& options);
  ~EpochWriter();

  uint64_t epoch() const { return epoch_; }
  std::string path() const;
  static std::string NodeFileName(uint32_t node);  // "node<i>.ctx"

  // Creates node<i>.ctx; the sink stays owned by the writer.
  Result<NodeFileSink*> CreateNodeFile(uint32_t node);
  // Fails early (ENOSPC, with both numbers) when `bytes` will not fit.
  Status CheckSpace(uint64_t bytes);
  // Checks every file the manifest names (present, ours, the size it
  // says), then writes MANIFEST (job, epoch filled in here).
  Status Commit(format::Manifest* manifest);
  // Keeps the epoch's files even if not committed (a node that is not the
  // coordinator: the coordinator commits or abandons the epoch).
  void Keep() { keep_ = true; }

 private:
  EpochWriter(JobFolder* job, uint64_t epoch, const WriteOptions& options)
      : job_(job), epoch_(epoch), options_(options) {}
  // Commit's step 3 on a file system without rename flags (see store.cc).
  Status LinkIntoPlace(Env* env, int dirfd, const std::string& from, const std::string& to);
  JobFolder* job_;
  uint64_t epoch_;
  WriteOptions options_;
  UniqueFd dir_;
  bool created_dir_ = false, committed_ = false, keep_ = false;
  std::vector<std::string> created_;
  std::vector<std::unique_ptr<NodeFileSink>> sinks_;
};

// Fails (ENOSPC, naming `where` and both figures) when `bytes` will not fit
// on the file system of `fd`, with a margin for metadata (2% and 1 MiB).
Status CheckFreeSpace(Env* env, int fd, uint64_t bytes, const std::string& where);

// Removes an epoch: MANIFEST first (and fsync), then its files, then the folder.
Status RemoveEpoch(JobFolder* job, uint64_t epoch);

// Keeps the newest `keep` complete epochs and removes older ones, and every
// incomplete or corrupt epoch older than the newest complete one (a newer
// one may still be being written). Nothing is removed while no epoch is
// complete, nor any epoch a kept epoch's node files need as parents (an
// incremental chain is kept down to its full context). An epoch whose
// MANIFEST names a file that is not there (file_missing: perhaps only a
// server of a shared file system down) is kept while it is among the
// newest `keep` epochs with a MANIFEST, and a kept epoch whose node file
// cannot be read for such a reason keeps every older epoch (its parents
// are unknown). Returns the epochs removed.
Result<std::vector<uint64_t>> Prune(JobFolder* job, uint32_t keep);

// --- incremental epochs ---------------------------------------------------------
// A node file of epoch E may be incremental: its Image names as parent the
// same node's file of an older epoch D of the job, recorded as
// "../D/node<i>.ctx" (relative, so the job folder can be moved whole).

// D of such a recorded parent, or 0 when it names none or something else.
uint64_t ParentEpochOf(const std::string& recorded);

// The Image of <epoch>/<file> in the job folder (read as the job's access;
// the rest of the file unread).
Result<format::ImageInfo> ReadNodeImage(const JobFolder& job, uint64_t epoch,
                                        const std::string& file);

// How many parents the node file `file` of `epoch` whose Image is `image`
// has, down to a full context (at most `limit` followed): each must be there
// and be the file it was taken after (same token), else the error names it.
Result<uint32_t> ParentLinks(const JobFolder& job, uint64_t epoch, const std::string& file,
                             format::ImageInfo image, uint32_t limit);

// What node `node` of step `step` should write in the new epoch
// `new_epoch`: incremental against the same node's file of the newest
// complete epoch below it, when that file was taken tracking (it has a
// token), by the same step, and the chain of parents below it is shorter
// than `full_every - 1` (a full context every `full_every` epochs);
// otherwise a full one, and why. The engine still checks, process by
// process, that the tracking really goes back to that file.
struct ParentChoice {
  uint64_t epoch = 0;    // 0: write a full context
  std::string recorded;  // "../<epoch>/node<i>.ctx"
  uint64_t token = 0;
  std::string why_full;
};
ParentChoice ChooseParent(const JobFolder& job, uint64_t new_epoch, uint32_t node,
                          const std::string& step, uint32_t full_every);

// Reads every file of a complete epoch: each context's section checksums
// and structure, each file's size and CRC32C against the manifest, and
// that each context says it is that node of that epoch. Returns one line
// per problem ("node1.ctx: ..."); empty = verified.
Result<std::vector<std::string>> VerifyEpoch(const JobFolder& job, const EpochInfo& epoch);

// What a restart reads: `path` is a job folder (the newest complete epoch
// is chosen) or an epoch folder (it must be complete).
struct RestartSelection {
  EpochInfo epoch;
  format::ManifestNode node;
  format::ManifestFile file;
  std::string file_path;
  bool chose_newest = false;       // path was a job folder
  std::vector<EpochInfo> skipped;  // newer epochs passed over (incomplete/corrupt)
  UniqueFd fd;                     // the node's context file, opened without following links
};
// `node` empty: the only node of the epoch (refused if there are several).
// `older_than` (job folders only): pass over epochs from this one up (the
// newest complete one turned out damaged while restoring).
Result<RestartSelection> SelectForRestart(Env* env, const std::string& path,
                                          std::optional<uint32_t> node, Access access,
                                          uint64_t older_than = 0);

// Is the folder `dirfd` an epoch folder (it holds a MANIFEST, a temporary
// one or node files)? Job ids are numbers too, so names cannot tell.
bool IsEpochFolder(int dirfd);

// The job folders `path` names: itself when it is one, else its
// sub-folders that are (those of `access.uid` only, unless any_owner: under a
// shared root a user sees their own jobs). Job ids and epochs are both
// numbers, so this goes by content: a job folder's numbered children are
// epochs (files inside), a root's numbered children are jobs (numbered
// folders inside).
Result<std::vector<std::string>> FindJobFolders(const std::string& path, const Access& access);

// What a context says about itself (ImageInfo job, epoch, node) must match
// its place in the epoch: catches files swapped between nodes or epochs.
Status CheckContextIdentity(const format::ImageInfo& image, const format::Manifest& manifest,
                            uint32_t node, const std::string& name);

// A source over an epoch's context file that checks, at Finish(), that
// exactly the manifest's size was read and its CRC32C matches: a restart
// wraps its source in it and calls Finish before anything runs.
class VerifyingSource : public ByteSource {
 public:
  VerifyingSource(std::unique_ptr<ByteSource> inner, std::string name, uint64_t size,
                  uint32_t crc32c);
  Result<size_t> Read(void* data, size_t n) override;
  Result<size_t> ReadInPlace(const char** data, size_t n) override;
  uint64_t Offset() const override { return inner_->Offset(); }
  // Reads what is left (must be nothing) and compares size and checksum.
  Status Finish();

 private:
  std::unique_ptr<ByteSource> inner_;
  std::string name_;
  uint64_t size_;
  uint32_t want_, crc_ = 0;
};

// Everything a restart from a selection needs, for any restorer (cr_restart,
// stasisd's workers): the source to stream (size and CRC32C checked at its
// end), the two RestoreOptions hooks (the context's identity before anything
// is built; the file's checksum before anything runs), and what to tell the
// user: one line per epoch passed over, then "restarting from ...".
struct PreparedRestart {
  std::unique_ptr<VerifyingSource> source;
  std::function<Status(const format::ImageInfo&)> check_image;
  std::function<Status()> before_run;
  std::vector<std::string> notes;
  std::string path;  // the node file
  uint64_t epoch = 0;
  bool from_job_folder = false;  // a damaged epoch may fall back to an older one
  uid_t owner = 0;               // of the node file
  gid_t group = 0;
};
Result<PreparedRestart> PrepareRestart(RestartSelection selection);

// A restart from a store folder, for any restorer: selects the epoch `path`
// names (a job folder: its newest complete one), tells `note` what it chose
// and what it passed over, and calls `restore` with the prepared source and
// hooks. From a job folder, a `restore` failing with EBADMSG (the epoch was
// found damaged while being read; nothing of it ran) is noted and the next
// older complete epoch is tried. Returns the selection's or `restore`'s
// status.
Status RestoreFromFolder(Env* env, const std::string& path, std::optional<uint32_t> node,
                         Access access, const std::function<void(const std::string&)>& note,
                         const std::function<Status(PreparedRestart&)>& restore);

// Opens a regular file in `dirfd` for reading: no symlink, owned per `access`.
Result<UniqueFd> OpenOwnedFile(int dirfd, const std::string& name, const Access& access,
                               const std::string& shown_path);

}  // namespace stasis::store

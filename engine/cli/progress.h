// A live progress line for long work (cr_checkpoint, cr_restart), on a
// terminal only: when stderr is a tty, a thread draws one line after a
// second ("cr_checkpoint: 412.0 MiB of ~1.2 GiB, 380 MiB/s, ~2 s left"),
// redraws it in place four times a second and erases it when the work ends,
// successfully or not, before any other message (cli::Die erases it too).
// Not a terminal: no thread, nothing printed, the tools' output unchanged.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <ctime>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/base/io.h"

namespace stasis::cli {

// "412.0 MiB", "1.2 GiB": sizes as the tools print them (progress lines,
// `stasis ls` and `show`).
std::string SizeText(uint64_t bytes);

// The line for `done` bytes of `total` (0: unknown; `approx`: an estimate,
// shown as "~") at `rate` bytes per second (0: not known yet). Time left
// only when the total and the rate are known and the total not passed.
std::string ProgressLine(const char* tool, uint64_t done, uint64_t total, bool approx, double rate);

// The rate over the last `window` seconds of samples (time in seconds,
// bytes done so far); 0 until two samples at least 0.1 s apart.
class RateMeter {
 public:
  explicit RateMeter(double window = 3) : window_(window) {}
  void Add(double t, uint64_t done);
  double Rate() const;

 private:
  double window_;
  std::deque<std::pair<double, uint64_t>> samples_;
};

class Progress {
 public:
  // Bytes done so far, or nullopt while that cannot be seen. Called from
  // the progress thread.
  using Probe = std::function<std::optional<uint64_t>()>;
  // Starts the thread when `enabled` and stderr is a terminal.
  // STASIS_PROGRESS_DELAY (seconds, default 1) is when the first line may
  // appear (tests use 0).
  Progress(const char* tool, Probe done, bool enabled = true);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  bool active() const { return thread_.joinable(); }
  void SetTotal(uint64_t total, bool approx);
  // Erases the line and ends the thread; nothing is drawn afterwards.
  void Stop();
  // Prints "tool: message" on its own line above the progress line.
  void Note(const std::string& message);

 private:
  void Loop();
  void DrawLocked(const std::string& line);
  void EraseLocked();
  const char* tool_;
  Probe done_;
  double delay_ = 1;
  std::atomic<uint64_t> total_{0};
  std::atomic<bool> approx_{true};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool drawn_ = false;
  std::thread thread_;
};

// A source that adds what passes through it (Read, ReadInPlace, Skip) to
// `*count`, for a reader's progress seen from another thread.
class CountingSource : public ByteSource {
 public:
  CountingSource(ByteSource* inner, std::atomic<uint64_t>* count) : inner_(inner), count_(count) {}
  Result<size_t> Read(void* data, size_t n) override;
  Result<size_t> ReadInPlace(const char** data, size_t n) override;
  Result<uint64_t> Skip(uint64_t n) override;
  uint64_t Offset() const override { return inner_->Offset(); }

 private:
  ByteSource* inner_;
  std::atomic<uint64_t>* count_;
};

// Probes and totals for work another process does.
// The size of the largest regular file under `paths` modified at or after
// `since` (0 when none is): a file being written by someone else.
uint64_t LargestRecentFile(const std::vector<std::string>& paths, const timespec& since);
// DIR/BASE and every DIR/.BASE.tmp.* for `path` DIR/BASE: a context file
// being written into place (store::ContextFileWriter::TempPathFor; the
// writer's pid is stasisd's worker's, unknown here).
std::vector<std::string> ContextFileCandidates(const std::string& path);
// JOBDIR/N/NODE_FILE for every epoch folder N of a job folder.
std::vector<std::string> EpochNodeCandidates(const std::string& jobdir,
                                             const std::string& node_file);
// Resident memory of `pid` and its descendants, in bytes (VmRSS): what a
// checkpoint of the tree roughly writes.
uint64_t TreeResidentBytes(pid_t pid);

}  // namespace stasis::cli

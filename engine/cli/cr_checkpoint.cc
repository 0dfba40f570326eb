// cr_checkpoint: checkpoint a process, tree, process group or session into
// a context file (BLCR's cr_checkpoint). Runs the engine in-process.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cli/cli_common.h"
#include "engine/core/context_file.h"
#include "engine/core/engine.h"

namespace {

const char* kUsage =
    "cr_checkpoint [--tree|--pid|--pgid|--sid] [-f FILE] [--term|--kill|--stop|--cont] "
    "[--clobber|--backup|--atomic] [--save-exe|--save-private|--save-shared|--save-all] "
    "[--close-sockets] [--time SEC] [-v] ID";

std::atomic<bool> g_timed_out{false};

// A sink that fails once the --time deadline has passed.
class DeadlineSink : public stasis::ByteSink {
 public:
  explicit DeadlineSink(stasis::ByteSink* inner) : inner_(inner) {}
  stasis::Status Write(const void* data, size_t n) override {
    if (g_timed_out) return stasis::Status::Error(ETIMEDOUT, "time limit reached");
    return inner_->Write(data, n);
  }
  stasis::Status Sync() override { return inner_->Sync(); }
  uint64_t Offset() const override { return inner_->Offset(); }

 private:
  stasis::ByteSink* inner_;
};

stasis::Status Commit(void* arg) {
  return static_cast<stasis::core::ContextFileWriter*>(arg)->Commit();
}

}  // namespace

int main(int argc, char** argv) {
  using stasis::cli::Die;
  stasis::core::CheckpointOptions opt;
  std::string file;
  stasis::core::WriteMode mode = stasis::core::WriteMode::kAtomic;
  long time_limit = 0;
  bool verbose = false;
  std::string id;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) stasis::cli::Usage("cr_checkpoint", kUsage);
      return argv[++i];
    };
    if (a == "--tree" || a == "-T") opt.scope = stasis::format::kScopeTree;
    else if (a == "--pid" || a == "-p") opt.scope = stasis::format::kScopePid;
    else if (a == "--pgid" || a == "-g") opt.scope = stasis::format::kScopePgid;
    else if (a == "--sid" || a == "-s") opt.scope = stasis::format::kScopeSid;
    else if (a == "-f" || a == "--file") file = next();
    else if (a.rfind("--file=", 0) == 0) file = a.substr(7);
    else if (a == "--term") opt.after = stasis::core::AfterCheckpoint::kTerm;
    else if (a == "--kill") opt.after = stasis::core::AfterCheckpoint::kKill;
    else if (a == "--stop") opt.after = stasis::core::AfterCheckpoint::kStop;
    else if (a == "--cont") opt.after = stasis::core::AfterCheckpoint::kContinue;
    else if (a == "--clobber") mode = stasis::core::WriteMode::kClobber;
    else if (a == "--backup") mode = stasis::core::WriteMode::kBackup;
    else if (a == "--atomic") mode = stasis::core::WriteMode::kAtomic;
    else if (a == "--time" || a == "-t") {
      if (!stasis::cli::ParsePositive(next(), &time_limit))
        Die("cr_checkpoint", "--time needs a positive number of seconds", 2);
    } else if (a == "--save-exe") opt.save_exe = true;
    else if (a == "--save-private") opt.save_private = true;
    else if (a == "--save-shared") opt.save_shared = true;
    else if (a == "--save-all") opt.save_exe = opt.save_private = opt.save_shared = true;
    else if (a == "--save-none") opt.save_exe = opt.save_private = opt.save_shared = false;
    else if (a == "-v" || a == "--verbose") verbose = true;
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n", kUsage);
      return 0;
    } else if (a[0] == '-') stasis::cli::Usage("cr_checkpoint", kUsage);
    else if (id.empty()) id = a;
    else stasis::cli::Usage("cr_checkpoint", kUsage);
  }
  long target = 0;
  if (id.empty()) stasis::cli::Usage("cr_checkpoint", kUsage);
  if (!stasis::cli::ParsePositive(id, &target))
    Die("cr_checkpoint", "'" + id + "' is not a process id", 2);
  opt.target = static_cast<pid_t>(target);
  for (int i = 0; i < argc; ++i) opt.tool_argv.push_back(argv[i]);
  if (file.empty()) file = "context." + id;

  if (time_limit > 0) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = [](int) { g_timed_out = true; };
    ::sigaction(SIGALRM, &sa, nullptr);
    ::alarm(static_cast<unsigned>(time_limit));
  }
  auto writer = stasis::core::ContextFileWriter::Open(file, mode);
  if (!writer) Die("cr_checkpoint", writer.error().message());
  DeadlineSink sink((*writer)->sink());
  auto stats = stasis::core::Checkpoint(opt, &sink, Commit, writer->get());
  if (!stats) {
    std::string msg = stats.error().message();
    if (g_timed_out) msg = "checkpoint of " + id + " did not finish within " +
                           std::to_string(time_limit) + " s; processes left running";
    writer->reset();  // removes the partial file
    Die("cr_checkpoint", msg);
  }
  if (verbose) {
    std::fprintf(stderr,
                 "cr_checkpoint: %s: %u processes, %u threads, %.1f MiB memory, %.1f MiB file, "
                 "%llu zero pages skipped, paused %.3f s\n",
                 file.c_str(), stats->processes, stats->threads, stats->page_bytes / 1048576.0,
                 stats->bytes / 1048576.0,
                 static_cast<unsigned long long>(stats->zero_pages_skipped),
                 stats->pause_seconds);
  }
  return 0;
}

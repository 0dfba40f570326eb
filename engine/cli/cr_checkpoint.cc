// cr_checkpoint: checkpoint a process, tree, process group or session into
// a context file (BLCR's cr_checkpoint). Hands the work to the node's
// stasisd when its socket is there (the checkpoint then runs with stasisd's
// privileges, checked against ours); runs the engine in-process otherwise
// or with --no-daemon.
#include <fcntl.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "engine/base/install_paths.h"
#include "engine/cli/cli_common.h"
#include "engine/cli/progress.h"
#include "engine/core/agent_client.h"
#include "engine/core/context_file.h"
#include "engine/core/engine.h"
#include "engine/core/kernel_capture.h"
#include "engine/core/procfs.h"
#include "engine/daemon/client.h"
#include "engine/daemon/config.h"
#include "engine/epoch/epoch_checkpoint.h"
#include "engine/store/context_file.h"
#include "engine/store/store.h"

namespace {

const char* kUsage =
    "cr_checkpoint [--tree|--pid|--pgid|--sid] [-f FILE] [--term|--kill|--stop|--cont] "
    "[--clobber|--backup|--atomic] [--save-exe|--save-private|--save-shared|--save-all] "
    "[--close-sockets] [--compress none|lz4|zstd[:N]] [--track] [--parent FILE] [--no-snapshot] "
    "[--backend auto|kernel|user] [--signal NUM] [--time SEC] [-F FD] [--no-daemon|--socket PATH] "
    "[--dir JOBDIR [--keep N] [--incremental[=N]] [--bandwidth BYTES[K|M|G]]] [--write "
    "direct|streaming|buffered] [-v] ID";

std::atomic<bool> g_timed_out{false};
// Bytes written here (not by stasisd), for the progress line.
std::atomic<uint64_t> g_written{0};

// A sink that fails once the --time deadline has passed, and counts what
// it passes on.
class DeadlineSink : public stasis::ByteSink {
 public:
  explicit DeadlineSink(stasis::ByteSink* inner) : inner_(inner) {}
  stasis::Status Write(const void* data, size_t n) override {
    if (g_timed_out) return stasis::Status::Error(ETIMEDOUT, "time limit reached");
    stasis::Status s = inner_->Write(data, n);
    if (s.ok()) g_written += n;
    return s;
  }
  stasis::Status Sync() override { return inner_->Sync(); }
  uint64_t Offset() const override { return inner_->Offset(); }
  char* Borrow(size_t* size) override { return inner_->Borrow(size); }
  stasis::Status WriteBorrowed(char* buffer, size_t n) override {
    stasis::Status s = inner_->WriteBorrowed(buffer, n);
    if (s.ok()) g_written += n;
    if (s.ok() && g_timed_out) return stasis::Status::Error(ETIMEDOUT, "time limit reached");
    return s;
  }

 private:
  stasis::ByteSink* inner_;
};

// Exit status for a failure: the errno value of what failed (1 for values
// that do not fit, or that would read as the usage error 2); for a
// callback's failure code (CR_ETEMPFAIL or the callback's own), its low 8
// bits, as BLCR's cr_checkpoint did.
int ExitCode(int code) {
  if (code >= 256 && (code & 0xff)) return code & 0xff;
  return code > 0 && code < 256 && code != 2 ? code : 1;
}

// --libcr-request: this cr_checkpoint runs for libcr's
// cr_request_checkpoint(); the result goes into the requester's agent block
// (fd 4), which cr_poll_checkpoint() waits on.
void ReportToRequester(int code, const std::string& msg) {
  stasis::core::ReportRequestResult(4, code, "cr_checkpoint: " + msg);
}

bool g_libcr_request = false;
std::string g_epoch_note;  // what --dir did, for -v

// For libcr the message goes to cr_log_checkpoint(), not to the program's
// stderr.
[[noreturn]] void Fail(const std::string& msg, int code) {
  if (g_libcr_request) {
    ReportToRequester(code > 0 ? code : EIO, msg);
    std::exit(ExitCode(code));
  }
  stasis::cli::Die("cr_checkpoint", msg, ExitCode(code));
}

// The same checkpoint, done by stasisd. Returns when it has answered.
stasis::core::CheckpointStats ViaDaemon(const stasis::daemon::DaemonChoice& daemon,
                                        const stasis::core::CheckpointOptions& opt,
                                        stasis::store::WriteMode mode, long time_limit, long out_fd,
                                        const std::string& dest) {
  namespace proto = stasis::format::proto;
  proto::Request req = stasis::cli::CheckpointRequest(opt);
  req.write_mode = mode == stasis::store::WriteMode::kClobber  ? proto::kWriteClobber
                   : mode == stasis::store::WriteMode::kBackup ? proto::kWriteBackup
                                                               : proto::kWriteAtomic;
  req.time_limit_ms = static_cast<uint64_t>(time_limit) * 1000;
  req.callback_timeout_ms = req.time_limit_ms;
  std::vector<int> fds;
  if (out_fd >= 0) {
    req.attached = proto::kAttachDest;
    fds.push_back(static_cast<int>(out_fd));
  } else {
    req.path = dest;
  }
  auto client = stasis::daemon::Client::Connect(daemon.socket);
  if (!client) Fail(client.error().message(), client.error().code());
  stasis::Status sent = (*client)->Send(req, fds);
  if (!sent.ok()) Fail(sent.message(), sent.code());
  for (;;) {
    auto reply = (*client)->Receive();
    if (!reply && reply.error().code() == EINTR) {
      if (g_timed_out)
        Fail("checkpoint of " + std::to_string(opt.target) + " did not finish within " +
                 std::to_string(time_limit) + " s; processes left running",
             ETIMEDOUT);
      continue;
    }
    if (!reply) Fail(reply.error().message(), reply.error().code());
    if (reply->kind == proto::kReplyQueued) continue;
    if (reply->code != 0) Fail(reply->message, reply->code);
    return stasis::cli::StatsFromReply(*reply);
  }
}

// --dir: the checkpoint becomes the next epoch of a job folder.
stasis::core::CheckpointStats ToEpoch(stasis::core::CheckpointOptions& opt,
                                      const stasis::cli::EpochRequest& req,
                                      const std::function<std::string(const stasis::Status&)>& why,
                                      stasis::cli::Progress* progress) {
  stasis::cli::EpochRequest r = req;
  r.wrap_sink = [](stasis::ByteSink* inner) { return std::make_unique<DeadlineSink>(inner); };
  auto out = stasis::cli::CheckpointToEpoch(opt, r);
  if (!out) Fail(why(out.error()), out.error().code());
  progress->Stop();
  opt.dest = out->path + "/" + stasis::store::EpochWriter::NodeFileName(0);
  if (!out->retention.ok())
    std::fprintf(stderr, "cr_checkpoint: epoch %llu is complete, but retention failed: %s\n",
                 static_cast<unsigned long long>(out->epoch), out->retention.message().c_str());
  g_epoch_note = "epoch " + std::to_string(out->epoch) + " complete: " + out->path;
  if (!out->parent_note.empty()) g_epoch_note += " (" + out->parent_note + ")";
  if (!out->removed.empty()) {
    g_epoch_note += "; removed epoch";
    for (uint64_t e : out->removed) g_epoch_note += " " + std::to_string(e);
  }
  return out->stats;
}

}  // namespace

int main(int argc, char** argv) {
  using stasis::cli::Die;
  stasis::core::CheckpointOptions opt;
  stasis::daemon::KnobsFromEnvironment(&opt);
  std::string file;
  std::string parent_file;  // --parent
  stasis::store::WriteMode mode = stasis::store::WriteMode::kAtomic;
  long time_limit = 0;
  bool verbose = false;
  long out_fd = -1;
  std::string id;
  bool no_daemon = false;
  std::string socket_option;
  stasis::cli::EpochRequest epoch_req;
  bool keep_given = false, bandwidth_given = false, backend_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) stasis::cli::Usage("cr_checkpoint", kUsage);
      return argv[++i];
    };
    if (a == "--tree" || a == "-T")
      opt.scope = stasis::format::kScopeTree;
    else if (a == "--pid" || a == "-p")
      opt.scope = stasis::format::kScopePid;
    else if (a == "--pgid" || a == "-g")
      opt.scope = stasis::format::kScopePgid;
    else if (a == "--sid" || a == "-s")
      opt.scope = stasis::format::kScopeSid;
    else if (a == "-f" || a == "--file")
      file = next();
    else if (a.rfind("--file=", 0) == 0)
      file = a.substr(7);
    else if (a == "--term")
      opt.after = stasis::core::AfterCheckpoint::kTerm;
    else if (a == "--kill")
      opt.after = stasis::core::AfterCheckpoint::kKill;
    else if (a == "--no-snapshot")
      opt.snapshot = false;
    else if (a == "--stop")
      opt.after = stasis::core::AfterCheckpoint::kStop;
    else if (a == "--cont")
      opt.after = stasis::core::AfterCheckpoint::kContinue;
    else if (a == "--clobber")
      mode = stasis::store::WriteMode::kClobber;
    else if (a == "--backup")
      mode = stasis::store::WriteMode::kBackup;
    else if (a == "--atomic")
      mode = stasis::store::WriteMode::kAtomic;
    else if (a == "--time" || a == "-t") {
      if (!stasis::cli::ParsePositive(next(), &time_limit))
        Die("cr_checkpoint", "--time needs a positive number of seconds", 2);
    } else if (a == "--backend" || a.rfind("--backend=", 0) == 0) {
      auto b = stasis::core::ParseCaptureBackend(a == "--backend" ? next() : a.substr(10));
      if (!b) Die("cr_checkpoint", "--backend: " + b.error().message(), 2);
      opt.capture_backend = *b;
      backend_given = true;
    } else if (a == "--save-exe")
      opt.save_exe = true;
    else if (a == "--save-private")
      opt.save_private = true;
    else if (a == "--save-shared")
      opt.save_shared = true;
    else if (a == "--save-all")
      opt.save_exe = opt.save_private = opt.save_shared = true;
    else if (a == "--save-none")
      opt.save_exe = opt.save_private = opt.save_shared = false;
    else if (a == "-v" || a == "--verbose")
      verbose = true;
    else if (a == "-F" || a == "--fd") {
      std::string v = next();
      if (v == "0")
        out_fd = 0;
      else if (!stasis::cli::ParsePositive(v, &out_fd))
        Die("cr_checkpoint", "--fd needs a file descriptor number", 2);
    } else if (a == "-S" || a == "--signal") {
      long sig = 0;
      if (!stasis::cli::ParsePositive(next(), &sig) || sig >= NSIG)
        Die("cr_checkpoint", "--signal needs a signal number", 2);
      opt.after = stasis::core::AfterCheckpoint::kContinue;
      opt.after_signal = static_cast<int>(sig);
    } else if (a == "--abort") {
      opt.after = stasis::core::AfterCheckpoint::kContinue;
      opt.after_signal = SIGABRT;
    } else if (a == "--run") {
      opt.after = stasis::core::AfterCheckpoint::kContinue;
      opt.after_signal = 0;
    } else if (a == "--libcr-request")
      g_libcr_request = true;
    else if (a == "--requester") {
      long r = 0;
      if (!stasis::cli::ParsePositive(next(), &r)) Die("cr_checkpoint", "bad --requester", 2);
      opt.requester = static_cast<pid_t>(r);
    } else if (a == "--close-sockets")
      opt.outside_sockets = stasis::core::OutsideSockets::kCloseAll;
    else if (a == "--track")
      opt.track = true;
    else if (a == "--incremental")
      epoch_req.full_every = 8;
    else if (a.rfind("--incremental=", 0) == 0) {
      long n = 0;
      if (!stasis::cli::ParsePositive(a.substr(14), &n) || n < 2 || n > 1000)
        Die("cr_checkpoint", "--incremental=N: N is the number of epochs per full one, 2 to 1000",
            2);
      epoch_req.full_every = static_cast<uint32_t>(n);
    } else if (a == "--parent")
      parent_file = next();
    else if (a.rfind("--parent=", 0) == 0)
      parent_file = a.substr(9);
    else if (a == "--compress" || a.rfind("--compress=", 0) == 0) {
      std::string v = a == "--compress" ? next() : a.substr(11);
      if (stasis::Status s =
              stasis::format::ParseCompression(v, &opt.compress, &opt.compress_level);
          !s.ok())
        Die("cr_checkpoint", s.message(), 2);
    } else if (a == "--dir" || a == "-d")
      epoch_req.dir = next();
    else if (a.rfind("--dir=", 0) == 0)
      epoch_req.dir = a.substr(6);
    else if (a == "--keep") {
      long keep = 0;
      if (!stasis::cli::ParsePositive(next(), &keep))
        Die("cr_checkpoint", "--keep needs a positive number of epochs", 2);
      epoch_req.keep = static_cast<uint32_t>(keep);
      keep_given = true;
    } else if (a == "--bandwidth") {
      std::string v = next();
      if (!stasis::daemon::ParseBytes(v, &epoch_req.write.bandwidth))
        Die("cr_checkpoint",
            "--bandwidth needs bytes per second (like 200M, 0 = unlimited), got '" + v + "'", 2);
      bandwidth_given = true;
    } else if (a == "--write") {
      std::string v = next();
      if (v == "buffered")
        epoch_req.write.strategy = stasis::store::WriteStrategy::kBuffered;
      else if (v == "streaming")
        epoch_req.write.strategy = stasis::store::WriteStrategy::kStreaming;
      else if (v == "direct")
        epoch_req.write.strategy = stasis::store::WriteStrategy::kDirect;
      else
        Die("cr_checkpoint", "--write is buffered, streaming or direct, not '" + v + "'", 2);
    } else if (a == "--no-daemon")
      no_daemon = true;
    else if (a == "--socket")
      socket_option = next();
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n", kUsage);
      return 0;
    } else if (a[0] == '-')
      stasis::cli::Usage("cr_checkpoint", kUsage);
    else if (id.empty())
      id = a;
    else
      stasis::cli::Usage("cr_checkpoint", kUsage);
  }
  long target = 0;
  if (id.empty()) stasis::cli::Usage("cr_checkpoint", kUsage);
  if (!stasis::cli::ParsePositive(id, &target))
    Die("cr_checkpoint", "'" + id + "' is not a process id", 2);
  opt.target = static_cast<pid_t>(target);
  for (int i = 0; i < argc; ++i) opt.tool_argv.push_back(argv[i]);
  opt.callback_timeout_seconds = static_cast<double>(time_limit);

  if (time_limit > 0) {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = [](int) { g_timed_out = true; };
    ::sigaction(SIGALRM, &sa, nullptr);
    ::alarm(static_cast<unsigned>(time_limit));
  }
  auto failure_message = [&](const stasis::Status& s) {
    std::string msg = s.message();
    if (g_timed_out)
      msg = "checkpoint of " + id + " did not finish within " + std::to_string(time_limit) +
            " s; processes left running";
    return msg;
  };
  stasis::Result<stasis::core::CheckpointStats> stats = stasis::Status::Ok();
  if (!epoch_req.dir.empty() && (out_fd >= 0 || !file.empty()))
    Die("cr_checkpoint", "--dir writes an epoch; it does not go with -f or -F", 2);
  if (!epoch_req.dir.empty() && (!keep_given || !bandwidth_given)) {
    // The site's defaults: retention and bandwidth_limit of stasis.yaml(5).
    const char* path = std::getenv("STASIS_CONFIG");
    auto config = stasis::daemon::LoadConfig(
        path ? path : stasis::SiteConfigPath(STASIS_REL_BIN_TO_PREFIX), true);
    if (!config && config.error().code() != EACCES) Fail(config.error().message(), EINVAL);
    if (config && !keep_given) epoch_req.keep = config->retention;
    if (config && !bandwidth_given) epoch_req.write.bandwidth = config->bandwidth_limit;
  }
  // Where the context goes, as the context and libcr's callbacks name it.
  if (!epoch_req.dir.empty()) {
    // The destination is the epoch's node file (CheckpointToEpoch).
  } else if (out_fd >= 0) {
    if (::fcntl(static_cast<int>(out_fd), F_GETFL) < 0)
      Fail("--fd " + std::to_string(out_fd) + " is not an open file descriptor", EBADF);
    auto link = stasis::core::ReadLink("/proc/self/fd/" + std::to_string(out_fd));
    if (link && !link->empty() && (*link)[0] == '/') opt.dest = *link;
  } else {
    if (file.empty()) file = "context." + id;
    char cwd[4096];
    opt.dest = file[0] == '/' || !::getcwd(cwd, sizeof cwd) ? file : std::string(cwd) + "/" + file;
  }
  if (!parent_file.empty()) {
    // An incremental checkpoint: only what changed since PARENT is stored.
    if (!epoch_req.dir.empty())
      Die("cr_checkpoint",
          "--parent is for a context file (-f); --dir chooses the parent epoch itself", 2);
    auto image = stasis::core::ReadContextImage(parent_file);
    if (!image) Fail("--parent: " + image.error().message(), image.error().code());
    if (image->token == 0)
      Fail("--parent " + parent_file +
               ": that context was not taken with --track or --parent, so nothing "
               "tracked the changes since",
           EINVAL);
    std::string child = opt.dest.empty() ? std::string(".") + "/x" : opt.dest;
    auto ref = stasis::core::ParentReference(child, parent_file);
    if (!ref) Fail("--parent: " + ref.error().message(), ref.error().code());
    char* a = ::realpath(parent_file.c_str(), nullptr);
    char* b = opt.dest.empty() ? nullptr : ::realpath(opt.dest.c_str(), nullptr);
    const bool same = a && b && std::string(a) == b;
    ::free(a);
    ::free(b);
    if (same)
      Fail("--parent " + parent_file + " is the file being written: the new context needs it",
           EINVAL);
    opt.parent_token = image->token;
    opt.parent = *ref;
    opt.track = true;
  }
  if (epoch_req.full_every && epoch_req.dir.empty())
    Die("cr_checkpoint", "--incremental is for epochs (--dir); for a file use --track and --parent",
        2);
  // A single file's tracking: the embedded engine (stasisd takes it with
  // --dir, where the epoch chooses its parent).
  if (opt.track && epoch_req.dir.empty()) no_daemon = true;
  // The embedded engine honours --backend; stasisd uses its own
  // capture_backend setting: take the embedded path when one is asked for.
  if (backend_given) no_daemon = true;
  stasis::daemon::DaemonChoice daemon = stasis::daemon::ChooseDaemon(no_daemon, socket_option);
  if (!daemon.socket.empty() && !daemon.forced) {
    // The default socket is there: is stasisd behind it? If not (a stale
    // socket), the engine runs here, as without a daemon.
    if (!stasis::daemon::Client::Connect(daemon.socket)) daemon.socket.clear();
  }
  // A terminal sees the bytes written so far: counted by our sink, or seen
  // in the file stasisd's worker writes (its size; for -F the fd's offset,
  // which the worker's copy shares).
  stasis::cli::Progress::Probe done = [] { return std::optional<uint64_t>(g_written.load()); };
  if (!daemon.socket.empty()) {
    timespec since{};
    ::clock_gettime(CLOCK_REALTIME, &since);
    since.tv_sec -= 1;  // file times come from a coarser clock
    if (!epoch_req.dir.empty()) {
      done = [dir = epoch_req.dir, since] {
        return std::optional<uint64_t>(stasis::cli::LargestRecentFile(
            stasis::cli::EpochNodeCandidates(dir, stasis::store::EpochWriter::NodeFileName(0)),
            since));
      };
    } else if (out_fd >= 0) {
      const int fd = static_cast<int>(out_fd);
      const off_t from = ::lseek(fd, 0, SEEK_CUR);
      done = [fd, from]() -> std::optional<uint64_t> {
        off_t at = ::lseek(fd, 0, SEEK_CUR);
        if (from < 0 || at < from) return std::nullopt;  // a pipe: not seen
        return static_cast<uint64_t>(at - from);
      };
    } else {
      done = [dest = opt.dest, since] {
        return std::optional<uint64_t>(
            stasis::cli::LargestRecentFile(stasis::cli::ContextFileCandidates(dest), since));
      };
    }
  }
  stasis::cli::Progress progress("cr_checkpoint", done, !g_libcr_request);
  if (progress.active()) {
    // Of what: the engine's estimate when it runs here, else the tree's
    // resident memory.
    if (!daemon.socket.empty())
      progress.SetTotal(stasis::cli::TreeResidentBytes(opt.target), true);
    else
      opt.before_write = [&progress](uint64_t bytes) {
        progress.SetTotal(bytes, true);
        return stasis::Status::Ok();
      };
  }
  if (!epoch_req.dir.empty()) {
    // The folders and the MANIFEST are ours; stasisd, when it runs, does the
    // capture into the node file we create (a held checkpoint).
    epoch_req.daemon_socket = daemon.socket;
    epoch_req.time_limit_ms = static_cast<uint64_t>(time_limit) * 1000;
    stats = ToEpoch(opt, epoch_req, failure_message, &progress);
  } else if (!daemon.socket.empty()) {
    stats = ViaDaemon(daemon, opt, mode, time_limit, out_fd, opt.dest);
  } else if (out_fd >= 0) {
    // -F FD: written to an open file descriptor (no atomic replace).
    stasis::FdSink fd_sink(stasis::UniqueFd(::fcntl(static_cast<int>(out_fd), F_DUPFD_CLOEXEC, 3)),
                           "fd " + std::to_string(out_fd));
    DeadlineSink sink(&fd_sink);
    stats = stasis::core::Checkpoint(opt, &sink, stasis::core::SyncFdSink, &fd_sink);
    if (!stats) Fail(failure_message(stats.error()), stats.error().code());
  } else {
    auto writer = stasis::store::ContextFileWriter::Open(file, mode, epoch_req.write);
    if (!writer) Fail(writer.error().message(), writer.error().code());
    DeadlineSink sink((*writer)->sink());
    stats = stasis::core::Checkpoint(opt, &sink, stasis::store::CommitContextFile, writer->get());
    if (!stats) {
      writer->reset();  // removes the partial file
      Fail(failure_message(stats.error()), stats.error().code());
    }
  }
  progress.Stop();
  if (g_libcr_request) stasis::core::ReportRequestResult(4, 0, "");
  if (verbose && !g_epoch_note.empty())
    std::fprintf(stderr, "cr_checkpoint: %s\n", g_epoch_note.c_str());
  if (verbose) {
    std::fprintf(
        stderr,
        "cr_checkpoint: %s: %u processes, %u threads, %.1f MiB memory, %.1f MiB file, "
        "%llu zero pages skipped, callbacks %.3f s, paused %.3f s%s\n",
        opt.dest.c_str(), stats->processes, stats->threads, stats->page_bytes / 1048576.0,
        stats->bytes / 1048576.0, static_cast<unsigned long long>(stats->zero_pages_skipped),
        stats->callbacks_seconds, stats->pause_seconds,
        stats->snapshot                ? " (pages written from a snapshot)"
        : stats->snapshot_note.empty() ? ""
                                       : (" (no snapshot: " + stats->snapshot_note + ")").c_str());
    if (stats->incremental)
      std::fprintf(stderr,
                   "cr_checkpoint: incremental: %u processes, %.1f MiB unchanged left to %s\n",
                   stats->incremental_processes, stats->parent_page_bytes / 1048576.0,
                   opt.parent.empty() ? "the previous epoch" : opt.parent.c_str());
    if (!stats->track_note.empty())
      std::fprintf(stderr, "cr_checkpoint: %s\n", stats->track_note.c_str());
  }
  return 0;
}

// cr_restart: restore a process tree from a context file (BLCR's
// cr_restart). cr_restart stays the parent of the restored tree's root and
// exits with its exit status (128+N if it was killed by signal N); signals
// sent to cr_restart are passed on to the restored root. With stasisd
// running, the restore is done by one of its workers (exact pids without
// root, the tree never more privileged than the file's owner); cr_restart
// hands it its stdin/stdout/stderr, waits the same way and exits the same
// way.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <string>

#include "engine/agent/agent_abi.h"
#include "engine/agent/stasis_agent.h"
#include "engine/cli/cli_common.h"
#include "engine/cli/progress.h"
#include "engine/core/context_file.h"
#include "engine/core/engine.h"
#include "engine/core/lazy_pages.h"
#include "engine/daemon/client.h"
#include "engine/daemon/config.h"
#include "engine/store/store.h"

namespace {

const char* kUsage =
    "cr_restart [--no-restore-pid] [--lazy] [--stop|--kill|--term|--cont] [--relocate OLD=NEW]... "
    "[--stdin FILE] [--stdout FILE] [--stderr FILE] "
    "[--omit-maybe|--omit-always|--omit-never] [--no-daemon|--socket PATH] [--node N] [-v] "
    "[-f] FILE|EPOCHDIR|JOBDIR";

volatile sig_atomic_t g_root = 0;

void Forward(int sig) {
  if (g_root > 0) ::kill(g_root, sig);
}

void ForwardSignals() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = Forward;
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM})
    ::sigaction(sig, &sa, nullptr);
}

int ExitCodeOf(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

// The restore done by stasisd's worker; we wait for its "exited" reply.
[[noreturn]] void ViaDaemon(const std::string& socket, const stasis::core::RestoreOptions& opt,
                            std::optional<uint32_t> node, bool store, bool verbose) {
  namespace proto = stasis::format::proto;
  using stasis::cli::Die;
  proto::Request req;
  req.op = proto::Op::kRestart;
  req.path = opt.source_path;
  req.after = static_cast<uint32_t>(opt.after);
  req.flags = opt.restore_pids ? 0 : proto::kFlagNoRestorePid;
  if (node) {
    req.flags |= proto::kFlagNode;
    req.node = *node;
  }
  for (const auto& [from, to] : opt.relocate) req.relocate.push_back(from + "=" + to);
  req.attached = proto::kAttachStdio;
  auto client = stasis::daemon::Client::Connect(socket);
  if (!client) Die("cr_restart", client.error().message());
  stasis::Status sent = (*client)->Send(req, {opt.stdin_fd, opt.stdout_fd, opt.stderr_fd});
  if (!sent.ok()) Die("cr_restart", sent.message());
  ForwardSignals();
  for (;;) {
    auto reply = (*client)->Receive();
    if (!reply && reply.error().code() == EINTR) continue;
    if (!reply) {
      if (g_root > 0)
        Die("cr_restart", "lost stasisd's worker while waiting for pid " + std::to_string(g_root) +
                              " (it keeps running)");
      Die("cr_restart", reply.error().message());
    }
    if (reply->kind == proto::kReplyQueued) continue;
    if (reply->code != 0) Die("cr_restart", reply->message);
    if (reply->kind == proto::kReplyStarted) {
      g_root = static_cast<pid_t>(reply->root_pid);
      if (store) {  // which epoch stasisd chose, and why
        for (size_t i = 0; i < reply->message.size();) {
          size_t nl = reply->message.find('\n', i);
          if (nl == std::string::npos) nl = reply->message.size();
          std::fprintf(stderr, "cr_restart: %s\n", reply->message.substr(i, nl - i).c_str());
          i = nl + 1;
        }
      }
      if (verbose)
        std::fprintf(
            stderr, "cr_restart: stasisd restored %u processes, %u threads, %.1f MiB in %.3f s%s\n",
            reply->processes, reply->threads, reply->page_bytes / 1048576.0, reply->total_us / 1e6,
            reply->new_pid_namespace ? " (pids taken here: in a new pid namespace)" : "");
      continue;
    }
    if (reply->kind == proto::kReplyExited) std::exit(ExitCodeOf(reply->exit_status));
  }
}

// The progress line (on a terminal only) of a restore done here: bytes of
// the context read so far, of the file's size; erased before the restored
// tree runs (it may write to the same terminal).
std::optional<uint64_t> ReadSoFar(const std::atomic<uint64_t>* read) { return read->load(); }

void WatchRestore(stasis::cli::Progress* progress, const std::string& file,
                  stasis::core::RestoreOptions* opt) {
  struct stat st;
  if (progress->active() && ::stat(file.c_str(), &st) == 0)
    progress->SetTotal(static_cast<uint64_t>(st.st_size), false);
  opt->before_release = [progress, theirs = opt->before_release] {
    progress->Stop();
    if (theirs) theirs();
  };
}

// Marked before the restore, so no checkpoint of the job can catch us
// unmarked; the restored processes inherit neither the fd nor the mapping.
void MarkOmit(unsigned omit) {
  static bool done = false;
  if (done || !omit) return;
  if (stasis_agent_set_omit(omit) != 0)
    stasis::cli::Die("cr_restart", std::string("cannot set up --omit: ") + std::strerror(errno));
  done = true;
}

int RestoreAndWait(std::unique_ptr<stasis::ByteSource> source, const std::string& file,
                   stasis::core::RestoreOptions opt, unsigned omit, bool verbose);
int WaitForRestored(stasis::Result<stasis::core::RestoreResult> result,
                    std::unique_ptr<stasis::ByteSource> source, const std::string& file,
                    bool verbose, stasis::core::LazyPages* lazy = nullptr);

// A job folder or an epoch folder of the checkpoint store: restored here,
// as the caller, with the manifest's checks (the node file's identity,
// size and CRC32C; nothing runs before they pass). From a job folder, an
// epoch found damaged while restoring is reported and the next older
// complete one is tried.
int RestoreFromStore(const std::string& path, std::optional<uint32_t> node,
                     const stasis::core::RestoreOptions& base, unsigned omit, bool verbose) {
  stasis::Result<stasis::core::RestoreResult> result = stasis::Status::Error(EIO, "not restored");
  std::string file;
  std::atomic<uint64_t> read{0};
  stasis::cli::Progress progress("cr_restart", [&read] { return ReadSoFar(&read); });
  stasis::Status s = stasis::store::RestoreFromFolder(
      stasis::store::DefaultEnv(), path, node, stasis::store::Access::Caller(),
      [&progress](const std::string& note) { progress.Note(note); },
      [&](stasis::store::PreparedRestart& prep) -> stasis::Status {
        stasis::core::RestoreOptions opt = base;
        opt.check_image = prep.check_image;
        opt.before_run = prep.before_run;
        opt.source_path = file = prep.path;
        MarkOmit(omit);
        read = 0;  // an older epoch after a damaged one: from its start
        WatchRestore(&progress, prep.path, &opt);
        stasis::cli::CountingSource counted(prep.source.get(), &read);
        result = stasis::core::Restore(&counted, opt);
        return result ? stasis::Status::Ok() : result.error().Prefixed(prep.path);
      });
  progress.Stop();
  if (!s.ok()) stasis::cli::Die("cr_restart", s.message());
  return WaitForRestored(std::move(result), nullptr, file, verbose);
}

}  // namespace

int main(int argc, char** argv) {
  using stasis::cli::Die;
  stasis::core::RestoreOptions opt;
  stasis::daemon::KnobsFromEnvironment(&opt);
  std::string file;
  bool verbose = false;
  // BLCR's --omit-*: is this cr_restart part of later checkpoints of the
  // job it restored? maybe (default): only when a request names it (its pid
  // or the tree it roots); always: never saved; never: saved like any other
  // process of the tree.
  unsigned omit = STASIS_AGENT_F_OMIT_UNLESS_TARGET;
  bool no_daemon = false;
  bool lazy = false;
  std::string socket_option;
  std::optional<uint32_t> node;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) stasis::cli::Usage("cr_restart", kUsage);
      return argv[++i];
    };
    if (a == "-f" || a == "--file")
      file = next();
    else if (a == "--no-restore-pid")
      opt.restore_pids = false;
    else if (a == "--restore-pid")
      opt.restore_pids = true;
    else if (a == "--stop")
      opt.after = stasis::core::AfterRestore::kStop;
    else if (a == "--kill")
      opt.after = stasis::core::AfterRestore::kKill;
    else if (a == "--term")
      opt.after = stasis::core::AfterRestore::kTerm;
    else if (a == "--cont" || a == "--run")
      opt.after = stasis::core::AfterRestore::kRun;
    else if (a == "--relocate" || a.rfind("--relocate=", 0) == 0) {
      std::string spec = a == "--relocate" ? next() : a.substr(11);
      size_t eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
        Die("cr_restart", "--relocate needs OLD=NEW, got '" + spec + "'", 2);
      opt.relocate.emplace_back(spec.substr(0, eq), spec.substr(eq + 1));
    } else if (a == "--omit-maybe")
      omit = STASIS_AGENT_F_OMIT_UNLESS_TARGET;
    else if (a == "--omit-always")
      omit = STASIS_AGENT_F_OMIT;
    else if (a == "--omit-never")
      omit = 0;
    else if (a == "-v" || a == "--verbose")
      verbose = true;
    else if (a == "--node") {
      std::string v = next();
      long n = 0;
      if (v != "0" && !stasis::cli::ParsePositive(v, &n))
        Die("cr_restart", "--node needs a node index", 2);
      node = static_cast<uint32_t>(n);
    } else if (a == "--no-daemon")
      no_daemon = true;
    else if (a == "--lazy")
      lazy = true;
    else if (a == "--stdin" || a == "--stdout" || a == "--stderr") {
      // Where descriptors that led outside the checkpoint (pipes to
      // processes not saved, the old stdio) are reattached, instead of our
      // own stdin/stdout/stderr.
      std::string path = next();
      int flags = a == "--stdin" ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND;
      int fd = ::open(path.c_str(), flags | O_CLOEXEC | O_NOCTTY, 0600);
      if (fd < 0) Die("cr_restart", a + " " + path + ": " + std::strerror(errno), 2);
      (a == "--stdin" ? opt.stdin_fd : a == "--stdout" ? opt.stdout_fd : opt.stderr_fd) = fd;
    } else if (a == "--socket")
      socket_option = next();
    else if (a == "-h" || a == "--help") {
      std::printf("usage: %s\n", kUsage);
      return 0;
    } else if (a[0] == '-')
      stasis::cli::Usage("cr_restart", kUsage);
    else if (file.empty())
      file = a;
    else
      stasis::cli::Usage("cr_restart", kUsage);
  }
  if (file.empty()) stasis::cli::Usage("cr_restart", kUsage);
  struct stat st;
  const bool store = ::stat(file.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  if (lazy) {
    // Here, not through stasisd: this process serves the pages afterwards.
    if (store)
      Die("cr_restart",
          "--lazy restarts a context file, not a store folder (whose MANIFEST "
          "checksum covers the whole file before anything runs)",
          2);
    auto fd = stasis::OpenRegularNoFollow(AT_FDCWD, file, file);
    auto fd2 = stasis::OpenRegularNoFollow(AT_FDCWD, file, file);
    if (!fd) Die("cr_restart", fd.error().message());
    if (!fd2) Die("cr_restart", fd2.error().message());
    struct stat fst;
    if (::fstat(fd->get(), &fst) == 0 && ::geteuid() != 0 && fst.st_uid != ::geteuid())
      Die("cr_restart",
          file + " belongs to uid " + std::to_string(fst.st_uid) + ", not to you; refusing it");
    opt.lazy = std::make_shared<stasis::core::LazyPages>(std::move(*fd2), file);
    // A small buffer: the reader skips most of the file, reading only the
    // metadata between page data (a big read-ahead would read it all).
    return RestoreAndWait(
        std::unique_ptr<stasis::ByteSource>(new stasis::FdSource(std::move(*fd), file, 64 << 10)),
        file, opt, omit, verbose);
  }
  stasis::daemon::DaemonChoice daemon = stasis::daemon::ChooseDaemon(no_daemon, socket_option);
  if (!daemon.socket.empty() && !daemon.forced && !stasis::daemon::Client::Connect(daemon.socket))
    daemon.socket.clear();  // a stale socket: restore here
  if (!daemon.socket.empty()) {
    char cwd[4096];
    opt.source_path =
        file[0] == '/' || !::getcwd(cwd, sizeof cwd) ? file : std::string(cwd) + "/" + file;
    ViaDaemon(daemon.socket, opt, node, store, verbose);
  }
  if (store) return RestoreFromStore(file, node, opt, omit, verbose);
  auto source = stasis::core::OpenContextForRead(file);
  if (!source) Die("cr_restart", source.error().message());
  return RestoreAndWait(std::move(*source), file, opt, omit, verbose);
}

namespace {

int RestoreAndWait(std::unique_ptr<stasis::ByteSource> source, const std::string& file,
                   stasis::core::RestoreOptions opt, unsigned omit, bool verbose) {
  using stasis::cli::Die;
  char cwd[4096];
  opt.source_path =
      file[0] == '/' || !::getcwd(cwd, sizeof cwd) ? file : std::string(cwd) + "/" + file;
  MarkOmit(omit);
  std::atomic<uint64_t> read{0};
  stasis::cli::Progress progress("cr_restart", [&read] { return ReadSoFar(&read); });
  WatchRestore(&progress, file, &opt);
  stasis::cli::CountingSource counted(source.get(), &read);
  auto result = stasis::core::Restore(&counted, opt);
  progress.Stop();
  return WaitForRestored(std::move(result), std::move(source), file, verbose, opt.lazy.get());
}

int WaitForRestored(stasis::Result<stasis::core::RestoreResult> result,
                    std::unique_ptr<stasis::ByteSource> source, const std::string& file,
                    bool verbose, stasis::core::LazyPages* lazy) {
  using stasis::cli::Die;
  if (!result) Die("cr_restart", file + ": " + result.error().message());
  source.reset();  // nothing of the context stays open while we wait
  g_root = result->root_pid;
  if (verbose)
    std::fprintf(stderr, "cr_restart: restored %u processes, %u threads, %.1f MiB in %.3f s%s\n",
                 result->processes, result->threads, result->page_bytes / 1048576.0,
                 result->seconds,
                 result->in_new_pid_namespace ? " (pids taken here: in a new pid namespace)" : "");
  if (verbose && lazy && result->lazy_bytes) {
    std::fprintf(stderr, "cr_restart: running; %.1f MiB of pages follow lazily\n",
                 result->lazy_bytes / 1048576.0);
    const double restore_s = result->seconds;
    const auto since = std::chrono::steady_clock::now();
    lazy->OnDone([lazy, restore_s, since](const stasis::Status& s) {
      double t = restore_s +
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
      if (s.ok())
        std::fprintf(stderr,
                     "cr_restart: all pages resident %.3f s after the restore began "
                     "(%llu faults served, %.1f MiB streamed)\n",
                     t, static_cast<unsigned long long>(lazy->faults_served()),
                     lazy->bytes_streamed() / 1048576.0);
    });
  }
  ForwardSignals();
  int status = 0;
  for (;;) {
    pid_t r = ::waitpid(result->wait_pid, &status, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) Die("cr_restart", std::string("wait for restored process: ") + std::strerror(errno));
    break;
  }
  // The lazy server kills the tree when the page data fails its checksum;
  // a tree that ended before every page was in is still checked to the end.
  if (lazy && result->lazy_bytes) {
    stasis::Status s = lazy->Wait();
    if (!s.ok()) Die("cr_restart", s.message());
  }
  return ExitCodeOf(status);
}

}  // namespace

// stasis: inspect context files and talk to stasisd. `stasis show FILE`
// prints what a context holds; `stasis verify FILE|EPOCHDIR|JOBDIR` checks
// every checksum and cross-reference, then whether the context could be
// restarted faithfully (restartable.h: files it needs gone or changed,
// connections saved as closed), exit 1 if not; `stasis status|ping|cancel
// ID|list DIR|delete FILE` ask the node's stasisd.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "engine/cli/cli_common.h"
#include "engine/cli/progress.h"
#include "engine/cli/restartable.h"
#include "engine/core/context_file.h"
#include "engine/daemon/client.h"
#include "engine/format/context_io.h"
#include "engine/format/kind_names.h"
#include "engine/format/tcp_state.h"
#include "engine/store/store.h"

namespace {

using namespace stasis;

const char* kUsage =
    "stasis ls ROOT|JOBDIR | show FILE|EPOCHDIR | verify FILE|EPOCHDIR|JOBDIR | "
    "prune [--keep N] JOBDIR | [--socket PATH] status [ID] | ping | cancel ID | list DIR | delete "
    "FILE";

std::string Cmdline(const std::string& raw) {
  std::string out = raw;
  while (!out.empty() && out.back() == '\0') out.pop_back();
  for (char& c : out)
    if (c == '\0') c = ' ';
  return out;
}

void Show(const std::string& file, const format::Context& ctx) {
  const auto& im = ctx.image;
  time_t t = static_cast<time_t>(im.created_unix_ns / 1000000000ull);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
  std::printf("%s: stasis context v%u, %.1f MiB\n", file.c_str(), format::kFormatVersion,
              ctx.file_bytes / 1048576.0);
  std::printf("  written %s on %s (kernel %s) by uid %u, stasis %s\n", when, im.hostname.c_str(),
              im.kernel_release.c_str(), im.checkpoint_uid, im.stasis_version.c_str());
  if (!im.parent.empty())
    std::printf("  incremental: unchanged pages are in its parent %s (token %016llx)\n",
                im.parent.c_str(), static_cast<unsigned long long>(im.parent_token));
  if (im.token)
    std::printf("  tracking writes since this capture (token %016llx)\n",
                static_cast<unsigned long long>(im.token));
  for (size_t i = 0; i < ctx.shared.size(); ++i) {
    const format::SharedMemory& shm = ctx.shared[i];
    uint64_t saved = 0;
    for (const auto& r : ctx.shared_runs[i]) saved += r.npages * format::kPageSize;
    std::printf("  shared memory %llx %s%s%s, %.1f KiB (%.1f KiB saved)\n",
                static_cast<unsigned long long>(shm.id), format::SharedMemoryKindName(shm.kind),
                shm.name.empty() ? "" : " ", shm.name.c_str(), shm.size / 1024.0, saved / 1024.0);
  }
  std::printf("  %zu process(es), root pid %u\n", ctx.processes.size(), im.root_pid);
  for (size_t i = 0; i < ctx.processes.size(); ++i) {
    const auto& p = ctx.processes[i];
    const format::ProcessEntry* e = nullptr;
    for (const auto& te : ctx.tree.processes)
      if (te.pid == p.info.pid) e = &te;
    std::printf("  process %u (%s) ppid %u pgid %u sid %u%s: %s\n", p.info.pid, p.info.comm.c_str(),
                e ? e->ppid : 0, e ? e->pgid : 0, e ? e->sid : 0,
                e && (e->flags & format::kProcStopped) ? " [stopped]" : "",
                Cmdline(p.info.cmdline).c_str());
    std::printf("    exe %s, cwd %s, uid %u gid %u\n", p.info.exe_path.c_str(), p.info.cwd.c_str(),
                p.info.creds.ruid, p.info.creds.rgid);
    std::printf("    %zu thread(s):", p.threads.size());
    for (const auto& t : p.threads) std::printf(" %u(%s)", t.tid, t.comm.c_str());
    std::string codecs;
    if (p.page_codecs & (1u << format::kCodecLz4)) codecs += " lz4";
    if (p.page_codecs & (1u << format::kCodecZstd)) codecs += " zstd";
    uint64_t parent_bytes = 0;
    for (const auto& r : p.parent_runs) parent_bytes += r.npages * format::kPageSize;
    std::printf("\n    %zu mapping(s), %.1f MiB saved in %zu run(s)%s%s", p.mappings.size(),
                p.page_bytes / 1048576.0, p.page_runs.size(),
                codecs.empty() ? "" : ", compressed:", codecs.c_str());
    if (!p.parent_runs.empty())
      std::printf(", %.1f MiB in the parent (%zu run(s))", parent_bytes / 1048576.0,
                  p.parent_runs.size());
    std::printf(":\n");
    for (const auto& m : p.mappings) {
      std::printf("      %012llx-%012llx %c%c%c%c %-6s %s\n",
                  static_cast<unsigned long long>(m.start), static_cast<unsigned long long>(m.end),
                  (m.prot & PROT_READ) ? 'r' : '-', (m.prot & PROT_WRITE) ? 'w' : '-',
                  (m.prot & PROT_EXEC) ? 'x' : '-', (m.flags & format::kMapShared) ? 's' : 'p',
                  format::MappingKindName(m.kind),
                  m.path.empty() ? ((m.flags & format::kMapHeap)    ? "[heap]"
                                    : (m.flags & format::kMapStack) ? "[stack]"
                                                                    : "")
                                 : m.path.c_str());
    }
    std::printf("    %zu fd(s):\n", p.files.size());
    for (const auto& f : p.files) {
      const bool socket = f.kind == format::kFileUnixSocket;
      std::printf("      %3d %-7s %s%s%s pos %llu%s%s\n", f.fd, format::FileKindName(f.kind),
                  f.path.c_str(), socket ? " " : "",
                  socket ? format::SocketStateName(f.sock_state) : "",
                  static_cast<unsigned long long>(f.pos),
                  (f.fd_flags & format::kFdCloexec) ? " cloexec" : "",
                  !(f.fd_flags & format::kFdOutside)  ? ""
                  : f.kind != format::kFileUnixSocket ? " (outside: reattached to stdio)"
                  : f.outside_state == format::kOutsideConnected
                      ? " (a connection led outside: restored closed, its peer lost)"
                      : " (led outside: restored closed)");
      if (f.kind == format::kFileTcpSocket) {
        auto t = format::DecodeTcpState(f.tcp);
        if (!t) {
          std::printf("          tcp: %s\n", t.error().message().c_str());
          continue;
        }
        std::printf("          tcp state %u%s sendq %zu (unsent %u) recvq %zu seq %u/%u%s\n",
                    t->state, t->peer_place == format::kTcpPeerHere ? " peer-here" : "",
                    t->send_queue.size(), t->unsent, t->recv_queue.size(), t->send_seq, t->recv_seq,
                    t->state == format::kSockListen
                        ? (" backlog " + std::to_string(t->backlog)).c_str()
                        : "");
      }
    }
  }
}

std::string Absolute(const std::string& path) {
  if (!path.empty() && path[0] == '/') return path;
  char cwd[4096];
  if (!::getcwd(cwd, sizeof cwd)) cli::Die("stasis", "cannot read the current folder");
  return std::string(cwd) + "/" + path;
}

// The daemon subcommands: one request, one reply, printed.
int Daemon(const std::string& socket_option, const std::string& cmd,
           const std::vector<std::string>& args) {
  namespace proto = format::proto;
  daemon::DaemonChoice choice = daemon::ChooseDaemon(false, socket_option);
  if (choice.socket.empty())
    cli::Die("stasis", std::string("stasisd is not running (no socket at ") +
                           daemon::kDefaultSocket + "; set STASIS_SOCKET or --socket)");
  proto::Request req;
  auto id_arg = [&](size_t i) -> uint64_t {
    long v = 0;
    if (args.size() <= i || !cli::ParsePositive(args[i], &v))
      cli::Die("stasis", cmd + " needs a request id", 2);
    return static_cast<uint64_t>(v);
  };
  if (cmd == "ping")
    req.op = proto::Op::kPing;
  else if (cmd == "status") {
    req.op = proto::Op::kStatus;
    if (!args.empty()) req.request_id = id_arg(0);
  } else if (cmd == "cancel") {
    req.op = proto::Op::kCancel;
    req.request_id = id_arg(0);
  } else if (cmd == "list" || cmd == "delete") {
    if (args.size() != 1) cli::Usage("stasis", kUsage);
    req.op = cmd == "list" ? proto::Op::kList : proto::Op::kDelete;
    req.path = Absolute(args[0]);
  } else {
    cli::Usage("stasis", kUsage);
  }
  auto reply = daemon::Call(choice.socket, req);
  if (!reply) cli::Die("stasis", reply.error().message(), reply.error().code() == EPERM ? 1 : 1);
  if (cmd == "ping") {
    std::printf("%s\n", reply->server.c_str());
  } else if (cmd == "status") {
    std::printf("stasisd: %s\n", reply->message.c_str());
    if (!reply->requests.empty())
      std::printf("%6s %-10s %-8s %6s %8s %9s  %s\n", "ID", "OP", "STATE", "UID", "TARGET",
                  "SECONDS", "PATH / RESULT");
    for (const auto& r : reply->requests) {
      std::string result = r.path;
      if (r.state == proto::kStateDone)
        result += std::string(result.empty() ? "" : ": ") + (r.code == 0 ? "ok" : r.message);
      std::printf("%6llu %-10s %-8s %6u %8u %9.3f  %s\n", static_cast<unsigned long long>(r.id),
                  proto::OpName(static_cast<proto::Op>(r.op)), proto::StateName(r.state), r.uid,
                  r.target, r.elapsed_ms / 1000.0, result.c_str());
    }
  } else if (cmd == "list") {
    for (const auto& f : reply->files) {
      time_t t = static_cast<time_t>(f.mtime_ns / 1000000000);
      char when[64];
      std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&t));
      std::printf("%s  %10.1f MiB  uid %u  %s\n", when, f.size / 1048576.0, f.uid, f.path.c_str());
    }
  } else {
    std::printf("%s\n", reply->message.c_str());
  }
  return 0;
}

// --- the checkpoint store: ls, verify, prune, show of an epoch ------------------

std::string When(int64_t unix_seconds) {
  char b[64] = "-";
  time_t t = static_cast<time_t>(unix_seconds);
  struct tm tm;
  if (unix_seconds > 0 && ::localtime_r(&t, &tm))
    std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S", &tm);
  return b;
}

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The job folders `path` names (itself, or the caller's job folders under a
// root), or dies naming what could not be read.
std::vector<std::string> JobFolders(const std::string& path) {
  auto jobs = store::FindJobFolders(path, store::Access::Caller());
  if (!jobs) cli::Die("stasis", jobs.error().message());
  return *jobs;
}

int List(const std::string& path) {
  if (!IsDir(path)) cli::Die("stasis", path + " is not a folder");
  auto jobs = JobFolders(path);
  if (jobs.empty()) {
    std::printf("no checkpoints under %s\n", path.c_str());
    return 0;
  }
  std::printf("%-12s %6s  %-10s  %-19s  %5s  %5s  %10s  %s\n", "JOB", "EPOCH", "STATE", "TIME",
              "NODES", "TASKS", "SIZE", "PATH");
  int rc = 0;
  for (const auto& j : jobs) {
    auto job = store::JobFolder::Open(store::DefaultEnv(), j, false, store::Access::Caller());
    if (!job) {
      std::fprintf(stderr, "stasis: %s\n", job.error().message().c_str());
      rc = 1;
      continue;
    }
    auto epochs = job->List();
    if (!epochs) {
      std::fprintf(stderr, "stasis: %s\n", epochs.error().message().c_str());
      rc = 1;
      continue;
    }
    for (const auto& e : *epochs) {
      std::string nodes = "-", tasks = "-";
      if (e.have_manifest) {
        size_t t = 0;
        for (const auto& n : e.manifest.nodes) t += n.tasks.size();
        nodes = std::to_string(e.manifest.nodes.size());
        tasks = std::to_string(t);
      }
      // Incremental epochs say which epoch their node files need (node 0's
      // parent; every node of an epoch chooses the same one unless a node
      // had to write full).
      std::string note = e.problem;
      if (e.have_manifest && !e.manifest.files.empty() && e.state == store::EpochState::kComplete) {
        auto image = store::ReadNodeImage(*job, e.epoch, e.manifest.files[0].name);
        if (image && store::ParentEpochOf(image->parent))
          note = (e.manifest.step.empty() ? std::string() : "step " + e.manifest.step + ", ") +
                 "incremental: needs epoch " + std::to_string(store::ParentEpochOf(image->parent));
      }
      std::printf("%-12s %6llu  %-10s  %-19s  %5s  %5s  %10s  %s%s%s\n", job->job().c_str(),
                  static_cast<unsigned long long>(e.epoch), store::EpochStateName(e.state),
                  When(e.time_unix).c_str(), nodes.c_str(), tasks.c_str(),
                  stasis::cli::SizeText(e.bytes).c_str(), e.path.c_str(),
                  note.empty() ? "" : "  # ", note.c_str());
    }
  }
  return rc;
}

// An epoch folder's job folder and number, or false (a job folder).
bool SplitEpochPath(const std::string& path, std::string* job, uint64_t* epoch) {
  {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd || !store::IsEpochFolder(fd.get())) return false;
  }
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  std::string name = slash == std::string::npos ? p : p.substr(slash + 1);
  long v = 0;
  if (!cli::ParsePositive(name, &v) || name[0] == '0') return false;
  *job = slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
  *epoch = static_cast<uint64_t>(v);
  return true;
}

std::string ThisHost() {
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  return host;
}

// Prints what would stop a faithful restart of `ctx` (each line after
// `prefix`) and returns how many problems there are.
size_t PrintRestartProblems(const std::string& prefix, const format::Context& ctx) {
  cli::RestartCheck check = cli::CheckRestartable(ctx);
  for (const auto& n : check.notes) std::printf("%snote: %s\n", prefix.c_str(), n.c_str());
  for (const auto& p : check.problems) std::printf("%s%s\n", prefix.c_str(), p.c_str());
  return check.problems.size();
}

// The contexts of an epoch, read whole (metadata; pages checked and
// dropped): what would stop a faithful restart. Returns the number of
// problems, printing each.
size_t EpochRestartProblems(const store::EpochInfo& e) {
  size_t problems = 0;
  for (const auto& n : e.manifest.nodes) {
    const std::string file = e.path + "/" + n.file;
    auto source = core::OpenContextForRead(file);
    if (!source) cli::Die("stasis", source.error().message());
    auto ctx = format::ReadContext(source->get(), false);
    if (!ctx) cli::Die("stasis", file + ": " + ctx.error().message());
    problems += PrintRestartProblems(
        e.path + ": node " + std::to_string(n.index) + " (" + n.host + "): ", *ctx);
  }
  return problems;
}

int VerifyFolder(const std::string& path) {
  std::string job_path;
  uint64_t only = 0;
  if (!SplitEpochPath(path, &job_path, &only)) job_path = path;
  auto job = store::JobFolder::Open(store::DefaultEnv(), job_path, false, store::Access::Caller());
  if (!job) cli::Die("stasis", job.error().message());
  std::vector<store::EpochInfo> epochs;
  if (only) {
    auto e = job->Inspect(only);
    if (!e) cli::Die("stasis", e.error().message());
    epochs.push_back(std::move(*e));
  } else {
    auto all = job->List();
    if (!all) cli::Die("stasis", all.error().message());
    epochs = std::move(*all);
  }
  int rc = 0;
  for (const auto& e : epochs) {
    if (e.state == store::EpochState::kIncomplete) {
      std::printf("%s: incomplete: %s\n", e.path.c_str(), e.problem.c_str());
      if (only) rc = 1;
      continue;
    }
    if (e.state == store::EpochState::kCorrupt) {
      std::printf("%s: CORRUPT: %s\n", e.path.c_str(), e.problem.c_str());
      rc = 1;
      continue;
    }
    auto problems = store::VerifyEpoch(*job, e);
    if (!problems) cli::Die("stasis", problems.error().message());
    if (problems->empty()) {
      // Intact; now whether it could be restarted from here as it is.
      const size_t unrestorable = EpochRestartProblems(e);
      if (unrestorable == 0) {
        std::printf(
            "%s: ok (%zu nodes, %s, every checksum verified; every file it needs is here and "
            "unchanged, as %s sees them)\n",
            e.path.c_str(), e.manifest.nodes.size(), stasis::cli::SizeText(e.bytes).c_str(),
            ThisHost().c_str());
      } else {
        std::printf(
            "%s: intact (every checksum verified), but it cannot be restarted faithfully: %zu "
            "problem(s) above (files as %s sees them)\n",
            e.path.c_str(), unrestorable, ThisHost().c_str());
        rc = 1;
      }
    } else {
      for (const auto& p : *problems) std::printf("%s: CORRUPT: %s\n", e.path.c_str(), p.c_str());
      rc = 1;
    }
  }
  return rc;
}

int Prune(const std::vector<std::string>& args) {
  long keep = 2;
  std::string path;
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--keep" && i + 1 < args.size()) {
      if (!cli::ParsePositive(args[++i], &keep))
        cli::Die("stasis", "--keep needs a positive number", 2);
    } else if (args[i].rfind("--keep=", 0) == 0) {
      if (!cli::ParsePositive(args[i].substr(7), &keep))
        cli::Die("stasis", "--keep needs a positive number", 2);
    } else if (path.empty() && args[i][0] != '-') {
      path = args[i];
    } else {
      cli::Usage("stasis", kUsage);
    }
  }
  if (path.empty()) cli::Usage("stasis", kUsage);
  if (!IsDir(path)) cli::Die("stasis", path + " is not a folder");
  int rc = 0;
  for (const auto& j : JobFolders(path)) {
    auto job = store::JobFolder::Open(store::DefaultEnv(), j, false, store::Access::Caller());
    if (!job) {
      std::fprintf(stderr, "stasis: %s\n", job.error().message().c_str());
      rc = 1;
      continue;
    }
    auto removed = store::Prune(&*job, static_cast<uint32_t>(keep));
    if (!removed) {
      std::fprintf(stderr, "stasis: %s\n", removed.error().message().c_str());
      rc = 1;
      continue;
    }
    for (uint64_t e : *removed)
      std::printf("removed %s/%llu\n", job->path().c_str(), static_cast<unsigned long long>(e));
  }
  return rc;
}

int ShowEpoch(const std::string& path) {
  std::string job_path;
  uint64_t epoch = 0;
  if (!SplitEpochPath(path, &job_path, &epoch))
    cli::Die("stasis", path + " is not an epoch folder (<job>/<number>)");
  auto job = store::JobFolder::Open(store::DefaultEnv(), job_path, false, store::Access::Caller());
  if (!job) cli::Die("stasis", job.error().message());
  auto e = job->Inspect(epoch);
  if (!e) cli::Die("stasis", e.error().message());
  std::printf("epoch %llu of job %s: %s%s%s\n", static_cast<unsigned long long>(epoch),
              job->job().c_str(), store::EpochStateName(e->state), e->problem.empty() ? "" : ": ",
              e->problem.c_str());
  if (!e->have_manifest) return e->state == store::EpochState::kComplete ? 0 : 1;
  const auto& m = e->manifest;
  std::printf("  taken %s by uid %u, stasis %s, context format %u, step '%s'\n",
              When(e->time_unix).c_str(), m.uid, m.stasis_version.c_str(), m.format_version,
              m.step.c_str());
  for (size_t i = 0; i < m.nodes.size(); ++i) {
    const auto& n = m.nodes[i];
    std::string tasks;
    for (uint32_t t : n.tasks) tasks += (tasks.empty() ? "" : ",") + std::to_string(t);
    std::string cmd;
    for (const auto& a : n.argv) cmd += (cmd.empty() ? "" : " ") + a;
    std::printf("  node %u on %s: tasks %s, %s (%s, crc32c %08x): %s\n", n.index, n.host.c_str(),
                tasks.c_str(), n.file.c_str(), stasis::cli::SizeText(m.files[i].size).c_str(),
                m.files[i].crc32c, cmd.c_str());
  }
  return e->state == store::EpochState::kComplete ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help")) {
    std::printf("usage: %s\n", kUsage);
    return 0;
  }
  std::vector<std::string> args(argv + 1, argv + argc);
  std::string socket_option;
  if (args.size() >= 2 && args[0] == "--socket") {
    socket_option = args[1];
    args.erase(args.begin(), args.begin() + 2);
  } else if (!args.empty() && args[0].rfind("--socket=", 0) == 0) {
    socket_option = args[0].substr(9);
    args.erase(args.begin());
  }
  if (args.empty()) cli::Usage("stasis", kUsage);
  std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "ls") {
    if (rest.size() != 1) cli::Usage("stasis", kUsage);
    return List(rest[0]);
  }
  if (cmd == "prune") return Prune(rest);
  if ((cmd == "verify" || cmd == "show") && rest.size() == 1 && IsDir(rest[0]))
    return cmd == "verify" ? VerifyFolder(rest[0]) : ShowEpoch(rest[0]);
  if (cmd != "show" && cmd != "verify")
    return Daemon(socket_option, cmd, std::vector<std::string>(args.begin() + 1, args.end()));
  if (args.size() != 2) cli::Usage("stasis", kUsage);
  std::string file = args[1];
  auto source = core::OpenContextForRead(file);
  if (!source) cli::Die("stasis", source.error().message());
  auto ctx = format::ReadContext(source->get(), false);
  if (!ctx) cli::Die("stasis", file + ": " + ctx.error().message());
  if (cmd == "verify") {
    uint64_t pages = 0;
    for (const auto& p : ctx->processes) pages += p.page_bytes;
    const size_t problems = PrintRestartProblems(file + ": ", *ctx);
    if (problems) {
      std::printf(
          "%s: intact (%zu processes, every checksum verified), but it cannot be restarted "
          "faithfully: %zu problem(s) above (files as %s sees them)\n",
          file.c_str(), ctx->processes.size(), problems, ThisHost().c_str());
      return 1;
    }
    std::printf(
        "%s: ok (%zu processes, %.1f MiB of pages, every checksum verified; every file it "
        "needs is here and unchanged)\n",
        file.c_str(), ctx->processes.size(), pages / 1048576.0);
    return 0;
  }
  Show(file, *ctx);
  return 0;
}

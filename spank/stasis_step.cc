// stasis-step: checkpoints and restarts of Slurm job steps, on top of the
// engine, the store and stasisd. docs/design.md "Slurm integration" draws
// the protocol; in short:
//
//   stasis-step checkpoint JOB[.STEP] [--dir ROOT] [--keep N] [--vacate] [--final]
//                                     [--timeout SECONDS]
//     One epoch of each running step of the job (or of STEP): starts a
//     helper step `srun --overlap --jobid=JOB -N<n> --ntasks-per-node=1
//     --mpi=pmix stasis-step node ...` on the step's nodes. Slurm decides
//     who may: only the job's owner or root can start a step in a job.
//   stasis-step node --job J --step S [...]      (inside the helper step)
//     Each helper task finds the step's tasks on its node (scontrol
//     listpids), joins the epoch rank 0 allocated, has its node's stasisd
//     (or, without one, this process) write node<i>.ctx and hold the tasks
//     frozen, then meets the other nodes in PMIx fences: rank 0 writes the
//     MANIFEST only when every node's file is durable, and every node
//     resumes (or, --vacate, ends) its tasks only after that. Any failure or
//     timeout: no MANIFEST, every node resumes, the previous epoch stays the
//     newest.
//   stasis-step ticker --job J --interval SECONDS
//     Started by spank_stasis.so in the batch step of a job submitted with
//     --checkpoint: one `checkpoint` every interval, and a final one when
//     Slurm signals the job (SIGTERM before a preemption, the --signal
//     warning) while time permits.
//   restart task (argv rewritten by spank_stasis.so, STASIS_RESTART_TASK set)
//     Every task of a step started with --restart-from runs this. Local task
//     0 of each node restores the node's context (node i of the old step on
//     node i of the new one), the other local tasks hand it their stdio and
//     wait; each restored task's processes write to their own task's stdio,
//     and each task exits with its restored root's status.
#define _GNU_SOURCE 1
#include <fcntl.h>
#include <pmix.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/cli/cli_common.h"
#include "engine/cli/epoch_checkpoint.h"
#include "engine/core/engine.h"
#include "engine/core/procfs.h"
#include "engine/daemon/client.h"
#include "engine/format/context_io.h"
#include "engine/format/manifest.h"
#include "engine/store/store.h"
#include "spank/slurm_util.h"

namespace {

using stasis::Result;
using stasis::Status;
using stasis::UniqueFd;
namespace proto = stasis::format::proto;
namespace store = stasis::store;
namespace core = stasis::core;

const char* const kTool = "stasis-step";
// Slurm's id of the batch step (SLURM_BATCH_SCRIPT in 22.05), as the plugin
// writes it in STASIS_RESTART_TASK.
const char* const kBatchStepId = "4294967291";


[[noreturn]] void Die(const std::string& message, int code = 1) {
  stasis::cli::Die(kTool, message, code);
}

std::string Env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// Is this the batch step's task that the plugin made a restart?
bool IsBatchRestart() { return Env("STASIS_RESTART_TASK") == Env("SLURM_JOB_ID") + "." + kBatchStepId; }

double Now() {
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

Result<std::string> ReadAll(int fd) {
  std::string out;
  char buf[8192];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "read");
    if (n == 0) return out;
    out.append(buf, static_cast<size_t>(n));
  }
}

// /proc/PID/<what> of a process of the job.
Result<std::string> ReadProcFile(pid_t pid, const char* what) {
  return core::ReadFileToString("/proc/" + std::to_string(pid) + "/" + what);
}

// Runs a command (no shell) and returns its stdout; stderr passes through.
// Fails with the command's own exit status in the message.
Result<std::string> RunCapture(const std::vector<std::string>& argv, int* exit_status = nullptr) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return Status::FromErrno(errno, "pipe");
  pid_t pid = ::fork();
  if (pid < 0) return Status::FromErrno(errno, "fork");
  if (pid == 0) {
    ::dup2(pipefd[1], 1);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    std::fprintf(stderr, "%s: cannot run %s: %s\n", kTool, a[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(pipefd[1]);
  UniqueFd r(pipefd[0]);
  auto out = ReadAll(r.get());
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (exit_status) *exit_status = st;
  if (!out) return out.error();
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return Status::Error(
        EIO, argv[0] + " " + (argv.size() > 1 ? argv[1] : "") + " failed (status " +
                 std::to_string(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)) + ")");
  return out;
}

// Lines of `key=value`, the value %-escaped: what helper tasks exchange
// through PMIx (strings only).
std::string Escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c <= 0x20 || c >= 0x7f || c == '%' || c == '=') {
      char b[4];
      std::snprintf(b, sizeof b, "%%%02X", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}
std::string Unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out += static_cast<char>(std::strtoul(s.substr(i + 1, 2).c_str(), nullptr, 16));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}
using Fields = std::map<std::string, std::string>;
std::string EncodeFields(const Fields& f) {
  std::string out;
  for (const auto& [k, v] : f) out += k + "=" + Escape(v) + "\n";
  return out;
}
Fields DecodeFields(const std::string& text) {
  Fields f;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    size_t eq = line.find('=');
    if (eq != std::string::npos) f[line.substr(0, eq)] = Unescape(line.substr(eq + 1));
  }
  return f;
}

// ---------------------------------------------------------------------------
// PMIx: rank, size, put/fence/get of strings, with a timeout on fences.

class Pmix {
 public:
  ~Pmix() {
    if (up_) PMIx_Finalize(nullptr, 0);
  }
  Status Init() {
    pmix_status_t rc = PMIx_Init(&me_, nullptr, 0);
    if (rc != PMIX_SUCCESS)
      return Status::Error(ENOTCONN, std::string("PMIx_Init: ") + PMIx_Error_string(rc) +
                                         " (run inside srun --mpi=pmix)");
    up_ = true;
    pmix_proc_t all;
    PMIX_PROC_CONSTRUCT(&all);
    std::memcpy(all.nspace, me_.nspace, sizeof all.nspace);
    all.rank = PMIX_RANK_WILDCARD;
    pmix_value_t* val = nullptr;
    rc = PMIx_Get(&all, PMIX_JOB_SIZE, nullptr, 0, &val);
    if (rc != PMIX_SUCCESS || !val)
      return Status::Error(EIO, std::string("PMIx job size: ") + PMIx_Error_string(rc));
    size_ = val->data.uint32;
    PMIX_VALUE_RELEASE(val);
    return Status::Ok();
  }
  uint32_t rank() const { return me_.rank; }
  uint32_t size() const { return size_; }
  Status Put(const std::string& key, const std::string& value) {
    pmix_value_t v;
    PMIX_VALUE_CONSTRUCT(&v);
    v.type = PMIX_STRING;
    v.data.string = const_cast<char*>(value.c_str());
    pmix_status_t rc = PMIx_Put(PMIX_GLOBAL, key.c_str(), &v);
    if (rc != PMIX_SUCCESS)
      return Status::Error(EIO, "PMIx_Put " + key + ": " + PMIx_Error_string(rc));
    rc = PMIx_Commit();
    if (rc != PMIX_SUCCESS)
      return Status::Error(EIO, std::string("PMIx_Commit: ") + PMIx_Error_string(rc));
    return Status::Ok();
  }
  Status Fence(int timeout_seconds) {
    pmix_proc_t all;
    PMIX_PROC_CONSTRUCT(&all);
    std::memcpy(all.nspace, me_.nspace, sizeof all.nspace);
    all.rank = PMIX_RANK_WILDCARD;
    pmix_info_t info[2];
    PMIX_INFO_CONSTRUCT(&info[0]);
    PMIX_INFO_CONSTRUCT(&info[1]);
    bool collect = true;
    PMIX_INFO_LOAD(&info[0], PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
    int t = timeout_seconds;
    PMIX_INFO_LOAD(&info[1], PMIX_TIMEOUT, &t, PMIX_INT);
    pmix_status_t rc = PMIx_Fence(&all, 1, info, 2);
    PMIX_INFO_DESTRUCT(&info[0]);
    PMIX_INFO_DESTRUCT(&info[1]);
    if (rc != PMIX_SUCCESS)
      return Status::Error(ETIMEDOUT, std::string("PMIx_Fence: ") + PMIx_Error_string(rc));
    return Status::Ok();
  }
  Result<std::string> Get(uint32_t rank, const std::string& key) {
    pmix_proc_t p;
    PMIX_PROC_CONSTRUCT(&p);
    std::memcpy(p.nspace, me_.nspace, sizeof p.nspace);
    p.rank = rank;
    pmix_value_t* val = nullptr;
    pmix_status_t rc = PMIx_Get(&p, key.c_str(), nullptr, 0, &val);
    if (rc != PMIX_SUCCESS || !val || val->type != PMIX_STRING)
      return Status::Error(EIO, "PMIx_Get " + key + " of rank " + std::to_string(rank) + ": " +
                                    PMIx_Error_string(rc));
    std::string out = val->data.string ? val->data.string : "";
    PMIX_VALUE_RELEASE(val);
    return out;
  }

 private:
  pmix_proc_t me_{};
  uint32_t size_ = 0;
  bool up_ = false;
};

// ---------------------------------------------------------------------------
// The restorer's socket on a node (abstract namespace: one per network
// namespace, so per node): restart tasks hand it their stdio, and a later
// checkpoint asks it which processes head which task.

std::string RestorerName(const std::string& job, const std::string& step) {
  return "stasis-restart." + job + "." + step + "." + std::to_string(::getuid());
}

socklen_t AbstractAddr(const std::string& name, struct sockaddr_un* a) {
  std::memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  size_t n = std::min(name.size(), sizeof a->sun_path - 2);
  std::memcpy(a->sun_path + 1, name.data(), n);
  return static_cast<socklen_t>(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

// Sends a text message with optional fds.
Status SendMsg(int sock, const std::string& text, const std::vector<int>& fds = {}) {
  return stasis::SendWithFds(sock, text.data(), text.size(), fds, "the node's restorer");
}

Result<std::string> RecvMsg(int sock, std::vector<UniqueFd>* fds = nullptr) {
  static char buf[64 * 1024];
  struct iovec iov {
    buf, sizeof buf
  };
  struct msghdr msg {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char ctl[CMSG_SPACE(sizeof(int) * 4)];
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  ssize_t n;
  while ((n = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0) {
    if (errno != EINTR) return Status::FromErrno(errno, "receive from the node's restorer");
  }
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    std::vector<int> raw(count);
    std::memcpy(raw.data(), CMSG_DATA(c), count * sizeof(int));
    for (int fd : raw) {
      if (fds)
        fds->emplace_back(fd);
      else
        ::close(fd);
    }
  }
  if (n == 0) return Status::Error(ECONNRESET, "the node's restorer hung up");
  return std::string(buf, static_cast<size_t>(n));
}

Result<UniqueFd> ConnectRestorer(const std::string& name) {
  UniqueFd s(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!s) return Status::FromErrno(errno, "socket");
  struct sockaddr_un a;
  socklen_t len = AbstractAddr(name, &a);
  if (::connect(s.get(), reinterpret_cast<struct sockaddr*>(&a), len) != 0)
    return Status::FromErrno(errno, "connect to the node's restorer");
  return s;
}

// ---------------------------------------------------------------------------
// Per-job switches in the job folder (scontrol checkpoint disable/enable/
// error): ".disabled" stops epochs; ".last-error" holds the last failed
// epoch's message. Plain files of the job's owner, never followed links.

constexpr const char* kDisabled = ".disabled";
constexpr const char* kLastError = ".last-error";

bool JobDisabled(const store::JobFolder& job) {
  struct stat st;
  return ::fstatat(job.fd(), kDisabled, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

Status WriteJobFile(const store::JobFolder& job, const char* name, const std::string& text) {
  std::string tmp = std::string(name) + ".tmp";
  ::unlinkat(job.fd(), tmp.c_str(), 0);
  UniqueFd fd(
      ::openat(job.fd(), tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return Status::FromErrno(errno, job.path() + "/" + tmp);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()) ||
      ::fsync(fd.get()) != 0)
    return Status::FromErrno(errno, job.path() + "/" + tmp);
  if (::renameat(job.fd(), tmp.c_str(), job.fd(), name) != 0)
    return Status::FromErrno(errno, job.path() + "/" + name);
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// node: one helper task of an epoch.

struct NodeOptions {
  std::string job, step;
  std::string root;   // checkpoint root ("" = the tasks' STASIS_CHECKPOINT_DIR or submit dir)
  uint32_t keep = 0;  // 0 = the tasks' STASIS_CHECKPOINT_KEEP, else 2
  bool vacate = false;
  bool final = false;  // the job is about to end: PMIX_JCTRL_PREEMPT_ALERT first
  int timeout = 300;
  double t0 = 0;  // when the epoch was triggered (unix seconds)
};

// The step's task roots on this node, with the task ids they head. A task
// that is a restart proxy (this program) is asked by its node's restorer
// which restored process heads it.
Result<std::vector<core::TaskRoot>> LocalTasks(const std::string& job, const std::string& step,
                                               std::map<std::string, std::string>* task_env) {
  // scontrol takes no "J.batch": the batch step's lines come with the job's.
  STASIS_ASSIGN_OR_RETURN(std::string listed,
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

// A Slurm client (srun, salloc, sbatch, sattach, scontrol...) in the tree of
// `root`, as "srun (pid N)", or "".
std::string SlurmClientIn(pid_t root) {
  std::vector<pid_t> todo = {root};
  for (size_t i = 0; i < todo.size() && i < 100000; ++i) {
    const pid_t p = todo[i];
    auto comm = ReadProcFile(p, "comm");
    std::string c = comm ? comm->substr(0, comm->find('\n')) : "";
    if (c == "srun" || c == "salloc" || c == "sbatch" || c == "sattach" || c == "scontrol" || c == "squeue")
      return c + " (pid " + std::to_string(p) + ")";
    auto kids = core::ReadFileToString("/proc/" + std::to_string(p) + "/task/" + std::to_string(p) + "/children");
    if (!kids) continue;
    std::istringstream in(*kids);
    long k = 0;
    while (in >> k) todo.push_back(static_cast<pid_t>(k));
  }
  return "";
}

// One rank's outcome, as rank 0 reads it.
struct NodeReport {
  bool ok = false;
  std::string message;
  uint32_t node = 0;
  std::string host;
  std::vector<uint32_t> tasks;
  std::vector<std::string> argv;
  uint64_t size = 0;
  uint32_t crc = 0;
};

std::string EncodeReport(const NodeReport& r) {
  Fields f;
  f["ok"] = r.ok ? "1" : "0";
  f["message"] = r.message;
  f["node"] = std::to_string(r.node);
  f["host"] = r.host;
  std::string tasks, argv;
  for (uint32_t t : r.tasks) tasks += (tasks.empty() ? "" : ",") + std::to_string(t);
  for (const auto& a : r.argv) argv += (argv.empty() ? "" : " ") + Escape(a);
  f["tasks"] = tasks;
  f["argv"] = argv;
  f["size"] = std::to_string(r.size);
  f["crc"] = std::to_string(r.crc);
  return EncodeFields(f);
}

NodeReport DecodeReport(const std::string& text) {
  Fields f = DecodeFields(text);
  NodeReport r;
  r.ok = f["ok"] == "1";
  r.message = f["message"];
  r.node = static_cast<uint32_t>(std::strtoul(f["node"].c_str(), nullptr, 10));
  r.host = f["host"];
  std::istringstream t(f["tasks"]);
  std::string item;
  while (std::getline(t, item, ','))
    if (!item.empty())
      r.tasks.push_back(static_cast<uint32_t>(std::strtoul(item.c_str(), nullptr, 10)));
  std::istringstream a(f["argv"]);
  while (a >> item) r.argv.push_back(Unescape(item));
  r.size = std::strtoull(f["size"].c_str(), nullptr, 10);
  r.crc = static_cast<uint32_t>(std::strtoul(f["crc"].c_str(), nullptr, 10));
  return r;
}

// The two fences after every node has written (or failed): every rank
// reports, rank 0 commits the MANIFEST if all are good, every rank learns
// the verdict. Returns Ok when the epoch is committed.
class Rendezvous {
 public:
  Rendezvous(Pmix* pmix, const NodeOptions& opt, store::EpochWriter** writer,
             const std::string& job_id)
      : pmix_(pmix), opt_(opt), writer_(writer), job_id_(job_id) {}
  bool done() const { return done_; }
  bool quiesced() const { return quiesce_done_; }
  double proceed_after_last_quiesce() const { return lag_; }
  // The barrier before any node freezes: every rank says whether its
  // processes' callbacks are done; all must be, or the epoch aborts.
  Status Quiesce(bool ok, const std::string& why) {
    quiesce_done_ = true;
    char t[64];
    std::snprintf(t, sizeof t, "%.6f", Now());
    STASIS_RETURN_IF_ERROR(pmix_->Put("stasis.quiesce", ok ? std::string("1 ") + t : "0 " + why));
    STASIS_RETURN_IF_ERROR(pmix_->Fence(opt_.timeout));
    double last = 0;
    for (uint32_t r = 0; r < pmix_->size(); ++r) {
      STASIS_ASSIGN_OR_RETURN(std::string v, pmix_->Get(r, "stasis.quiesce"));
      if (v.rfind("1 ", 0) != 0)
        return Status::Error(ECANCELED,
                             "helper rank " + std::to_string(r) +
                                 " could not quiesce: " + (v.size() > 2 ? v.substr(2) : v));
      last = std::max(last, std::strtod(v.c_str() + 2, nullptr));
    }
    lag_ = Now() - last;
    return Status::Ok();
  }
  // The barrier before any node runs on after its snapshot: every rank says
  // whether its processes are frozen and captured; all must be, or the epoch
  // aborts (a node that ran on early could send what a node not yet frozen
  // receives before its cut).
  bool frozen() const { return frozen_done_; }
  Status Frozen(bool ok, const std::string& why) {
    frozen_done_ = true;
    STASIS_RETURN_IF_ERROR(pmix_->Put("stasis.frozen", ok ? std::string("1") : "0 " + why));
    STASIS_RETURN_IF_ERROR(pmix_->Fence(opt_.timeout));
    for (uint32_t r = 0; r < pmix_->size(); ++r) {
      STASIS_ASSIGN_OR_RETURN(std::string v, pmix_->Get(r, "stasis.frozen"));
      if (v != "1")
        return Status::Error(ECANCELED, "helper rank " + std::to_string(r) + " could not freeze: " +
                                            (v.size() > 2 ? v.substr(2) : v));
    }
    return Status::Ok();
  }
  Status Meet(const NodeReport& mine) {
    done_ = true;
    STASIS_RETURN_IF_ERROR(pmix_->Put("stasis.report", EncodeReport(mine)));
    STASIS_RETURN_IF_ERROR(pmix_->Fence(opt_.timeout));
    if (pmix_->rank() == 0) {
      Status verdict = Decide();
      std::string v = verdict.ok() ? "commit" : "abort " + verdict.message();
      STASIS_RETURN_IF_ERROR(pmix_->Put("stasis.verdict", v));
    }
    STASIS_RETURN_IF_ERROR(pmix_->Fence(opt_.timeout));
    STASIS_ASSIGN_OR_RETURN(std::string v, pmix_->Get(0, "stasis.verdict"));
    if (v != "commit") return Status::Error(ECANCELED, v.size() > 6 ? v.substr(6) : v);
    return Status::Ok();
  }

 private:
  Status Decide() {
    std::vector<NodeReport> reports;
    for (uint32_t r = 0; r < pmix_->size(); ++r) {
      auto text = pmix_->Get(r, "stasis.report");
      if (!text) return text.error();
      reports.push_back(DecodeReport(*text));
    }
    for (const auto& r : reports)
      if (!r.ok)
        return Status::Error(EIO,
                             "node " + std::to_string(r.node) + " (" + r.host + "): " + r.message);
    std::sort(reports.begin(), reports.end(),
              [](const NodeReport& a, const NodeReport& b) { return a.node < b.node; });
    stasis::format::Manifest m;
    m.job = job_id_;
    m.step = opt_.step;
    m.uid = ::geteuid();
    for (size_t i = 0; i < reports.size(); ++i) {
      if (reports[i].node != i)
        return Status::Error(
            EINVAL, "node indexes of the step are not 0.." + std::to_string(reports.size() - 1));
      stasis::format::ManifestNode n;
      n.index = reports[i].node;
      n.host = reports[i].host;
      n.file = store::EpochWriter::NodeFileName(n.index);
      n.tasks = reports[i].tasks;
      n.argv = reports[i].argv;
      m.nodes.push_back(n);
      stasis::format::ManifestFile f;
      f.name = n.file;
      f.size = reports[i].size;
      f.crc32c = reports[i].crc;
      m.files.push_back(f);
    }
    return (*writer_)->Commit(&m);
  }
  Pmix* pmix_;
  const NodeOptions& opt_;
  store::EpochWriter** writer_;
  std::string job_id_;
  bool done_ = false;
  bool quiesce_done_ = false;
  bool frozen_done_ = false;
  double lag_ = 0;
};

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
      std::printf("step batch of job %s: not checkpointed now: the script runs %s (its steps have their own "
                  "epochs)\n", opt.job.c_str(), client.c_str());
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
    if (Status p = pmix.Put("stasis.epoch", EncodeFields(f)); !p.ok()) Die(p.message());
  }
  if (Status s = pmix.Fence(opt.timeout); !s.ok()) Die(s.message());
  auto epoch_text = pmix.Get(0, "stasis.epoch");
  if (!epoch_text) Die(epoch_text.error().message());
  Fields ef = DecodeFields(*epoch_text);
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
  Rendezvous meet(&pmix, opt, &writer_raw, opt.job);

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
    (void)stasis::format::ParseCompression(tenv["STASIS_CHECKPOINT_COMPRESS"], &copt.compress, &copt.compress_level);
  if (tasks) copt.tasks = *tasks;
  // Incremental epochs (plugstack.conf incremental=N): this node's file
  // against its file of the previous epoch, a full one every N. Each node
  // chooses for itself; the engine still checks each process's tracking.
  std::string parent_note;
  if (tenv.count("STASIS_CHECKPOINT_INCREMENTAL") && folder && local.ok()) {
    const uint32_t every =
        static_cast<uint32_t>(std::strtoul(tenv["STASIS_CHECKPOINT_INCREMENTAL"].c_str(), nullptr, 10));
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
    hooks.on_quiesced = [&meet]() { return meet.Quiesce(true, ""); };
    // With a snapshot the tasks run again as soon as "proceed" is sent.
    hooks.on_frozen = [&meet, &resumed_at]() {
      Status s = meet.Frozen(true, "");
      resumed_at = Now();
      return s;
    };
    hooks.on_written = [&](uint64_t bytes, uint32_t crc32c) {
      mine.ok = true;
      mine.size = bytes;
      mine.crc = crc32c;
      return meet.Meet(mine);
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
      Rendezvous* meet;
    } ctx{sink, &mine, &meet};
    copt.after_callbacks = [&meet]() { return meet.Quiesce(true, ""); };
    // As through stasisd: every node frozen before any runs on.
    copt.before_release = [&meet, &resumed_at](bool snapshot, const std::string&) {
      Status s = meet.Frozen(true, "");
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
          return c->meet->Meet(*c->mine);
        },
        &ctx);
    if (st) {
      stats = *st;
      if (!stats.snapshot || resumed_at == 0) resumed_at = Now();
    } else {
      outcome = st.error();
    }
  }
  if (!meet.quiesced()) (void)meet.Quiesce(false, outcome.ok() ? "no result" : outcome.message());
  if (!meet.frozen()) (void)meet.Frozen(false, outcome.ok() ? "no result" : outcome.message());
  if (!meet.done()) {
    mine.ok = false;
    mine.message = outcome.message();
    (void)meet.Meet(mine);
  }
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
      "node %u (%s): epoch %llu: %u processes, %.1f MiB, paused %.3f s%s, trigger to resumed %.3f s; "
      "froze %.3f s after the last of %u nodes quiesced%s\n",
      mine.node, host.c_str(), static_cast<unsigned long long>(epoch), stats.processes,
      static_cast<double>(stats.bytes) / (1 << 20), stats.pause_seconds,
      stats.snapshot                 ? " (written from a snapshot)"
      : stats.snapshot_note.empty() ? ""
                                     : (" (no snapshot: " + stats.snapshot_note + ")").c_str(),
      opt.t0 > 0 ? resumed_at - opt.t0 : stats.total_seconds, meet.proceed_after_last_quiesce(),
      pmix.size(), parent_note.empty() ? "" : ("; " + parent_note +
                   (stats.incremental ? ", " + std::to_string(stats.parent_page_bytes >> 20) + " MiB left to it" : "") +
                   (stats.track_note.empty() ? "" : " (" + stats.track_note + ")")).c_str());
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

// ---------------------------------------------------------------------------
// checkpoint: the coordinator (a user, scontrol checkpoint, the ticker).

struct StepInfo {
  std::string step, nodelist;
};

Result<std::vector<StepInfo>> RunningSteps(const std::string& job) {
  STASIS_ASSIGN_OR_RETURN(std::string out,
                          RunCapture({"squeue", "-h", "-s", "-j", job, "-o", "%i|%j|%N"}));
  std::vector<StepInfo> steps;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, name, nodes;
    if (!std::getline(f, id, '|') || !std::getline(f, name, '|') || !std::getline(f, nodes))
      continue;
    std::string j, s;
    if (!stasis::spank::ParseJobStep(id, &j, &s) || j != job) continue;
    // The extern step and our own helper steps are not checkpointed. The
    // batch script's own processes are, when no srun runs in it (RunNode
    // checks on its node; that step's own epochs cover it meanwhile).
    if (s == "extern" || s == "interactive" || name == "stasis-ckpt") continue;
    steps.push_back({s, nodes});
  }
  // The batch script first: a vacate or requeue kills the steps' tasks,
  // and the script, no longer waiting in srun, would run on into its next
  // command before its own epoch (it is skipped anyway while srun runs).
  std::stable_partition(steps.begin(), steps.end(), [](const StepInfo& x) { return x.step == "batch"; });
  return steps;
}

struct CheckpointArgs {
  std::string job, step, root;
  uint32_t keep = 0;
  bool vacate = false;
  bool final = false;
  int timeout = 300;
  // The ticker, a sibling of the batch script on its node: the script's
  // pid, to skip its helper step while a Slurm client runs in it (RunNode
  // would find the same and take no epoch).
  pid_t batch_script = 0;
};

// Runs one epoch of one step: the helper step on its nodes. Returns the
// helper step's exit status (0: every node committed).
int CheckpointStep(const std::string& self, const CheckpointArgs& a, const StepInfo& s) {
  auto hosts = RunCapture({"scontrol", "show", "hostnames", s.nodelist});
  if (!hosts) {
    std::fprintf(stderr, "%s: %s\n", kTool, hosts.error().message().c_str());
    return 1;
  }
  int n = 0;
  std::istringstream in(*hosts);
  std::string h;
  while (in >> h) ++n;
  char t0[64];
  std::snprintf(t0, sizeof t0, "%.6f", Now());
  std::vector<std::string> argv = {"srun",
                                   "--overlap",
                                   "--jobid=" + a.job,
                                   "-N" + std::to_string(n),
                                   "-n" + std::to_string(n),
                                   "--ntasks-per-node=1",
                                   "-w",
                                   s.nodelist,
                                   "--mpi=pmix",
                                   "-J",
                                   "stasis-ckpt",
                                   "-Q",
                                   "--kill-on-bad-exit=0",
                                   "--time=" + std::to_string(a.timeout / 60 + 2),
                                   self,
                                   "node",
                                   "--job",
                                   a.job,
                                   "--step",
                                   s.step,
                                   "--timeout",
                                   std::to_string(a.timeout),
                                   "--t0",
                                   t0};
  if (!a.root.empty()) argv.insert(argv.end(), {"--dir", a.root});
  if (a.keep) argv.insert(argv.end(), {"--keep", std::to_string(a.keep)});
  if (a.vacate) argv.push_back("--vacate");
  if (a.final) argv.push_back("--final");
  pid_t pid = ::fork();
  if (pid < 0) return 1;
  if (pid == 0) {
    std::vector<char*> v;
    for (auto& x : argv) v.push_back(x.data());
    v.push_back(nullptr);
    ::execvp("srun", v.data());
    std::fprintf(stderr, "%s: cannot run srun: %s\n", kTool, std::strerror(errno));
    ::_exit(127);
  }
  // The nodes bound their own waits; this bounds a helper step that never
  // starts or never ends.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(a.timeout + 30);
  int st = 0;
  for (;;) {
    pid_t w = ::waitpid(pid, &st, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return 1;
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGINT);
      ::usleep(200000);
      ::kill(pid, SIGINT);
      ::sleep(2);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      std::fprintf(stderr, "%s: step %s.%s: the epoch timed out after %d s\n", kTool, a.job.c_str(),
                   s.step.c_str(), a.timeout);
      return 1;
    }
    ::usleep(20000);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

std::string SelfPath() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string(kTool);
}

int RunCheckpoint(const CheckpointArgs& a) {
  std::vector<StepInfo> steps;
  auto running = RunningSteps(a.job);
  if (!running) Die(running.error().message());
  for (const auto& s : *running)
    if (a.step.empty() || s.step == a.step) {
      if (s.step == "batch" && a.batch_script > 0 && !SlurmClientIn(a.batch_script).empty()) continue;
      steps.push_back(s);
    }
  if (steps.empty()) {
    std::fprintf(stderr, "%s: job %s has no running step%s to checkpoint\n", kTool, a.job.c_str(),
                 a.step.empty() ? "" : (" " + a.step).c_str());
    return 1;
  }
  int rc = 0;
  const std::string self = SelfPath();
  for (const auto& s : steps) {
    int r = CheckpointStep(self, a, s);
    if (r != 0) {
      std::fprintf(stderr, "%s: step %s.%s: epoch not taken (status %d)\n", kTool, a.job.c_str(),
                   s.step.c_str(), r);
      rc = 1;
    }
  }
  return rc;
}

// control: scontrol checkpoint enable/disable/error. A one-task helper step
// in the job (so only the owner or root), whose own environment names the
// job's checkpoint folder.
int RunControlLocal(const std::string& job, const std::string& op, const std::string& dir) {
  // The folder the job's own processes were given (--checkpoint-dir, the
  // site's default_dir, else their submit folder): read from the
  // environment of one of its processes on this node.
  std::string root = dir;
  if (root.empty()) {
    auto listed = RunCapture({"scontrol", "listpids", job});
    std::istringstream in(listed ? *listed : "");
    std::string line;
    while (root.empty() && std::getline(in, line)) {
      std::istringstream f(line);
      long pid = 0;
      std::string j;
      if (!(f >> pid >> j) || pid <= 0 || j != job) continue;
      auto raw = ReadProcFile(static_cast<pid_t>(pid), "environ");
      if (!raw) continue;
      auto env = stasis::spank::ParseEnviron(*raw);
      if (!env["STASIS_CHECKPOINT_DIR"].empty())
        root = env["STASIS_CHECKPOINT_DIR"];
      else if (!env["SLURM_SUBMIT_DIR"].empty())
        root = env["SLURM_SUBMIT_DIR"];
    }
  }
  if (root.empty()) Die("job " + job + ": no checkpoint folder known (give ImageDir=)");
  ::mkdir(root.c_str(), 0700);
  auto folder = store::JobFolder::Open(store::DefaultEnv(), root + "/" + job, op == "disable",
                                       store::Access::Caller());
  if (op == "error") {
    if (!folder) {
      std::printf("job %s: no checkpoint error recorded\n", job.c_str());
      return 0;
    }
    auto fd = store::OpenOwnedFile(folder->fd(), kLastError, store::Access::Caller(),
                                   folder->path() + "/" + kLastError);
    if (!fd) {
      std::printf("job %s: no checkpoint error recorded\n", job.c_str());
      return 0;
    }
    auto text = ReadAll(fd->get());
    std::printf("job %s: last checkpoint error: %s", job.c_str(),
                text ? text->c_str() : "(unreadable)\n");
    return 0;
  }
  if (op == "enable") {
    if (folder && ::unlinkat(folder->fd(), kDisabled, 0) != 0 && errno != ENOENT)
      Die(folder->path() + "/" + kDisabled + ": " + std::strerror(errno));
    std::printf("job %s: checkpoints enabled\n", job.c_str());
    return 0;
  }
  if (!folder) Die(folder.error().message());
  if (Status s = WriteJobFile(*folder, kDisabled, "disabled by scontrol checkpoint disable\n");
      !s.ok())
    Die(s.message());
  std::printf("job %s: checkpoints disabled\n", job.c_str());
  return 0;
}

int RunControl(const CheckpointArgs& a, const std::string& op) {
  std::vector<std::string> argv = {
      "srun", "--overlap", "--jobid=" + a.job, "-N1",   "-n1", "-J",   "stasis-ckpt",
      "-Q",   SelfPath(),  "control-local",    "--job", a.job, "--op", op};
  if (!a.root.empty()) argv.insert(argv.end(), {"--dir", a.root});
  int st = 0;
  auto out = RunCapture(argv, &st);
  if (out) std::fputs(out->c_str(), stdout);
  if (!out)
    std::fprintf(stderr, "%s: scontrol checkpoint %s %s: %s\n", kTool, op.c_str(), a.job.c_str(),
                 out.error().message().c_str());
  return out ? 0 : 1;
}

// ---------------------------------------------------------------------------
// ticker: periodic epochs of a job, and a final one when Slurm warns.

volatile sig_atomic_t g_warned = 0;
void OnWarn(int) { g_warned = 1; }

// When the job will end (its time limit), from squeue; 0 if unknown.
double JobEndTime(const std::string& job) {
  auto out = RunCapture({"squeue", "-h", "-j", job, "-o", "%e"});
  if (!out) return 0;
  struct tm tm {};
  std::string text = *out;
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (!::strptime(text.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return 0;
  tm.tm_isdst = -1;
  return static_cast<double>(::mktime(&tm));
}

// The batch script: the child of the batch step's slurmstepd `stepd` that
// is not this ticker (0 when not found).
pid_t BatchScript(pid_t stepd) {
  auto kids = core::ReadFileToString("/proc/" + std::to_string(stepd) + "/task/" + std::to_string(stepd) + "/children");
  if (!kids) return 0;
  std::istringstream in(*kids);
  long k = 0;
  while (in >> k)
    if (k != ::getpid()) return static_cast<pid_t>(k);
  return 0;
}

int RunTicker(const std::string& job, uint64_t interval, uint64_t final_lead) {
  struct sigaction sa {};
  sa.sa_handler = OnWarn;
  for (int sig : {SIGTERM, SIGUSR1, SIGUSR2}) ::sigaction(sig, &sa, nullptr);
  CheckpointArgs a;
  a.job = job;
  a.timeout = static_cast<int>(std::min<uint64_t>(std::max<uint64_t>(interval, 60), 600));
  double next = Now() + static_cast<double>(interval);
  const pid_t parent = ::getppid();  // the batch step's slurmstepd
  // The final epoch before the time limit: final_lead seconds before the
  // job's end time (re-read every tick: scontrol update may move it).
  double end = JobEndTime(job), last_poll = Now();
  bool final_done = false;
  for (;;) {
    while (!g_warned && Now() < next) {
      if (::getppid() != parent) return 0;  // the job has ended
      if (Now() - last_poll > 30) {
        end = JobEndTime(job);
        last_poll = Now();
      }
      if (!final_done && end > 0 && final_lead > 0 &&
          Now() >= end - static_cast<double>(final_lead))
        break;
      ::usleep(200000);
    }
    bool final = g_warned || (!final_done && end > 0 && final_lead > 0 &&
                              Now() >= end - static_cast<double>(final_lead));
    if (final) final_done = true;
    a.final = final;
    a.batch_script = BatchScript(parent);
    std::fprintf(stderr, "%s: job %s: %s checkpoint\n", kTool, job.c_str(),
                 final ? "final" : "periodic");
    (void)RunCheckpoint(a);
    if (g_warned) return 0;
    next = Now() + static_cast<double>(interval);
  }
}

// ---------------------------------------------------------------------------
// restart task: each task of a --restart-from step.

volatile sig_atomic_t g_forward = 0;
pid_t g_root = 0;
void Forward(int sig) {
  if (g_root > 0) ::kill(g_root, sig);
}

void ForwardSignals() {
  struct sigaction sa {};
  sa.sa_handler = Forward;
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT})
    ::sigaction(sig, &sa, nullptr);
}

[[noreturn]] void ExitLike(int status) {
  if (WIFSIGNALED(status)) {
    ::signal(WTERMSIG(status), SIG_DFL);
    ::kill(::getpid(), WTERMSIG(status));
    ::_exit(128 + WTERMSIG(status));
  }
  ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}

struct TaskEnv {
  std::string job, step, dir;
  uint32_t node = 0, local = 0, global = 0, nnodes = 0, ntasks = 0, local_count = 0;
};

Result<TaskEnv> ReadTaskEnv() {
  TaskEnv t;
  if (IsBatchRestart()) {
    // The batch script: one task on the batch node, no step variables.
    t.job = Env("SLURM_JOB_ID");
    t.step = "batch";
    t.dir = Env("STASIS_RESTART_FROM");
    t.nnodes = t.ntasks = t.local_count = 1;
    if (t.job.empty() || t.dir.empty()) return Status::Error(EINVAL, "not the batch step of a requeued job");
    return t;
  }
  t.job = Env("SLURM_JOB_ID");
  t.step = Env("SLURM_STEP_ID", Env("SLURM_STEPID"));
  t.dir = Env("STASIS_RESTART_FROM");
  auto num = [](const char* name, uint32_t* out) {
    std::string v = Env(name);
    if (v.empty()) return false;
    *out = static_cast<uint32_t>(std::strtoul(v.c_str(), nullptr, 10));
    return true;
  };
  if (t.job.empty() || t.step.empty() || !num("SLURM_NODEID", &t.node) ||
      !num("SLURM_LOCALID", &t.local) || !num("SLURM_PROCID", &t.global) ||
      !num("SLURM_STEP_NUM_NODES", &t.nnodes) || !num("SLURM_STEP_NUM_TASKS", &t.ntasks))
    return Status::Error(EINVAL,
                         "not a task of a Slurm step (SLURM_JOB_ID, SLURM_NODEID, ... missing)");
  if (t.dir.empty()) return Status::Error(EINVAL, "STASIS_RESTART_FROM is not set");
  STASIS_ASSIGN_OR_RETURN(t.local_count,
                          stasis::spank::TasksOnNode(Env("SLURM_STEP_TASKS_PER_NODE"), t.node));
  return t;
}

// The variables a restored task takes from the task it now is: Slurm's and
// PMIx's (its ids, its node, the new step's PMIx server).
bool IsStepVariable(const std::string& name) {
  return name.rfind("SLURM", 0) == 0 || name.rfind("PMIX_", 0) == 0 || name.rfind("PMI_", 0) == 0;
}

std::string StepEnvironment() {
  std::string out;
  for (char** e = environ; e && *e; ++e) {
    std::string kv = *e;
    size_t eq = kv.find('=');
    if (eq == std::string::npos || !IsStepVariable(kv.substr(0, eq))) continue;
    out += kv;
    out.push_back('\0');
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> ParseStepEnvironment(const std::string& block) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [k, v] : stasis::spank::ParseEnviron(block))
    if (IsStepVariable(k)) out.emplace_back(k, v);
  return out;
}

// Local task 0: gathers every local task's stdio, restores the node's
// context, tells each task its restored root, reaps the roots and tells
// each task its root's status. Answers "roots" for later checkpoints.
int RunRestorer(const TaskEnv& t) {
  const std::string name = RestorerName(t.job, t.step);
  UniqueFd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  struct sockaddr_un addr;
  socklen_t len = AbstractAddr(name, &addr);
  if (!listener || ::bind(listener.get(), reinterpret_cast<struct sockaddr*>(&addr), len) != 0 ||
      ::listen(listener.get(), 64) != 0)
    Die("node " + std::to_string(t.node) +
        ": cannot open the restorer's socket: " + std::strerror(errno));

  // The epoch and the node's file, with the store's checks; the counts of
  // the old step against ours before anything starts.
  auto sel = store::SelectForRestart(store::DefaultEnv(), t.dir, t.node, store::Access::Caller());
  if (!sel) Die(sel.error().message());
  // Total tasks and nodes of the checkpointed step.
  uint32_t old_tasks = 0;
  for (const auto& n : sel->epoch.manifest.nodes)
    old_tasks += static_cast<uint32_t>(n.tasks.size());
  uint32_t old_nodes = static_cast<uint32_t>(sel->epoch.manifest.nodes.size());
  if (old_nodes != t.nnodes || old_tasks != t.ntasks)
    Die("the checkpoint in " + sel->epoch.path + " has " + std::to_string(old_nodes) +
        " node(s) and " + std::to_string(old_tasks) + " task(s); this step has " +
        std::to_string(t.nnodes) + " node(s) and " + std::to_string(t.ntasks) + " task(s)");
  if (sel->node.tasks.size() != t.local_count)
    Die("node " + std::to_string(t.node) + " of the checkpoint ran " +
        std::to_string(sel->node.tasks.size()) + " task(s); this step runs " +
        std::to_string(t.local_count) + " on " + Env("SLURMD_NODENAME", "it"));

  // Gather: our own stdio, then every other local task's.
  struct Local {
    uint32_t global = 0, local = 0;
    UniqueFd conn;
    std::vector<UniqueFd> stdio;
    std::string env;  // NUL-separated NAME=value
    pid_t root = 0;
  };
  std::vector<Local> locals(1);
  locals[0].global = t.global;
  locals[0].local = t.local;
  locals[0].env = StepEnvironment();
  for (int fd : {0, 1, 2}) locals[0].stdio.emplace_back(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
  auto gather_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (locals.size() < t.local_count) {
    struct pollfd p {
      listener.get(), POLLIN, 0
    };
    if (::poll(&p, 1, 200) <= 0) {
      if (std::chrono::steady_clock::now() > gather_deadline)
        Die("node " + std::to_string(t.node) + ": only " + std::to_string(locals.size()) + " of " +
            std::to_string(t.local_count) + " local tasks reached the restorer in 60 s");
      continue;
    }
    UniqueFd c(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) continue;
    Local l;
    auto msg = RecvMsg(c.get(), &l.stdio);
    if (!msg || l.stdio.size() != 3) continue;
    size_t nul = msg->find('\0');
    std::istringstream in(msg->substr(0, nul));
    std::string word;
    in >> word >> l.global >> l.local;
    if (word != "task") continue;
    if (nul != std::string::npos) l.env = msg->substr(nul + 1);
    l.conn = std::move(c);
    locals.push_back(std::move(l));
  }
  std::sort(locals.begin(), locals.end(),
            [](const Local& a, const Local& b) { return a.local < b.local; });

  // The k-th task of the old node becomes our k-th local task.
  std::vector<uint32_t> old_ids = sel->node.tasks;
  std::sort(old_ids.begin(), old_ids.end());
  core::RestoreOptions ropt;
  ropt.restore_pids = ::geteuid() == 0;
  for (size_t k = 0; k < locals.size(); ++k) {
    core::RestoreOptions::TaskStdio s;
    s.task = old_ids[k];
    s.stdin_fd = locals[k].stdio[0].get();
    s.stdout_fd = locals[k].stdio[1].get();
    s.stderr_fd = locals[k].stdio[2].get();
    s.env = ParseStepEnvironment(locals[k].env);
    ropt.task_stdio.push_back(s);
  }
  // The batch script: Slurm wrote it anew into its spool for the requeued
  // job (same path, same content, another inode); bash reads it on fd 255.
  if (t.step == "batch" && !Env("STASIS_RESTART_ARGV0").empty())
    ropt.rewritten_ok.push_back(Env("STASIS_RESTART_ARGV0"));
  // Its output files, opened again by Slurm for the requeued job (per
  // --open-mode): the restored processes write through the new open files.
  if (t.step == "batch" && !locals.empty())
    for (int i : {1, 2}) {
      auto link = core::ReadLink("/proc/self/fd/" + std::to_string(i));
      if (link && !link->empty() && (*link)[0] == '/') ropt.reattach_files.emplace_back(*link, locals[0].stdio[i].get());
    }
  ::prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
  Result<core::RestoreResult> restored = Status::Error(EIO, "not restored");
  Status s = store::RestoreFromFolder(
      store::DefaultEnv(), t.dir, t.node, store::Access::Caller(),
      [&](const std::string& note) {
        if (t.node == 0) std::fprintf(stderr, "%s: %s\n", kTool, note.c_str());
      },
      [&](store::PreparedRestart& prep) -> Status {
        core::RestoreOptions o = ropt;
        o.check_image = prep.check_image;
        o.before_run = prep.before_run;
        o.source_path = prep.path;
        restored = core::Restore(prep.source.get(), o);
        return restored ? Status::Ok() : restored.error().Prefixed(prep.path);
      });
  if (!s.ok()) {
    for (auto& l : locals)
      if (l.conn) (void)SendMsg(l.conn.get(), "failed " + s.message());
    Die("node " + std::to_string(t.node) + ": " + s.message());
  }
  std::map<pid_t, size_t> by_root;
  for (const auto& r : restored->tasks) {
    auto it = std::find(old_ids.begin(), old_ids.end(), r.task);
    if (it == old_ids.end()) continue;
    size_t k = static_cast<size_t>(it - old_ids.begin());
    locals[k].root = r.pid;
    by_root[r.pid] = k;
    if (locals[k].conn) (void)SendMsg(locals[k].conn.get(), "root " + std::to_string(r.pid));
  }
  for (auto& l : locals) l.stdio.clear();
  g_root = locals[0].root;
  ForwardSignals();

  // Serve "roots" and reap until every restored task has ended.
  int own_status = 0;
  size_t alive = by_root.size();
  std::vector<UniqueFd> askers;
  while (alive > 0) {
    int st = 0;
    pid_t w;
    while ((w = ::waitpid(-1, &st, WNOHANG)) > 0) {
      auto it = by_root.find(w);
      if (it == by_root.end()) continue;  // an orphan we adopted
      Local& l = locals[it->second];
      if (l.conn) (void)SendMsg(l.conn.get(), "exit " + std::to_string(st));
      if (it->second == 0) own_status = st;
      l.root = 0;
      by_root.erase(it);
      --alive;
    }
    struct pollfd p {
      listener.get(), POLLIN, 0
    };
    if (::poll(&p, 1, 100) > 0) {
      UniqueFd c(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!c) continue;
      struct pollfd q {
        c.get(), POLLIN, 0
      };
      if (::poll(&q, 1, 2000) <= 0) continue;
      auto msg = RecvMsg(c.get());
      if (!msg || *msg != "roots") continue;
      std::string reply;
      // A later checkpoint names the tasks by this step's task ids.
      for (const auto& l : locals)
        if (l.root > 0) reply += std::to_string(l.global) + " " + std::to_string(l.root) + "\n";
      (void)SendMsg(c.get(), reply);
    }
  }
  ExitLike(own_status);
}

// Any other local task: hand our stdio to the restorer, wait for our root,
// exit with its status.
int RunRestartProxy(const TaskEnv& t) {
  const std::string name = RestorerName(t.job, t.step);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  Result<UniqueFd> conn = Status::Error(ECONNREFUSED, "");
  for (;;) {
    conn = ConnectRestorer(name);
    if (conn) break;
    if (std::chrono::steady_clock::now() > deadline)
      Die("task " + std::to_string(t.global) +
          ": no restorer on this node after 60 s: " + conn.error().message());
    ::usleep(20000);
  }
  UniqueFd c = std::move(*conn);
  std::string hello = "task " + std::to_string(t.global) + " " + std::to_string(t.local);
  hello.push_back('\0');
  hello += StepEnvironment();
  if (Status s = SendMsg(c.get(), hello, {0, 1, 2}); !s.ok()) Die(s.message());
  ForwardSignals();
  for (;;) {
    auto msg = RecvMsg(c.get());
    if (!msg) Die("task " + std::to_string(t.global) + ": the node's restorer went away");
    std::istringstream in(*msg);
    std::string word;
    in >> word;
    if (word == "failed") std::exit(1);  // the restorer printed why
    if (word == "root") {
      long pid = 0;
      in >> pid;
      g_root = static_cast<pid_t>(pid);
    } else if (word == "exit") {
      int st = 0;
      in >> st;
      ExitLike(st);
    }
  }
}

// A requeued --checkpoint job (auto-resume) with nothing to resume from:
// the task runs its own command from the start.
[[noreturn]] void RunOriginal(char** argv) {
  std::string argv0 = Env("STASIS_RESTART_ARGV0");
  ::unsetenv("STASIS_RESTART_TASK");
  ::unsetenv("STASIS_RESTART_FROM");
  ::unsetenv("STASIS_RESTART_ARGV0");
  ::unsetenv("STASIS_RESTART_AUTO");
  if (argv0.empty()) Die("the task's own command is unknown (STASIS_RESTART_ARGV0)");
  argv[0] = argv0.data();
  ::execvp(argv[0], argv);
  Die("cannot run " + argv0 + ": " + std::strerror(errno), 127);
}

int RunRestartTask(char** argv) {
  auto t = ReadTaskEnv();
  if (!t) Die(t.error().message());
  if (Env("STASIS_RESTART_AUTO") == "1" && Env("STASIS_RESTART_DONE") == "1") {
    // The plugin found this step marked done on every node before the
    // requeue: it is not run a second time.
    if (t->global == 0)
      std::fprintf(stderr, "%s: requeued job %s: step %s completed before the requeue; not run again\n",
                   kTool, t->job.c_str(), t->step.c_str());
    return 0;
  }
  if (Env("STASIS_RESTART_AUTO") == "1") {
    // A requeued job's script runs its steps again: each resumes from the
    // newest complete epoch of the same step, or starts afresh.
    std::string why = "no complete epoch of step " + t->step;
    std::string chosen;
    auto folder =
        store::JobFolder::Open(store::DefaultEnv(), t->dir, false, store::Access::Caller());
    if (!folder) why = folder.error().message();
    auto epochs = folder ? folder->List() : Result<std::vector<store::EpochInfo>>(folder.error());
    if (epochs) {
      for (auto it = epochs->rbegin(); it != epochs->rend() && chosen.empty(); ++it)
        if (it->state == store::EpochState::kComplete && it->manifest.step == t->step)
          chosen = it->path;
    }
    if (chosen.empty()) {
      if (t->global == 0)
        std::fprintf(stderr, "%s: requeued job %s: nothing to resume step %s from in %s (%s); starting afresh\n",
                     kTool, t->job.c_str(), t->step.c_str(), t->dir.c_str(), why.c_str());
      RunOriginal(argv);
    }
    if (t->global == 0)
      std::fprintf(stderr, "%s: requeued job %s: resuming step %s from %s\n", kTool,
                   t->job.c_str(), t->step.c_str(), chosen.c_str());
    t->dir = chosen;
  }
  return t->local == 0 ? RunRestorer(*t) : RunRestartProxy(*t);
}

const char* const kUsage =
    "stasis-step checkpoint JOB[.STEP] [--dir ROOT] [--keep N] [--vacate] [--final] [--timeout SECONDS]\n"
    "       stasis-step ticker --job JOB --interval SECONDS [--final-lead SECONDS]\n"
    "       stasis-step control JOB --op enable|disable|error [--dir ROOT]\n"
    "       stasis-step node --job JOB --step STEP [--dir ROOT] [--keep N] [--vacate] [--final] [--timeout "
    "S] (in a helper step)";

}  // namespace

int main(int argc, char** argv) {
  // A task of a --restart-from step: spank_stasis.so rewrote its command.
  const std::string restart = Env("STASIS_RESTART_TASK");
  if (!restart.empty() &&
      (restart == Env("SLURM_JOB_ID") + "." + Env("SLURM_STEP_ID", Env("SLURM_STEPID")) || IsBatchRestart()))
    return RunRestartTask(argv);
  if (argc < 2) stasis::cli::Usage(kTool, kUsage);
  std::string mode = argv[1];
  CheckpointArgs a;
  NodeOptions n;
  uint64_t interval = 0, final_lead = 0;
  std::string jobstep, op;
  for (int i = 2; i < argc; ++i) {
    std::string x = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) stasis::cli::Usage(kTool, kUsage);
      return argv[++i];
    };
    long v = 0;
    if (x == "--dir")
      a.root = n.root = next();
    else if (x == "--keep") {
      if (!stasis::cli::ParsePositive(next(), &v)) Die("--keep: not a positive number");
      a.keep = n.keep = static_cast<uint32_t>(v);
    } else if (x == "--vacate")
      a.vacate = n.vacate = true;
    else if (x == "--final")
      a.final = n.final = true;
    else if (x == "--timeout") {
      if (!stasis::cli::ParsePositive(next(), &v))
        Die("--timeout: not a positive number of seconds");
      a.timeout = n.timeout = static_cast<int>(v);
    } else if (x == "--job")
      a.job = n.job = next();
    else if (x == "--step")
      n.step = next();
    else if (x == "--op")
      op = next();
    else if (x == "--t0")
      n.t0 = std::strtod(next().c_str(), nullptr);
    else if (x == "--interval") {
      if (!stasis::cli::ParsePositive(next(), &v))
        Die("--interval: not a positive number of seconds");
      interval = static_cast<uint64_t>(v);
    } else if (x == "--final-lead") {
      if (!stasis::cli::ParsePositive(next(), &v))
        Die("--final-lead: not a positive number of seconds");
      final_lead = static_cast<uint64_t>(v);
    } else if (x[0] != '-' && jobstep.empty())
      jobstep = x;
    else
      stasis::cli::Usage(kTool, kUsage);
  }
  if (mode == "node") {
    if (n.job.empty() || n.step.empty()) stasis::cli::Usage(kTool, kUsage);
    return RunNode(n);
  }
  if (mode == "checkpoint") {
    if (!stasis::spank::ParseJobStep(jobstep, &a.job, &a.step))
      Die("'" + jobstep + "' is not a job id (JOB or JOB.STEP)");
    return RunCheckpoint(a);
  }
  if (mode == "control") {
    // stasis-step control JOB enable|disable|error [--dir ROOT]
    std::string job, step;
    if (!stasis::spank::ParseJobStep(jobstep, &a.job, &step))
      Die("'" + jobstep + "' is not a job id");
    if (op != "enable" && op != "disable" && op != "error")
      Die("--op must be enable, disable or error");
    return RunControl(a, op);
  }
  if (mode == "control-local") {
    if (a.job.empty() || (op != "enable" && op != "disable" && op != "error"))
      stasis::cli::Usage(kTool, kUsage);
    return RunControlLocal(a.job, op, a.root);
  }
  if (mode == "ticker") {
    if (a.job.empty() || !interval) stasis::cli::Usage(kTool, kUsage);
    return RunTicker(a.job, interval, final_lead);
  }
  stasis::cli::Usage(kTool, kUsage);
}

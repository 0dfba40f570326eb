// stasisd's request workers; see worker.h.
#include "engine/daemon/worker.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <thread>

#include "engine/base/fd.h"
#include "engine/base/io.h"
#include "engine/core/context_file.h"
#include "engine/core/engine.h"
#include "engine/core/procfs.h"
#include "engine/daemon/caller_sandbox.h"
#include "engine/daemon/state_record.h"
#include "engine/format/context_io.h"
#include "engine/store/context_file.h"
#include "engine/store/store.h"

namespace stasis::daemon {

namespace proto = format::proto;

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> g_cancel{false};

void OnCancel(int) { g_cancel = true; }

// The request's limits on the context stream: cancel (SIGTERM from
// stasisd), the client's time limit, the configured bandwidth cap.
class RequestSink : public ByteSink {
 public:
  RequestSink(ByteSink* inner, uint64_t bytes_per_second, Clock::time_point deadline)
      : inner_(inner), rate_(bytes_per_second), deadline_(deadline), start_(Clock::now()) {}
  Status Write(const void* data, size_t n) override {
    STASIS_RETURN_IF_ERROR(Check());
    STASIS_RETURN_IF_ERROR(inner_->Write(data, n));
    return Throttle(n);
  }
  char* Borrow(size_t* size) override { return inner_->Borrow(size); }
  Status WriteBorrowed(char* buffer, size_t n) override {
    STASIS_RETURN_IF_ERROR(inner_->WriteBorrowed(buffer, n));
    STASIS_RETURN_IF_ERROR(Check());
    return Throttle(n);
  }
  Status Throttle(size_t n) {
    written_ += n;
    if (rate_) {
      // Sleep until the average rate is back under the cap.
      for (;;) {
        double due = static_cast<double>(written_) / static_cast<double>(rate_);
        double elapsed = std::chrono::duration<double>(Clock::now() - start_).count();
        if (elapsed >= due) break;
        std::this_thread::sleep_for(std::chrono::duration<double>(std::min(due - elapsed, 0.05)));
        STASIS_RETURN_IF_ERROR(Check());
      }
    }
    return Status::Ok();
  }
  Status Sync() override {
    STASIS_RETURN_IF_ERROR(Check());
    return inner_->Sync();
  }
  uint64_t Offset() const override { return inner_->Offset(); }

 private:
  Status Check() const {
    if (g_cancel) return Status::Error(ECANCELED, "the request was cancelled");
    if (deadline_ != Clock::time_point() && Clock::now() > deadline_)
      return Status::Error(ETIMEDOUT, "the request's time limit was reached");
    return Status::Ok();
  }
  ByteSink* inner_;
  uint64_t rate_;
  Clock::time_point deadline_, start_;
  uint64_t written_ = 0;
};

void Send(int fd, const std::string& bytes) {
  if (fd < 0) return;
  while (::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) < 0 && errno == EINTR) {
  }
}

void Reply(const WorkerTask& task, proto::Reply reply) {
  reply.request_id = task.id;
  if (reply.message.size() > 4000) reply.message.resize(4000);
  auto bytes = proto::EncodeReply(reply);
  if (!bytes) return;
  Send(task.client_fd, *bytes);
  Send(task.report_fd, *bytes);
}

proto::Reply Failure(const Status& s) {
  proto::Reply r;
  r.code = s.code() ? s.code() : EIO;
  r.message = s.message();
  return r;
}

std::string Dirname(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

// The roots as they resolve now (a root that does not exist allows nothing).
std::vector<std::string> ResolvedRoots(const Config& config) {
  std::vector<std::string> out;
  for (const std::string& r : config.allowed_roots) {
    char buf[PATH_MAX];
    if (::realpath(r.c_str(), buf)) out.emplace_back(buf);
  }
  return out;
}

std::string JoinRoots(const Config& config) {
  std::string s;
  for (const std::string& r : config.allowed_roots) s += (s.empty() ? "" : ", ") + r;
  return s.empty() ? "none" : s;
}

// A user's context files live under the allowed roots; the folder is
// resolved with the user's own rights (TakeFsIdentity first).
Status CheckUnderRoots(const Config& config, const Peer& peer, const std::string& path,
                       const char* what) {
  if (peer.uid == 0) return Status::Ok();
  std::string dir = Dirname(path);
  char buf[PATH_MAX];
  if (!::realpath(dir.c_str(), buf))
    return Status::FromErrno(errno, std::string(what) + " folder " + dir);
  if (!UnderRoots(buf, ResolvedRoots(config)))
    return Status::Error(
        EPERM, "uid " + std::to_string(peer.uid) + " may not " + what + " " + path + ": " + buf +
                   " is outside the allowed checkpoint roots (" + JoinRoots(config) + ")");
  return Status::Ok();
}

// EACCES on a user's path is a refusal like any other: EPERM, named.
Status AsRefusal(const Status& s, const Peer& peer) {
  if (s.code() == EACCES)
    return Status::Error(EPERM, s.message() + " (as uid " + std::to_string(peer.uid) + ")");
  return s;
}

// The state record of a checkpoint into a path (WorkerTask::state_file),
// written once the file exists: whose it is, and the folder and file as the
// kernel identifies them (resolved now, with the user's rights, the way the
// writer just resolved them). A restarted stasisd removes that file, as its
// owner, only if the same folder still holds the same file
// (server.cc, CleanUpAfterKilledInstance). Nothing recorded: nothing removed.
void RecordFileForCleanup(const WorkerTask& task) {
  if (task.state_file.empty()) return;
  const proto::Request& req = task.request;
  std::string file = req.write_mode == proto::kWriteClobber
                         ? req.path
                         : store::ContextFileWriter::TempPathFor(req.path, ::getpid());
  StateRecord r = NewStateRecord(task.id, ::getpid(), task.peer, req);
  r.name = file.substr(file.rfind('/') + 1);
  UniqueFd dir(::open(Dirname(file).c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  struct stat dst, fst;
  char link[PATH_MAX];
  ssize_t n = dir ? ::readlink(("/proc/self/fd/" + std::to_string(dir.get())).c_str(), link,
                               sizeof link - 1)
                  : -1;
  if (n <= 0 || link[0] != '/' || ::fstat(dir.get(), &dst) != 0 ||
      ::fstatat(dir.get(), r.name.c_str(), &fst, AT_SYMLINK_NOFOLLOW) != 0 ||
      !S_ISREG(fst.st_mode) || fst.st_uid != task.peer.uid)
    return;  // a folder or file changed under us: leave it to its owner
  r.folder.assign(link, static_cast<size_t>(n));
  r.folder_dev = dst.st_dev;
  r.folder_ino = dst.st_ino;
  r.file_dev = fst.st_dev;
  r.file_ino = fst.st_ino;
  // The state folder is root's.
  if (!DropFsIdentity().ok()) return;
  WriteStateRecordFile(task.state_file, r).ok();
  TakeFsIdentity(task.peer).ok();
}

bool IsContextFile(int dirfd, const char* name) {
  int fd = ::openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  struct stat st;
  bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  char head[8];
  ssize_t n = regular ? ::pread(fd, head, sizeof head, 0) : -1;
  ::close(fd);
  return n > 0 && format::HasContextMagic(std::string_view(head, static_cast<size_t>(n)));
}

// list: the user's context files in a folder, read with the user's rights.
// In a worker, so that a huge, slow or hostile folder (a FUSE mount of the
// user's) holds one worker, never stasisd; bounded in entries and time.
proto::Reply RunList(const WorkerTask& task) {
  const proto::Request& req = task.request;
  const Peer& peer = task.peer;
  constexpr size_t kMaxExamined = 200000;
  constexpr auto kMaxTime = std::chrono::seconds(10);
  if (req.path.empty() || req.path[0] != '/')
    return Failure(Status::Error(EINVAL, "'" + req.path + "' is not an absolute path"));
  Status s = TakeFsIdentity(peer);
  if (!s.ok()) return Failure(s);
  DIR* d = ::opendir(req.path.c_str());
  if (!d) {
    int err = errno;
    return Failure(Status::Error(err == EACCES ? EPERM : err,
                                 "cannot list " + req.path + ": " + std::strerror(err)));
  }
  proto::Reply r;
  auto start = Clock::now();
  size_t examined = 0;
  std::string cut;
  while (struct dirent* e = ::readdir(d)) {
    if (++examined > kMaxExamined || Clock::now() - start > kMaxTime || g_cancel) {
      cut = "; stopped after " + std::to_string(examined - 1) + " entries";
      break;
    }
    struct stat st;
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    if (peer.uid != 0 && st.st_uid != peer.uid) continue;
    if (!IsContextFile(::dirfd(d), e->d_name)) continue;
    if (r.files.size() >= proto::kMaxListed) break;
    proto::FileEntry f;
    f.path = req.path + "/" + e->d_name;
    f.size = static_cast<uint64_t>(st.st_size);
    f.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    f.uid = st.st_uid;
    r.files.push_back(f);
  }
  ::closedir(d);
  r.message = std::to_string(r.files.size()) + " context files" + cut;
  return r;
}

// delete: one context file of the user's, through its folder, no symlink.
proto::Reply RunDelete(const WorkerTask& task) {
  const proto::Request& req = task.request;
  const Peer& peer = task.peer;
  if (req.path.empty() || req.path[0] != '/')
    return Failure(Status::Error(EINVAL, "'" + req.path + "' is not an absolute path"));
  Status s = TakeFsIdentity(peer);
  if (!s.ok()) return Failure(s);
  std::string dir = Dirname(req.path);
  std::string base = req.path.substr(req.path.rfind('/') + 1);
  UniqueFd dfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  struct stat st;
  auto refused = [](int err, const std::string& what) {
    return Failure(Status::Error(err == EACCES ? EPERM : err, what + ": " + std::strerror(err)));
  };
  if (!dfd) return refused(errno, "cannot open folder " + dir);
  if (::fstatat(dfd.get(), base.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
    return refused(errno, req.path);
  if (!S_ISREG(st.st_mode) || !IsContextFile(dfd.get(), base.c_str()))
    return Failure(Status::Error(EINVAL, req.path + " is not a context file"));
  if (peer.uid != 0 && st.st_uid != peer.uid)
    return Failure(Status::Error(EPERM, req.path + " belongs to uid " + std::to_string(st.st_uid)));
  if (::unlinkat(dfd.get(), base.c_str(), 0) != 0) return refused(errno, "delete " + req.path);
  proto::Reply r;
  r.message = "deleted " + req.path;
  return r;
}

// A checkpoint into a store node file the client created (kFlagHold): the
// context is written with the store's writer (streaming, CRC32C, the
// bandwidth cap), fsynced, reported as kReplyWritten, and the processes stay
// frozen until the client answers kCommit (its MANIFEST is durable). A
// hang-up or anything else resumes them untouched.
struct HeldCommit {
  const WorkerTask* task;
  store::NodeFileSink* sink;
  Clock::time_point deadline;
  uint32_t hold_timeout;  // seconds one wait for the client may take (config)
};

// Sends `reply` to the client of a held checkpoint and waits for its `op`.
Status AskAndWait(HeldCommit* h, const proto::Reply& reply, proto::Op op) {
  auto bytes = proto::EncodeReply(reply);
  if (!bytes) return bytes.error();
  Send(h->task->client_fd, *bytes);
  const std::string what = proto::OpName(op);
  std::string buf(proto::kMaxMessageSize + 1, '\0');
  // The processes may be frozen meanwhile: never wait longer than the
  // configured hold_timeout, whatever the client's own time limit.
  Clock::time_point hold_end =
      h->hold_timeout ? Clock::now() + std::chrono::seconds(h->hold_timeout) : Clock::time_point();
  for (;;) {
    int timeout = -1;
    for (auto [end, why] :
         {std::pair{h->deadline, "the request's time limit was reached before the " + what},
          std::pair{hold_end, "no " + what + " from the client within " +
                                  std::to_string(h->hold_timeout) + " s (hold_timeout)"}}) {
      if (end == Clock::time_point()) continue;
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
      if (left <= 0) return Status::Error(ETIMEDOUT, why);
      int ms = static_cast<int>(std::min<long long>(left, 1000));
      timeout = timeout < 0 ? ms : std::min(timeout, ms);
    }
    struct pollfd p = {h->task->client_fd, POLLIN, 0};
    int r = ::poll(&p, 1, timeout);
    if (g_cancel) return Status::Error(ECANCELED, "the request was cancelled");
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return Status::FromErrno(errno, "wait for the " + what);
    if (r == 0) continue;
    ssize_t n = ::recv(h->task->client_fd, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Status::Error(ECANCELED, "the client went away before the " + what);
    auto req = proto::DecodeRequest(std::string_view(buf.data(), static_cast<size_t>(n)));
    if (!req) return req.error();
    if (req->op != op)
      return Status::Error(EPROTO, "expected " + what + ", got " + proto::OpName(req->op));
    return Status::Ok();
  }
}

Status WaitForCommit(void* arg) {
  auto* h = static_cast<HeldCommit*>(arg);
  auto file = h->sink->Finish();
  if (!file) return file.error();
  proto::Reply written;
  written.kind = proto::kReplyWritten;
  written.request_id = h->task->id;
  written.bytes = file->size;
  written.crc32c = file->crc32c;
  written.message = "written; waiting for the commit";
  return AskAndWait(h, written, proto::Op::kCommit);
}

Result<core::CheckpointStats> HeldCheckpoint(const Config& config, const WorkerTask& task,
                                             core::CheckpointOptions& opt,
                                             Clock::time_point deadline) {
  const proto::Request& req = task.request;
  int fd = task.attached.at(0);
  char link[PATH_MAX];
  ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
  if (n > 0 && link[0] == '/') opt.dest = std::string(link, static_cast<size_t>(n));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
    return Status::Error(EINVAL, "a held checkpoint's destination must be a regular file");
  if (task.peer.uid != 0 && st.st_uid != task.peer.uid)
    return Status::Error(EPERM, "the destination belongs to uid " + std::to_string(st.st_uid));
  opt.job = req.job;
  opt.step = req.step;
  opt.epoch = req.epoch;
  opt.node_index = req.node;
  store::WriteOptions wo;
  wo.bandwidth = config.bandwidth_limit;
  store::NodeFileSink sink(
      store::WrapFd(UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3)),
                    opt.dest.empty() ? "the node file" : opt.dest, wo.strategy),
      wo);
  std::string where = opt.dest.empty() ? "the node file's file system" : opt.dest;
  opt.before_write = [fd, where](uint64_t bytes) {
    return store::CheckFreeSpace(store::DefaultEnv(), fd, bytes, where);
  };
  RequestSink limited(&sink, 0, deadline);  // cancel and deadline; the sink throttles
  HeldCommit hold{&task, &sink, deadline, config.hold_timeout};
  if (req.flags & proto::kFlagBarrier) {
    // Every node's callbacks are done before any node freezes.
    opt.after_callbacks = [&hold, &task]() {
      proto::Reply quiesced;
      quiesced.kind = proto::kReplyQuiesced;
      quiesced.request_id = task.id;
      quiesced.message = "quiesced; waiting to proceed";
      return AskAndWait(&hold, quiesced, proto::Op::kProceed);
    };
  }
  if (req.flags & proto::kFlagSnapshot) {
    opt.before_release = [&hold, &task](bool snapshot, const std::string& why_not) {
      proto::Reply frozen;
      frozen.kind = proto::kReplyFrozen;
      frozen.request_id = task.id;
      // (The final reply's snapshot fields say it to the client.)
      frozen.message = snapshot ? "frozen, snapshot taken; waiting to proceed"
                       : why_not.empty()
                           ? "frozen; waiting to proceed"
                           : "frozen, no snapshot (" + why_not + "); waiting to proceed";
      return AskAndWait(&hold, frozen, proto::Op::kProceed);
    };
  }
  return core::Checkpoint(opt, &limited, WaitForCommit, &hold);
}

proto::Reply RunCheckpoint(const Config& config, const WorkerTask& task) {
  const proto::Request& req = task.request;
  const Peer& peer = task.peer;
  core::CheckpointOptions opt;
  KnobsFromEnvironment(&opt);  // stasisd's environment
  opt.target = static_cast<pid_t>(req.target);
  opt.scope = static_cast<format::ScopeKind>(req.scope);
  for (size_t i = 0; i < req.task_pids.size(); ++i)
    opt.tasks.push_back({static_cast<pid_t>(req.task_pids[i]), req.task_ids[i]});
  opt.after = static_cast<core::AfterCheckpoint>(req.after);
  opt.save_exe = req.flags & proto::kFlagSaveExe;
  opt.save_private = req.flags & proto::kFlagSavePrivate;
  opt.save_shared = req.flags & proto::kFlagSaveShared;
  opt.outside_sockets = (req.flags & proto::kFlagCloseSockets) ? core::OutsideSockets::kCloseAll
                        : (req.flags & proto::kFlagCloseUnconnected)
                            ? core::OutsideSockets::kCloseUnconnected
                            : core::OutsideSockets::kRefuse;
  for (size_t i = 0; i < req.transient_dirs.size() && i < req.transient_notes.size(); ++i)
    opt.transient_dirs.push_back({req.transient_dirs[i], req.transient_notes[i]});
  opt.final = req.flags & proto::kFlagFinal;
  // Recorded and compared with each process's own tracking page; a wrong
  // claim only makes the user's own context store whole.
  opt.track = req.flags & proto::kFlagTrack;
  opt.parent_token = opt.track ? req.parent_token : 0;
  opt.parent = opt.parent_token ? req.parent : "";
  if (opt.parent_token && opt.parent.empty()) opt.parent_token = 0;
  opt.compress = static_cast<format::PageCodec>(req.compress);
  opt.compress_level = static_cast<int>(req.compress_level);
  opt.after_signal = static_cast<int>(req.after_signal);
  opt.tool_argv = req.argv;
  // A user may have checkpointed only what it could ptrace itself: its
  // uid and gid, and the permitted capabilities of the client (normally
  // none), read while it waits for this answer; 0 if that pid no longer
  // shows the peer's uid and gid (then no capability is granted).
  opt.owner_uid = peer.uid == 0 ? -1 : static_cast<int64_t>(peer.uid);
  opt.owner_gid = static_cast<int64_t>(peer.gid);
  if (auto client = core::ReadTraceCreds(peer.pid);
      client && client->uid == peer.uid && client->gid == peer.gid)
    opt.owner_caps = client->cap_permitted;
  opt.checkpointer = peer.pid;
  opt.capture_backend = config.capture_backend;
  opt.settle_before_write = true;  // a killed worker must leave running processes
  // The requester (libcr) must be the user's own process too.
  opt.requester = peer.pid;
  if (req.requester) {
    auto uid = core::ProcessUid(static_cast<pid_t>(req.requester));
    if (uid && (peer.uid == 0 || *uid == peer.uid))
      opt.requester = static_cast<pid_t>(req.requester);
  }
  opt.callback_timeout_seconds =
      req.callback_timeout_ms ? req.callback_timeout_ms / 1000.0 : config.callback_timeout;
  Clock::time_point deadline;
  if (req.time_limit_ms) deadline = Clock::now() + std::chrono::milliseconds(req.time_limit_ms);

  Status s = TakeFsIdentity(peer);
  if (!s.ok()) return Failure(s);
  Result<core::CheckpointStats> stats = Status::Error(EIO, "not run");
  std::string dest;
  if (req.flags & proto::kFlagHold) {
    // Held: part of an epoch across nodes. With kFlagSnapshot the client
    // answers kReplyFrozen once every node is frozen, and the tree runs on
    // while its pages are written; without it, it stays frozen until the
    // coordinator commits (no node may run past the cut before every node
    // is frozen).
    opt.snapshot = req.flags & proto::kFlagSnapshot;
    stats = HeldCheckpoint(config, task, opt, deadline);
    dest = opt.dest.empty() ? "the client's node file" : opt.dest;
  } else if (req.attached & proto::kAttachDest) {
    int fd = task.attached.at(0);
    char link[PATH_MAX];
    ssize_t n = ::readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
    if (n > 0 && link[0] == '/') opt.dest = std::string(link, static_cast<size_t>(n));
    dest = opt.dest.empty() ? "the client's fd" : opt.dest;
    FdSink fd_sink(UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3)), "the client's fd");
    RequestSink sink(&fd_sink, config.bandwidth_limit, deadline);
    stats = core::Checkpoint(opt, &sink, core::SyncFdSink, &fd_sink);
  } else {
    dest = opt.dest = req.path;
    if (req.path.empty() || req.path[0] != '/')
      return Failure(
          Status::Error(EINVAL, "destination '" + req.path + "' is not an absolute path"));
    s = CheckUnderRoots(config, peer, req.path, "write");
    if (!s.ok()) return Failure(AsRefusal(s, peer));
    auto writer =
        store::ContextFileWriter::Open(req.path, static_cast<store::WriteMode>(req.write_mode));
    if (!writer) return Failure(AsRefusal(writer.error(), peer));
    // From here a killed worker leaves a file: say where, for the next stasisd.
    RecordFileForCleanup(task);
    RequestSink sink((*writer)->sink(), config.bandwidth_limit, deadline);
    stats = core::Checkpoint(opt, &sink, store::CommitContextFile, writer->get());
    writer->reset();  // an uncommitted temporary file goes away here
  }
  if (!stats) return Failure(stats.error());
  proto::Reply r;
  r.message = "checkpointed " + std::to_string(stats->processes) + " processes to " + dest;
  r.processes = stats->processes;
  r.threads = stats->threads;
  r.bytes = stats->bytes;
  r.page_bytes = stats->page_bytes;
  r.pause_us = static_cast<uint64_t>(stats->pause_seconds * 1e6);
  r.total_us = static_cast<uint64_t>(stats->total_seconds * 1e6);
  r.callbacks_us = static_cast<uint64_t>(stats->callbacks_seconds * 1e6);
  r.snapshot = stats->snapshot ? 1 : 0;
  r.snapshot_note = stats->snapshot_note;
  r.parent_bytes = stats->parent_page_bytes;
  r.track_note = stats->track_note.substr(0, 4000);
  for (pid_t p : stats->pids) r.pids.push_back(static_cast<uint32_t>(p));
  return r;
}

// Becomes `uid`/`gid`/`groups` for good, keeping only
// CAP_CHECKPOINT_RESTORE (choosing pids with clone3 set_tid) and
// CAP_NET_ADMIN (rebuilding TCP connections in repair mode). The restored
// tree inherits them and has them taken away before it runs
// (RestoreOptions::drop_capabilities).
Status BecomeOwner(uid_t uid, gid_t gid, const std::vector<gid_t>& groups) {
  if (::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0) return Status::FromErrno(errno, "PR_SET_KEEPCAPS");
  if (::setgroups(groups.size(), groups.data()) != 0) return Status::FromErrno(errno, "setgroups");
  if (::setresgid(gid, gid, gid) != 0) return Status::FromErrno(errno, "setresgid");
  if (::setresuid(uid, uid, uid) != 0) return Status::FromErrno(errno, "setresuid");
  struct {
    uint32_t version;
    int32_t pid;
  } header{0x20080522, 0};
  struct {
    uint32_t effective, permitted, inheritable;
  } data[2] = {{1u << 12, 1u << 12, 0},  // CAP_NET_ADMIN = 12: TCP repair mode (fd/tcp_socket.cc)
               {1u << (40 - 32), 1u << (40 - 32), 0}};  // CAP_CHECKPOINT_RESTORE = 40
  if (::syscall(SYS_capset, &header, data) != 0)
    return Status::FromErrno(errno, "keep CAP_CHECKPOINT_RESTORE and CAP_NET_ADMIN");
  ::prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
  // Changing uids made us undumpable; the tree we fork must stay the
  // user's to inspect and checkpoint.
  ::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
  return Status::Ok();
}

// The restored tree never gets more privilege than its context file's
// owner: the worker becomes that owner (keeping only
// CAP_CHECKPOINT_RESTORE, which the tree loses before it runs), or stays
// root for root's files. `file_gid` is the group when the owner has no
// user entry.
Status BecomeFileOwner(uid_t owner, gid_t file_gid, const Peer& peer, core::RestoreOptions* opt) {
  if (owner == 0) return DropFsIdentity();
  gid_t gid = file_gid;
  std::vector<gid_t> groups;
  if (owner == peer.uid) {
    gid = peer.gid;
    groups = peer.groups;
  } else if (struct passwd* pw = ::getpwuid(owner)) {
    gid = pw->pw_gid;
    int n = 256;
    groups.resize(static_cast<size_t>(n));
    if (::getgrouplist(pw->pw_name, gid, groups.data(), &n) < 0) n = 0;
    groups.resize(static_cast<size_t>(n));
  }
  Status s = DropFsIdentity();
  if (s.ok()) s = BecomeOwner(owner, gid, groups);
  if (!s.ok()) return s.Prefixed("take the identity of uid " + std::to_string(owner));
  opt->drop_capabilities = true;
  return Status::Ok();
}

// The restart's time bound: until the tree is let go, the worker answers
// ETIMEDOUT and exits when it is reached; the processes it was building die
// with it (PTRACE_O_EXITKILL). A tree already running is never touched.
std::string g_timeout_reply;
int g_timeout_fds[2] = {-1, -1};

void OnRestartTimeout(int) {
  for (int fd : g_timeout_fds)
    if (fd >= 0) ::send(fd, g_timeout_reply.data(), g_timeout_reply.size(), MSG_NOSIGNAL);
  std::_Exit(1);
}

void ArmRestartTimeout(const WorkerTask& task, Clock::time_point deadline, uint64_t seconds) {
  if (deadline == Clock::time_point()) return;
  proto::Reply r;
  r.request_id = task.id;
  r.code = ETIMEDOUT;
  r.message = "the restart did not finish within its time limit (" + std::to_string(seconds) +
              " s, restart_timeout in stasis.yaml); nothing of it runs";
  auto bytes = proto::EncodeReply(r);
  if (!bytes) return;
  g_timeout_reply = *bytes;
  g_timeout_fds[0] = task.client_fd;
  g_timeout_fds[1] = task.report_fd;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = OnRestartTimeout;
  ::sigaction(SIGALRM, &sa, nullptr);
  auto left =
      std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
  if (left < 1000) left = 1000;
  struct itimerval it = {
      {0, 0}, {static_cast<time_t>(left / 1000000), static_cast<suseconds_t>(left % 1000000)}};
  ::setitimer(ITIMER_REAL, &it, nullptr);
}

void DisarmRestartTimeout() {
  sigset_t alrm;
  sigemptyset(&alrm);
  sigaddset(&alrm, SIGALRM);
  ::sigprocmask(SIG_BLOCK, &alrm, nullptr);
  struct itimerval off = {};
  ::setitimer(ITIMER_REAL, &off, nullptr);
}

pid_t g_restorer = 0;
void ForwardCancel(int) {
  if (g_restorer > 0) ::kill(g_restorer, SIGTERM);
}

[[noreturn]] void RunRestart(const Config& config, const WorkerTask& task) {
  const proto::Request& req = task.request;
  const Peer& peer = task.peer;
  auto fail = [&](const Status& s) {
    DisarmRestartTimeout();
    Reply(task, Failure(s));
    std::_Exit(1);
  };
  // The time bound: the configured one, or the client's if shorter.
  uint64_t limit_ms = config.restart_timeout * 1000;
  if (req.time_limit_ms && (!limit_ms || req.time_limit_ms < limit_ms))
    limit_ms = req.time_limit_ms;
  Clock::time_point deadline;
  if (limit_ms) deadline = Clock::now() + std::chrono::milliseconds(limit_ms);
  if (req.path.empty() || req.path[0] != '/')
    fail(Status::Error(EINVAL, "context file '" + req.path + "' is not an absolute path"));
  // A session of our own, without a terminal: the restored tree never
  // shares stasisd's session or controlling terminal (stasisd may run on
  // one). Restored session leaders make their own below.
  if (::getsid(0) != ::getpid() && ::setsid() < 0)
    fail(Status::FromErrno(errno, "start a session for the restart"));
  // The client's confinement, before any path of the request is looked at
  // (they are in its view) and anything is forked.
  auto sandbox = EnterCallerSandbox(task.client_fd, peer);
  if (!sandbox) fail(sandbox.error());
  // The restorer is a child: it is in the client's pid namespace (ours is
  // the parent's) and never a session leader, so no terminal it opens can
  // become the session's.
  pid_t restorer = ::fork();
  if (restorer < 0) fail(Status::FromErrno(errno, "fork the restorer"));
  if (restorer > 0) {
    ::close(task.client_fd);
    ::close(task.report_fd);
    for (int fd : task.attached) ::close(fd);
    g_restorer = restorer;
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_handler = ForwardCancel;
    ::sigaction(SIGTERM, &sa, nullptr);
    int status = 0;
    while (::waitpid(restorer, &status, 0) < 0 && errno == EINTR) {
    }
    std::_Exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
  }
  ArmRestartTimeout(task, deadline, (limit_ms + 999) / 1000);
  {
    // /proc must show the pid namespace we live in (the restorer finds its
    // processes there by number).
    char self[32];
    ssize_t n = ::readlink("/proc/self", self, sizeof self - 1);
    if (n <= 0 || std::string(self, static_cast<size_t>(n)) != std::to_string(::getpid()))
      fail(Status::Error(EPERM,
                         "the client's /proc is not of its pid namespace; run `cr_restart "
                         "--no-daemon` inside it"));
  }
  Status s = TakeFsIdentity(peer);
  if (!s.ok()) fail(s);
  s = CheckUnderRoots(config, peer, req.path, "read");
  if (!s.ok()) fail(AsRefusal(s, peer));
  core::RestoreOptions opt;
  KnobsFromEnvironment(&opt);  // stasisd's environment
  opt.restore_pids = !(req.flags & proto::kFlagNoRestorePid);
  opt.outer_seccomp_filters = sandbox->seccomp_filters;
  opt.clamp_limits = true;
  opt.before_release = DisarmRestartTimeout;
  opt.after = static_cast<core::AfterRestore>(req.after);
  for (const std::string& r : req.relocate) {
    size_t eq = r.find('=');
    opt.relocate.emplace_back(r.substr(0, eq), r.substr(eq + 1));
  }
  UniqueFd null_fd(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (req.attached & proto::kAttachStdio) {
    opt.stdin_fd = task.attached.at(0);
    opt.stdout_fd = task.attached.at(1);
    opt.stderr_fd = task.attached.at(2);
  } else {
    opt.stdin_fd = opt.stdout_fd = opt.stderr_fd = null_fd.get();
  }
  Result<core::RestoreResult> result = Status::Error(EIO, "not restored");
  std::string source_path = req.path;
  std::vector<std::string> notes;  // a store restart: what cr_restart prints
  struct stat st;
  if (::stat(req.path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    // An epoch or job folder of the checkpoint store, selected as the user.
    std::optional<uint32_t> node;
    if (req.flags & proto::kFlagNode) node = req.node;
    store::Access access;
    access.uid = peer.uid;
    access.any_owner = peer.uid == 0;
    std::optional<uid_t> owner;
    s = store::RestoreFromFolder(
        store::DefaultEnv(), req.path, node, access,
        [&](const std::string& n) { notes.push_back(n); },
        [&](store::PreparedRestart& prep) -> Status {
          if (!owner) {
            STASIS_RETURN_IF_ERROR(BecomeFileOwner(prep.owner, prep.group, peer, &opt));
            owner = prep.owner;
          } else if (prep.owner != *owner) {
            return Status::Error(EPERM,
                                 prep.path + " has another owner than the damaged epoch's file");
          }
          opt.check_image = prep.check_image;
          opt.before_run = prep.before_run;
          opt.source_path = source_path = prep.path;
          result = core::Restore(prep.source.get(), opt);
          return result ? Status::Ok() : result.error().Prefixed(prep.path);
        });
    if (!s.ok()) fail(AsRefusal(s, peer));
  } else {
    // No symlink, and nothing but a regular file: a FIFO or a device is
    // refused at once instead of blocking the worker (O_NONBLOCK open).
    auto opened = OpenRegularNoFollow(AT_FDCWD, req.path, req.path);
    if (!opened) {
      if (opened.error().code() == ELOOP) fail(Status::Error(EPERM, opened.error().message()));
      fail(AsRefusal(opened.error(), peer));
    }
    UniqueFd file = std::move(*opened);
    if (::fstat(file.get(), &st) != 0) fail(Status::FromErrno(errno, "stat " + req.path));
    if (peer.uid != 0 && st.st_uid != peer.uid)
      fail(Status::Error(EPERM, req.path + " belongs to uid " + std::to_string(st.st_uid) +
                                    ", not to uid " + std::to_string(peer.uid)));
    s = BecomeFileOwner(st.st_uid, st.st_gid, peer, &opt);
    if (!s.ok()) fail(s);
    opt.source_path = req.path;
    PrefetchSource source(std::move(file), req.path);
    result = core::Restore(&source, opt);
    if (!result) fail(result.error().Prefixed(req.path));
  }
  for (int fd : task.attached) ::close(fd);
  null_fd.reset();
  proto::Reply started;
  started.kind = proto::kReplyStarted;
  started.root_pid = static_cast<uint32_t>(result->root_pid);
  started.processes = result->processes;
  started.threads = result->threads;
  started.page_bytes = result->page_bytes;
  started.total_us = static_cast<uint64_t>(result->seconds * 1e6);
  started.new_pid_namespace = result->in_new_pid_namespace;
  started.message =
      "restored " + std::to_string(result->processes) + " processes from " + source_path;
  if (!sandbox->joined.empty()) {
    std::string joined;
    for (const auto& j : sandbox->joined) joined += (joined.empty() ? "" : ", ") + j;
    started.message += " (in the client's " + joined + ")";
  }
  if (!notes.empty()) {
    // A restart from the store: the lines cr_restart prints.
    started.message.clear();
    for (const auto& n : notes) started.message += (started.message.empty() ? "" : "\n") + n;
  }
  Reply(task, started);
  // Cancelling does not apply to a running tree; stasisd has its answer.
  ::signal(SIGTERM, SIG_IGN);
  ::close(task.report_fd);
  int status = 0;
  while (::waitpid(result->wait_pid, &status, 0) < 0 && errno == EINTR) {
  }
  proto::Reply exited;
  exited.kind = proto::kReplyExited;
  exited.root_pid = started.root_pid;
  exited.exit_status = status;
  auto bytes = proto::EncodeReply(exited);
  if (bytes) Send(task.client_fd, *bytes);
  std::_Exit(0);
}

}  // namespace

StateRecord NewStateRecord(uint64_t id, pid_t worker, const Peer& peer, const proto::Request& req) {
  StateRecord r;
  r.id = id;
  r.worker = static_cast<uint32_t>(worker);
  r.uid = peer.uid;
  r.gid = peer.gid;
  r.groups.assign(peer.groups.begin(), peer.groups.end());
  if (r.groups.size() > kMaxStateGroups) r.groups.resize(kMaxStateGroups);
  r.mode = req.write_mode;
  r.path = req.path;
  return r;
}

bool UnderRoots(const std::string& path, const std::vector<std::string>& roots) {
  for (const std::string& r : roots) {
    if (r == "/") return true;
    if (path == r) return true;
    if (path.size() > r.size() && path.compare(0, r.size(), r) == 0 && path[r.size()] == '/')
      return true;
  }
  return false;
}

Status TakeFsIdentity(const Peer& peer) {
  if (peer.uid == 0) return Status::Ok();
  if (::setgroups(peer.groups.size(), peer.groups.data()) != 0)
    return Status::FromErrno(errno, "take the groups of uid " + std::to_string(peer.uid));
  ::setfsgid(peer.gid);
  ::setfsuid(peer.uid);
  if (static_cast<uid_t>(::setfsuid(static_cast<uid_t>(-1))) != peer.uid)
    return Status::Error(EPERM, "cannot take the file identity of uid " + std::to_string(peer.uid));
  return Status::Ok();
}

Status DropFsIdentity() {
  ::setfsuid(0);
  ::setfsgid(0);
  if (::setgroups(0, nullptr) != 0) return Status::FromErrno(errno, "setgroups");
  return Status::Ok();
}

void RunWorker(const Config& config, const WorkerTask& task) {
  ::prctl(PR_SET_NAME, kWorkerComm, 0, 0, 0);
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = OnCancel;
  ::sigaction(SIGTERM, &sa, nullptr);
  if (task.request.op == proto::Op::kRestart) RunRestart(config, task);
  proto::Reply r = task.request.op == proto::Op::kList     ? RunList(task)
                   : task.request.op == proto::Op::kDelete ? RunDelete(task)
                                                           : RunCheckpoint(config, task);
  // The file is committed or removed by now: our state record goes first
  // (stasisd removes it too when it reaps us; if stasisd was killed, nobody
  // else would), so that a kill after this point leaves nothing to undo.
  DropFsIdentity().ok();
  if (!task.state_file.empty()) ::unlink(task.state_file.c_str());
  Reply(task, r);
  std::_Exit(r.code == 0 ? 0 : 1);
}

}  // namespace stasis::daemon

// stasisd's server loop; see server.h and docs/design.md ("stasisd").
#include "engine/daemon/server.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "engine/base/fd.h"
#include "engine/core/procfs.h"
#include "engine/daemon/state_record.h"
#include "engine/daemon/worker.h"
#include "engine/format/context.h"
#include "engine/format/context_io.h"
#include "engine/format/protocol.h"
#include "engine/store/context_file.h"

namespace stasis::daemon {

namespace proto = format::proto;

namespace {

LogLevel g_level = LogLevel::kInfo;
LogTarget g_target = LogTarget::kStderr;

using Clock = std::chrono::steady_clock;

std::string Who(const Peer& p) {
  return "uid " + std::to_string(p.uid) + " (pid " + std::to_string(p.pid) + ")";
}

std::string Describe(const proto::Request& r) {
  static const char* kScopes[] = {"tree", "pid", "pgid", "sid"};
  switch (r.op) {
    case proto::Op::kCheckpoint:
      return std::string("checkpoint ") + (r.scope < 4 ? kScopes[r.scope] : "?") + " " +
             std::to_string(r.target) + " -> " +
             ((r.attached & proto::kAttachDest) ? std::string("fd") : r.path) +
             ((r.flags & proto::kFlagHold)
                  ? " (job " + r.job + " epoch " + std::to_string(r.epoch) + " node " +
                        std::to_string(r.node) + ", held)"
                  : std::string());
    case proto::Op::kRestart:
      return "restart " + r.path;
    case proto::Op::kCancel:
    case proto::Op::kStatus:
      return std::string(proto::OpName(r.op)) + " " + std::to_string(r.request_id);
    case proto::Op::kList:
    case proto::Op::kDelete:
      return std::string(proto::OpName(r.op)) + " " + r.path;
    default:
      return proto::OpName(r.op);
  }
}

std::string ErrName(int code) {
  switch (code) {
    case 0:
      return "ok";
    case EPERM:
      return "EPERM";
    case EACCES:
      return "EACCES";
    case EBUSY:
      return "EBUSY";
    case EAGAIN:
      return "EAGAIN";
    case ECANCELED:
      return "ECANCELED";
    case ETIMEDOUT:
      return "ETIMEDOUT";
    case ESRCH:
      return "ESRCH";
    case EINVAL:
      return "EINVAL";
    case EBADMSG:
      return "EBADMSG";
    case EPROTO:
      return "EPROTO";
    case EMSGSIZE:
      return "EMSGSIZE";
    case ENOENT:
      return "ENOENT";
    case ENOSPC:
      return "ENOSPC";
    default:
      return "errno " + std::to_string(code);
  }
}

std::string Mib(uint64_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", static_cast<double>(bytes) / 1048576.0);
  return b;
}

struct Conn {
  UniqueFd fd;
  Peer peer;
  uint64_t active = 0;            // request in progress on this connection
  Clock::time_point last_active;  // accepted, or its last request ended
};

// list and delete run in a worker too; one that takes longer than this (a
// hung network or FUSE file system) is killed.
constexpr auto kQuickOpLimit = std::chrono::seconds(30);
constexpr size_t kMaxQuickPerUser = 4;

struct Job {
  uint64_t id = 0;
  proto::Request req;
  Peer peer;
  UniqueFd client;                 // a duplicate of the connection, for the worker
  std::vector<UniqueFd> attached;  // fds that came with the request
  int conn_fd = -1;
  uint32_t state = proto::kStateQueued;
  pid_t worker = 0;
  UniqueFd report;  // stasisd's end of the worker's report socket
  Clock::time_point queued_at, started_at;
  bool answered = false;  // the worker sent its final (or started) reply
  bool cancelled = false;
  bool timed_out = false;
  Clock::time_point kill_at;  // list/delete: the worker is killed then
  std::string state_file;
};

class Server {
 public:
  explicit Server(const Config& c) : config_(c) {}
  int Run();

 private:
  Status Listen();
  void CleanUpAfterKilledInstance();
  void Accept();
  void ReadRequest(Conn* c);
  void Dispatch(Conn* c, proto::Request req, std::vector<UniqueFd> fds);
  void Answer(int fd, proto::Reply r);
  void Refuse(Conn* c, const proto::Request& req, int code, const std::string& why);
  void StartOrQueue(Conn* c, std::unique_ptr<Job> job);
  void Start(Job* job);
  void StartQueued();
  void OnReport(Job* job);
  void Finish(Job* job, int code, const std::string& message, uint64_t bytes);
  void Reap();
  void ClientGone(Conn* c);
  bool Overlaps(const proto::Request& req, uid_t uid) const;
  Status CheckGroupOwner(const proto::Request& req, const Peer& peer) const;
  void CapTimeouts(uint64_t id, proto::Request* req);
  void HandleStatus(Conn* c, const proto::Request& req);
  void HandleCancel(Conn* c, const proto::Request& req);
  proto::RequestInfo Info(const Job& j) const;
  size_t Running() const;
  bool Limited(uid_t uid) const { return uid != 0 || config_.limit_root; }
  // list and delete: quick, in workers of their own beside the slots
  // (kMaxQuickPerUser at a time per user).
  static bool Quick(const proto::Request& r) {
    return r.op == proto::Op::kList || r.op == proto::Op::kDelete;
  }
  size_t RunningOf(uid_t uid, bool quick = false) const;
  size_t QueuedOf(uid_t uid) const;
  size_t ConnectionsOf(uid_t uid) const;
  void CloseConn(int fd);
  int Housekeeping();  // idle connections, overdue workers; the next poll timeout

  const Config& config_;
  UniqueFd listen_;
  UniqueFd signals_;
  std::map<int, std::unique_ptr<Conn>> conns_;
  std::map<uint64_t, std::unique_ptr<Job>> jobs_;  // queued and running
  std::deque<uint64_t> queue_;
  std::map<pid_t, uint64_t> workers_;  // live workers (also after their answer)
  std::deque<proto::RequestInfo> done_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;
  // accept4 failed with EMFILE/ENFILE: the listening socket is not watched
  // until a connection closes or a second has passed (else poll spins).
  bool accept_paused_ = false;
  bool emfile_logged_ = false;  // until an accept succeeds again
  Clock::time_point paused_at_;
  std::set<uid_t> conn_cap_logged_;  // users told (in the log) about their cap
};

// A folder stasisd trusts (its socket's, its state folder) must be one no
// user can swap or fill: every component of its resolved path is owned by
// root and writable by nobody else, or sticky (/tmp: others may add
// entries but not rename or remove root's). Otherwise a user who made
// /tmp/stasisd-state first would write the records the next stasisd acts
// on as root, or put their own socket where clients expect stasisd's.
Status CheckTrustedFolder(const std::string& dir, const char* what) {
  char real[PATH_MAX];
  if (!::realpath(dir.c_str(), real))
    return Status::FromErrno(errno, std::string(what) + " " + dir);
  std::string path = real;
  for (size_t end = 1; end <= path.size(); ++end) {
    if (end < path.size() && path[end] != '/') continue;
    const std::string part = path.substr(0, end);
    struct stat st;
    if (::lstat(part.c_str(), &st) != 0)
      return Status::FromErrno(errno, std::string(what) + " " + part);
    const bool last = end == path.size();
    if (!S_ISDIR(st.st_mode))
      return Status::Error(ENOTDIR,
                           std::string(what) + " " + dir + ": " + part + " is not a folder");
    if (st.st_uid != 0)
      return Status::Error(EPERM, std::string(what) + " " + dir + ": " + part + " belongs to uid " +
                                      std::to_string(st.st_uid) +
                                      ", not to root; refusing to trust it");
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX) && !last)
      return Status::Error(EPERM, std::string(what) + " " + dir + ": " + part +
                                      " is writable by others than root; refusing to trust it");
  }
  return Status::Ok();
}

Status Server::Listen() {
  // Folders: the socket's (world-searchable), the state folder (root only).
  for (const std::string& dir :
       {config_.socket.substr(0, config_.socket.rfind('/')), config_.state_dir}) {
    if (dir.empty()) continue;
    std::string partial;
    std::stringstream parts(dir);
    std::string part;
    while (std::getline(parts, part, '/')) {
      if (part.empty()) continue;
      partial += "/" + part;
      if (::mkdir(partial.c_str(), 0755) != 0 && errno != EEXIST)
        return Status::FromErrno(errno, "create folder " + partial);
    }
  }
  if (!config_.socket.empty() && config_.socket.rfind('/') > 0)
    STASIS_RETURN_IF_ERROR(
        CheckTrustedFolder(config_.socket.substr(0, config_.socket.rfind('/')), "socket folder"));
  STASIS_RETURN_IF_ERROR(CheckTrustedFolder(config_.state_dir, "state_dir"));
  ::chmod(config_.state_dir.c_str(), 0700);
  struct sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (config_.socket.size() >= sizeof addr.sun_path)
    return Status::Error(ENAMETOOLONG, "socket path too long: " + config_.socket);
  std::memcpy(addr.sun_path, config_.socket.c_str(), config_.socket.size());
  // A socket file left by a killed instance is removed; a live one is not.
  struct stat st;
  if (::lstat(config_.socket.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Status::Error(EEXIST, config_.socket + " exists and is not a socket");
    UniqueFd probe(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0)
      return Status::Error(EADDRINUSE, "another stasisd is listening on " + config_.socket);
    ::unlink(config_.socket.c_str());
    Log(LogLevel::kInfo, "removed the stale socket " + config_.socket);
  }
  listen_.reset(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_) return Status::FromErrno(errno, "socket");
  if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return Status::FromErrno(errno, "bind " + config_.socket);
  // Everyone may connect; who they are is the kernel's answer (SO_PEERCRED).
  ::chmod(config_.socket.c_str(), 0666);
  if (::listen(listen_.get(), 128) != 0)
    return Status::FromErrno(errno, "listen " + config_.socket);
  return Status::Ok();
}

// Opens the absolute folder `path` one component at a time, never following
// a symbolic link (a component that is one fails with ENOTDIR/ELOOP).
Result<UniqueFd> OpenFolderNoFollow(const std::string& path) {
  UniqueFd cur(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!cur) return Status::FromErrno(errno, "open /");
  std::stringstream parts(path);
  std::string part;
  while (std::getline(parts, part, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") return Status::Error(EINVAL, path + " holds '..'");
    int fd = ::openat(cur.get(), part.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "open " + path + " (at '" + part + "')");
    cur.reset(fd);
  }
  return cur;
}

// In a child of stasisd, as the record's owner (groups, fsgid, fsuid: root's
// file capabilities are gone): removes the file a killed worker left, only
// if the folder, reached without symlinks, is the one the worker recorded
// (device and inode), and the name in it is still that worker's file: the
// worker's temporary name (or, for a clobber checkpoint, the destination
// itself), a regular file of the owner's, the very inode the worker created.
// Anything else is logged and left alone.
int RemoveLeftoverAsOwner(const StateRecord& r) {
  const std::string req = "request " + std::to_string(r.id) + " of a killed stasisd";
  if (!r.has_file()) {
    Log(LogLevel::kWarn, req + " (" + r.path + ") recorded no file; nothing to remove");
    return 0;
  }
  std::string where = r.folder + "/" + r.name;
  auto leave = [&](const std::string& why) {
    Log(LogLevel::kWarn, "left " + where + " of " + req + " alone: " + why);
    return 1;
  };
  // The name the worker's writer used (ContextFileWriter::TempPathFor), or
  // the destination's own name for a clobber checkpoint.
  std::string expect = r.mode == proto::kWriteClobber ? r.path
                                                      : store::ContextFileWriter::TempPathFor(
                                                            r.path, static_cast<pid_t>(r.worker));
  expect = expect.substr(expect.rfind('/') + 1);
  if (r.name != expect) return leave("not the name its worker writes");
  Peer owner;
  owner.uid = r.uid;
  owner.gid = r.gid;
  owner.groups.assign(r.groups.begin(), r.groups.end());
  Status s = TakeFsIdentity(owner);
  if (!s.ok()) return leave(s.message());
  auto dir = OpenFolderNoFollow(r.folder);
  if (!dir) return leave(dir.error().message());
  struct stat st;
  if (::fstat(dir->get(), &st) != 0) return leave(std::string("stat: ") + std::strerror(errno));
  if (st.st_dev != r.folder_dev || st.st_ino != r.folder_ino)
    return leave("the folder is not the one its worker wrote in");
  if (::fstatat(dir->get(), r.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return 0;  // gone already
    return leave(std::string("stat: ") + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) return leave("not a regular file");
  if (st.st_uid != r.uid) return leave("it belongs to uid " + std::to_string(st.st_uid));
  if (st.st_dev != r.file_dev || st.st_ino != r.file_ino)
    return leave("not the file its worker created");
  if (::unlinkat(dir->get(), r.name.c_str(), 0) != 0)
    return leave(std::string("unlink: ") + std::strerror(errno));
  Log(LogLevel::kWarn, "removed " + where + ", the partial context of " + req + " (as uid " +
                           std::to_string(r.uid) + ")");
  return 0;
}

// RemoveLeftoverAsOwner in a child: the owner's identity stays there, and a
// folder on a hung file system holds the child, not stasisd (SIGALRM ends
// it after 10 s; a FUSE wait gives way to a fatal signal).
pid_t ForkRemoveLeftover(const StateRecord& r) {
  pid_t child = ::fork();
  if (child == 0) {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGALRM, SIG_DFL);
    ::alarm(10);
    std::_Exit(RemoveLeftoverAsOwner(r));
  }
  return child;
}

// Workers of a killed stasisd keep running until their request is done
// (the targets are never left frozen); the state records of dead ones tell
// which partial context files to remove. A record that does not decode
// (state_record.h) is logged and dropped, never acted on.
void Server::CleanUpAfterKilledInstance() {
  UniqueFd dir(::open(config_.state_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) return;
  std::vector<std::string> names;
  if (DIR* d = ::fdopendir(::fcntl(dir.get(), F_DUPFD_CLOEXEC, 3))) {
    while (struct dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
  }
  auto ends = [](const std::string& n, const std::string& tail) {
    return n.size() > tail.size() && n.compare(n.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const std::string& name : names) {
    if (ends(name, ".req.tmp")) {  // a record being written when stasisd died
      ::unlinkat(dir.get(), name.c_str(), 0);
      continue;
    }
    if (!ends(name, ".req")) continue;
    auto r = ReadStateRecordFile(dir.get(), name);
    if (!r) {
      Log(LogLevel::kWarn, "refused the state record " + config_.state_dir + "/" + name + ": " +
                               r.error().message() + "; not acting on it");
      ::unlinkat(dir.get(), name.c_str(), 0);
      continue;
    }
    pid_t pid = static_cast<pid_t>(r->worker);
    // Alive: a worker by name and not a zombie (nobody may reap an orphan).
    auto worker = core::ReadStat(pid);
    bool alive =
        worker && worker->comm == kWorkerComm && worker->state != 'Z' && worker->state != 'X';
    if (alive) {
      Log(LogLevel::kWarn, "request " + std::to_string(r->id) + " of a previous stasisd is still " +
                               "being finished by worker pid " + std::to_string(pid) +
                               "; leaving it");
      continue;
    }
    pid_t child = ForkRemoveLeftover(*r);
    if (child > 0) {
      int status;
      auto until = Clock::now() + std::chrono::seconds(10);
      while (::waitpid(child, &status, WNOHANG) == 0) {
        if (Clock::now() > until) {
          ::kill(child, SIGKILL);
          ::waitpid(child, &status, 0);
          Log(LogLevel::kWarn, "gave up removing the partial context of request " +
                                   std::to_string(r->id) + " after 10 s");
          break;
        }
        ::usleep(10000);
      }
    }
    ::unlinkat(dir.get(), name.c_str(), 0);
  }
}

void Server::Answer(int fd, proto::Reply r) {
  auto bytes = proto::EncodeReply(r);
  if (!bytes) {
    Log(LogLevel::kError, "cannot encode a reply: " + bytes.error().message());
    return;
  }
  ::send(fd, bytes->data(), bytes->size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

void Server::Refuse(Conn* c, const proto::Request& req, int code, const std::string& why) {
  Log(code == EPERM ? LogLevel::kWarn : LogLevel::kInfo,
      "refused " + Who(c->peer) + ": " + Describe(req) + ": " + ErrName(code) + ": " + why);
  proto::Reply r;
  r.code = code;
  r.message = why;
  Answer(c->fd.get(), r);
}

void Server::Accept() {
  for (;;) {
    int fd = ::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors: stop watching the socket (poll would report it
        // readable forever) until a connection closes; logged once.
        if (!emfile_logged_)
          Log(LogLevel::kWarn, std::string("accept: ") + std::strerror(errno) + " with " +
                                   std::to_string(conns_.size()) +
                                   " connections open; not accepting until one closes");
        accept_paused_ = emfile_logged_ = true;
        paused_at_ = Clock::now();
      }
      return;
    }
    emfile_logged_ = false;
    auto c = std::make_unique<Conn>();
    c->fd.reset(fd);
    c->last_active = Clock::now();
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) continue;
    c->peer.pid = cred.pid;
    c->peer.uid = cred.uid;
    c->peer.gid = cred.gid;
    gid_t groups[1024];
    socklen_t glen = sizeof groups;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
      c->peer.groups.assign(groups, groups + glen / sizeof(gid_t));
    if (Limited(cred.uid) && ConnectionsOf(cred.uid) >= config_.max_connections_per_user) {
      // Refused at once (EAGAIN), closed; logged once until it has fewer.
      if (conn_cap_logged_.insert(cred.uid).second)
        Log(LogLevel::kWarn, "refused connections of " + Who(c->peer) + ": it has " +
                                 std::to_string(config_.max_connections_per_user) +
                                 " open (max_connections_per_user)");
      proto::Reply r;
      r.code = EAGAIN;
      r.message = "uid " + std::to_string(cred.uid) + " has " +
                  std::to_string(config_.max_connections_per_user) +
                  " connections to stasisd open already (max_connections_per_user)";
      Answer(fd, r);
      continue;
    }
    Log(LogLevel::kDebug, "connection from " + Who(c->peer));
    conns_[fd] = std::move(c);
  }
}

size_t Server::ConnectionsOf(uid_t uid) const {
  size_t n = 0;
  for (const auto& [fd, c] : conns_)
    if (c->peer.uid == uid) ++n;
  return n;
}

size_t Server::RunningOf(uid_t uid, bool quick) const {
  size_t n = 0;
  for (const auto& [id, j] : jobs_)
    if (j->peer.uid == uid && j->state == proto::kStateRunning && Quick(j->req) == quick) ++n;
  return n;
}

size_t Server::QueuedOf(uid_t uid) const {
  size_t n = 0;
  for (const auto& [id, j] : jobs_)
    if (j->peer.uid == uid && j->state == proto::kStateQueued) ++n;
  return n;
}

// Every connection goes through here: a descriptor is free again, so a
// paused accept may resume.
void Server::CloseConn(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  uid_t uid = it->second->peer.uid;
  conns_.erase(it);
  accept_paused_ = false;
  if (ConnectionsOf(uid) < config_.max_connections_per_user) conn_cap_logged_.erase(uid);
}

void Server::ReadRequest(Conn* c) {
  std::string buf(proto::kMaxMessageSize + 1, '\0');
  struct iovec iov = {buf.data(), buf.size()};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(c->fd.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  std::vector<UniqueFd> fds;
  for (struct cmsghdr* h = CMSG_FIRSTHDR(&msg); h; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
      size_t count = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
        fds.emplace_back(fd);
      }
    }
  }
  if (n <= 0) {
    ClientGone(c);
    return;
  }
  proto::Request unknown;
  unknown.op = proto::Op::kPing;
  if ((msg.msg_flags & MSG_TRUNC) || static_cast<size_t>(n) > proto::kMaxMessageSize) {
    Log(LogLevel::kWarn, "bad request from " + Who(c->peer) + ": over " +
                             std::to_string(proto::kMaxMessageSize) + " bytes");
    proto::Reply r;
    r.code = EMSGSIZE;
    r.message = "request is over the limit of " + std::to_string(proto::kMaxMessageSize) + " bytes";
    Answer(c->fd.get(), r);
    return;
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    proto::Reply r;
    r.code = EBADMSG;
    r.message = "too many file descriptors with the request";
    Answer(c->fd.get(), r);
    return;
  }
  buf.resize(static_cast<size_t>(n));
  auto req = proto::DecodeRequest(buf);
  if (!req) {
    Log(LogLevel::kWarn, "bad request from " + Who(c->peer) + ": " + req.error().message());
    proto::Reply r;
    r.code = req.error().code();
    r.message = "bad request: " + req.error().message();
    Answer(c->fd.get(), r);
    return;
  }
  if (static_cast<int>(fds.size()) != proto::AttachedFdCount(req->attached)) {
    Refuse(c, *req, EBADMSG,
           "request announces " + std::to_string(proto::AttachedFdCount(req->attached)) + " fds, " +
               std::to_string(fds.size()) + " came with it");
    return;
  }
  Dispatch(c, std::move(*req), std::move(fds));
}

size_t Server::Running() const {
  size_t n = 0;
  for (const auto& [id, j] : jobs_)
    if (j->state == proto::kStateRunning && !Quick(j->req)) ++n;
  return n;
}

// Is `pid` or one of its ancestors `ancestor`?
bool DescendsFrom(pid_t pid, pid_t ancestor) {
  for (int depth = 0; pid > 0 && depth < 4096; ++depth) {
    if (pid == ancestor) return true;
    auto st = core::ReadStat(pid);
    if (!st) return false;
    pid = st->ppid;
  }
  return false;
}

// BLCR's rule: a second request for processes a running or queued request
// already covers is refused with EBUSY. A tree or pid scope is matched by
// ancestry (a pid scope is a one-process tree); a process group or session
// by its id, against the other side's id or its target's group/session.
// A user's request is compared with that user's own requests only, so no
// one's request (a tree reaching someone else's processes, say) gives
// another user EBUSY; root's with everyone's.
bool Server::Overlaps(const proto::Request& req, uid_t uid) const {
  auto grouped = [](const proto::Request& r) {
    return r.scope == format::kScopePgid || r.scope == format::kScopeSid;
  };
  // Does the group/session request `g` cover the single target `pid`?
  auto covers = [](const proto::Request& g, pid_t pid) {
    auto st = core::ReadStat(pid);
    if (!st) return false;
    pid_t key = g.scope == format::kScopePgid ? st->pgrp : st->session;
    return key == static_cast<pid_t>(g.target);
  };
  for (const auto& [id, j] : jobs_) {
    const proto::Request& o = j->req;
    if (o.op != proto::Op::kCheckpoint) continue;
    if (uid != 0 && j->peer.uid != uid) continue;
    pid_t a = static_cast<pid_t>(req.target), b = static_cast<pid_t>(o.target);
    if (grouped(req) && grouped(o)) {
      if (req.scope == o.scope && a == b) return true;
    } else if (grouped(req)) {
      if (covers(req, b)) return true;
    } else if (grouped(o)) {
      if (covers(o, a)) return true;
    } else {
      if (a == b) return true;
      if (o.scope == format::kScopeTree && DescendsFrom(a, b)) return true;
      if (req.scope == format::kScopeTree && DescendsFrom(b, a)) return true;
    }
  }
  return false;
}

// A process group or session is the caller's only if every process in it
// is (the owner rule of the pid scope: the uid of /proc/PID); an empty one
// is ESRCH. Checked before the request may take a slot or a queue place,
// or make anyone's request EBUSY.
Status Server::CheckGroupOwner(const proto::Request& req, const Peer& peer) const {
  const bool session = req.scope == format::kScopeSid;
  const std::string what =
      std::string(session ? "session " : "process group ") + std::to_string(req.target);
  DIR* d = ::opendir("/proc");
  if (!d) return Status::FromErrno(errno, "open /proc");
  size_t members = 0;
  Status s;
  while (struct dirent* e = ::readdir(d)) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    pid_t pid = static_cast<pid_t>(std::atol(e->d_name));
    auto st = core::ReadStat(pid);
    if (!st || static_cast<uint32_t>(session ? st->session : st->pgrp) != req.target) continue;
    ++members;
    if (peer.uid == 0) continue;
    struct stat ps;
    if (::stat(("/proc/" + std::to_string(pid)).c_str(), &ps) != 0) continue;  // gone
    if (ps.st_uid != peer.uid) {
      s = Status::Error(EPERM, what + " holds pid " + std::to_string(pid) + " of uid " +
                                   std::to_string(ps.st_uid) + ", not of uid " +
                                   std::to_string(peer.uid));
      break;
    }
  }
  ::closedir(d);
  if (!s.ok()) return s;
  if (!members) return Status::Error(ESRCH, "no process in " + what);
  return Status::Ok();
}

// The client's timeouts, capped by the configuration (config.h); a request
// without one gets the cap. What was capped is logged.
void Server::CapTimeouts(uint64_t id, proto::Request* req) {
  auto cap = [&](uint64_t* ms, uint64_t default_ms, uint32_t max_s, const char* field,
                 const char* key) {
    uint64_t asked = *ms;
    uint64_t v = asked ? asked : default_ms;
    uint64_t max_ms = static_cast<uint64_t>(max_s) * 1000;
    if (max_ms && (v == 0 || v > max_ms)) v = max_ms;
    if (asked && v != asked)
      Log(LogLevel::kInfo, "req " + std::to_string(id) + ": " + field + " " +
                               std::to_string(asked) + " capped to " + std::to_string(v) + " (" +
                               key + ")");
    *ms = v;
  };
  cap(&req->callback_timeout_ms, static_cast<uint64_t>(config_.callback_timeout * 1000),
      config_.max_callback_timeout, "callback_timeout_ms", "max_callback_timeout");
  cap(&req->time_limit_ms, 0, config_.max_time_limit, "time_limit_ms", "max_time_limit");
}

void Server::Dispatch(Conn* c, proto::Request req, std::vector<UniqueFd> fds) {
  switch (req.op) {
    case proto::Op::kPing: {
      proto::Reply r;
      r.server =
          std::string("stasisd ") + STASIS_VERSION + " protocol " + std::to_string(proto::kVersion);
      r.message = r.server;
      Answer(c->fd.get(), r);
      return;
    }
    case proto::Op::kStatus:
      return HandleStatus(c, req);
    case proto::Op::kCancel:
      return HandleCancel(c, req);
    case proto::Op::kList:
    case proto::Op::kDelete:
      // In a worker (worker.cc RunList/RunDelete): a slow folder holds it,
      // never this loop.
      if (stopping_) return Refuse(c, req, ESHUTDOWN, "stasisd is stopping");
      break;
    case proto::Op::kCheckpoint: {
      if (stopping_) return Refuse(c, req, ESHUTDOWN, "stasisd is stopping");
      // The owner, early: the worker checks every process again.
      if (req.scope == format::kScopePgid || req.scope == format::kScopeSid) {
        Status s = CheckGroupOwner(req, c->peer);
        if (!s.ok()) return Refuse(c, req, s.code(), s.message());
      } else {
        struct stat st;
        if (::stat(("/proc/" + std::to_string(req.target)).c_str(), &st) != 0)
          return Refuse(c, req, ESRCH, "no such process: " + std::to_string(req.target));
        if (c->peer.uid != 0 && st.st_uid != c->peer.uid)
          return Refuse(c, req, EPERM,
                        "pid " + std::to_string(req.target) + " belongs to uid " +
                            std::to_string(st.st_uid) + ", not to uid " +
                            std::to_string(c->peer.uid));
      }
      if (Overlaps(req, c->peer.uid))
        return Refuse(c, req, EBUSY, "a checkpoint of these processes is already in progress");
      break;
    }
    case proto::Op::kRestart:
      if (stopping_) return Refuse(c, req, ESHUTDOWN, "stasisd is stopping");
      break;
    case proto::Op::kReply:
      return Refuse(c, req, EBADMSG, "a reply is not a request");
    case proto::Op::kCommit:
    case proto::Op::kProceed:
      // Only the worker of a held checkpoint reads a commit, on the
      // connection it holds; one arriving here has nothing to commit.
      return Refuse(c, req, EPROTO,
                    std::string(proto::OpName(req.op)) + ": no held checkpoint on this connection");
  }
  auto job = std::make_unique<Job>();
  job->id = next_id_++;
  job->req = std::move(req);
  if (job->req.op == proto::Op::kCheckpoint) CapTimeouts(job->id, &job->req);
  job->peer = c->peer;
  job->attached = std::move(fds);
  job->conn_fd = c->fd.get();
  job->client.reset(::fcntl(c->fd.get(), F_DUPFD_CLOEXEC, 3));
  job->queued_at = Clock::now();
  StartOrQueue(c, std::move(job));
}

void Server::StartOrQueue(Conn* c, std::unique_ptr<Job> job) {
  Job* j = job.get();
  const uid_t uid = j->peer.uid;
  if (Quick(j->req)) {
    if (Limited(uid) && RunningOf(uid, true) >= kMaxQuickPerUser)
      return Refuse(c, j->req, EAGAIN,
                    "uid " + std::to_string(uid) + " has " + std::to_string(kMaxQuickPerUser) +
                        " list or delete requests in progress already");
    c->active = j->id;
    jobs_[j->id] = std::move(job);
    Start(j);
    return;
  }
  if (Running() < config_.max_concurrent &&
      (!Limited(uid) || RunningOf(uid) < config_.RunningPerUser())) {
    c->active = j->id;
    jobs_[j->id] = std::move(job);
    Start(j);
    return;
  }
  if (queue_.size() >= config_.max_queued)
    return Refuse(c, j->req, EAGAIN,
                  "stasisd's queue is full (" + std::to_string(config_.max_queued) + " requests)");
  if (Limited(uid) && QueuedOf(uid) >= config_.max_queued_per_user)
    return Refuse(c, j->req, EAGAIN,
                  "uid " + std::to_string(uid) + " has " +
                      std::to_string(config_.max_queued_per_user) +
                      " requests queued already (max_queued_per_user)");
  c->active = j->id;
  queue_.push_back(j->id);
  proto::Reply r;
  r.kind = proto::kReplyQueued;
  r.request_id = j->id;
  r.message = "queued behind " + std::to_string(queue_.size() - 1) + " requests";
  Answer(c->fd.get(), r);
  Log(LogLevel::kInfo,
      "req " + std::to_string(j->id) + " " + Who(j->peer) + ": " + Describe(j->req) + ": queued");
  jobs_[j->id] = std::move(job);
}

void Server::Start(Job* job) {
  int sp[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sp) != 0) {
    Finish(job, errno, std::string("cannot start a worker: ") + std::strerror(errno), 0);
    return;
  }
  job->state = proto::kStateRunning;
  job->started_at = Clock::now();
  if (job->req.op == proto::Op::kList || job->req.op == proto::Op::kDelete)
    job->kill_at = job->started_at + kQuickOpLimit;
  if (job->req.op == proto::Op::kCheckpoint && !(job->req.attached & proto::kAttachDest))
    job->state_file = config_.state_dir + "/req-" + std::to_string(::getpid()) + "-" +
                      std::to_string(job->id) + ".req";
  pid_t pid = ::fork();
  if (pid < 0) {
    ::close(sp[0]);
    ::close(sp[1]);
    Finish(job, errno, std::string("cannot start a worker: ") + std::strerror(errno), 0);
    return;
  }
  if (pid == 0) {
    ::close(sp[0]);
    // Only what the request needs crosses into the worker.
    WorkerTask task;
    task.id = job->id;
    task.request = job->req;
    task.peer = job->peer;
    task.client_fd = job->client.get();
    task.report_fd = sp[1];
    for (auto& f : job->attached) task.attached.push_back(f.get());
    task.state_file = job->state_file;
    std::vector<int> keep = {task.client_fd, task.report_fd, 0, 1, 2};
    keep.insert(keep.end(), task.attached.begin(), task.attached.end());
    if (DIR* d = ::opendir("/proc/self/fd")) {
      std::vector<int> close_these;
      while (struct dirent* e = ::readdir(d)) {
        int fd = std::atoi(e->d_name);
        if (e->d_name[0] == '.' || fd == ::dirfd(d)) continue;
        if (std::find(keep.begin(), keep.end(), fd) == keep.end()) close_these.push_back(fd);
      }
      ::closedir(d);
      for (int fd : close_these) ::close(fd);
    }
    for (int fd : keep) {
      int flags = ::fcntl(fd, F_GETFD);
      if (fd > 2 && flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    ::signal(SIGCHLD, SIG_DFL);
    // A session of its own, without stasisd's terminal: a terminal's ^C to
    // stasisd does not reach workers, and no restored process can read it.
    ::setsid();
    RunWorker(config_, task);
  }
  ::close(sp[1]);
  job->report.reset(sp[0]);
  job->worker = pid;
  workers_[pid] = job->id;
  // (The worker writes its state record itself once its file exists.)
  // The worker holds its own copies now.
  job->attached.clear();
  std::string limits;
  if (job->req.op == proto::Op::kCheckpoint)
    limits = " (callback timeout " + std::to_string(job->req.callback_timeout_ms) +
             " ms, time limit " + std::to_string(job->req.time_limit_ms) + " ms, hold " +
             std::to_string(config_.hold_timeout) + " s; 0 = none)";
  Log(LogLevel::kDebug,
      "req " + std::to_string(job->id) + ": worker pid " + std::to_string(pid) + limits);
}

// The next queued request: the oldest of the user with the fewest running
// requests, among those below their max_running_per_user.
void Server::StartQueued() {
  while (!queue_.empty() && Running() < config_.max_concurrent) {
    std::map<uid_t, size_t> running;
    for (const auto& [id, j] : jobs_)
      if (j->state == proto::kStateRunning && !Quick(j->req)) ++running[j->peer.uid];
    auto best = queue_.end();
    size_t best_running = SIZE_MAX;
    for (auto q = queue_.begin(); q != queue_.end(); ++q) {
      auto it = jobs_.find(*q);
      if (it == jobs_.end()) continue;
      uid_t uid = it->second->peer.uid;
      size_t r = running[uid];
      if (Limited(uid) && r >= config_.RunningPerUser()) continue;
      if (r < best_running) {
        best = q;
        best_running = r;
      }
    }
    if (best == queue_.end()) return;
    uint64_t id = *best;
    queue_.erase(best);
    auto it = jobs_.find(id);
    if (it != jobs_.end()) Start(it->second.get());
  }
}

proto::RequestInfo Server::Info(const Job& j) const {
  proto::RequestInfo i;
  i.id = j.id;
  i.op = static_cast<uint32_t>(j.req.op);
  i.state = j.state;
  i.uid = j.peer.uid;
  i.client_pid = static_cast<uint32_t>(j.peer.pid);
  i.target = j.req.target;
  i.path = j.req.path;
  auto since = j.state == proto::kStateQueued ? j.queued_at : j.started_at;
  i.elapsed_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - since).count());
  return i;
}

// Records the end of a request: log line, status table, its slot.
void Server::Finish(Job* job, int code, const std::string& message, uint64_t bytes) {
  proto::RequestInfo info = Info(*job);
  info.state = proto::kStateDone;
  info.code = code;
  info.bytes = bytes;
  info.message = message.size() > 1000 ? message.substr(0, 1000) : message;
  double secs = std::chrono::duration<double>(Clock::now() - job->queued_at).count();
  char took[32];
  std::snprintf(took, sizeof took, "%.3f s", secs);
  std::string line = "req " + std::to_string(job->id) + " " + Who(job->peer) + ": " +
                     Describe(job->req) + ": " + ErrName(code) + ", " + took;
  if (bytes) line += ", " + Mib(bytes);
  if (!message.empty()) line += ": " + message;
  if (code == EPERM || code == EACCES)
    Log(LogLevel::kWarn, "refused " + line);
  else
    Log(code == 0 ? LogLevel::kInfo : LogLevel::kWarn, line);
  done_.push_back(info);
  while (done_.size() > 64) done_.pop_front();
  auto c = conns_.find(job->conn_fd);
  if (c != conns_.end() && c->second->active == job->id) {
    c->second->active = 0;
    c->second->last_active = Clock::now();
  }
  accept_paused_ = false;  // its descriptors are free
  if (job->worker == 0 && !job->answered) {
    // Never started: stasisd answers itself.
    proto::Reply r;
    r.code = code;
    r.message = message;
    r.request_id = job->id;
    if (job->client) Answer(job->client.get(), r);
  }
  jobs_.erase(job->id);
  StartQueued();
}

void Server::OnReport(Job* job) {
  std::string buf(proto::kMaxMessageSize + 1, '\0');
  ssize_t n = ::recv(job->report.get(), buf.data(), buf.size(), MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
  if (n <= 0) {
    job->report.reset();  // the worker is gone or done; Reap() decides
    return;
  }
  buf.resize(static_cast<size_t>(n));
  auto r = proto::DecodeReply(buf);
  if (!r) {
    Log(LogLevel::kError,
        "req " + std::to_string(job->id) + ": bad report from worker: " + r.error().message());
    return;
  }
  if (r->kind == proto::kReplyQueued) return;
  job->answered = true;
  std::string msg = r->message;
  if (job->cancelled && r->code == ECANCELED) msg = "cancelled: " + msg;
  Finish(job, r->code, msg, r->bytes ? r->bytes : r->page_bytes);
}

void Server::Reap() {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    auto w = workers_.find(pid);
    if (w == workers_.end()) continue;
    uint64_t id = w->second;
    workers_.erase(w);
    auto it = jobs_.find(id);
    if (it == jobs_.end()) continue;  // answered already
    Job* job = it->second.get();
    // Drain a report that raced with the exit.
    if (job->report) OnReport(job);
    it = jobs_.find(id);
    if (it == jobs_.end()) continue;
    if (!job->state_file.empty()) {
      // A worker that died with its file unfinished (killed, crashed) left
      // its record: its file goes the same way as after a killed stasisd,
      // in a child that Reap collects later.
      if (auto rec = ReadStateRecordFile(AT_FDCWD, job->state_file)) ForkRemoveLeftover(*rec);
      ::unlink(job->state_file.c_str());
    }
    std::string how =
        job->timed_out        ? "was killed after " + std::to_string(kQuickOpLimit.count()) + " s"
        : WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                              : "exited with status " + std::to_string(WEXITSTATUS(status));
    // The worker died without answering: the client still gets an answer.
    proto::Reply r;
    r.code = job->timed_out ? ETIMEDOUT : EIO;
    r.request_id = id;
    r.message = "stasisd's worker " + how + " before finishing";
    if (job->req.op == proto::Op::kCheckpoint) r.message += "; the processes were left running";
    if (job->client) Answer(job->client.get(), r);
    job->answered = true;
    Finish(job, r.code, r.message, 0);
  }
}

void Server::ClientGone(Conn* c) {
  if (c->active) {
    auto it = jobs_.find(c->active);
    if (it != jobs_.end()) {
      Job* job = it->second.get();
      if (job->state == proto::kStateQueued) {
        queue_.erase(std::remove(queue_.begin(), queue_.end(), job->id), queue_.end());
        job->client.reset();
        Finish(job, ECANCELED, "the client went away while the request was queued", 0);
      } else if (job->req.op == proto::Op::kCheckpoint && job->worker > 0) {
        // Cancel: the worker stops writing, resumes the processes and removes
        // its partial file.
        job->cancelled = true;
        Log(LogLevel::kInfo,
            "req " + std::to_string(job->id) + ": the client went away; cancelling the checkpoint");
        ::kill(job->worker, SIGTERM);
      }
    }
  }
  CloseConn(c->fd.get());
}

void Server::HandleStatus(Conn* c, const proto::Request& req) {
  proto::Reply r;
  auto visible = [&](uint32_t uid) { return c->peer.uid == 0 || uid == c->peer.uid; };
  for (const auto& [id, j] : jobs_) {
    if (!visible(j->peer.uid) || (req.request_id && req.request_id != id)) continue;
    if (r.requests.size() < proto::kMaxListed) r.requests.push_back(Info(*j));
  }
  for (auto it = done_.rbegin(); it != done_.rend(); ++it) {
    if (!visible(it->uid) || (req.request_id && req.request_id != it->id)) continue;
    if (r.requests.size() < proto::kMaxListed) r.requests.push_back(*it);
  }
  if (req.request_id && r.requests.empty()) {
    r.code = ESRCH;
    r.message = "no request " + std::to_string(req.request_id) + " of yours";
  }
  r.message = r.message.empty()
                  ? std::to_string(Running()) + " running, " + std::to_string(queue_.size()) +
                        " queued, limit " + std::to_string(config_.max_concurrent)
                  : r.message;
  Answer(c->fd.get(), r);
}

void Server::HandleCancel(Conn* c, const proto::Request& req) {
  auto it = jobs_.find(req.request_id);
  if (it == jobs_.end())
    return Refuse(c, req, ESRCH, "no request " + std::to_string(req.request_id) + " in progress");
  Job* job = it->second.get();
  if (c->peer.uid != 0 && job->peer.uid != c->peer.uid)
    return Refuse(
        c, req, EPERM,
        "request " + std::to_string(job->id) + " belongs to uid " + std::to_string(job->peer.uid));
  proto::Reply r;
  if (job->state == proto::kStateQueued) {
    queue_.erase(std::remove(queue_.begin(), queue_.end(), job->id), queue_.end());
    Finish(job, ECANCELED, "cancelled by " + Who(c->peer) + " while queued", 0);
    r.message = "cancelled request " + std::to_string(req.request_id);
  } else if (job->req.op != proto::Op::kRestart) {
    job->cancelled = true;
    ::kill(job->worker, SIGTERM);
    r.message = "cancelling request " + std::to_string(req.request_id);
  } else {
    return Refuse(c, req, EBUSY, "a restore in progress cannot be cancelled");
  }
  Log(LogLevel::kInfo, Who(c->peer) + ": " + r.message);
  Answer(c->fd.get(), r);
}

// Closes connections idle for longer than idle_timeout and kills list and
// delete workers past their limit; returns the poll timeout until the next
// such event (-1: none).
int Server::Housekeeping() {
  auto now = Clock::now();
  Clock::time_point next = Clock::time_point::max();
  if (config_.idle_timeout) {
    auto idle = std::chrono::seconds(config_.idle_timeout);
    std::vector<int> close_these;
    for (auto& [fd, c] : conns_) {
      if (c->active) continue;
      if (now - c->last_active >= idle)
        close_these.push_back(fd);
      else
        next = std::min(next, c->last_active + idle);
    }
    for (int fd : close_these) {
      Log(LogLevel::kDebug, "closed the idle connection of " + Who(conns_[fd]->peer));
      CloseConn(fd);
    }
  }
  for (auto& [id, j] : jobs_) {
    if (j->kill_at == Clock::time_point() || j->worker <= 0 || j->timed_out) continue;
    if (now >= j->kill_at) {
      j->timed_out = true;
      ::kill(j->worker, SIGKILL);
    } else {
      next = std::min(next, j->kill_at);
    }
  }
  if (accept_paused_) {
    // Retry accepting once a second: a worker may have freed descriptors.
    if (now - paused_at_ >= std::chrono::seconds(1)) accept_paused_ = false;
    next = std::min(next, paused_at_ + std::chrono::seconds(1));
  }
  if (next == Clock::time_point::max()) return -1;
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(next - now).count() + 1;
  return static_cast<int>(std::clamp<long long>(ms, 1, 60000));
}

int Server::Run() {
  sigset_t mask;
  sigemptyset(&mask);
  for (int sig : {SIGCHLD, SIGTERM, SIGINT, SIGHUP}) sigaddset(&mask, sig);
  ::sigprocmask(SIG_BLOCK, &mask, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  signals_.reset(::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK));
  Status s = Listen();
  if (!s.ok()) {
    Log(LogLevel::kError, s.message());
    return 1;
  }
  CleanUpAfterKilledInstance();
  Log(LogLevel::kInfo, std::string("stasisd ") + STASIS_VERSION + " listening on " +
                           config_.socket + " (max_concurrent " +
                           std::to_string(config_.max_concurrent) + "; per user " +
                           std::to_string(config_.max_connections_per_user) + " connections, " +
                           std::to_string(config_.RunningPerUser()) + " running, " +
                           std::to_string(config_.max_queued_per_user) + " queued; config " +
                           (config_.path.empty() ? "built-in defaults" : config_.path) + ")");
  for (;;) {
    if (stopping_ && jobs_.empty()) break;
    int timeout = Housekeeping();
    std::vector<struct pollfd> pfds;
    std::vector<std::pair<int, uint64_t>> what;  // 0 listen, 1 signals, 2 conn, 3 report
    pfds.push_back({signals_.get(), POLLIN, 0});
    what.emplace_back(1, 0);
    if (listen_ && !accept_paused_) {
      pfds.push_back({listen_.get(), POLLIN, 0});
      what.emplace_back(0, 0);
    }
    for (auto& [fd, c] : conns_) {
      // While a request runs its connection is only watched for hang-up.
      pfds.push_back({fd, static_cast<short>(c->active ? POLLRDHUP : (POLLIN | POLLRDHUP)), 0});
      what.emplace_back(2, static_cast<uint64_t>(fd));
    }
    for (auto& [id, j] : jobs_) {
      if (!j->report) continue;
      pfds.push_back({j->report.get(), POLLIN, 0});
      what.emplace_back(3, id);
    }
    int n = ::poll(pfds.data(), pfds.size(), timeout);
    if (n < 0 && errno != EINTR) {
      Log(LogLevel::kError, std::string("poll: ") + std::strerror(errno));
      return 1;
    }
    for (size_t i = 0; i < pfds.size(); ++i) {
      if (!pfds[i].revents) continue;
      auto [kind, key] = what[i];
      if (kind == 1) {
        struct signalfd_siginfo si;
        while (::read(signals_.get(), &si, sizeof si) == sizeof si) {
          if (si.ssi_signo == SIGCHLD) continue;
          if (si.ssi_signo == SIGHUP) continue;  // no reload yet: keep running
          if (stopping_) {
            Log(LogLevel::kWarn, "second stop signal: leaving " + std::to_string(jobs_.size()) +
                                     " requests to their workers");
            return 0;
          }
          stopping_ = true;
          Log(LogLevel::kInfo, "stopping: no new requests; waiting for " +
                                   std::to_string(Running()) + " running requests");
          listen_.reset();
          ::unlink(config_.socket.c_str());
          while (!queue_.empty()) {
            uint64_t id = queue_.front();
            queue_.pop_front();
            auto it = jobs_.find(id);
            if (it != jobs_.end()) Finish(it->second.get(), ESHUTDOWN, "stasisd is stopping", 0);
          }
        }
        Reap();
      } else if (kind == 0) {
        Accept();
      } else if (kind == 2) {
        auto it = conns_.find(static_cast<int>(key));
        if (it == conns_.end()) continue;
        Conn* c = it->second.get();
        if (pfds[i].revents & (POLLHUP | POLLRDHUP | POLLERR)) {
          if (!c->active && (pfds[i].revents & POLLIN)) ReadRequest(c);  // last words
          if (conns_.count(static_cast<int>(key))) ClientGone(conns_[static_cast<int>(key)].get());
        } else if (!c->active) {
          ReadRequest(c);
        }
      } else if (kind == 3) {
        auto it = jobs_.find(key);
        if (it != jobs_.end()) OnReport(it->second.get());
      }
    }
  }
  Log(LogLevel::kInfo, "stopped");
  return 0;
}

}  // namespace

void InitLog(const Config& config) {
  g_level = config.log_level;
  g_target = config.log;
  if (g_target == LogTarget::kSyslog) ::openlog("stasisd", LOG_PID, LOG_DAEMON);
}

std::string EscapeForLog(std::string_view in) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(in.size());
  auto escape = [&](unsigned char c) {
    out += "\\x";
    out += kHex[c >> 4];
    out += kHex[c & 15];
  };
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  size_t n = in.size();
  for (size_t i = 0; i < n;) {
    unsigned char c = p[i];
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f)
        escape(c);
      else if (c == '\\')
        out += "\\\\";
      else
        out += static_cast<char>(c);
      ++i;
      continue;
    }
    // A well-formed UTF-8 sequence (shortest form, no surrogates, at most
    // U+10FFFF, no C1 control) is kept; any other byte is escaped alone.
    size_t len = c >= 0xc2 && c <= 0xdf   ? 2
                 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4
                                          : 0;
    bool ok = len && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (p[i + k] & 0xc0) == 0x80;
    if (ok && len == 2 && c == 0xc2 && p[i + 1] < 0xa0) ok = false;  // C1 controls
    if (ok && c == 0xe0 && p[i + 1] < 0xa0) ok = false;
    if (ok && c == 0xed && p[i + 1] > 0x9f) ok = false;
    if (ok && c == 0xf0 && p[i + 1] < 0x90) ok = false;
    if (ok && c == 0xf4 && p[i + 1] > 0x8f) ok = false;
    if (!ok) {
      escape(c);
      ++i;
      continue;
    }
    out.append(in.substr(i, len));
    i += len;
  }
  return out;
}

// One event, one line: every control byte (a newline, a carriage return, an
// escape sequence) and every byte that is not UTF-8 is written as \xNN, and
// a backslash as \\, here, so that no caller can forget it and no path or
// message of a user's can forge a line or hide one.
void Log(LogLevel level, const std::string& raw) {
  if (level > g_level) return;
  const std::string line = EscapeForLog(raw);
  static const char* kNames[] = {"error", "warn", "info", "debug"};
  if (g_target == LogTarget::kSyslog) {
    static const int kPrio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    ::syslog(kPrio[static_cast<int>(level)], "%s", line.c_str());
    return;
  }
  std::fprintf(stderr, "stasisd[%d]: %s: %s\n", static_cast<int>(::getpid()),
               kNames[static_cast<int>(level)], line.c_str());
  std::fflush(stderr);
}

int RunServer(const Config& config) {
  Server server(config);
  return server.Run();
}

}  // namespace stasis::daemon

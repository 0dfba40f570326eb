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

#include <chrono>
#include <cstdio>
#include <cstring>
#include <algorithm>
#include <deque>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "engine/base/fd.h"
#include "engine/core/context_file.h"
#include "engine/core/procfs.h"
#include "engine/daemon/worker.h"
#include "engine/format/context.h"
#include "engine/format/context_io.h"
#include "engine/format/protocol.h"


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
             ((r.flags & proto::kFlagHold) ? " (job " + r.job + " epoch " + std::to_string(r.epoch) +
                                                 " node " + std::to_string(r.node) + ", held)"
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
    case 0: return "ok";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case EBUSY: return "EBUSY";
    case EAGAIN: return "EAGAIN";
    case ECANCELED: return "ECANCELED";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ESRCH: return "ESRCH";
    case EINVAL: return "EINVAL";
    case EBADMSG: return "EBADMSG";
    case EPROTO: return "EPROTO";
    case EMSGSIZE: return "EMSGSIZE";
    case ENOENT: return "ENOENT";
    case ENOSPC: return "ENOSPC";
    default: return "errno " + std::to_string(code);
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
  uint64_t active = 0;  // request in progress on this connection
};

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
  bool Overlaps(const proto::Request& req) const;
  void HandleStatus(Conn* c, const proto::Request& req);
  void HandleCancel(Conn* c, const proto::Request& req);
  void HandleList(Conn* c, const proto::Request& req);
  void HandleDelete(Conn* c, const proto::Request& req);
  proto::RequestInfo Info(const Job& j) const;
  size_t Running() const;

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
};

Status Server::Listen() {
  // Folders: the socket's (world-searchable), the state folder (root only).
  for (const std::string& dir : {config_.socket.substr(0, config_.socket.rfind('/')), config_.state_dir}) {
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
  if (::listen(listen_.get(), 128) != 0) return Status::FromErrno(errno, "listen " + config_.socket);
  return Status::Ok();
}

// Workers of a killed stasisd keep running until their request is done
// (the targets are never left frozen); the state records of dead ones tell
// which temporary context files to remove.
void Server::CleanUpAfterKilledInstance() {
  DIR* d = ::opendir(config_.state_dir.c_str());
  if (!d) return;
  while (struct dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.size() < 5 || name.compare(name.size() - 4, 4, ".req") != 0) continue;
    std::string path = config_.state_dir + "/" + name;
    std::ifstream in(path);
    std::map<std::string, std::string> kv;
    std::string line;
    while (std::getline(in, line)) {
      size_t eq = line.find('=');
      if (eq != std::string::npos) kv[line.substr(0, eq)] = line.substr(eq + 1);
    }
    pid_t pid = static_cast<pid_t>(std::atol(kv["worker"].c_str()));
    // Alive: a worker by name and not a zombie (nobody may reap an orphan).
    auto worker = pid > 0 ? core::ReadStat(pid) : Result<core::ProcStat>(Status::Error(ESRCH, ""));
    bool alive = worker && worker->comm == kWorkerComm && worker->state != 'Z' &&
                 worker->state != 'X';
    if (alive) {
      Log(LogLevel::kWarn, "request " + kv["id"] + " of a previous stasisd is still being " +
                               "finished by worker pid " + std::to_string(pid) + "; leaving it");
      continue;
    }
    const std::string& temp = kv["temp"];
    struct stat st;
    if (!temp.empty() && ::lstat(temp.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      ::unlink(temp.c_str());
      Log(LogLevel::kWarn, "removed " + temp + ", the partial context of request " + kv["id"] +
                               " of a killed stasisd");
    }
    ::unlink(path.c_str());
  }
  ::closedir(d);
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
    if (fd < 0) return;
    auto c = std::make_unique<Conn>();
    c->fd.reset(fd);
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
    Log(LogLevel::kDebug, "connection from " + Who(c->peer));
    conns_[fd] = std::move(c);
  }
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
           "request announces " + std::to_string(proto::AttachedFdCount(req->attached)) +
               " fds, " + std::to_string(fds.size()) + " came with it");
    return;
  }
  Dispatch(c, std::move(*req), std::move(fds));
}

size_t Server::Running() const {
  size_t n = 0;
  for (const auto& [id, j] : jobs_)
    if (j->state == proto::kStateRunning) ++n;
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
bool Server::Overlaps(const proto::Request& req) const {
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

void Server::Dispatch(Conn* c, proto::Request req, std::vector<UniqueFd> fds) {
  switch (req.op) {
    case proto::Op::kPing: {
      proto::Reply r;
      r.server = std::string("stasisd ") + STASIS_VERSION + " protocol " +
                 std::to_string(proto::kVersion);
      r.message = r.server;
      Answer(c->fd.get(), r);
      return;
    }
    case proto::Op::kStatus: return HandleStatus(c, req);
    case proto::Op::kCancel: return HandleCancel(c, req);
    case proto::Op::kList: return HandleList(c, req);
    case proto::Op::kDelete: return HandleDelete(c, req);
    case proto::Op::kCheckpoint: {
      if (stopping_) return Refuse(c, req, ESHUTDOWN, "stasisd is stopping");
      // The target's owner, early: the worker checks every process again.
      struct stat st;
      if (::stat(("/proc/" + std::to_string(req.target)).c_str(), &st) != 0 &&
          req.scope != format::kScopePgid && req.scope != format::kScopeSid)
        return Refuse(c, req, ESRCH, "no such process: " + std::to_string(req.target));
      if (c->peer.uid != 0 && st.st_uid != c->peer.uid &&
          req.scope != format::kScopePgid && req.scope != format::kScopeSid)
        return Refuse(c, req, EPERM,
                      "pid " + std::to_string(req.target) + " belongs to uid " +
                          std::to_string(st.st_uid) + ", not to uid " + std::to_string(c->peer.uid));
      if (Overlaps(req))
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
      return Refuse(c, req, EPROTO, std::string(proto::OpName(req.op)) +
                                        ": no held checkpoint on this connection");
  }
  auto job = std::make_unique<Job>();
  job->id = next_id_++;
  job->req = std::move(req);
  job->peer = c->peer;
  job->attached = std::move(fds);
  job->conn_fd = c->fd.get();
  job->client.reset(::fcntl(c->fd.get(), F_DUPFD_CLOEXEC, 3));
  job->queued_at = Clock::now();
  StartOrQueue(c, std::move(job));
}

void Server::StartOrQueue(Conn* c, std::unique_ptr<Job> job) {
  Job* j = job.get();
  if (Running() < config_.max_concurrent) {
    c->active = j->id;
    jobs_[j->id] = std::move(job);
    Start(j);
    return;
  }
  if (queue_.size() >= config_.max_queued)
    return Refuse(c, j->req, EAGAIN, "stasisd's queue is full (" +
                                         std::to_string(config_.max_queued) + " requests)");
  c->active = j->id;
  queue_.push_back(j->id);
  proto::Reply r;
  r.kind = proto::kReplyQueued;
  r.request_id = j->id;
  r.message = "queued behind " + std::to_string(queue_.size() - 1) + " requests";
  Answer(c->fd.get(), r);
  Log(LogLevel::kInfo, "req " + std::to_string(j->id) + " " + Who(j->peer) + ": " +
                           Describe(j->req) + ": queued");
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
  if (!job->state_file.empty()) {
    std::ofstream out(job->state_file);
    out << "id=" << job->id << "\nworker=" << pid << "\nuid=" << job->peer.uid
        << "\npath=" << job->req.path << "\ntemp="
        << (job->req.write_mode == proto::kWriteClobber
                ? job->req.path
                : core::ContextFileWriter::TempPathFor(job->req.path, pid))
        << "\n";
  }
  // The worker holds its own copies now.
  job->attached.clear();
  Log(LogLevel::kDebug, "req " + std::to_string(job->id) + ": worker pid " + std::to_string(pid));
}

void Server::StartQueued() {
  while (!queue_.empty() && Running() < config_.max_concurrent) {
    uint64_t id = queue_.front();
    queue_.pop_front();
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
  if (c != conns_.end() && c->second->active == job->id) c->second->active = 0;
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
    Log(LogLevel::kError, "req " + std::to_string(job->id) + ": bad report from worker: " +
                              r.error().message());
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
    if (!job->state_file.empty()) ::unlink(job->state_file.c_str());
    std::string how = WIFSIGNALED(status) ? "was killed by signal " + std::to_string(WTERMSIG(status))
                                          : "exited with status " + std::to_string(WEXITSTATUS(status));
    // The worker died without answering: the client still gets an answer.
    proto::Reply r;
    r.code = EIO;
    r.request_id = id;
    r.message = "stasisd's worker " + how + " before finishing; the processes were left running";
    if (job->client) Answer(job->client.get(), r);
    job->answered = true;
    Finish(job, EIO, r.message, 0);
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
        Log(LogLevel::kInfo, "req " + std::to_string(job->id) +
                                 ": the client went away; cancelling the checkpoint");
        ::kill(job->worker, SIGTERM);
      }
    }
  }
  conns_.erase(c->fd.get());
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
  r.message = r.message.empty() ? std::to_string(Running()) + " running, " +
                                      std::to_string(queue_.size()) + " queued, limit " +
                                      std::to_string(config_.max_concurrent)
                                : r.message;
  Answer(c->fd.get(), r);
}

void Server::HandleCancel(Conn* c, const proto::Request& req) {
  auto it = jobs_.find(req.request_id);
  if (it == jobs_.end()) return Refuse(c, req, ESRCH, "no request " + std::to_string(req.request_id) + " in progress");
  Job* job = it->second.get();
  if (c->peer.uid != 0 && job->peer.uid != c->peer.uid)
    return Refuse(c, req, EPERM, "request " + std::to_string(job->id) + " belongs to uid " +
                                     std::to_string(job->peer.uid));
  proto::Reply r;
  if (job->state == proto::kStateQueued) {
    queue_.erase(std::remove(queue_.begin(), queue_.end(), job->id), queue_.end());
    Finish(job, ECANCELED, "cancelled by " + Who(c->peer) + " while queued", 0);
    r.message = "cancelled request " + std::to_string(req.request_id);
  } else if (job->req.op == proto::Op::kCheckpoint) {
    job->cancelled = true;
    ::kill(job->worker, SIGTERM);
    r.message = "cancelling request " + std::to_string(req.request_id);
  } else {
    return Refuse(c, req, EBUSY, "a restore in progress cannot be cancelled");
  }
  Log(LogLevel::kInfo, Who(c->peer) + ": " + r.message);
  Answer(c->fd.get(), r);
}

bool IsContextFile(int dirfd, const char* name) {
  int fd = ::openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return false;
  char head[8];
  ssize_t n = ::pread(fd, head, sizeof head, 0);
  ::close(fd);
  return n > 0 && format::HasContextMagic(std::string_view(head, static_cast<size_t>(n)));
}

void Server::HandleList(Conn* c, const proto::Request& req) {
  if (req.path[0] != '/') return Refuse(c, req, EINVAL, "'" + req.path + "' is not an absolute path");
  Status s = TakeFsIdentity(c->peer);
  proto::Reply r;
  DIR* d = s.ok() ? ::opendir(req.path.c_str()) : nullptr;
  int err = errno;
  if (!d) {
    DropFsIdentity().ok();
    if (!s.ok()) return Refuse(c, req, s.code(), s.message());
    return Refuse(c, req, err == EACCES ? EPERM : err,
                  "cannot list " + req.path + ": " + std::strerror(err));
  }
  while (struct dirent* e = ::readdir(d)) {
    struct stat st;
    if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
      continue;
    if (c->peer.uid != 0 && st.st_uid != c->peer.uid) continue;
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
  DropFsIdentity().ok();
  r.message = std::to_string(r.files.size()) + " context files";
  Answer(c->fd.get(), r);
}

void Server::HandleDelete(Conn* c, const proto::Request& req) {
  if (req.path[0] != '/') return Refuse(c, req, EINVAL, "'" + req.path + "' is not an absolute path");
  Status s = TakeFsIdentity(c->peer);
  std::string dir = req.path.substr(0, req.path.rfind('/'));
  if (dir.empty()) dir = "/";
  std::string base = req.path.substr(req.path.rfind('/') + 1);
  UniqueFd dfd(s.ok() ? ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1);
  struct stat st;
  std::string why;
  int code = 0;
  if (!s.ok()) {
    code = s.code();
    why = s.message();
  } else if (!dfd) {
    code = errno == EACCES ? EPERM : errno;
    why = "cannot open folder " + dir + ": " + std::strerror(errno);
  } else if (::fstatat(dfd.get(), base.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    code = errno == EACCES ? EPERM : errno;
    why = req.path + ": " + std::strerror(errno);
  } else if (!S_ISREG(st.st_mode) || !IsContextFile(dfd.get(), base.c_str())) {
    code = EINVAL;
    why = req.path + " is not a context file";
  } else if (c->peer.uid != 0 && st.st_uid != c->peer.uid) {
    code = EPERM;
    why = req.path + " belongs to uid " + std::to_string(st.st_uid);
  } else if (::unlinkat(dfd.get(), base.c_str(), 0) != 0) {
    code = errno == EACCES ? EPERM : errno;
    why = "delete " + req.path + ": " + std::strerror(errno);
  }
  DropFsIdentity().ok();
  if (code) return Refuse(c, req, code, why);
  Log(LogLevel::kInfo, Who(c->peer) + ": deleted " + req.path);
  proto::Reply r;
  r.message = "deleted " + req.path;
  Answer(c->fd.get(), r);
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
                           std::to_string(config_.max_concurrent) + ", config " +
                           (config_.path.empty() ? "built-in defaults" : config_.path) + ")");
  for (;;) {
    if (stopping_ && jobs_.empty()) break;
    std::vector<struct pollfd> pfds;
    std::vector<std::pair<int, uint64_t>> what;  // 0 listen, 1 signals, 2 conn, 3 report
    pfds.push_back({signals_.get(), POLLIN, 0});
    what.emplace_back(1, 0);
    if (listen_) {
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
    int n = ::poll(pfds.data(), pfds.size(), -1);
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

void Log(LogLevel level, const std::string& line) {
  if (level > g_level) return;
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

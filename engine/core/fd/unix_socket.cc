// UNIX sockets, both directions: pairs inside the checkpoint, listeners and
// the connections accepted through them, receive queues (peeked at capture,
// refilled at restore), and sockets leading outside (refused, or saved as
// closed with --close-sockets). Network sockets are fd/tcp_socket.cc's.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <set>

#include "engine/core/capture_internal.h"
#include "engine/core/fd/fd_kind.h"
#include "engine/core/restore_internal.h"
#include "engine/format/fd_payloads.h"

namespace stasis::core {
namespace {

using format::FileDesc;

}  // namespace

// fd/tcp_socket.cc: a socket sock_diag does not list as a UNIX one.
Status CaptureNetSocket(capture::Capturer* cap, capture::ProcState* p, const FdSeen& s,
                        FileDesc* f);

namespace {

Status CaptureSocket(capture::Capturer* cap, capture::ProcState* p, const FdSeen& s, FileDesc* f) {
  const std::string& where = s.where;
  STASIS_ASSIGN_OR_RETURN(auto* table, cap->UnixSockets());
  auto it = table->find(static_cast<uint64_t>(s.st.st_ino));
  // Not a UNIX socket: TCP and the other network sockets (fd/tcp_socket.cc).
  if (it == table->end()) return CaptureNetSocket(cap, p, s, f);
  const UnixSocketInfo& u = it->second;
  f->kind = format::kFileUnixSocket;
  f->sock_type = u.type;
  f->sock_state = u.state;
  f->sock_inode = u.inode;
  f->peer_id = u.peer;
  f->path = u.name;
  if (u.state == format::kSockListen && u.rqueue > 0)
    return Status::Error(EBUSY, "cannot checkpoint " + where + ": listening socket " +
                                    (u.name.empty() ? s.link : u.name) + " has " +
                                    std::to_string(u.rqueue) +
                                    " connection(s) waiting to be accepted; retry");
  return Status::Ok();
}

Result<UniqueFd> OpenSocket(restore::Restorer* r, const restore::RProc*, const FileDesc& f) {
  return r->MakeSocket(f);
}

}  // namespace

extern const FdKindOps kFdUnixSocket = {
    format::kFileUnixSocket,
    "unix",
    [](const struct stat& st, const std::string&) { return S_ISSOCK(st.st_mode); },
    CaptureSocket,
    OpenSocket,
    nullptr,
    nullptr};

namespace capture {

// The UNIX sockets of the host (sock_diag), read once per capture.
Result<std::map<uint64_t, UnixSocketInfo>*> Capturer::UnixSockets() {
  if (!unix_) {
    STASIS_ASSIGN_OR_RETURN(auto table, ReadUnixSockets());
    unix_ = std::move(table);
  }
  return &*unix_;
}

// Marks UNIX sockets connected to processes outside the checkpoint (the
// rule in fd/outside_socket.h decides whether they may be saved, as closed),
// and saves the receive queue of every other socket once (peeked, not
// consumed).
Status Capturer::ClassifySockets() {
  std::set<uint64_t> inside, saved;
  for (auto& p : procs_)
    for (FileDesc& f : p->files)
      if (f.kind == format::kFileUnixSocket) inside.insert(f.sock_inode);
  for (auto& p : procs_) {
    for (FileDesc& f : p->files) {
      if (f.kind != format::kFileUnixSocket || (f.fd_flags & format::kFdOutside)) continue;
      if (f.peer_id && !inside.count(f.peer_id)) {
        OutsideSocket o;
        o.family = "UNIX";
        o.type = f.sock_type;
        o.state = format::kOutsideConnected;
        o.local = f.path;
        o.peer = unix_ && unix_->count(f.peer_id) ? (*unix_)[f.peer_id].name : "";
        o.peer_inode = f.peer_id;
        NoteOutsideSocket(p.get(), &f, o);
        continue;
      }
      if (saved.insert(f.sock_inode).second) STASIS_RETURN_IF_ERROR(PeekSocket(p->pid, &f));
    }
  }
  return Status::Ok();
}

std::string Capturer::Who(pid_t pid) const {
  pid_t cur = pid;
  for (size_t hops = 0; cur > 0 && hops <= procs_.size(); ++hops) {
    for (const TaskRoot& t : options_.tasks)
      if (t.pid == cur)
        return "task " + std::to_string(t.task) + " (pid " + std::to_string(pid) + ")";
    auto it = by_pid_.find(cur);
    if (it == by_pid_.end()) break;
    cur = it->second->stat.ppid;
  }
  return Pid(pid);
}

void Capturer::NoteOutsideSocket(ProcState* p, FileDesc* f, const OutsideSocket& s) {
  f->fd_flags |= format::kFdOutside;
  f->sock_state = format::kSockClose;  // comes back as a socket whose peer has closed
  f->peer_id = 0;
  f->outside_state = s.state;
  f->outside_peer = s.peer;
  if (MaySaveOutsideSocket(options_.outside_sockets, s)) return;
  // Refused: say what it is and, when this host can tell, who the peer is
  // (reading /proc costs only here).
  std::string head =
      "cannot checkpoint " + Who(p->pid) + " fd " + std::to_string(f->fd) + ": " + s.Text();
  if (options_.outside_sockets == OutsideSockets::kRefuse && s.state != format::kOutsideConnected) {
    refused_sockets_.push_back(head + " leads outside the checkpoint; --close-sockets saves it " +
                               "as closed");
    return;
  }
  uint64_t peer = s.peer_inode ? s.peer_inode : FindTcpPeerInode(p->pid, s);
  std::string comm;
  pid_t holder = FindSocketHolder(peer, &comm);
  std::string to;
  if (holder && by_pid_.count(holder))
    to = Who(holder) + " of this checkpoint, but " +
         (s.family == "TCP" ? std::string("not as a pair this capture can rebuild")
                            : s.family + " connections are not saved yet");
  else if (holder)
    to = comm + " (pid " + std::to_string(holder) + "), a process outside the checkpoint";
  else if (s.family == "TCP" && !peer && s.peer.rfind("127.", 0) != 0 &&
           s.peer.rfind("[::1]", 0) != 0)
    to = "a process on another host";
  else
    to = "a process outside the checkpoint";
  if (s.family == "UNIX" && !s.peer.empty()) to += " (at " + s.peer + ")";
  if (options_.outside_sockets == OutsideSockets::kRefuse)
    refused_sockets_.push_back(head + " is connected to " + to +
                               "; --close-sockets saves it as closed");
  else
    refused_sockets_.push_back(head + " is connected to " + to +
                               "; it would come back closed, so this checkpoint could not be "
                               "restarted");
}

// The receive queue of a socket (format::DecodeSocketQueue's records): the
// whole byte stream for SOCK_STREAM, one record per datagram otherwise.
Status Capturer::PeekSocket(pid_t pid, FileDesc* f) {
  const uint32_t queued = (*unix_)[f->sock_inode].rqueue;
  if (queued == 0 || f->sock_state == format::kSockListen) return Status::Ok();
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) return Status::FromErrno(errno, "pidfd_open " + Pid(pid));
  UniqueFd sock(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), f->fd, 0)));
  if (!sock)
    return Status::FromErrno(errno, "take socket fd " + std::to_string(f->fd) + " of " + Pid(pid));
  auto append = [&](const char* data, size_t n) {
    format::AppendSocketQueueRecord(&f->data, std::string_view(data, n));
  };
  std::vector<char> buf(1 << 20);
  if (f->sock_type == SOCK_STREAM) {
    buf.resize(std::max<size_t>(buf.size(), queued));
    ssize_t n = ::recv(sock.get(), buf.data(), buf.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n > 0) append(buf.data(), static_cast<size_t>(n));
    return Status::Ok();
  }
  // Datagrams: peek one after the other with a peek offset, then switch the
  // offset off again (the socket is shared with the checkpointed process).
  int zero = 0, off = -1;
  if (::setsockopt(sock.get(), SOL_SOCKET, SO_PEEK_OFF, &zero, sizeof zero) != 0)
    return Status::FromErrno(errno, "peek the queue of socket fd " + std::to_string(f->fd));
  Status st;
  for (uint32_t i = 0; i < queued; ++i) {
    ssize_t n = ::recv(sock.get(), buf.data(), buf.size(), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0) {
      if (errno != EAGAIN)
        st = Status::FromErrno(errno, "peek datagram of socket fd " + std::to_string(f->fd));
      break;
    }
    append(buf.data(), static_cast<size_t>(n));
  }
  ::setsockopt(sock.get(), SOL_SOCKET, SO_PEEK_OFF, &off, sizeof off);
  return st;
}

}  // namespace capture

namespace restore {

// Sends a socket's saved receive queue into it through `from` (its peer, or
// a temporary socket for a bound datagram socket).
Status Refill(int from, const FileDesc& f, const sockaddr_un* dest, socklen_t dest_len) {
  auto queue = format::DecodeSocketQueue(f.data);
  if (!queue) return queue.error().Prefixed("socket fd " + std::to_string(f.fd));
  for (std::string_view m : *queue) {
    ssize_t n = dest ? ::sendto(from, m.data(), m.size(), MSG_DONTWAIT,
                                reinterpret_cast<const sockaddr*>(dest), dest_len)
                     : ::send(from, m.data(), m.size(), MSG_DONTWAIT);
    if (n != static_cast<ssize_t>(m.size()))
      return Status::FromErrno(errno, "refill the queue of socket fd " + std::to_string(f.fd));
  }
  return Status::Ok();
}

socklen_t UnixAddress(const std::string& name, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  size_t n = std::min(name.size(), sizeof addr->sun_path - 1);
  std::memcpy(addr->sun_path, name.data(), n);
  if (!name.empty() && name[0] == '@') addr->sun_path[0] = '\0';
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + n + (name[0] == '@' ? 0 : 1));
}

Result<UniqueFd> Restorer::MakeSocket(const FileDesc& f) {
  const std::string what = "socket fd " + std::to_string(f.fd);
  int type = static_cast<int>(f.sock_type);
  if (type != SOCK_STREAM && type != SOCK_DGRAM && type != SOCK_SEQPACKET)
    return Status::Corrupt(what + " has an unknown type");
  UniqueFd mine;
  if (f.fd_flags & format::kFdOutside) {
    // Led outside the checkpoint (--close-sockets): a socket whose peer is gone.
    int sv[2];
    if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0)
      return Status::FromErrno(errno, "create closed socket for " + what);
    mine.reset(sv[0]);
    UniqueFd gone(sv[1]);
  } else if (f.sock_state == format::kSockEstablished && type != SOCK_DGRAM && !f.peer_id) {
    // Connected, and its peer has closed (sock_diag names no peer): a
    // socketpair whose other end holds what was still queued, then closes.
    int sv[2];
    if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0)
      return Status::FromErrno(errno, "create socket for " + what);
    mine.reset(sv[0]);
    UniqueFd gone(sv[1]);
    if (!f.data.empty()) STASIS_RETURN_IF_ERROR(Refill(gone.get(), f, nullptr, 0));
  } else if (f.peer_id) {
    // A connected pair inside the checkpoint: one socketpair for both ends.
    auto it = sockets_.find(f.sock_inode);
    if (it == sockets_.end() && !f.path.empty() && f.sock_state == format::kSockEstablished &&
        type != SOCK_DGRAM) {
      // An accepted connection (it carries its listener's name): connect a
      // new client to a listener at that name and accept it, so both ends
      // have their names again (getsockname, getpeername).
      std::string name = f.path[0] == '@' ? f.path : Relocate(f.path);
      Result<int> listener = ListenerAt(name, type);
      if (listener) {
        UniqueFd client(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
        sockaddr_un addr;
        socklen_t len = UnixAddress(name, &addr);
        if (client && ::connect(client.get(), reinterpret_cast<sockaddr*>(&addr), len) == 0) {
          UniqueFd server(::accept4(*listener, nullptr, nullptr, SOCK_CLOEXEC));
          if (server) {
            sockets_[f.sock_inode] = std::move(server);
            sockets_[f.peer_id] = std::move(client);
            it = sockets_.find(f.sock_inode);
          }
        }
      }
    }
    if (it == sockets_.end()) {
      int sv[2];
      if (::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) != 0)
        return Status::FromErrno(errno, "create socket pair for " + what);
      sockets_[f.sock_inode] = UniqueFd(sv[0]);
      sockets_[f.peer_id] = UniqueFd(sv[1]);
      it = sockets_.find(f.sock_inode);
    }
    if (!f.data.empty()) STASIS_RETURN_IF_ERROR(Refill(sockets_[f.peer_id].get(), f, nullptr, 0));
    mine.reset(::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0));
  } else if (f.sock_state == format::kSockListen && !f.path.empty()) {
    // A listener: the one already made at its name for an accepted
    // connection, or a new one.
    std::string name = f.path[0] == '@' ? f.path : Relocate(f.path);
    STASIS_ASSIGN_OR_RETURN(int l, ListenerAt(name, type));
    mine.reset(::fcntl(l, F_DUPFD_CLOEXEC, 0));
    if (!f.data.empty()) {
      sockaddr_un addr;
      socklen_t len = UnixAddress(name, &addr);
      UniqueFd tmp(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
      STASIS_RETURN_IF_ERROR(Refill(tmp.get(), f, &addr, len));
    }
  } else {
    mine.reset(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    if (!mine) return Status::FromErrno(errno, "create " + what);
    sockaddr_un addr;
    socklen_t len = 0;
    if (!f.path.empty()) {
      std::string name = f.path[0] == '@' ? f.path : Relocate(f.path);
      len = UnixAddress(name, &addr);
      struct stat st;
      if (name[0] != '@' && ::lstat(name.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
        ::unlink(name.c_str());  // the old socket's name, left behind
      if (::bind(mine.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0)
        return Status::FromErrno(errno, "cannot restore " + what + ": bind " + name);
    }
    if (f.sock_state == format::kSockListen && ::listen(mine.get(), 128) != 0)
      return Status::FromErrno(errno, "cannot restore " + what + ": listen");
    if (!f.data.empty() && len) {
      UniqueFd tmp(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
      STASIS_RETURN_IF_ERROR(Refill(tmp.get(), f, &addr, len));
    }
  }
  if (!mine) return Status::FromErrno(errno, "dup " + what);
  if (f.open_flags & O_NONBLOCK) ::fcntl(mine.get(), F_SETFL, O_NONBLOCK);
  return mine;
}

// Our listening socket at `name` (bound and listening once, shared by the
// listener's own fd and the accepted connections restored through it).
Result<int> Restorer::ListenerAt(const std::string& name, int type) {
  auto it = listeners_.find(name);
  if (it != listeners_.end()) return it->second.get();
  UniqueFd l(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!l) return Status::FromErrno(errno, "create a listening socket at " + name);
  sockaddr_un addr;
  socklen_t len = UnixAddress(name, &addr);
  struct stat st;
  if (name[0] != '@' && ::lstat(name.c_str(), &st) == 0 && S_ISSOCK(st.st_mode))
    ::unlink(name.c_str());  // the old socket's name, left behind
  if (::bind(l.get(), reinterpret_cast<sockaddr*>(&addr), len) != 0)
    return Status::FromErrno(errno, "cannot restore the socket at " + name + ": bind");
  if (::listen(l.get(), 128) != 0) return Status::FromErrno(errno, "listen at " + name);
  int raw = l.get();
  listeners_[name] = std::move(l);
  return raw;
}

}  // namespace restore
}  // namespace stasis::core

// TCP sockets (IPv4 and IPv6), both directions, with the kernel's TCP
// repair mode: connections whose two ends are both in the checkpoint
// (captured exactly: both queues with their sequence numbers, options,
// window; rebuilt together without a handshake), listeners and bound or
// fresh sockets. A connection whose peer is not in the checkpoint keeps the
// rule of every socket leading outside: refused, or saved as closed with
// --close-sockets; so do UDP and other network sockets.
//
// Repair mode needs CAP_NET_ADMIN in the socket's network namespace's user
// namespace: root's cr_checkpoint/cr_restart and stasisd have it, a user's
// direct cr_checkpoint is refused with one line.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include "engine/core/capture_internal.h"
#include "engine/core/fd/fd_kind.h"
#include "engine/core/restore_internal.h"
#include "engine/format/tcp_state.h"

namespace stasis::core {

using format::FileDesc;
using format::TcpAddress;
using format::TcpState;

namespace {

constexpr const char* kNeedsCap =
    "saving a TCP connection needs CAP_NET_ADMIN; checkpoint through stasisd";
constexpr const char* kRestoreNeedsCap =
    "rebuilding a TCP connection needs CAP_NET_ADMIN; restart through stasisd";

using capture::Pid;

Result<UniqueFd> TakeFd(pid_t pid, int fd) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) return Status::FromErrno(errno, "pidfd_open " + Pid(pid));
  UniqueFd sock(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
  if (!sock)
    return Status::FromErrno(errno, "take socket fd " + std::to_string(fd) + " of " + Pid(pid));
  return sock;
}

int IntOpt(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof v;
  if (::getsockopt(fd, level, name, &v, &len) != 0) return 0;
  return v;
}

TcpAddress FromSockaddr(const sockaddr_storage& ss) {
  TcpAddress a;
  if (ss.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&ss);
    a.family = AF_INET;
    a.addr.assign(reinterpret_cast<const char*>(&in->sin_addr), 4);
    a.port = ntohs(in->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    a.family = AF_INET6;
    a.addr.assign(reinterpret_cast<const char*>(&in6->sin6_addr), 16);
    a.port = ntohs(in6->sin6_port);
    a.scope_id = in6->sin6_scope_id;
  }
  return a;
}

socklen_t ToSockaddr(const TcpAddress& a, sockaddr_storage* ss) {
  std::memset(ss, 0, sizeof *ss);
  if (a.family == AF_INET) {
    auto* in = reinterpret_cast<sockaddr_in*>(ss);
    in->sin_family = AF_INET;
    std::memcpy(&in->sin_addr, a.addr.data(), 4);
    in->sin_port = htons(static_cast<uint16_t>(a.port));
    return sizeof *in;
  }
  auto* in6 = reinterpret_cast<sockaddr_in6*>(ss);
  in6->sin6_family = AF_INET6;
  std::memcpy(&in6->sin6_addr, a.addr.data(), 16);
  in6->sin6_port = htons(static_cast<uint16_t>(a.port));
  in6->sin6_scope_id = a.scope_id;
  return sizeof *in6;
}

bool IsBound(const TcpAddress& a) {
  return a.family != 0 && (a.port != 0 || a.addr.find_first_not_of('\0') != std::string::npos);
}

std::string Describe(const TcpState& s) {
  if (s.state == TCP_LISTEN) return "TCP " + format::TcpAddressText(s.local) + " listening";
  if (s.remote.family)
    return "TCP " + format::TcpAddressText(s.local) + " to " + format::TcpAddressText(s.remote);
  return "TCP " + format::TcpAddressText(s.local);
}

// A network socket that stays outside the checkpoint: saved as a closed
// socket or refused, by the one rule of fd/outside_socket.h (through
// Capturer::NoteOutsideSocket, which gathers the refusals of a capture).
Status LeadsOutside(capture::Capturer* cap, capture::ProcState* p, const FdSeen& s, FileDesc* f) {
  OutsideSocket net;
  std::string why;
  if (!InspectNetSocket(p->pid, s.fd, static_cast<uint64_t>(s.st.st_ino), &net, &why))
    return Status::Error(ENOTSUP, "cannot checkpoint " + s.where + ": " + s.link + " is " + why +
                                      " and leads outside the checkpoint");
  f->kind = format::kFileUnixSocket;
  f->sock_type = net.type;
  f->sock_inode = static_cast<uint64_t>(s.st.st_ino);
  f->path = net.Text();
  f->tcp.clear();
  cap->NoteOutsideSocket(p, f, net);
  return Status::Ok();
}

// What the capture reads of any TCP socket without repair mode.
Status ReadPlainState(int sock, const std::string& where, TcpState* t) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (::getsockopt(sock, IPPROTO_TCP, TCP_INFO, &info, &len) != 0)
    return Status::FromErrno(errno, "cannot checkpoint " + where + ": TCP_INFO");
  t->state = info.tcpi_state;
  sockaddr_storage ss{};
  socklen_t sl = sizeof ss;
  if (::getsockname(sock, reinterpret_cast<sockaddr*>(&ss), &sl) == 0) t->local = FromSockaddr(ss);
  if (t->state != TCP_LISTEN && t->state != TCP_CLOSE) {
    sl = sizeof ss;
    if (::getpeername(sock, reinterpret_cast<sockaddr*>(&ss), &sl) == 0)
      t->remote = FromSockaddr(ss);
    else if (t->state == TCP_ESTABLISHED)
      return Status::FromErrno(errno, "cannot checkpoint " + where + ": getpeername");
  }
  if (t->state == TCP_LISTEN) t->backlog = info.tcpi_sacked;  // sk_max_ack_backlog
  if (IntOpt(sock, SOL_SOCKET, SO_REUSEADDR)) t->flags |= format::kTcpReuseAddr;
  if (IntOpt(sock, SOL_SOCKET, SO_REUSEPORT)) t->flags |= format::kTcpReusePort;
  if (IntOpt(sock, IPPROTO_TCP, TCP_NODELAY)) t->flags |= format::kTcpNoDelay;
  if (IntOpt(sock, IPPROTO_TCP, TCP_CORK)) t->flags |= format::kTcpCork;
  if (IntOpt(sock, SOL_SOCKET, SO_KEEPALIVE)) t->flags |= format::kTcpKeepAlive;
  if (t->local.family == AF_INET6 && IntOpt(sock, IPPROTO_IPV6, IPV6_V6ONLY))
    t->flags |= format::kTcpV6Only;
  t->keepidle = static_cast<uint32_t>(IntOpt(sock, IPPROTO_TCP, TCP_KEEPIDLE));
  t->keepintvl = static_cast<uint32_t>(IntOpt(sock, IPPROTO_TCP, TCP_KEEPINTVL));
  t->keepcnt = static_cast<uint32_t>(IntOpt(sock, IPPROTO_TCP, TCP_KEEPCNT));
  t->sndbuf = static_cast<uint32_t>(IntOpt(sock, SOL_SOCKET, SO_SNDBUF));
  t->rcvbuf = static_cast<uint32_t>(IntOpt(sock, SOL_SOCKET, SO_RCVBUF));
  if (info.tcpi_options & TCPI_OPT_TIMESTAMPS) t->flags |= format::kTcpOptTimestamps;
  if (info.tcpi_options & TCPI_OPT_SACK) t->flags |= format::kTcpOptSack;
  if (info.tcpi_options & TCPI_OPT_WSCALE) t->flags |= format::kTcpOptWscale;
  t->snd_wscale = info.tcpi_snd_wscale;
  t->rcv_wscale = info.tcpi_rcv_wscale;
  return Status::Ok();
}

Status SetRepair(int sock, int mode) {
  if (::setsockopt(sock, IPPROTO_TCP, TCP_REPAIR, &mode, sizeof mode) != 0)
    return Status::FromErrno(errno, "TCP_REPAIR " + std::to_string(mode));
  return Status::Ok();
}

Status SetQueue(int sock, int queue) {
  if (::setsockopt(sock, IPPROTO_TCP, TCP_REPAIR_QUEUE, &queue, sizeof queue) != 0)
    return Status::FromErrno(errno, "TCP_REPAIR_QUEUE");
  return Status::Ok();
}

// The moving parts of a connection in repair mode: where each queue ends
// and how much it holds. Equal twice in a row: nothing moved in between.
struct Seqs {
  uint32_t write_seq = 0, rcv_nxt = 0;
  int outq = 0, unsent = 0, inq = 0;
  bool operator==(const Seqs&) const = default;
};

Result<Seqs> ReadSeqs(int sock) {
  Seqs s;
  socklen_t len = sizeof s.write_seq;
  STASIS_RETURN_IF_ERROR(SetQueue(sock, TCP_SEND_QUEUE));
  if (::getsockopt(sock, IPPROTO_TCP, TCP_QUEUE_SEQ, &s.write_seq, &len) != 0)
    return Status::FromErrno(errno, "TCP_QUEUE_SEQ of the send queue");
  STASIS_RETURN_IF_ERROR(SetQueue(sock, TCP_RECV_QUEUE));
  len = sizeof s.rcv_nxt;
  if (::getsockopt(sock, IPPROTO_TCP, TCP_QUEUE_SEQ, &s.rcv_nxt, &len) != 0)
    return Status::FromErrno(errno, "TCP_QUEUE_SEQ of the receive queue");
  if (::ioctl(sock, SIOCOUTQ, &s.outq) != 0 || ::ioctl(sock, SIOCOUTQNSD, &s.unsent) != 0 ||
      ::ioctl(sock, SIOCINQ, &s.inq) != 0)
    return Status::FromErrno(errno, "read the queue lengths");
  return s;
}

Result<std::string> PeekQueue(int sock, int queue, int len) {
  std::string out;
  if (len <= 0) return out;
  STASIS_RETURN_IF_ERROR(SetQueue(sock, queue));
  out.resize(static_cast<size_t>(len));
  ssize_t n = ::recv(sock, out.data(), out.size(), MSG_PEEK | MSG_DONTWAIT);
  if (n < 0)
    return Status::FromErrno(
        errno, queue == TCP_SEND_QUEUE ? "peek the send queue" : "peek the receive queue");
  if (static_cast<size_t>(n) != out.size())
    return Status::Error(EIO, "peeked " + std::to_string(n) + " of the " + std::to_string(len) +
                                  " bytes of the " +
                                  (queue == TCP_SEND_QUEUE ? "send" : "receive") + " queue");
  return out;
}

// One end in repair mode: everything but the moving parts.
Status ReadRepairState(int sock, TcpState* t) {
  int mss = 0;
  socklen_t len = sizeof mss;
  if (::getsockopt(sock, IPPROTO_TCP, TCP_MAXSEG, &mss, &len) == 0)
    t->mss_clamp = static_cast<uint32_t>(mss);  // the clamp, in repair mode
  uint32_t ts = 0;
  len = sizeof ts;
  if (::getsockopt(sock, IPPROTO_TCP, TCP_TIMESTAMP, &ts, &len) == 0) t->timestamp = ts;
  tcp_repair_window w{};
  len = sizeof w;
  if (::getsockopt(sock, IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, &len) != 0)
    return Status::FromErrno(errno, "TCP_REPAIR_WINDOW");
  t->snd_wl1 = w.snd_wl1;
  t->snd_wnd = w.snd_wnd;
  t->max_window = w.max_window;
  t->rcv_wnd = w.rcv_wnd;
  t->rcv_wup = w.rcv_wup;
  return Status::Ok();
}

bool SeqBefore(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) < 0; }

// Which of `inodes` a process outside `ours` holds too (a listener the
// tasks inherited from slurmstepd, say), with one such pid each. Processes
// we may not look into are skipped.
std::map<uint64_t, pid_t> HeldOutside(const std::set<uint64_t>& inodes,
                                      const std::set<pid_t>& ours) {
  std::map<uint64_t, pid_t> out;
  DIR* proc = ::opendir("/proc");
  if (!proc) return out;
  const pid_t self = ::getpid();
  while (dirent* d = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(d->d_name, &end, 10);
    if (pid <= 0 || *end || pid == self || ours.count(static_cast<pid_t>(pid))) continue;
    const std::string dir = std::string("/proc/") + d->d_name + "/fd";
    DIR* fds = ::opendir(dir.c_str());
    if (!fds) continue;
    while (dirent* e = ::readdir(fds)) {
      char link[64];
      ssize_t n = ::readlinkat(::dirfd(fds), e->d_name, link, sizeof link - 1);
      if (n <= 8 || std::strncmp(link, "socket:[", 8) != 0) continue;
      link[n] = '\0';
      uint64_t ino = std::strtoull(link + 8, nullptr, 10);
      if (inodes.count(ino)) out.emplace(ino, static_cast<pid_t>(pid));
    }
    ::closedir(fds);
  }
  ::closedir(proc);
  return out;
}

}  // namespace

// An established connection's identity as its peer would see it: the
// network namespace (two namespaces may both use 127.0.0.1) and the
// address pair, local first.
using TcpEndpoints = std::tuple<uint64_t, std::string, std::string>;

// THE decision for an established connection: where is its other end? In
// this capture when a captured socket of the same network namespace has the
// mirrored address pair. This is the hook for MPI across nodes: a later
// step answers kTcpPeerOtherNode for a peer frozen in another node's
// capture of the same epoch (traffic stopped by a netfilter rule per
// connection, both ends rebuilt together, addresses rewritten when nodes
// changed). Today: here or outside (None).
format::TcpPeerPlace TcpPeerInside(const TcpState& s, uint64_t netns,
                                   const std::map<TcpEndpoints, uint64_t>& here,
                                   uint64_t* peer_inode) {
  auto it = here.find({netns, format::TcpAddressText(s.remote), format::TcpAddressText(s.local)});
  if (it == here.end()) return format::kTcpPeerNone;
  *peer_inode = it->second;
  return format::kTcpPeerHere;
}

// Called by the UNIX row for a socket that sock_diag does not list as a
// UNIX one: TCP sockets become kFileTcpSocket; the rest leads outside.
Status CaptureNetSocket(capture::Capturer* cap, capture::ProcState* p, const FdSeen& s,
                        FileDesc* f) {
  // The family from the socket itself: /proc/net/tcp lists no socket that
  // is only bound, or fresh.
  STASIS_ASSIGN_OR_RETURN(UniqueFd sock, TakeFd(p->pid, s.fd));
  const int domain = IntOpt(sock.get(), SOL_SOCKET, SO_DOMAIN);
  const bool is_tcp = (domain == AF_INET || domain == AF_INET6) &&
                      IntOpt(sock.get(), SOL_SOCKET, SO_TYPE) == SOCK_STREAM &&
                      IntOpt(sock.get(), SOL_SOCKET, SO_PROTOCOL) == IPPROTO_TCP;
  if (!is_tcp) return LeadsOutside(cap, p, s, f);
  TcpState t;
  STASIS_RETURN_IF_ERROR(ReadPlainState(sock.get(), s.where, &t));
  if (t.state != TCP_ESTABLISHED && t.state != TCP_LISTEN && t.state != TCP_CLOSE)
    return LeadsOutside(cap, p, s, f);
  if (t.state == TCP_LISTEN) {
    tcp_info info{};
    socklen_t len = sizeof info;
    if (::getsockopt(sock.get(), IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && info.tcpi_unacked)
      return Status::Error(EBUSY, "cannot checkpoint " + s.where + ": " + Describe(t) + " has " +
                                      std::to_string(info.tcpi_unacked) +
                                      " connection(s) waiting to be accepted; retry");
  }
  f->kind = format::kFileTcpSocket;
  f->sock_type = SOCK_STREAM;
  f->sock_state = t.state;
  f->sock_inode = static_cast<uint64_t>(s.st.st_ino);
  f->path = Describe(t);
  STASIS_ASSIGN_OR_RETURN(f->tcp, format::EncodeTcpState(t));
  return Status::Ok();
}

namespace capture {

// After every process's fds are captured, while the tree is frozen: pairs
// the established connections, refuses (or closes) those leading outside,
// and reads both ends of each pair in repair mode until two reads agree.
Status Capturer::ClassifyTcpSockets() {
  struct End {
    ProcState* p;
    FileDesc* f;
    TcpState t;
    uint64_t netns;
  };
  // A socket a process outside the checkpoint holds too leads outside: the
  // other holder goes on using it, and a listener's port stays taken.
  std::set<uint64_t> tcp;
  std::set<pid_t> ours;
  for (auto& p : procs_) {
    ours.insert(p->pid);
    if (p->snap) ours.insert(p->snap);
    for (FileDesc& f : p->files)
      if (f.kind == format::kFileTcpSocket) tcp.insert(f.sock_inode);
  }
  if (tcp.empty()) return Status::Ok();
  std::map<uint64_t, std::string> payload;  // inode -> encoded state, or "" (led outside)
  // (Saved closed or refused below, by the rule of fd/outside_socket.h.)
  for (const auto& [inode, holder] : HeldOutside(tcp, ours)) {
    (void)holder;
    payload[inode] = "";
  }
  // A socket another user made is not the program's own even when its other
  // holder's fds cannot be read (a worker acting as the user cannot see
  // root's): the PMIx listener slurmstepd leaves open in every `srun
  // --mpi=pmix` task is one. Led outside too.
  for (auto& p : procs_) {
    struct stat pst {};
    if (::stat(("/proc/" + std::to_string(p->pid)).c_str(), &pst) != 0) continue;
    for (FileDesc& f : p->files) {
      if (f.kind != format::kFileTcpSocket || payload.count(f.sock_inode)) continue;
      NetTableRow net;
      if (FindNetSocket(p->pid, f.sock_inode, &net) && net.uid != pst.st_uid)
        payload[f.sock_inode] = "";
    }
  }
  std::map<uint64_t, End> ends;  // established, by socket inode (first holder)
  std::map<TcpEndpoints, uint64_t> by_addr;
  for (auto& p : procs_) {
    for (FileDesc& f : p->files) {
      if (f.kind != format::kFileTcpSocket || f.sock_state != TCP_ESTABLISHED) continue;
      if (payload.count(f.sock_inode)) continue;  // held outside too
      if (ends.count(f.sock_inode)) continue;
      STASIS_ASSIGN_OR_RETURN(TcpState t, format::DecodeTcpState(f.tcp));
      STASIS_ASSIGN_OR_RETURN(UniqueFd sock, TakeFd(p->pid, f.fd));
      // The socket's own namespace (SIOCGSKNS needs CAP_NET_ADMIN; without
      // it, the holder's, which repair mode would refuse anyway).
      UniqueFd ns(::ioctl(sock.get(), SIOCGSKNS));
      struct stat nst {};
      const std::string holder_ns = "/proc/" + std::to_string(p->pid) + "/ns/net";
      if (ns ? ::fstat(ns.get(), &nst) != 0 : ::stat(holder_ns.c_str(), &nst) != 0)
        return Status::FromErrno(errno, "cannot checkpoint " + Pid(p->pid) + " fd " +
                                            std::to_string(f.fd) + ": its network namespace");
      const uint64_t netns = static_cast<uint64_t>(nst.st_ino);
      by_addr[{netns, format::TcpAddressText(t.local), format::TcpAddressText(t.remote)}] =
          f.sock_inode;
      ends[f.sock_inode] = End{p.get(), &f, std::move(t), netns};
    }
  }
  for (auto& [inode, e] : ends) {
    if (payload.count(inode)) continue;
    const std::string where = Pid(e.p->pid) + " fd " + std::to_string(e.f->fd);
    uint64_t peer = 0;
    format::TcpPeerPlace place = TcpPeerInside(e.t, e.netns, by_addr, &peer);
    if (place != format::kTcpPeerHere || !ends.count(peer) || peer == inode) {
      payload[inode] = "";  // leads outside: saved closed or refused below
      continue;
    }
    End& o = ends[peer];
    STASIS_ASSIGN_OR_RETURN(UniqueFd a, TakeFd(e.p->pid, e.f->fd));
    STASIS_ASSIGN_OR_RETURN(UniqueFd b, TakeFd(o.p->pid, o.f->fd));
    const int on = 1;
    if (::setsockopt(a.get(), IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) != 0) {
      if (errno == EPERM && options_.outside_sockets == OutsideSockets::kCloseAll) {
        payload[inode] = payload[peer] = "";
        continue;
      }
      if (errno == EPERM)
        return Status::Error(
            EPERM, "cannot checkpoint " + where + ": " + Describe(e.t) + ": " + kNeedsCap);
      return Status::FromErrno(errno, "cannot checkpoint " + where + ": TCP_REPAIR");
    }
    Status st = SetRepair(b.get(), 1);
    if (st.ok()) {
      // Both ends frozen and in repair mode; the kernel may still move data
      // between them (timers, ACKs in flight): read until nothing moved.
      st = Status::Error(EAGAIN, "cannot checkpoint " + where + ": " + Describe(e.t) +
                                     " kept moving while its two ends were read; retry");
      for (int attempt = 0; attempt < 100; ++attempt) {
        auto sa = ReadSeqs(a.get());
        auto sb = ReadSeqs(b.get());
        if (!sa || !sb) {
          st = (!sa ? sa.error() : sb.error()).Prefixed("cannot checkpoint " + where);
          break;
        }
        auto aq = PeekQueue(a.get(), TCP_SEND_QUEUE, sa->outq);
        auto ar = PeekQueue(a.get(), TCP_RECV_QUEUE, sa->inq);
        auto bq = PeekQueue(b.get(), TCP_SEND_QUEUE, sb->outq);
        auto br = PeekQueue(b.get(), TCP_RECV_QUEUE, sb->inq);
        auto sa2 = ReadSeqs(a.get());
        auto sb2 = ReadSeqs(b.get());
        if (!aq || !ar || !bq || !br || !sa2 || !sb2 || !(*sa == *sa2) || !(*sb == *sb2)) {
          std::this_thread::sleep_for(std::chrono::milliseconds(2));
          continue;
        }
        // Nothing either end still holds may be missing from both: what
        // A has not yet seen acknowledged, B must not be past.
        uint32_t a_una = sa->write_seq - static_cast<uint32_t>(sa->outq);
        uint32_t b_una = sb->write_seq - static_cast<uint32_t>(sb->outq);
        if (SeqBefore(sb->rcv_nxt, a_una) || SeqBefore(sa->rcv_nxt, b_una)) {
          st = Status::Error(EIO, "cannot checkpoint " + where + ": " + Describe(e.t) +
                                      ": bytes acknowledged but not received (sequence numbers "
                                      "disagree)");
          break;
        }
        auto fill = [](TcpState* t, const Seqs& s, std::string q, std::string r) {
          t->send_seq = s.write_seq - static_cast<uint32_t>(s.outq);
          t->recv_seq = s.rcv_nxt - static_cast<uint32_t>(s.inq);
          t->send_queue = std::move(q);
          t->recv_queue = std::move(r);
          t->unsent = static_cast<uint32_t>(s.unsent);
        };
        fill(&e.t, *sa, std::move(*aq), std::move(*ar));
        fill(&o.t, *sb, std::move(*bq), std::move(*br));
        st = ReadRepairState(a.get(), &e.t);
        if (st.ok()) st = ReadRepairState(b.get(), &o.t);
        if (!st.ok()) st = st.Prefixed("cannot checkpoint " + where);
        break;
      }
    }
    // Out of repair mode without a window probe: whatever follows (resume,
    // kill), the connection goes on as if nothing had looked at it.
    (void)SetQueue(a.get(), TCP_NO_QUEUE);
    (void)SetQueue(b.get(), TCP_NO_QUEUE);
    (void)SetRepair(a.get(), TCP_REPAIR_OFF_NO_WP);
    (void)SetRepair(b.get(), TCP_REPAIR_OFF_NO_WP);
    // Leaving repair mode clears SO_REUSEADDR: the program's value back.
    const int reuse_a = (e.t.flags & format::kTcpReuseAddr) ? 1 : 0;
    const int reuse_b = (o.t.flags & format::kTcpReuseAddr) ? 1 : 0;
    (void)::setsockopt(a.get(), SOL_SOCKET, SO_REUSEADDR, &reuse_a, sizeof reuse_a);
    (void)::setsockopt(b.get(), SOL_SOCKET, SO_REUSEADDR, &reuse_b, sizeof reuse_b);
    STASIS_RETURN_IF_ERROR(st);
    e.t.peer_place = o.t.peer_place = format::kTcpPeerHere;
    e.t.peer_inode = peer;
    o.t.peer_inode = inode;
    STASIS_ASSIGN_OR_RETURN(payload[inode], format::EncodeTcpState(e.t));
    STASIS_ASSIGN_OR_RETURN(payload[peer], format::EncodeTcpState(o.t));
  }
  // Every fd of each socket gets its socket's payload (forked holders too).
  for (auto& p : procs_) {
    for (FileDesc& f : p->files) {
      if (f.kind != format::kFileTcpSocket) continue;
      auto it = payload.find(f.sock_inode);
      if (it == payload.end()) continue;
      if (!it->second.empty()) {
        f.tcp = it->second;
        continue;
      }
      // Led outside: comes back closed, if the rule allows it.
      OutsideSocket net;
      std::string why;
      if (!InspectNetSocket(p->pid, f.fd, f.sock_inode, &net, &why)) {
        net.family = "TCP";
        net.type = SOCK_STREAM;
        net.state = f.sock_state == TCP_LISTEN        ? format::kOutsideListening
                    : f.sock_state == TCP_ESTABLISHED ? format::kOutsideConnected
                                                      : format::kOutsideUnconnected;
        net.local = f.path;
      }
      f.kind = format::kFileUnixSocket;
      f.tcp.clear();
      NoteOutsideSocket(p.get(), &f, net);
    }
  }
  return Status::Ok();
}

}  // namespace capture

namespace restore {
namespace {

struct Built {
  UniqueFd fd;
  TcpState t;
};

void SetInt(int fd, int level, int name, int v) {
  (void)::setsockopt(fd, level, name, &v, sizeof v);
}

// Options that do not depend on the state; buffers are set last.
void RestoreOptions(int fd, const TcpState& t) {
  SetInt(fd, SOL_SOCKET, SO_REUSEADDR, (t.flags & format::kTcpReuseAddr) ? 1 : 0);
  if (t.flags & format::kTcpReusePort) SetInt(fd, SOL_SOCKET, SO_REUSEPORT, 1);
  if (t.flags & format::kTcpNoDelay) SetInt(fd, IPPROTO_TCP, TCP_NODELAY, 1);
  if (t.flags & format::kTcpCork) SetInt(fd, IPPROTO_TCP, TCP_CORK, 1);
  if (t.flags & format::kTcpKeepAlive) SetInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1);
  if (t.keepidle) SetInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, static_cast<int>(t.keepidle));
  if (t.keepintvl) SetInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, static_cast<int>(t.keepintvl));
  if (t.keepcnt) SetInt(fd, IPPROTO_TCP, TCP_KEEPCNT, static_cast<int>(t.keepcnt));
}

Status Bind(int fd, const TcpAddress& a) {
  sockaddr_storage ss;
  socklen_t len = ToSockaddr(a, &ss);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0)
    return Status::FromErrno(errno, "bind " + format::TcpAddressText(a));
  return Status::Ok();
}

// Sends all of `data` (a queue refill in repair mode, or unsent bytes in
// normal mode); smaller pieces when the kernel refuses a large one.
Status SendAll(int fd, const std::string& data, const char* what, bool* grown) {
  size_t off = 0, chunk = 256 << 10;
  while (off < data.size()) {
    size_t n = std::min(chunk, data.size() - off);
    ssize_t got = ::send(fd, data.data() + off, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (got <= 0) {
      const bool room = got == 0 || errno == ENOMEM || errno == EAGAIN;
      if (room && chunk > 1024) {
        chunk /= 2;
        continue;
      }
      if (room && !*grown) {
        // The queue does not fit the buffers as they are (skb overheads
        // differ from the original's): room for it, the recorded sizes
        // are set again afterwards.
        const int size = static_cast<int>(std::min<size_t>(data.size() * 4 + (1 << 20), 1 << 30));
        SetInt(fd, SOL_SOCKET, SO_SNDBUFFORCE, size);
        SetInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, size);
        *grown = true;
        chunk = 256 << 10;
        continue;
      }
      return Status::FromErrno(got == 0 ? EIO : errno, std::string("refill the ") + what);
    }
    off += static_cast<size_t>(got);
  }
  return Status::Ok();
}

// The recorded buffer sizes where they differ from the socket's now (a
// refill may have grown them). A size left alone keeps the kernel's
// autotuning, which setting it would switch off. Beyond the system's
// maximum only with privilege (FORCE).
void RecordedBuffers(int fd, const TcpState& t, bool privileged) {
  if (t.rcvbuf && IntOpt(fd, SOL_SOCKET, SO_RCVBUF) != static_cast<int>(t.rcvbuf))
    SetInt(fd, SOL_SOCKET, privileged ? SO_RCVBUFFORCE : SO_RCVBUF, static_cast<int>(t.rcvbuf / 2));
  if (t.sndbuf && IntOpt(fd, SOL_SOCKET, SO_SNDBUF) != static_cast<int>(t.sndbuf))
    SetInt(fd, SOL_SOCKET, privileged ? SO_SNDBUFFORCE : SO_SNDBUF, static_cast<int>(t.sndbuf / 2));
}

// One end of a connection, in repair mode with its queues (all but the
// unsent bytes) and window; still in repair mode when it returns.
Result<UniqueFd> BuildEnd(const TcpState& t, const std::string& what) {
  bool grown = false;
  UniqueFd fd(::socket(static_cast<int>(t.local.family), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno(errno, "cannot restore " + what + ": socket");
  const int on = 1;
  if (::setsockopt(fd.get(), IPPROTO_TCP, TCP_REPAIR, &on, sizeof on) != 0) {
    if (errno == EPERM)
      return Status::Error(EPERM, "cannot restore " + what + ": " + kRestoreNeedsCap);
    return Status::FromErrno(errno, "cannot restore " + what + ": TCP_REPAIR");
  }
  auto fail = [&](const Status& s) { return s.Prefixed("cannot restore " + what); };
  // The other options once out of repair mode (SO_REUSEADDR would end the
  // forced reuse that lets this end share its listener's port).
  if (t.local.family == AF_INET6 && (t.flags & format::kTcpV6Only))
    SetInt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
  Status st = Bind(fd.get(), t.local);
  if (!st.ok()) return fail(st);
  st = SetQueue(fd.get(), TCP_SEND_QUEUE);
  if (st.ok() &&
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_QUEUE_SEQ, &t.send_seq, sizeof t.send_seq) != 0)
    st = Status::FromErrno(errno, "TCP_QUEUE_SEQ of the send queue");
  if (st.ok()) st = SetQueue(fd.get(), TCP_RECV_QUEUE);
  if (st.ok() &&
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_QUEUE_SEQ, &t.recv_seq, sizeof t.recv_seq) != 0)
    st = Status::FromErrno(errno, "TCP_QUEUE_SEQ of the receive queue");
  if (!st.ok()) return fail(st);
  sockaddr_storage ss;
  socklen_t len = ToSockaddr(t.remote, &ss);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0)
    return fail(Status::FromErrno(
        errno, "connect to " + format::TcpAddressText(t.remote) + " in repair mode"));
  tcp_repair_opt opts[4];
  int n = 0;
  opts[n++] = {TCPOPT_MAXSEG, t.mss_clamp};
  if (t.flags & format::kTcpOptWscale)
    opts[n++] = {TCPOPT_WINDOW, t.snd_wscale | (t.rcv_wscale << 16)};
  if (t.flags & format::kTcpOptSack) opts[n++] = {TCPOPT_SACK_PERMITTED, 0};
  if (t.flags & format::kTcpOptTimestamps) opts[n++] = {TCPOPT_TIMESTAMP, 0};
  if (t.mss_clamp && ::setsockopt(fd.get(), IPPROTO_TCP, TCP_REPAIR_OPTIONS, opts,
                                  static_cast<socklen_t>(n * sizeof opts[0])) != 0)
    return fail(Status::FromErrno(errno, "TCP_REPAIR_OPTIONS"));
  if ((t.flags & format::kTcpOptTimestamps) &&
      ::setsockopt(fd.get(), IPPROTO_TCP, TCP_TIMESTAMP, &t.timestamp, sizeof t.timestamp) != 0)
    return fail(Status::FromErrno(errno, "TCP_TIMESTAMP"));
  st = SetQueue(fd.get(), TCP_RECV_QUEUE);
  if (st.ok()) st = SendAll(fd.get(), t.recv_queue, "receive queue", &grown);
  if (st.ok()) st = SetQueue(fd.get(), TCP_SEND_QUEUE);
  if (st.ok())
    st = SendAll(fd.get(), t.send_queue.substr(0, t.send_queue.size() - t.unsent), "send queue",
                 &grown);
  if (st.ok()) st = SetQueue(fd.get(), TCP_NO_QUEUE);
  if (!st.ok()) return fail(st);
  tcp_repair_window w{t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup};
  if (t.max_window && ::setsockopt(fd.get(), IPPROTO_TCP, TCP_REPAIR_WINDOW, &w, sizeof w) != 0)
    return fail(Status::FromErrno(errno, "TCP_REPAIR_WINDOW"));
  return fd;
}

// Both ends out of repair mode (a window probe tells each that the other is
// back) with their options and recorded receive buffers, then the bytes
// that were never sent are sent for real (into the peer's recorded window),
// then the recorded send buffers.
Status FinishPair(int a, const TcpState& ta, const std::string& what_a, int b, const TcpState& tb,
                  const std::string& what_b) {
  struct End {
    int fd;
    const TcpState& t;
    const std::string& what;
  } ends[2] = {{a, ta, what_a}, {b, tb, what_b}};
  for (End& e : ends) {
    Status st = SetRepair(e.fd, TCP_REPAIR_OFF);
    if (!st.ok()) return st.Prefixed("cannot restore " + e.what);
    RestoreOptions(e.fd, e.t);
    if (e.t.rcvbuf && IntOpt(e.fd, SOL_SOCKET, SO_RCVBUF) != static_cast<int>(e.t.rcvbuf))
      SetInt(e.fd, SOL_SOCKET, SO_RCVBUFFORCE, static_cast<int>(e.t.rcvbuf / 2));
  }
  for (End& e : ends) {
    if (!e.t.unsent) continue;
    bool grown = false;
    Status st = SendAll(e.fd, e.t.send_queue.substr(e.t.send_queue.size() - e.t.unsent),
                        "unsent bytes", &grown);
    if (!st.ok()) return st.Prefixed("cannot restore " + e.what);
  }
  for (End& e : ends) RecordedBuffers(e.fd, e.t, true);
  return Status::Ok();
}

const FileDesc* FindSocket(const std::vector<std::unique_ptr<RProc>>& procs, uint64_t inode) {
  for (const auto& p : procs)
    for (const FileDesc& f : p->files)
      if (f.kind == format::kFileTcpSocket && f.sock_inode == inode) return &f;
  return nullptr;
}

// The listeners on the port of `t`'s local address, made before the
// connection: listen() refuses a port that connections already hold.
Status ListenersFirst(Restorer* r, const TcpState& t) {
  for (const auto& p : r->procs_) {
    for (const FileDesc& f : p->files) {
      if (f.kind != format::kFileTcpSocket || f.sock_state != TCP_LISTEN) continue;
      STASIS_ASSIGN_OR_RETURN(TcpState l, format::DecodeTcpState(f.tcp));
      if (l.local.port != t.local.port) continue;
      STASIS_RETURN_IF_ERROR(r->RestorerFdFor(p.get(), f).status());
    }
  }
  return Status::Ok();
}

}  // namespace

Result<UniqueFd> OpenTcpSocket(Restorer* r, const RProc* p, const FileDesc& f) {
  const std::string what = restore::Pid(p->entry.pid) + " fd " + std::to_string(f.fd);
  STASIS_ASSIGN_OR_RETURN(TcpState t, format::DecodeTcpState(f.tcp));
  const std::string desc = what + ": " + Describe(t);
  UniqueFd mine;
  if (t.state == TCP_ESTABLISHED) {
    // Contexts are read one process at a time, so the peer's state may not
    // be known yet. Both ends stay in repair mode until both exist (a
    // segment from one must find the other); no process runs before every
    // process is built, so an end handed over in repair mode is never used
    // in it.
    if (t.peer_place == format::kTcpPeerOtherNode)
      return Status::Error(ENOTSUP, "cannot restore " + desc +
                                        ": its peer is in another node's context (not "
                                        "supported yet)");
    if (t.peer_place != format::kTcpPeerHere)
      return Status::Corrupt("cannot restore " + desc + ": a connection without its peer");
    auto built = r->sockets_.find(f.sock_inode);  // built with its peer
    if (built != r->sockets_.end()) {
      mine = std::move(built->second);
      r->sockets_.erase(built);
    } else {
      const FileDesc* pf = FindSocket(r->procs_, t.peer_inode);
      STASIS_RETURN_IF_ERROR(ListenersFirst(r, t));
      STASIS_ASSIGN_OR_RETURN(mine, BuildEnd(t, desc));
      if (!pf) {
        // The peer comes in a later process: park a copy of this end.
        UniqueFd parked(::fcntl(mine.get(), F_DUPFD_CLOEXEC, 0));
        if (!parked) return Status::FromErrno(errno, "cannot restore " + desc + ": dup");
        r->sockets_[f.sock_inode] = std::move(parked);
      } else {
        STASIS_ASSIGN_OR_RETURN(TcpState pt, format::DecodeTcpState(pf->tcp));
        const std::string pdesc = desc + ": its peer " + Describe(pt);
        auto parked = r->sockets_.find(pf->sock_inode);
        UniqueFd other;
        if (parked != r->sockets_.end()) {
          other = std::move(parked->second);  // built before, in repair mode
          r->sockets_.erase(parked);
        } else {
          STASIS_RETURN_IF_ERROR(ListenersFirst(r, pt));
          STASIS_ASSIGN_OR_RETURN(other, BuildEnd(pt, pdesc));
          UniqueFd claim(::fcntl(other.get(), F_DUPFD_CLOEXEC, 0));
          if (!claim) return Status::FromErrno(errno, "cannot restore " + pdesc + ": dup");
          r->sockets_[pf->sock_inode] = std::move(claim);  // taken when its fd comes
        }
        STASIS_RETURN_IF_ERROR(FinishPair(mine.get(), t, desc, other.get(), pt, pdesc));
      }
    }
  } else {
    mine.reset(::socket(static_cast<int>(t.local.family ? t.local.family : AF_INET),
                        SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!mine) return Status::FromErrno(errno, "cannot restore " + desc + ": socket");
    RestoreOptions(mine.get(), t);
    if (t.local.family == AF_INET6 && (t.flags & format::kTcpV6Only))
      SetInt(mine.get(), IPPROTO_IPV6, IPV6_V6ONLY, 1);
    if (IsBound(t.local)) {
      // The accepted connections rebuilt through this listener hold its
      // port already (repair mode forces the reuse): take it alongside.
      SetInt(mine.get(), SOL_SOCKET, SO_REUSEADDR, 1);
      Status st = Bind(mine.get(), t.local);
      if (!st.ok()) return st.Prefixed("cannot restore " + desc);
    }
    if (t.state == TCP_LISTEN && ::listen(mine.get(), static_cast<int>(t.backlog)) != 0)
      return Status::FromErrno(errno, "cannot restore " + desc + ": listen");
    SetInt(mine.get(), SOL_SOCKET, SO_REUSEADDR, (t.flags & format::kTcpReuseAddr) ? 1 : 0);
    RecordedBuffers(mine.get(), t, false);
  }
  if (f.open_flags & O_NONBLOCK) ::fcntl(mine.get(), F_SETFL, O_NONBLOCK);
  return mine;
}

}  // namespace restore

// Never claimed by stat (a socket's stat does not say its family): the
// UNIX row hands every socket sock_diag does not list to CaptureNetSocket.
extern const FdKindOps kFdTcpSocket = {
    format::kFileTcpSocket,
    "tcp",
    nullptr,
    [](capture::Capturer* cap, capture::ProcState* p, const FdSeen& s, FileDesc* f) {
      return CaptureNetSocket(cap, p, s, f);
    },
    restore::OpenTcpSocket,
    nullptr,
    nullptr};

}  // namespace stasis::core

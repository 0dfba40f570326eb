// Sockets leading outside the checkpoint: what they are, and whether they
// may be saved as closed; see outside_socket.h.
#include "engine/core/fd/outside_socket.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "engine/base/fd.h"
#include "engine/core/unix_diag.h"
#include "engine/format/context.h"

namespace stasis::core {

std::string OutsideSocket::Text() const {
  if (family == "UNIX") return "UNIX socket" + (local.empty() ? std::string() : " " + local);
  std::string out = family + " " + (local.empty() ? std::string("(unbound)") : local);
  if (state == format::kOutsideListening) return out + " listening";
  if (!peer.empty()) out += " -> " + peer;
  return out;
}

bool MaySaveOutsideSocket(OutsideSockets policy, const OutsideSocket& s) {
  switch (policy) {
    case OutsideSockets::kRefuse:
      return false;
    case OutsideSockets::kCloseAll:
      return true;
    case OutsideSockets::kCloseUnconnected:
      // A listener or a socket never connected comes back closed with no
      // peer and no byte lost (a listener accepts no more connections:
      // slurmstepd's PMIx listener, which tasks inherit, is never used by
      // them); a connection loses its peer and what was in flight.
      return s.state == format::kOutsideListening || s.state == format::kOutsideUnconnected;
  }
  return false;
}

namespace {

std::string AddressText(const sockaddr_storage& a) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (a.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (a.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return "";
}

}  // namespace

namespace {

// When the socket cannot be taken (pidfd_getfd needs ptrace rights, which a
// capture through the kernel module may lack): its line in pid's
// /proc/net/{tcp,tcp6,udp,udp6}, found by inode. Sockets that are neither
// bound nor connected are not listed there.
bool FromProcNet(pid_t pid, uint64_t inode, OutsideSocket* out) {
  NetTableRow row;
  if (!FindNetSocket(pid, inode, &row)) return false;
  out->family = row.family;
  out->type = row.type;
  out->local = row.local;
  out->peer = row.remote;
  if (row.type == SOCK_DGRAM)
    out->state = row.remote.empty() ? format::kOutsideUnconnected : format::kOutsideConnected;
  else
    out->state = row.state == TCP_LISTEN  ? format::kOutsideListening
                 : row.state == TCP_CLOSE ? format::kOutsideUnconnected
                                          : format::kOutsideConnected;
  return true;
}

}  // namespace

bool InspectNetSocket(pid_t pid, int fd, uint64_t inode, OutsideSocket* out, std::string* why) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  UniqueFd sock;
  if (pidfd) sock.reset(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
  if (!sock) {
    const int e = errno;
    if (FromProcNet(pid, inode, out)) return true;
    *why = std::string("a socket this checkpoint cannot read (") + std::strerror(e) +
           ") and not a listed TCP or UDP socket";
    return false;
  }
  int domain = 0, type = 0, protocol = 0;
  socklen_t len = sizeof(int);
  if (::getsockopt(sock.get(), SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 ||
      (len = sizeof(int), ::getsockopt(sock.get(), SOL_SOCKET, SO_TYPE, &type, &len)) != 0 ||
      (len = sizeof(int), ::getsockopt(sock.get(), SOL_SOCKET, SO_PROTOCOL, &protocol, &len)) !=
          0) {
    *why = std::string("cannot read the socket's kind: ") + std::strerror(errno);
    return false;
  }
  if ((domain != AF_INET && domain != AF_INET6) ||
      !((type == SOCK_STREAM && protocol == IPPROTO_TCP) ||
        (type == SOCK_DGRAM && protocol == IPPROTO_UDP))) {
    *why = "a socket of family " + std::to_string(domain) + ", type " + std::to_string(type) +
           ", protocol " + std::to_string(protocol) + " (not a UNIX, TCP or UDP socket)";
    return false;
  }
  out->family = type == SOCK_STREAM ? "TCP" : "UDP";
  out->type = static_cast<uint32_t>(type);
  sockaddr_storage a{};
  socklen_t alen = sizeof a;
  if (::getsockname(sock.get(), reinterpret_cast<sockaddr*>(&a), &alen) == 0) {
    out->local = AddressText(a);
    // An unbound socket reports port 0 at the wildcard address.
    if (out->local == "0.0.0.0:0" || out->local == "[::]:0") out->local.clear();
  }
  alen = sizeof a;
  a = {};
  const bool has_peer = ::getpeername(sock.get(), reinterpret_cast<sockaddr*>(&a), &alen) == 0;
  if (has_peer) out->peer = AddressText(a);
  out->state = has_peer ? format::kOutsideConnected : format::kOutsideUnconnected;
  if (type == SOCK_STREAM) {
    tcp_info ti{};
    socklen_t tlen = sizeof ti;
    if (::getsockopt(sock.get(), IPPROTO_TCP, TCP_INFO, &ti, &tlen) == 0) {
      // LISTEN and CLOSE lose nothing; every other state is (or was being)
      // a connection: SYN_SENT, ESTABLISHED, CLOSE_WAIT (the peer may still
      // read what we write), the FIN states.
      if (ti.tcpi_state == TCP_LISTEN)
        out->state = format::kOutsideListening;
      else if (ti.tcpi_state == TCP_CLOSE)
        out->state = format::kOutsideUnconnected;
      else
        out->state = format::kOutsideConnected;
    }
  }
  return true;
}

uint64_t FindTcpPeerInode(pid_t pid, const OutsideSocket& s) {
  if (s.family != "TCP" || s.local.empty() || s.peer.empty()) return 0;
  // The peer's socket: its local address is our peer, its remote ours.
  for (const NetTableRow& r : ReadNetTables(pid, /*tcp_only=*/true))
    if (r.local == s.peer && r.remote == s.local) return r.inode;
  return 0;
}

pid_t FindSocketHolder(uint64_t inode, std::string* comm) {
  if (!inode) return 0;
  const std::string want = "socket:[" + std::to_string(inode) + "]";
  DIR* proc = ::opendir("/proc");
  if (!proc) return 0;
  pid_t found = 0;
  while (dirent* e = ::readdir(proc)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string fds = std::string("/proc/") + e->d_name + "/fd";
    DIR* d = ::opendir(fds.c_str());
    if (!d) continue;
    while (dirent* fe = ::readdir(d)) {
      if (fe->d_name[0] == '.') continue;
      char link[64];
      ssize_t n = ::readlink((fds + "/" + fe->d_name).c_str(), link, sizeof link - 1);
      if (n > 0 && std::string(link, static_cast<size_t>(n)) == want) {
        found = static_cast<pid_t>(std::atoi(e->d_name));
        break;
      }
    }
    ::closedir(d);
    if (found) break;
  }
  ::closedir(proc);
  if (found && comm) {
    std::ifstream c("/proc/" + std::to_string(found) + "/comm");
    std::getline(c, *comm);
  }
  return found;
}

}  // namespace stasis::core

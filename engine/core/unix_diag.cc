// sock_diag client for AF_UNIX; see unix_diag.h.
#include "engine/core/unix_diag.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "engine/base/fd.h"

namespace stasis::core {

Result<std::map<uint64_t, UnixSocketInfo>> ReadUnixSockets() {
  UniqueFd nl(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
  if (!nl) return Status::FromErrno(errno, "open sock_diag netlink socket");
  struct {
    nlmsghdr hdr;
    unix_diag_req req;
  } msg;
  std::memset(&msg, 0, sizeof msg);
  msg.hdr.nlmsg_len = sizeof msg;
  msg.hdr.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  msg.hdr.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  msg.req.sdiag_family = AF_UNIX;
  msg.req.udiag_states = ~0u;
  msg.req.udiag_show = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN;
  if (::send(nl.get(), &msg, sizeof msg, 0) != static_cast<ssize_t>(sizeof msg))
    return Status::FromErrno(errno, "query UNIX sockets (sock_diag)");
  std::map<uint64_t, UnixSocketInfo> out;
  std::vector<char> buf(1 << 16);
  for (;;) {
    ssize_t n = ::recv(nl.get(), buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "read UNIX socket list (sock_diag)");
    for (nlmsghdr* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, static_cast<size_t>(n));
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_DONE) return out;
      if (h->nlmsg_type == NLMSG_ERROR) {
        auto* err = static_cast<nlmsgerr*>(NLMSG_DATA(h));
        return Status::FromErrno(-err->error, "sock_diag");
      }
      auto* d = static_cast<unix_diag_msg*>(NLMSG_DATA(h));
      UnixSocketInfo info;
      info.inode = d->udiag_ino;
      info.type = d->udiag_type;
      info.state = d->udiag_state;
      int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof(*d)));
      for (rtattr* a = reinterpret_cast<rtattr*>(d + 1); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        const char* data = static_cast<const char*>(RTA_DATA(a));
        size_t dlen = RTA_PAYLOAD(a);
        if (a->rta_type == UNIX_DIAG_NAME && dlen > 0) {
          info.name.assign(data, dlen);
          if (info.name[0] == '\0') info.name[0] = '@';
          while (!info.name.empty() && info.name.back() == '\0') info.name.pop_back();
        } else if (a->rta_type == UNIX_DIAG_PEER && dlen >= 4) {
          uint32_t peer;
          std::memcpy(&peer, data, 4);
          info.peer = peer;
        } else if (a->rta_type == UNIX_DIAG_RQLEN && dlen >= sizeof(unix_diag_rqlen)) {
          unix_diag_rqlen q;
          std::memcpy(&q, data, sizeof q);
          info.rqueue = q.udiag_rqueue;
        }
      }
      out[info.inode] = info;
    }
  }
}

namespace {

// "0100007F:893B" (IPv4) or 32 hex digits + port (IPv6), as the kernel
// prints them: each 32-bit word in host byte order.
std::string NetAddress(const std::string& hex) {
  size_t colon = hex.find(':');
  if (colon == std::string::npos) return hex;
  unsigned port = static_cast<unsigned>(std::strtoul(hex.c_str() + colon + 1, nullptr, 16));
  std::string ip = hex.substr(0, colon);
  char buf[96];
  if (ip.size() == 8) {
    uint32_t a = static_cast<uint32_t>(std::strtoul(ip.c_str(), nullptr, 16));
    std::snprintf(buf, sizeof buf, "%u.%u.%u.%u:%u", a & 0xff, (a >> 8) & 0xff, (a >> 16) & 0xff,
                  a >> 24, port);
    return buf;
  }
  std::string v6;
  for (size_t w = 0; w + 8 <= ip.size(); w += 8) {
    uint32_t a = static_cast<uint32_t>(std::strtoul(ip.substr(w, 8).c_str(), nullptr, 16));
    for (int b = 0; b < 4; b += 2) {
      std::snprintf(buf, sizeof buf, "%s%x", v6.empty() ? "" : ":",
                    ((a >> (8 * b)) & 0xff) << 8 | ((a >> (8 * (b + 1))) & 0xff));
      v6 += buf;
    }
  }
  std::snprintf(buf, sizeof buf, ":%u", port);
  return "[" + v6 + "]" + buf;
}

}  // namespace

bool FindNetSocket(int pid, uint64_t inode, NetSocketInfo* out) {
  static const struct {
    const char* file;
    const char* proto;
    uint32_t type;
  } kTables[] = {{"tcp", "TCP", SOCK_STREAM},
                 {"tcp6", "TCP", SOCK_STREAM},
                 {"udp", "UDP", SOCK_DGRAM},
                 {"udp6", "UDP", SOCK_DGRAM}};
  for (const auto& t : kTables) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + t.file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, st, queues, timer, retr, uid, timeout, ino;
      if (!(f >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> ino))
        continue;
      if (std::strtoull(ino.c_str(), nullptr, 10) != inode) continue;
      unsigned state = static_cast<unsigned>(std::strtoul(st.c_str(), nullptr, 16));
      out->type = t.type;
      out->uid = static_cast<uint32_t>(std::strtoul(uid.c_str(), nullptr, 10));
      out->text = std::string(t.proto) + " " + NetAddress(local);
      if (t.type == SOCK_STREAM && state == 10)
        out->text += " listening";
      else if (remote.find_first_not_of("0:") != std::string::npos)
        out->text += " to " + NetAddress(remote);
      return true;
    }
  }
  return false;
}

}  // namespace stasis::core

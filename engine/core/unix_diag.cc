// sock_diag client for AF_UNIX; see unix_diag.h.
#include "engine/core/unix_diag.h"

#include <arpa/inet.h>
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

// "0100007F:893B" or 32 hex digits + ":PORT", as /proc/net/tcp{,6} print an
// address (each 32-bit word of the address in host byte order), as text;
// "" for the unspecified address with port 0 (no peer).
std::string ProcNetAddress(const std::string& hex, bool v6) {
  size_t colon = hex.find(':');
  if (colon == std::string::npos) return "";
  const unsigned port = static_cast<unsigned>(std::strtoul(hex.c_str() + colon + 1, nullptr, 16));
  const std::string ip = hex.substr(0, colon);
  if (port == 0 && ip.find_first_not_of('0') == std::string::npos) return "";
  unsigned char raw[16];
  if (ip.size() != (v6 ? 32u : 8u)) return "";
  for (size_t i = 0; i < ip.size() / 8; ++i) {
    uint32_t w = static_cast<uint32_t>(std::strtoul(ip.substr(i * 8, 8).c_str(), nullptr, 16));
    std::memcpy(raw + i * 4, &w, 4);
  }
  char text[INET6_ADDRSTRLEN] = "?";
  ::inet_ntop(v6 ? AF_INET6 : AF_INET, raw, text, sizeof text);
  return v6 ? "[" + std::string(text) + "]:" + std::to_string(port)
            : std::string(text) + ":" + std::to_string(port);
}

}  // namespace

std::string NetTableRow::Text() const {
  std::string text = family + " " + local;
  if (type == SOCK_STREAM && state == 10)
    text += " listening";
  else if (!remote.empty())
    text += " to " + remote;
  return text;
}

std::vector<NetTableRow> ReadNetTables(int pid, bool tcp_only) {
  static const struct {
    const char* file;
    const char* family;
    uint32_t type;
    bool v6;
  } kTables[] = {{"tcp", "TCP", SOCK_STREAM, false},
                 {"tcp6", "TCP", SOCK_STREAM, true},
                 {"udp", "UDP", SOCK_DGRAM, false},
                 {"udp6", "UDP", SOCK_DGRAM, true}};
  std::vector<NetTableRow> rows;
  for (const auto& t : kTables) {
    if (tcp_only && t.type != SOCK_STREAM) continue;
    std::ifstream in("/proc/" + std::to_string(pid) + "/net/" + t.file);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string sl, local, remote, st, queues, timer, retr, uid, timeout, ino;
      if (!(f >> sl >> local >> remote >> st >> queues >> timer >> retr >> uid >> timeout >> ino))
        continue;
      NetTableRow r;
      r.family = t.family;
      r.type = t.type;
      r.state = static_cast<unsigned>(std::strtoul(st.c_str(), nullptr, 16));
      r.local = ProcNetAddress(local, t.v6);
      r.remote = ProcNetAddress(remote, t.v6);
      r.uid = static_cast<uint32_t>(std::strtoul(uid.c_str(), nullptr, 10));
      r.inode = std::strtoull(ino.c_str(), nullptr, 10);
      rows.push_back(std::move(r));
    }
  }
  return rows;
}

bool FindNetSocket(int pid, uint64_t inode, NetTableRow* out) {
  for (NetTableRow& r : ReadNetTables(pid)) {
    if (r.inode != inode) continue;
    *out = std::move(r);
    return true;
  }
  return false;
}

}  // namespace stasis::core

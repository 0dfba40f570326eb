// sock_diag client for AF_UNIX; see unix_diag.h.
#include "engine/core/unix_diag.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
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

}  // namespace stasis::core

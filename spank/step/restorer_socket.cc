// The restorer's socket (restorer_socket.h).
#include "spank/step/restorer_socket.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include "engine/base/io.h"

namespace stasis::step {

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

Status SendMsg(int sock, const std::string& text, const std::vector<int>& fds) {
  return stasis::SendWithFds(sock, text.data(), text.size(), fds, "the node's restorer");
}

Result<std::string> RecvMsg(int sock, std::vector<UniqueFd>* fds) {
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

}  // namespace stasis::step

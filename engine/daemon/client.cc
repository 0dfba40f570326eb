// The engine protocol's client side; see client.h.
#include "engine/daemon/client.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "engine/base/io.h"

namespace stasis::daemon {

namespace proto = format::proto;

DaemonChoice ChooseDaemon(bool no_daemon, const std::string& socket_option) {
  DaemonChoice c;
  if (no_daemon) return c;
  if (!socket_option.empty()) {
    c.socket = socket_option;
    c.forced = true;
    return c;
  }
  if (const char* env = std::getenv("STASIS_SOCKET")) {
    std::string s = env;
    if (s.empty() || s == "none") return c;
    c.socket = s;
    c.forced = true;
    return c;
  }
  struct stat st;
  if (::stat(kDefaultSocket, &st) == 0 && S_ISSOCK(st.st_mode)) c.socket = kDefaultSocket;
  return c;
}

Result<std::unique_ptr<Client>> Client::Connect(const std::string& socket_path) {
  struct sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path)
    return Status::Error(ENAMETOOLONG, "socket path too long: " + socket_path);
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd) return Status::FromErrno(errno, "socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
    return Status::FromErrno(errno, "connect to stasisd at " + socket_path);
  return std::unique_ptr<Client>(new Client(std::move(fd)));
}

Status Client::Send(const proto::Request& request, const std::vector<int>& fds) {
  auto bytes = proto::EncodeRequest(request);
  if (!bytes) return bytes.error();
  return SendWithFds(fd_.get(), bytes->data(), bytes->size(), fds, "stasisd");
}

Result<proto::Reply> Client::Receive() {
  std::string buf(proto::kMaxMessageSize + 1, '\0');
  ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
  if (n < 0) {
    if (errno == EINTR) return Status::Error(EINTR, "interrupted");
    return Status::FromErrno(errno, "read reply from stasisd");
  }
  if (n == 0) return Status::Error(ECONNRESET, "stasisd closed the connection without a reply");
  buf.resize(static_cast<size_t>(n));
  auto reply = proto::DecodeReply(buf);
  if (!reply) return reply.error().Prefixed("bad reply from stasisd");
  return reply;
}

Result<proto::Reply> Call(const std::string& socket_path, const proto::Request& request,
                          const std::vector<int>& fds) {
  STASIS_ASSIGN_OR_RETURN(std::unique_ptr<Client> client, Client::Connect(socket_path));
  STASIS_RETURN_IF_ERROR(client->Send(request, fds));
  for (;;) {
    auto reply = client->Receive();
    if (!reply && reply.error().code() == EINTR) continue;
    if (!reply) return reply.error();
    if (reply->kind == proto::kReplyQueued) continue;
    if (reply->code != 0) return Status::Error(reply->code, reply->message);
    return reply;
  }
}

}  // namespace stasis::daemon

// The client side of the engine protocol: how the command-line tools reach
// stasisd. Connects to the node's socket, sends one request (with fds as
// SCM_RIGHTS) and reads the replies. The choice between stasisd and the
// in-process engine is made here, the same way for every tool.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"
#include "engine/format/protocol.h"

namespace stasis::daemon {

inline constexpr const char* kDefaultSocket = "/run/stasis/stasisd.sock";

// Which stasisd to use. `socket` empty = run the engine in-process.
// `forced`: the user named the daemon (STASIS_SOCKET or --socket), so
// failing to reach it is an error, not a fallback.
struct DaemonChoice {
  std::string socket;
  bool forced = false;
};
// --no-daemon wins; then --socket PATH; then $STASIS_SOCKET (empty or
// "none" = in-process); then the default socket if it exists.
DaemonChoice ChooseDaemon(bool no_daemon, const std::string& socket_option);

class Client {
 public:
  static Result<std::unique_ptr<Client>> Connect(const std::string& socket_path);
  Status Send(const format::proto::Request& request, const std::vector<int>& fds = {});
  // Blocks for the next reply. EINTR is returned (not retried) so a caller
  // can act on signals; ECONNRESET when stasisd went away.
  Result<format::proto::Reply> Receive();
  int fd() const { return fd_.get(); }

 private:
  explicit Client(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// Sends `request` and waits for its final reply (skipping kReplyQueued).
// A non-zero reply code becomes the Status.
Result<format::proto::Reply> Call(const std::string& socket_path,
                                  const format::proto::Request& request,
                                  const std::vector<int>& fds = {});

}  // namespace stasis::daemon

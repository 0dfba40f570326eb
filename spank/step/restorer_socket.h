// The restorer's socket on a node (abstract namespace: one per network
// namespace, so per node): restart tasks hand it their stdio, and a later
// checkpoint asks it which processes head which task.
#pragma once

#include <sys/socket.h>
#include <sys/un.h>

#include <string>
#include <vector>

#include "engine/base/fd.h"
#include "engine/base/status.h"

namespace stasis::step {

std::string RestorerName(const std::string& job, const std::string& step);
socklen_t AbstractAddr(const std::string& name, struct sockaddr_un* a);
// Sends a text message with optional fds.
Status SendMsg(int sock, const std::string& text, const std::vector<int>& fds = {});
// Receives one message; its fds go to `fds` (closed when null).
Result<std::string> RecvMsg(int sock, std::vector<UniqueFd>* fds = nullptr);
Result<UniqueFd> ConnectRestorer(const std::string& name);

}  // namespace stasis::step

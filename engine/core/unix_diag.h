// UNIX sockets as the kernel's sock_diag reports them: for every socket of
// this network namespace its type, state, bound name, peer and queue
// lengths. The engine needs the peer to tell a socketpair inside the
// checkpoint from a connection leading outside it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "engine/base/status.h"

namespace stasis::core {

struct UnixSocketInfo {
  uint64_t inode = 0;
  uint32_t type = 0;    // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
  uint32_t state = 0;   // 1 established, 7 unconnected/closed, 10 listening
  uint64_t peer = 0;    // peer's inode, 0 when none
  std::string name;     // bound path, "@..." abstract, "" unbound
  uint32_t rqueue = 0;  // bytes (stream) or datagrams queued to be received;
                        // for a listener, connections waiting in accept
};

// Every UNIX socket of the caller's network namespace, by inode.
Result<std::map<uint64_t, UnixSocketInfo>> ReadUnixSockets();

// One line of pid's /proc/net/{tcp,tcp6,udp,udp6}: a TCP or UDP socket of
// pid's network namespace that is bound or connected (a fresh socket is not
// listed). The one reader of those tables.
struct NetTableRow {
  std::string family;  // "TCP" or "UDP"
  uint32_t type = 0;   // SOCK_STREAM (tcp) or SOCK_DGRAM (udp)
  unsigned state = 0;  // the kernel's TCP_* number (UDP: 1 connected, 7 not)
  // "127.0.0.1:80", "[::1]:53" (inet_ntop); remote "" when it has no peer.
  std::string local, remote;
  uint32_t uid = 0;  // the user that made the socket
  uint64_t inode = 0;
  // "TCP 127.0.0.1:35131 listening", "UDP [::1]:53 to [::1]:5353"
  std::string Text() const;
};

// Every row of pid's tables (only tcp and tcp6 when tcp_only).
std::vector<NetTableRow> ReadNetTables(int pid, bool tcp_only = false);

// The row of socket `inode` in pid's tables; false when it is not listed.
bool FindNetSocket(int pid, uint64_t inode, NetTableRow* out);

}  // namespace stasis::core

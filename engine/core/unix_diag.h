// UNIX sockets as the kernel's sock_diag reports them: for every socket of
// this network namespace its type, state, bound name, peer and queue
// lengths. The engine needs the peer to tell a socketpair inside the
// checkpoint from a connection leading outside it.
#pragma once

#include <cstdint>
#include <map>
#include <string>

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

// A TCP or UDP socket (IPv4 or IPv6) of pid's network namespace, found by
// inode in /proc/PID/net/{tcp,tcp6,udp,udp6}: its type and a description
// for messages ("TCP 127.0.0.1:35131 listening", "UDP [::1]:53 to ...").
struct NetSocketInfo {
  uint32_t type = 0;  // SOCK_STREAM (tcp) or SOCK_DGRAM (udp)
  uint32_t uid = 0;   // the user that made the socket (the table's uid column)
  std::string text;
};
bool FindNetSocket(int pid, uint64_t inode, NetSocketInfo* out);

}  // namespace stasis::core

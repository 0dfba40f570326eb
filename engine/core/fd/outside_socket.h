// Sockets that lead outside the checkpoint (network sockets, UNIX sockets
// whose peer no process of the checkpoint holds), and the one rule that
// says which of them a checkpoint may save: MaySaveOutsideSocket. A restart
// can give such a socket back only closed; a connection saved that way is
// not continued, so an honest checkpoint refuses it unless the user chose
// to lose it (cr_checkpoint --close-sockets). Sockets a checkpoint can
// restore whole (a pair inside it) never come here.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "engine/core/engine.h"

namespace stasis::core {

struct OutsideSocket {
  std::string family;  // "TCP", "UDP" or "UNIX"
  uint32_t type = 0;   // SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET
  uint32_t state = 0;  // format::OutsideState: connected, unconnected, listening
  // Addresses: "10.250.0.11:41234", "[::1]:80", a UNIX socket's name;
  // empty when it has none (unbound, no peer, or an unnamed UNIX peer).
  std::string local, peer;
  uint64_t peer_inode = 0;  // the peer socket's inode when known (UNIX), else 0
  // "TCP 10.250.0.11:41234 -> 10.250.0.12:1024", "TCP 0.0.0.0:1024
  // listening", "UDP 0.0.0.0:5353", "UNIX socket @name"
  std::string Text() const;
};

// THE rule. May a socket leading outside the checkpoint be saved (as a
// closed socket) under `policy`? kRefuse: never; kCloseAll: always;
// kCloseUnconnected: only a listening or never-connected one (a
// connection would come back closed, and the checkpoint could not be
// restarted). Sockets whose both ends are in the checkpoint are not
// "outside" and are decided elsewhere (unix_socket.cc).
bool MaySaveOutsideSocket(OutsideSockets policy, const OutsideSocket& s);

// What fd `fd` (inode `inode`) of `pid` is, when it is an IPv4 or IPv6 TCP
// or UDP socket: read from the socket itself (pidfd_getfd: family, type,
// addresses, TCP state), so unbound and closed sockets are known too; when
// it cannot be taken, from pid's /proc/net tables. False with *why when it
// is another kind of socket or cannot be read.
bool InspectNetSocket(pid_t pid, int fd, uint64_t inode, OutsideSocket* out, std::string* why);

// For a refusal's message only (it reads /proc): the inode of the peer of a
// TCP connection of `pid` when the peer is in pid's network namespace (the
// same host), else 0.
uint64_t FindTcpPeerInode(pid_t pid, const OutsideSocket& s);

// For a refusal's message only (it reads every process's fds): a process
// holding the socket `inode`, or 0; *comm gets its name.
pid_t FindSocketHolder(uint64_t inode, std::string* comm);

}  // namespace stasis::core

// The typed payload of a TCP socket (FileKind kFileTcpSocket): what the
// kernel's TCP repair mode gives of one socket at capture and needs to
// rebuild it, as its own tag-length-value message carried in FileDesc::tcp.
// The bytes are specified in docs/format.md ("TCP sockets"); the tags are
// tcp_tag below, this file's own numbering.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/base/status.h"

namespace stasis::format {

// Where the peer of an established connection was captured.
enum TcpPeerPlace : uint32_t {
  kTcpPeerNone = 0,       // not a connection (listener, bound, closed)
  kTcpPeerHere = 1,       // the other end is a socket of this same context
  kTcpPeerOtherNode = 2,  // reserved: the other end is in another node's context of
                          // the same epoch (restored together; not built yet)
};

// One end of a connection: family AF_INET (addr 4 bytes) or AF_INET6 (16).
struct TcpAddress {
  uint32_t family = 0;
  std::string addr;       // raw network-order bytes
  uint32_t port = 0;      // host order
  uint32_t scope_id = 0;  // IPv6 link-local scope
  bool operator==(const TcpAddress&) const = default;
};

enum TcpOptionFlags : uint32_t {
  kTcpReuseAddr = 1u << 0,
  kTcpReusePort = 1u << 1,
  kTcpNoDelay = 1u << 2,
  kTcpKeepAlive = 1u << 3,
  kTcpV6Only = 1u << 4,
  kTcpCork = 1u << 5,
  // TCP_INFO tcpi_options as negotiated (TCP_REPAIR_OPTIONS at restore)
  kTcpOptTimestamps = 1u << 8,
  kTcpOptSack = 1u << 9,
  kTcpOptWscale = 1u << 10,
};

struct TcpState {
  uint32_t state = 0;  // TCP_ESTABLISHED 1, TCP_CLOSE 7 (bound or fresh), TCP_LISTEN 10
  uint32_t peer_place = kTcpPeerNone;  // TcpPeerPlace
  uint64_t peer_inode = 0;             // kTcpPeerHere: the peer socket's inode in this context
  TcpAddress local;                    // family 0: never bound
  TcpAddress remote;                   // connections only
  uint32_t backlog = 0;                // listeners
  uint32_t flags = 0;                  // TcpOptionFlags
  uint32_t sndbuf = 0, rcvbuf = 0;     // SO_SNDBUF/SO_RCVBUF as getsockopt reports them
  uint32_t keepidle = 0, keepintvl = 0, keepcnt = 0;
  // Connections (repair mode). Sequence numbers are of the first byte of
  // each queue; the send queue holds unacknowledged then unsent bytes, the
  // last `unsent` of them never sent.
  uint32_t send_seq = 0;
  uint32_t recv_seq = 0;
  std::string send_queue;
  std::string recv_queue;
  uint32_t unsent = 0;
  uint32_t mss_clamp = 0;
  uint32_t snd_wscale = 0, rcv_wscale = 0;
  uint32_t timestamp = 0;  // TCP_TIMESTAMP: the socket's clock at capture
  // struct tcp_repair_window
  uint32_t snd_wl1 = 0, snd_wnd = 0, max_window = 0, rcv_wnd = 0, rcv_wup = 0;
  bool operator==(const TcpState&) const = default;
};

// The tags of a TcpState message (this message's own numbering).
namespace tcp_tag {
enum : uint32_t {
  kState = 1,
  kPeerPlace = 2,
  kPeerInode = 3,
  kLocal = 4,   // TcpAddress
  kRemote = 5,  // TcpAddress
  kBacklog = 6,
  kFlags = 7,
  kSndbuf = 8,
  kRcvbuf = 9,
  kKeepidle = 10,
  kKeepintvl = 11,
  kKeepcnt = 12,
  kSendSeq = 13,
  kRecvSeq = 14,
  kSendQueue = 15,
  kRecvQueue = 16,
  kUnsent = 17,
  kMssClamp = 18,
  kSndWscale = 19,
  kRcvWscale = 20,
  kTimestamp = 21,
  kSndWl1 = 22,
  kSndWnd = 23,
  kMaxWindow = 24,
  kRcvWnd = 25,
  kRcvWup = 26,
  kEnd = 63,  // last field: u64, the number of bytes before it
};
enum : uint32_t { kAddrFamily = 1, kAddrAddr = 2, kAddrPort = 3, kAddrScopeId = 4 };
}  // namespace tcp_tag

// Encodes `s`; fails (EINVAL) on a value the format cannot hold.
Result<std::string> EncodeTcpState(const TcpState& s);
// Decodes and checks a payload: refuses a cut-short or garbled one (no end
// field, wrong length, an address of the wrong size, an unknown state, an
// unsent count beyond the send queue) with a Corrupt status naming it.
Result<TcpState> DecodeTcpState(std::string_view bytes);

// "127.0.0.1:5000", "[::1]:5000", "unbound": for messages and `stasis show`.
std::string TcpAddressText(const TcpAddress& a);

}  // namespace stasis::format
